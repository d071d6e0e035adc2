//! WebSocket upgrades: the strict RFC 6455 checks, the route a device may reach, the 101.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::reply::{text, Body};
use super::{Caller, Router};
use crate::forward::probe::{ProbeRefusal, ProbeTicket};
use crate::identify::IpSource;
use crate::probe;

/// Where an accepted WebSocket goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// MQTT over WebSocket on `/mqtt`, to the listener's MQTT route.
    Mqtt { route: Arc<str> },
    /// Raw bytes on `/tunnel/{route}`.
    Tunnel { route: Arc<str> },
    /// The gateway's own echo for `portcullis probe`.
    Probe,
}

impl Target {
    pub fn route(&self) -> &str {
        match self {
            Target::Mqtt { route } | Target::Tunnel { route } => route,
            Target::Probe => "probe",
        }
    }
}

pub(super) struct Upgrade {
    pub on_upgrade: OnUpgrade,
    pub target: Target,
    pub client_ip: IpAddr,
    pub ip_source: IpSource,
    pub probe: Option<ProbeTicket>,
    pub device: Option<crate::auth::Authenticated>,
    pub resume: Option<crate::forward::resume::lot::Resumption>,
}

/// MQTT over WebSocket subprotocols we speak, in the order we prefer them.
const MQTT_SUBPROTOCOLS: [&str; 3] = ["mqtt", "mqttv3.1", "mqttv5"];

/// A WebSocket upgrade on `/mqtt`, `/tunnel/{route}` or `/probe`: the 101 and what to hand
/// over once hyper lets go of the socket, or the refusal.
// The refusal is the response itself, sent at once by the caller, never carried up a stack.
#[allow(clippy::result_large_err)]
pub(super) fn accept(
    mut req: Request<Incoming>,
    router: &Router,
) -> Result<(Response<Body>, Upgrade), Response<Body>> {
    let inputs = &router.inputs;
    let listener = &router.listener;
    let target = match req.uri().path() {
        "/mqtt" => match inputs.routes.contains_key(&listener.mqtt_route) {
            true => Target::Mqtt {
                route: listener.mqtt_route.as_str().into(),
            },
            false => {
                return Err(text(
                    StatusCode::NOT_FOUND,
                    "no MQTT route is configured here\n",
                ))
            }
        },
        probe::PATH if inputs.probe.is_some() => Target::Probe,
        p => match p.strip_prefix("/tunnel/") {
            // Only names from the config: a device can never name a host or a port.
            Some(name) if inputs.routes.get(name).is_some_and(|p| p.carries_streams()) => {
                Target::Tunnel { route: name.into() }
            }
            Some(_) => return Err(text(StatusCode::NOT_FOUND, "unknown tunnel route\n")),
            None => return Err(text(StatusCode::NOT_FOUND, "not found\n")),
        },
    };

    let headers = req.headers();
    if req.method() != Method::GET {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket endpoints take GET\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Err(r);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(text(StatusCode::BAD_REQUEST, probe::NO_UPGRADE));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade needs Connection: Upgrade\n",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is supported\n",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(r);
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| valid_key(k.as_bytes()))
    else {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "missing or malformed Sec-WebSocket-Key\n",
        ));
    };
    let subprotocol = match &target {
        Target::Mqtt { .. } => choose_mqtt_subprotocol(headers).map_err(|()| {
            text(
                StatusCode::BAD_REQUEST,
                "MQTT over WebSocket: offer the subprotocol mqtt (or mqttv3.1, mqttv5)\n",
            )
        })?,
        // The probe checks that the path passes the subprotocol both ways, as /mqtt needs.
        Target::Probe => choose_mqtt_subprotocol(headers).unwrap_or(None),
        Target::Tunnel { .. } => None,
    };

    // Behind a trusted proxy the client was unknown at accept: judge its IP now.
    let (caller, believed) = router.caller(&req);
    if believed && !(inputs.admit)(caller.ip) {
        return Err(text(StatusCode::FORBIDDEN, BANNED));
    }
    // Who the device is, where its route asks: before any upstream exists.
    let device = authenticate(headers, &target, (caller, believed), router)?;
    let lot = inputs.resume.as_ref();
    let (resume, resume_answer) =
        match super::resume::negotiate(headers, &target, device.as_ref(), lot)? {
            Some((resume, answer)) => (Some(resume), answer),
            None => (None, Vec::new()),
        };
    let probe = match (&target, &inputs.probe) {
        (Target::Probe, Some(gate)) => match gate.admit() {
            Ok(slot) => Some(ProbeTicket {
                slot,
                hello: probe_hello(headers, caller, router),
            }),
            Err(refusal) => return Err(probe_refused(refusal)),
        },
        _ => None,
    };
    let mut response = Response::new(super::reply::full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(probe::MARKER_HEADER, HeaderValue::from_static("gateway"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    for (name, value) in resume_answer {
        h.insert(name, value);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    Ok((
        response,
        Upgrade {
            on_upgrade,
            target,
            client_ip: caller.ip,
            ip_source: caller.ip_source,
            probe,
            device,
            resume,
        },
    ))
}

/// The identity the device proves, where the listener or route asks for one; a refusal is
/// the answer to send (401 with a challenge, or 403), counted and told to the policy.
#[allow(clippy::result_large_err)]
fn authenticate(
    headers: &HeaderMap,
    target: &Target,
    (caller, believed): (Caller, bool),
    router: &Router,
) -> Result<Option<crate::auth::Authenticated>, Response<Body>> {
    let (Some(gate), false) = (&router.inputs.auth, *target == Target::Probe) else {
        return Ok(None);
    };
    let listener = &router.listener;
    let mode = gate.authenticator.mode(listener.auth(), target.route());
    let presented = crate::auth::Presented {
        headers,
        tls_cert: router.client_cert.as_ref(),
        peer: router.origin.addr,
    };
    let now = crate::auth::now_secs();
    let refusal =
        match gate
            .authenticator
            .authenticate(mode, target.route(), &presented, now, &*gate.revoked)
        {
            Ok(device) => return Ok(device),
            Err(r) => r,
        };
    // A proxy's own address (its client unknown) is not struck: it carries everyone.
    let proxy_itself = !believed && listener.is_proxy_peer(router.origin.addr);
    (gate.refused)((!proxy_itself).then_some(caller.ip), &refusal);
    let (status, challenge) = crate::error::auth_refusal(&refusal);
    let mut r = text(status, refusal.public());
    if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Err(r)
}

pub(super) const BANNED: &str = "refused: banned or connecting too often\n";

/// What the gateway sees of this connection, for the probe to compare with what it sent.
pub(super) fn probe_hello(headers: &HeaderMap, caller: Caller, router: &Router) -> probe::Hello {
    let settings = router.inputs.probe.as_ref().map(|g| &g.settings);
    probe::Hello {
        client_ip: caller.ip.to_string(),
        ip_source: match caller.ip_source {
            IpSource::Peer => "peer".into(),
            IpSource::ProxyProtocol => "proxy-protocol".into(),
            IpSource::CfConnectingIp => "header cf-connecting-ip".into(),
            IpSource::XForwardedFor => "header x-forwarded-for".into(),
            IpSource::XRealIp => "header x-real-ip".into(),
        },
        tls_at_gateway: caller.tls,
        headers: headers
            .iter()
            .map(|(name, value)| {
                let name = name.as_str().to_string();
                let value = if probe::is_secret_header(&name) {
                    "***".to_string()
                } else {
                    String::from_utf8_lossy(value.as_bytes())
                        .chars()
                        .take(200)
                        .collect()
                };
                (name, value)
            })
            .take(100)
            .collect(),
        ping_interval_secs: router.inputs.websocket.ping_interval_secs,
        max_message_size: settings.map_or(0, |s| s.max_message_size),
        max_body_size: settings.map_or(0, |s| s.max_body_size),
        max_session_secs: settings.map_or(0, |s| s.max_session_secs),
    }
}

pub(super) fn probe_refused(refusal: ProbeRefusal) -> Response<Body> {
    match refusal {
        ProbeRefusal::RateLimited => {
            let mut r = text(
                StatusCode::TOO_MANY_REQUESTS,
                "probe: too many probe sessions this minute, try again shortly\n",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            r
        }
        ProbeRefusal::Busy => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "probe: too many probe sessions open, try again shortly\n",
        ),
    }
}

/// Does a comma-separated header contain `token` (case-insensitive)?
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// RFC 6455 §4.1: the key is 16 random bytes, base64-encoded: 24 characters ending in "==".
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// `Ok(None)`: the client offered no subprotocol (older clients); we answer without one.
/// `Err`: it offered some, none of them MQTT.
fn choose_mqtt_subprotocol(headers: &HeaderMap) -> Result<Option<&'static str>, ()> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    MQTT_SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
        .map(|p| Some(*p))
        .ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_validation() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZ!=="));
        assert!(!valid_key(b""));
    }

    #[test]
    fn subprotocol_choice_prefers_mqtt() {
        let mut h = HeaderMap::new();
        assert_eq!(choose_mqtt_subprotocol(&h), Ok(None));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mqttv3.1, mqtt"),
        );
        assert_eq!(choose_mqtt_subprotocol(&h), Ok(Some("mqtt")));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("MQTTv5"),
        );
        assert_eq!(choose_mqtt_subprotocol(&h), Ok(Some("mqttv5")));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat"),
        );
        assert_eq!(choose_mqtt_subprotocol(&h), Err(()));
    }

    /// Fuzz target: the upgrade's header checks on any bytes. A key accepted is 24 base64
    /// characters ending `==`; a subprotocol chosen is one we speak and one the client offered.
    #[test]
    fn fuzz_upgrade_header_checks() {
        bolero::check!()
            .with_type::<(Vec<u8>, String)>()
            .for_each(|(key, offered)| {
                if valid_key(key) {
                    assert_eq!(key.len(), 24);
                    assert!(key.ends_with(b"=="));
                }
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(offered) {
                    h.insert(header::SEC_WEBSOCKET_PROTOCOL, v.clone());
                    h.insert(header::CONNECTION, v);
                }
                if let Ok(Some(p)) = choose_mqtt_subprotocol(&h) {
                    assert!(MQTT_SUBPROTOCOLS.contains(&p));
                    assert!(offered
                        .to_ascii_lowercase()
                        .contains(&p.to_ascii_lowercase()));
                }
                let _ = has_token(&h, header::CONNECTION, "upgrade");
            });
    }

    #[test]
    fn connection_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::UPGRADE, "websocket"));
    }
}
