//! `portcullis agent` configuration: TOML, unknown keys refused, one `validate()` whose
//! messages name the key. Secrets (the device token, the proxy password) live in [`Secret`],
//! whose `Debug` prints `***`, so a config dumped into a log leaks nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::proxy::ProxyUrl;
use super::tls::Pin;
use crate::config::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Seconds between status lines in the log (only when something changed). 0: never.
    #[serde(default = "defaults::status_interval_secs")]
    pub status_interval_secs: u64,
    /// Local listeners, each carried to one gateway URL.
    #[serde(rename = "tunnel")]
    pub tunnels: Vec<TunnelConfig>,
    #[serde(default)]
    pub device: DeviceSettings,
    #[serde(default)]
    pub tls: TlsSettings,
    #[serde(default)]
    pub proxy: ProxySettings,
    #[serde(default)]
    pub keepalive: KeepaliveSettings,
    #[serde(default)]
    pub reconnect: ReconnectSettings,
    #[serde(default)]
    pub resume: ResumeSettings,
    /// The file this came from.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Where the legacy client connects, e.g. `127.0.0.1:1883`.
    pub listen: SocketAddr,
    /// `wss://gw.example.com/tunnel/mqtt` (or `ws://` where TLS is done elsewhere).
    pub url: String,
    /// TLS server name to send and verify, when it differs from the URL's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// `Host` header, when it differs from the URL's authority.
    #[serde(default)]
    pub host: Option<String>,
    /// Local connections carried at once; more are closed at accept.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
}

/// Who the device is and how its requests look.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    /// Sent in `token_header` on every upgrade; never in the URL, which proxies log.
    #[serde(default)]
    pub token: Option<Secret>,
    /// `authorization` (the default) sends `Bearer <token>`; any other header sends the token.
    #[serde(default = "defaults::token_header")]
    pub token_header: String,
    /// A stable User-Agent: Cloudflare's bot checks challenge requests without one.
    #[serde(default = "defaults::user_agent")]
    pub user_agent: String,
    /// Extra request headers on the upgrade.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Trust only the CA certificates in this PEM file (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SPKI SHA-256 pins of the gateway key, `sha256//<base64>` (or 64 hex digits). With pins,
    /// the leaf's key is the identity: the chain is not checked unless `ca_file` is also set.
    #[serde(default)]
    pub pins: Vec<String>,
    /// Client certificate chain (PEM) presented to the gateway, with its key.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// `http://[user:pass@]host:port`. Default: `https_proxy` / `HTTPS_PROXY` (for `ws://`
    /// URLs, `http_proxy` only: upper-case `HTTP_PROXY` can be set by a CGI request).
    #[serde(default)]
    pub url: Option<String>,
    /// Basic auth; overrides the user info of the URL.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Hosts reached directly. Default: `no_proxy` / `NO_PROXY`.
    #[serde(default)]
    pub no_proxy: Option<Vec<String>>,
    /// Read the variables above from the environment at all.
    #[serde(default = "defaults::yes")]
    pub from_env: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSettings {
    /// WebSocket ping period: below Cloudflare's ~100 s and ALB's 60 s idle limits.
    #[serde(default = "defaults::ping_interval_secs")]
    pub ping_interval_secs: u64,
    /// Unanswered pings after which the path is declared dead and the local client closed.
    #[serde(default = "defaults::max_missed_pongs")]
    pub max_missed_pongs: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectSettings {
    /// Backoff floor: no retry comes sooner (a reconnect stampede is what a floor prevents).
    #[serde(default = "defaults::min_delay_ms")]
    pub min_delay_ms: u64,
    /// Backoff cap.
    #[serde(default = "defaults::max_delay_secs")]
    pub max_delay_secs: u64,
    /// A tunnel that lived this long resets the backoff; a shorter one counts as a failure.
    #[serde(default = "defaults::stable_after_secs")]
    pub stable_after_secs: u64,
    /// A new local connection that has no tunnel after this long is closed.
    #[serde(default = "defaults::open_timeout_secs")]
    pub open_timeout_secs: u64,
    /// Each step of one attempt (TCP, proxy, TLS, upgrade) must finish within this.
    #[serde(default = "defaults::step_timeout_secs")]
    pub step_timeout_secs: u64,
}

/// Tunnels that survive a dropped WebSocket: offered at every upgrade; a gateway that does
/// not grant it gives today's tunnels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeSettings {
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Replay buffer per tunnel: what was sent to the gateway and not yet acknowledged.
    #[serde(default = "defaults::resume_window_bytes")]
    pub window_bytes: usize,
    /// How long a dropped tunnel keeps trying to resume, the local connection held open.
    /// The gateway keeps its side as long as its own `resume.grace_secs`.
    #[serde(default = "defaults::resume_grace_secs")]
    pub grace_secs: u64,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings {
            enabled: true,
            window_bytes: defaults::resume_window_bytes(),
            grace_secs: defaults::resume_grace_secs(),
        }
    }
}

/// A secret string: `Debug` and `Display` print `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

mod defaults {
    pub fn status_interval_secs() -> u64 {
        60
    }
    pub fn resume_window_bytes() -> usize {
        crate::forward::resume::DEFAULT_WINDOW
    }
    pub fn resume_grace_secs() -> u64 {
        60
    }
    pub fn max_connections() -> usize {
        256
    }
    pub fn token_header() -> String {
        "authorization".into()
    }
    pub fn user_agent() -> String {
        concat!("portcullis-agent/", env!("CARGO_PKG_VERSION")).into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn ping_interval_secs() -> u64 {
        25
    }
    pub fn max_missed_pongs() -> u32 {
        2
    }
    pub fn min_delay_ms() -> u64 {
        1000
    }
    pub fn max_delay_secs() -> u64 {
        60
    }
    pub fn stable_after_secs() -> u64 {
        30
    }
    pub fn open_timeout_secs() -> u64 {
        15
    }
    pub fn step_timeout_secs() -> u64 {
        10
    }
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("every field has a default")
            }
        }
    )*};
}
default_from_serde!(
    DeviceSettings,
    ProxySettings,
    KeepaliveSettings,
    ReconnectSettings
);

impl AgentConfig {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::plain(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Self::parse(&text, path.parent())?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parse and validate config text. Relative file paths resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        let mut config: AgentConfig =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(&e))?;
        if let Some(dir) = base_dir {
            let fix = |p: &mut Option<PathBuf>| {
                if let Some(p) = p.as_mut().filter(|p| p.is_relative()) {
                    *p = dir.join(&*p);
                }
            };
            fix(&mut config.tls.ca_file);
            fix(&mut config.tls.client_cert);
            fix(&mut config.tls.client_key);
        }
        config
            .validate()
            .map_err(|(key, msg)| ConfigError::at_key(text, &key, msg))?;
        Ok(config)
    }

    /// Semantic checks. The error is `(key path, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.tunnels.is_empty() {
            return Err(("tunnel".into(), "at least one [[tunnel]] is needed".into()));
        }
        let mut binds = std::collections::HashSet::new();
        for (i, t) in self.tunnels.iter().enumerate() {
            let key = |k: &str| format!("tunnel[{i}].{k}");
            if t.listen.port() != 0 && !binds.insert(t.listen) {
                return Err((key("listen"), format!("{} is used twice", t.listen)));
            }
            super::target::GatewayUrl::parse(&t.url).map_err(|e| (key("url"), e))?;
            if let Some(sni) = &t.sni {
                if rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
                    return Err((key("sni"), format!("{sni:?} is not a DNS name or IP")));
                }
            }
            if let Some(h) = &t.host {
                if h.is_empty() || HeaderValue::from_str(h).is_err() {
                    return Err((key("host"), format!("{h:?} is not a valid Host header")));
                }
            }
            if t.max_connections == 0 {
                return Err((key("max_connections"), "must be at least 1".into()));
            }
        }
        self.validate_device()?;
        self.validate_tls()?;
        if let Some(url) = &self.proxy.url {
            ProxyUrl::parse(url).map_err(|e| ("proxy.url".to_string(), e))?;
        }
        if self.proxy.password.is_some()
            && self.proxy.username.is_none()
            && self.proxy.url.is_none()
        {
            return Err((
                "proxy.password".into(),
                "set proxy.username too (or put both in proxy.url)".into(),
            ));
        }
        let k = &self.keepalive;
        if !(1..=90).contains(&k.ping_interval_secs) {
            return Err((
                "keepalive.ping_interval_secs".into(),
                "must be between 1 and 90 (Cloudflare drops idle WebSockets at ~100 s)".into(),
            ));
        }
        if k.max_missed_pongs == 0 {
            return Err((
                "keepalive.max_missed_pongs".into(),
                "must be at least 1".into(),
            ));
        }
        let r = &self.reconnect;
        if r.min_delay_ms < 1000 {
            return Err((
                "reconnect.min_delay_ms".into(),
                "must be at least 1000: faster retries turn a gateway restart into a stampede"
                    .into(),
            ));
        }
        if r.max_delay_secs * 1000 < r.min_delay_ms {
            return Err((
                "reconnect.max_delay_secs".into(),
                "must be at least reconnect.min_delay_ms".into(),
            ));
        }
        for (name, v) in [
            ("stable_after_secs", r.stable_after_secs),
            ("open_timeout_secs", r.open_timeout_secs),
            ("step_timeout_secs", r.step_timeout_secs),
        ] {
            if v == 0 {
                return Err((format!("reconnect.{name}"), "must be at least 1".into()));
            }
        }
        let resume = &self.resume;
        if !(4096..=64 << 20).contains(&resume.window_bytes) {
            return Err((
                "resume.window_bytes".into(),
                "must be between 4096 and 67108864 (64 MiB)".into(),
            ));
        }
        if !(1..=3600).contains(&resume.grace_secs) {
            return Err((
                "resume.grace_secs".into(),
                "must be between 1 and 3600".into(),
            ));
        }
        Ok(())
    }

    fn validate_device(&self) -> Result<(), (String, String)> {
        let d = &self.device;
        if HeaderName::from_bytes(d.token_header.as_bytes()).is_err() {
            return Err((
                "device.token_header".into(),
                format!("{:?} is not a header name", d.token_header),
            ));
        }
        if let Some(t) = &d.token {
            if t.expose().is_empty() || HeaderValue::from_str(t.expose()).is_err() {
                return Err((
                    "device.token".into(),
                    "must be non-empty printable ASCII".into(),
                ));
            }
        }
        if d.user_agent.is_empty() || HeaderValue::from_str(&d.user_agent).is_err() {
            return Err((
                "device.user_agent".into(),
                "must be non-empty printable ASCII (Cloudflare challenges requests without one)"
                    .into(),
            ));
        }
        for (name, value) in &d.headers {
            let key = format!("device.headers.{name}");
            let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
                return Err((key, "not a header name".into()));
            };
            if RESERVED_HEADERS.contains(&h.as_str()) {
                return Err((
                    key,
                    "set by the agent itself (use tunnel.host for Host, device.user_agent, device.token)".into(),
                ));
            }
            if HeaderValue::from_str(value).is_err() {
                return Err((key, "value must be printable ASCII".into()));
            }
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), (String, String)> {
        let t = &self.tls;
        if let Some(ca) = &t.ca_file {
            super::tls::read_certs(ca).map_err(|e| ("tls.ca_file".to_string(), e))?;
        }
        for (i, p) in t.pins.iter().enumerate() {
            Pin::parse(p).map_err(|e| (format!("tls.pins[{i}]"), e))?;
        }
        match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => {
                super::tls::read_certs(c).map_err(|e| ("tls.client_cert".to_string(), e))?;
                super::tls::read_key(k).map_err(|e| ("tls.client_key".to_string(), e))?;
            }
            (Some(_), None) => {
                return Err(("tls.client_key".into(), "needed with client_cert".into()))
            }
            (None, Some(_)) => {
                return Err(("tls.client_cert".into(), "needed with client_key".into()))
            }
            (None, None) => {}
        }
        Ok(())
    }
}

/// Headers the agent writes itself; a custom header must not fight them.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "user-agent",
    "proxy-authorization",
];

impl KeepaliveSettings {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }
}

#[cfg(test)]
mod tests;
