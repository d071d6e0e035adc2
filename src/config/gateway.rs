//! The gateway's configuration: listeners, routes, WebSocket, shutdown and policy settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::policy;
use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where devices connect. Several per process.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Named upstream pools. `/tunnel/{name}` reaches `routes.{name}`; nothing else is reachable.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    #[serde(default)]
    pub websocket: WebSocketSettings,
    #[serde(default)]
    pub shutdown: ShutdownSettings,
    #[serde(default)]
    pub policy: policy::PolicyConfig,
    #[serde(default)]
    pub mqtt: policy::MqttSettings,
    #[serde(default)]
    pub probe: ProbeSettings,
    /// Where bans are kept across restarts. Absent: in memory only.
    #[serde(default)]
    pub store: Option<StoreSettings>,
    /// The admin API (bans, clients, stats, metrics). Absent: none.
    #[serde(default)]
    pub admin: Option<super::AdminSettings>,
    /// Bans shared with other gateways through Redis. Absent: this node alone.
    #[serde(default)]
    pub cluster: Option<super::ClusterSettings>,
    /// HTTP push uploads and check-ins. Absent: none.
    #[serde(default)]
    pub push: Option<super::PushSettings>,
    /// Device authentication: token keys, certificate identity, client ID binding.
    #[serde(default)]
    pub auth: Option<super::AuthSettings>,
    /// Tunnels that survive a dropped WebSocket (with the agent). On unless disabled.
    #[serde(default)]
    pub resume: super::ResumeSettings,
    /// The file this came from, for reload on SIGHUP.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// HTTP/1.1: `/mqtt` and `/tunnel/{route}` WebSocket upgrades, `/healthz`, `/readyz`.
    #[default]
    Websocket,
    /// Raw MQTT over TCP (1883/8883 style): the whole stream goes to `mqtt_route`.
    Mqtt,
}

/// PROXY protocol on a listener: off, or required in the named version. Never auto-detected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolMode {
    #[default]
    Off,
    V1,
    V2,
    /// Required; either version is accepted (what HAProxy's `accept-proxy` does).
    Any,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// For logs; defaults to the bind address.
    #[serde(default)]
    pub name: Option<String>,
    pub bind: SocketAddr,
    #[serde(default)]
    pub kind: ListenerKind,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocolMode,
    /// Peers allowed to send a PROXY header. Required when `proxy_protocol` is on.
    #[serde(default)]
    pub proxy_protocol_from: Vec<IpNet>,
    /// Peers whose `CF-Connecting-IP` / `X-Forwarded-For` / `X-Real-IP` are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// The one header believed from `trusted_proxies`: x-forwarded-for, cf-connecting-ip, x-real-ip.
    #[serde(default)]
    pub client_ip_header: crate::identify::ClientIpHeader,
    /// A file of further trusted CIDRs, one per line (`#` comments), e.g. Cloudflare's ranges.
    #[serde(default)]
    pub trusted_proxies_file: Option<PathBuf>,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Time allowed for PROXY header + TLS + request head (slowloris guard).
    #[serde(default = "defaults::handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// Accept unmasked client frames (some F5 masking modes forward them). Off: RFC 6455.
    #[serde(default)]
    pub accept_unmasked_frames: bool,
    /// The route `/mqtt` (and a raw MQTT listener) forwards to; default: the route named `mqtt`.
    #[serde(default)]
    pub mqtt_route: Option<String>,
    /// What devices must present here, unless their route says otherwise.
    #[serde(default)]
    pub auth: super::AuthMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The first certificate is the default; the others are chosen by SNI from their names.
    pub certificates: Vec<CertificateConfig>,
    /// Client certificates are asked for and checked against this CA (PEM, one or more).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `required` ends a handshake without a valid certificate; `optional`
    /// lets it on (for routes with `auth = "token_or_mtls"` or none).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Consistent hashing by device identity: a device keeps its broker (session affinity).
    #[default]
    Consistent,
    RoundRobin,
}

/// What a route carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteProtocol {
    /// MQTT: read packet by packet, with the device policy applied.
    Mqtt,
    /// Opaque bytes.
    Tcp,
    /// HTTP collectors for `/push` and `/checkin` (`[push]`); never a raw tunnel.
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `host:port` of each upstream. Resolved once at start (and on reload).
    pub upstreams: Vec<String>,
    /// Default: `mqtt` for a listener's MQTT route (the `/mqtt` target), `tcp` otherwise.
    #[serde(default)]
    pub protocol: Option<RouteProtocol>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "defaults::health_check_interval_secs")]
    pub health_check_interval_secs: u64,
    /// What devices must present to reach this route; default: the listener's `auth`.
    #[serde(default)]
    pub auth: Option<super::AuthMode>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Below every idle timeout on the way: Cloudflare ~100 s, ALB and NGINX 60 s.
    #[serde(default = "defaults::ping_interval_secs")]
    pub ping_interval_secs: u64,
    /// A device that lets this many pings go unanswered is closed.
    #[serde(default = "defaults::max_missed_pongs")]
    pub max_missed_pongs: u32,
    #[serde(default = "defaults::max_frame_size")]
    pub max_frame_size: usize,
    #[serde(default = "defaults::max_frame_size")]
    pub max_message_size: usize,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        WebSocketSettings {
            ping_interval_secs: defaults::ping_interval_secs(),
            max_missed_pongs: defaults::max_missed_pongs(),
            max_frame_size: defaults::max_frame_size(),
            max_message_size: defaults::max_frame_size(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Close 1001 is sent to devices spread over this window, so a fleet does not reconnect at once.
    #[serde(default = "defaults::drain_window_secs")]
    pub drain_window_secs: u64,
    /// After this the process exits whatever is still open.
    #[serde(default = "defaults::drain_timeout_secs")]
    pub drain_timeout_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            drain_window_secs: defaults::drain_window_secs(),
            drain_timeout_secs: defaults::drain_timeout_secs(),
        }
    }
}

/// `[store]`: the embedded ban store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// A directory of its own; the store is `dir/bans.redb`.
    pub dir: PathBuf,
    /// CSV with EMQX's columns `as,who,by,reason,at,until`, merged at every start.
    #[serde(default)]
    pub bootstrap_file: Option<PathBuf>,
}

/// `/probe`: the WebSocket echo and body-size check that `portcullis probe` walks a path with.
/// On by default, because the admin debugging a WAF needs it most when nothing else works; its
/// own rate and session caps keep it from being a free echo service. Fixed at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Largest echoed WebSocket message (the probe steps up to 1 MiB).
    #[serde(default = "defaults::probe_max_message_size")]
    pub max_message_size: usize,
    /// Largest `POST /probe` body counted (the probe's check of what HTTP push can send).
    #[serde(default = "defaults::probe_max_body_size")]
    pub max_body_size: usize,
    /// New probe sessions per minute, for the whole gateway (a probe run opens about a dozen).
    #[serde(default = "defaults::probe_sessions_per_minute")]
    pub sessions_per_minute: u32,
    /// Probe WebSockets open at once.
    #[serde(default = "defaults::probe_max_sessions")]
    pub max_sessions: usize,
    /// A probe session is closed after this long, silent or not (the idle check needs 120 s).
    #[serde(default = "defaults::probe_max_session_secs")]
    pub max_session_secs: u64,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            enabled: true,
            max_message_size: defaults::probe_max_message_size(),
            max_body_size: defaults::probe_max_body_size(),
            sessions_per_minute: defaults::probe_sessions_per_minute(),
            max_sessions: defaults::probe_max_sessions(),
            max_session_secs: defaults::probe_max_session_secs(),
        }
    }
}

mod defaults {
    pub fn yes() -> bool {
        true
    }
    pub fn probe_max_message_size() -> usize {
        1 << 20
    }
    pub fn probe_max_body_size() -> usize {
        16 << 20
    }
    pub fn probe_sessions_per_minute() -> u32 {
        120
    }
    pub fn probe_max_sessions() -> usize {
        32
    }
    pub fn probe_max_session_secs() -> u64 {
        300
    }
    pub fn max_connections() -> usize {
        50_000
    }
    pub fn handshake_timeout_secs() -> u64 {
        10
    }
    pub fn connect_timeout_ms() -> u64 {
        3_000
    }
    pub fn health_check_interval_secs() -> u64 {
        5
    }
    pub fn ping_interval_secs() -> u64 {
        25
    }
    pub fn max_missed_pongs() -> u32 {
        2
    }
    pub fn max_frame_size() -> usize {
        64 * 1024
    }
    pub fn drain_window_secs() -> u64 {
        10
    }
    pub fn drain_timeout_secs() -> u64 {
        30
    }
}

// === impl Config ===

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::plain(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Self::parse(&text, path.parent())?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parse and validate config text. Relative file paths resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::from_toml(&e))?;
        if let Some(dir) = base_dir {
            config.resolve_paths(dir);
        }
        config
            .validate()
            .map_err(|(key, msg)| ConfigError::at_key(text, &key, msg))?;
        Ok(config)
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for l in &mut self.listeners {
            if let Some(tls) = &mut l.tls {
                for c in &mut tls.certificates {
                    fix(&mut c.cert);
                    fix(&mut c.key);
                }
            }
            if let Some(f) = &mut l.trusted_proxies_file {
                fix(f);
            }
            if let Some(ca) = l.tls.as_mut().and_then(|t| t.client_ca.as_mut()) {
                fix(ca);
            }
        }
        if let Some(auth) = &mut self.auth {
            for k in &mut auth.keys {
                if let Some(p) = &mut k.public_key {
                    fix(p);
                }
            }
            if let Some(ca) = &mut auth.forwarded_cert_ca {
                fix(ca);
            }
        }
        if let Some(store) = &mut self.store {
            fix(&mut store.dir);
            if let Some(f) = &mut store.bootstrap_file {
                fix(f);
            }
        }
        if let Some(admin) = &mut self.admin {
            fix(&mut admin.tokens_file);
        }
    }

    /// Semantic checks. The error is `(key path, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.listeners.is_empty() {
            return Err((
                "listener".into(),
                "at least one [[listener]] is needed".into(),
            ));
        }
        let mut binds = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            // Port 0 (tests) never collides: the OS picks a fresh port for each.
            if l.bind.port() != 0 && !binds.insert(l.bind) {
                return Err((key("bind"), format!("{} is bound twice", l.bind)));
            }
            if l.max_connections == 0 {
                return Err((key("max_connections"), "must be at least 1".into()));
            }
            if l.handshake_timeout_secs == 0 {
                return Err((key("handshake_timeout_secs"), "must be at least 1".into()));
            }
            if l.proxy_protocol != ProxyProtocolMode::Off && l.proxy_protocol_from.is_empty() {
                return Err((
                    key("proxy_protocol_from"),
                    "PROXY protocol is on, so name the peers allowed to send it (e.g. the load balancer's CIDR)".into(),
                ));
            }
            match (&l.mqtt_route, l.kind) {
                (Some(r), _) if !self.routes.contains_key(r) => {
                    return Err((key("mqtt_route"), format!("no route named {r:?}")));
                }
                (None, ListenerKind::Mqtt) if !self.routes.contains_key("mqtt") => {
                    return Err((
                        key("kind"),
                        "a raw MQTT listener needs a route: add [routes.mqtt] or set mqtt_route"
                            .into(),
                    ));
                }
                _ => {}
            }
            if let Some(tls) = &l.tls {
                if tls.certificates.is_empty() {
                    return Err((key("tls.certificates"), "at least one certificate".into()));
                }
                for (j, c) in tls.certificates.iter().enumerate() {
                    for (what, p) in [("cert", &c.cert), ("key", &c.key)] {
                        if !p.is_file() {
                            return Err((
                                key(&format!("tls.certificates[{j}].{what}")),
                                format!("no such file: {}", p.display()),
                            ));
                        }
                    }
                }
            }
            if let Some(f) = &l.trusted_proxies_file {
                if let Err(e) = crate::identify::read_cidr_file(f) {
                    return Err((key("trusted_proxies_file"), e));
                }
            }
        }
        for (name, r) in &self.routes {
            let key = |k: &str| format!("routes.{name}.{k}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err((
                    format!("routes.{name}"),
                    "route names use only letters, digits, '-' and '_' (they appear in /tunnel/{route})".into(),
                ));
            }
            if r.upstreams.is_empty() {
                return Err((key("upstreams"), "at least one upstream host:port".into()));
            }
            for (j, u) in r.upstreams.iter().enumerate() {
                if !u
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                {
                    return Err((
                        key(&format!("upstreams[{j}]")),
                        format!("{u:?} is not host:port"),
                    ));
                }
            }
            if r.connect_timeout_ms == 0 {
                return Err((key("connect_timeout_ms"), "must be at least 1".into()));
            }
            if r.health_check_interval_secs == 0 {
                return Err((
                    key("health_check_interval_secs"),
                    "must be at least 1".into(),
                ));
            }
        }
        let ws = &self.websocket;
        if ws.ping_interval_secs == 0 {
            return Err((
                "websocket.ping_interval_secs".into(),
                "must be at least 1".into(),
            ));
        }
        if ws.max_missed_pongs == 0 {
            return Err((
                "websocket.max_missed_pongs".into(),
                "must be at least 1".into(),
            ));
        }
        for (k, v) in [
            ("max_frame_size", ws.max_frame_size),
            ("max_message_size", ws.max_message_size),
        ] {
            if !(16..=16 << 20).contains(&v) {
                return Err((
                    format!("websocket.{k}"),
                    "must be between 16 bytes and 16 MiB".into(),
                ));
            }
        }
        if ws.max_message_size < ws.max_frame_size {
            return Err((
                "websocket.max_message_size".into(),
                "must be at least websocket.max_frame_size".into(),
            ));
        }
        let p = &self.probe;
        if !(16..=16 << 20).contains(&p.max_message_size) {
            return Err((
                "probe.max_message_size".into(),
                "must be between 16 bytes and 16 MiB".into(),
            ));
        }
        if !(16..=1 << 30).contains(&p.max_body_size) {
            return Err((
                "probe.max_body_size".into(),
                "must be between 16 bytes and 1 GiB".into(),
            ));
        }
        for (k, v, max) in [
            ("sessions_per_minute", p.sessions_per_minute as u64, 100_000),
            ("max_sessions", p.max_sessions as u64, 10_000),
            ("max_session_secs", p.max_session_secs, 86_400),
        ] {
            if !(1..=max).contains(&v) {
                return Err((format!("probe.{k}"), format!("must be between 1 and {max}")));
            }
        }
        if self.policy.max_regex_bans > 10_000 {
            return Err((
                "policy.max_regex_bans".into(),
                "must be at most 10000".into(),
            ));
        }
        if let Some(c) = &self.cluster {
            c.check()?;
        }
        self.resume.check()?;
        if let Some(a) = &self.admin {
            a.check()?;
        }
        if let Some(p) = &self.push {
            p.check(|r| {
                self.routes
                    .get(r)
                    .map(|_| self.route_protocol(r) == RouteProtocol::Http)
            })?;
        }
        self.check_auth()?;
        if self.shutdown.drain_timeout_secs < self.shutdown.drain_window_secs {
            return Err((
                "shutdown.drain_timeout_secs".into(),
                "must be at least shutdown.drain_window_secs".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Every `auth` asked for can be met: token modes need keys, certificate modes a CA.
    fn check_auth(&self) -> Result<(), (String, String)> {
        if let Some(a) = &self.auth {
            a.check()?;
        }
        let keys = self.auth.as_ref().is_some_and(|a| !a.keys.is_empty());
        let forwarded = self
            .auth
            .as_ref()
            .is_some_and(|a| a.forwarded_cert_header.is_some());
        let modes = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listener[{i}].auth"), l.auth))
            .chain(
                self.routes
                    .iter()
                    .filter_map(|(n, r)| Some((format!("routes.{n}.auth"), r.auth?))),
            );
        for (name, r) in &self.routes {
            if r.auth.is_some_and(|m| m != super::AuthMode::None)
                && self.route_protocol(name) == RouteProtocol::Http
            {
                return Err((
                    format!("routes.{name}.auth"),
                    "HTTP push routes do not authenticate devices (yet): their collectors see the device's own Authorization header".into(),
                ));
            }
        }
        for (key, mode) in modes {
            if mode.accepts_token() && !keys {
                return Err((
                    key,
                    "tokens are checked with keys: add [[auth.key]] (EdDSA, ES256 or HS256)".into(),
                ));
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let client_ca = l.tls.as_ref().and_then(|t| t.client_ca.as_ref());
            if let Some(ca) = client_ca {
                if !ca.is_file() {
                    return Err((
                        format!("listener[{i}].tls.client_ca"),
                        format!("no such file: {}", ca.display()),
                    ));
                }
            }
            // A certificate mode on this listener (its own, or a route's through it) needs a
            // way for certificates to arrive.
            let cert_mode = l.auth.accepts_cert()
                || self
                    .routes
                    .values()
                    .any(|r| r.auth.is_some_and(|m| m.accepts_cert()));
            if cert_mode && client_ca.is_none() && !forwarded {
                return Err((
                    format!("listener[{i}].auth"),
                    "certificate authentication needs tls.client_ca on this listener, or [auth] forwarded_cert_header behind a trusted proxy".into(),
                ));
            }
            if l.kind == ListenerKind::Mqtt {
                let mode = self
                    .routes
                    .get(l.mqtt_route())
                    .and_then(|r| r.auth)
                    .unwrap_or(l.auth);
                if mode == super::AuthMode::Token {
                    return Err((
                        format!("listener[{i}].auth"),
                        "a raw MQTT listener carries no HTTP header for a token: use mtls (or token_or_mtls with tls.client_ca)".into(),
                    ));
                }
            }
        }
        if let Some(ca) = self
            .auth
            .as_ref()
            .and_then(|a| a.forwarded_cert_ca.as_ref())
        {
            if !ca.is_file() {
                return Err((
                    "auth.forwarded_cert_ca".into(),
                    format!("no such file: {}", ca.display()),
                ));
            }
        }
        Ok(())
    }

    /// Does `route` carry MQTT (so the policy applies to it)?
    pub fn route_protocol(&self, route: &str) -> RouteProtocol {
        match self.routes.get(route).and_then(|r| r.protocol) {
            Some(p) => p,
            None if self.listeners.iter().any(|l| l.mqtt_route() == route) => RouteProtocol::Mqtt,
            None => RouteProtocol::Tcp,
        }
    }
}

impl ListenerConfig {
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.bind.to_string())
    }

    /// The route MQTT traffic on this listener goes to, if any.
    pub fn mqtt_route(&self) -> &str {
        self.mqtt_route.as_deref().unwrap_or("mqtt")
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}

impl RouteConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
