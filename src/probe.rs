//! What `portcullis probe` and the gateway's `/probe` endpoint say to each other.
//!
//! The probe walks the path from a device's network to the gateway and needs the gateway's view
//! of the same connection: which request headers arrived (so it can tell what the hops added or
//! stripped), which client IP the gateway believes, whether TLS reached the gateway or ended in
//! front of it, and the gateway's ping interval (to compare with the path's idle cut). The
//! gateway sends that once, as the first (text) message of a `/probe` WebSocket, then echoes.

use serde::{Deserialize, Serialize};

/// The endpoint, on every WebSocket listener.
pub const PATH: &str = "/probe";

/// A response header the gateway puts on every HTTP answer, so that a client can tell an answer
/// of the gateway (perhaps relayed by a proxy, which rewrites `Server`) from one a hop made up.
pub const MARKER_HEADER: &str = "x-portcullis";

/// The gateway's answer (400) to a GET on a WebSocket path without `Upgrade: websocket`. A
/// client that sees it from the gateway knows a hop in front dropped the header.
pub const NO_UPGRADE: &str =
    "this is a WebSocket endpoint: send Upgrade: websocket (a proxy on the way may have dropped it)\n";

/// The probe's subprotocol offer; the gateway echoes `mqtt`, as it does on `/mqtt`, so the probe
/// sees whether the path passes `Sec-WebSocket-Protocol` both ways.
pub const SUBPROTOCOL: &str = "mqtt";

/// The gateway's first message on a `/probe` WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client IP the gateway believes for this connection.
    pub client_ip: String,
    /// Where it came from: `peer`, `proxy-protocol`, or `header <name>`.
    pub ip_source: String,
    /// Did TLS end at the gateway (`true`) or in front of it?
    pub tls_at_gateway: bool,
    /// The request headers as the gateway received them (names lower-case; credentials and
    /// cookies shown as `***`).
    pub headers: Vec<(String, String)>,
    /// The gateway's WebSocket ping interval on device connections.
    pub ping_interval_secs: u64,
    /// The largest message `/probe` echoes.
    pub max_message_size: usize,
    /// The largest body `POST /probe` counts.
    pub max_body_size: usize,
    /// The gateway ends a probe session after this long.
    pub max_session_secs: u64,
}

/// The gateway's answer to `POST /probe`: how much arrived, and its view of the request (which
/// the probe needs most when the WebSocket upgrade is what the path breaks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyReceipt {
    pub received: usize,
    pub view: Hello,
}

/// Headers whose value is never echoed back: `/probe` is open to the internet, and hops add
/// credentials of their own (identity-aware proxies' JWTs, forwarded client certificates).
/// Judged by name, generously: a masked harmless header costs nothing.
pub fn is_secret_header(name: &str) -> bool {
    const WORDS: [&str; 12] = [
        "auth",
        "cookie",
        "token",
        "secret",
        "key",
        "jwt",
        "assertion",
        "oidc",
        "session",
        "cert",
        "signature",
        "password",
    ];
    WORDS.iter().any(|w| name.contains(w))
}
