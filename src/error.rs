//! Errors that record which side failed, and the one place that maps them to what a device sees.
//!
//! A gateway has to decide, for every failure, whose fault it was: a device that sent garbage, an
//! upstream that is down, or our own bug. That decides the WebSocket close code, the HTTP status,
//! the log level and (later) the metric. `Error` is opaque; callers branch on the `is_*()`
//! predicates, and `close_code()` / `http_status()` are the only mappings in the crate.

use std::fmt;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Device,
    Upstream,
    Internal,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Device => "device",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        })
    }
}

/// What went wrong, precisely enough to pick a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The agent-only build uses the few kinds of the relay.
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
pub(crate) enum Kind {
    /// The device broke the protocol (bad frame, text frame on /mqtt, bad PROXY header...).
    Protocol,
    /// An MQTT packet that does not parse.
    Malformed,
    /// An MQTT 5 topic alias that was never defined, or too many of them.
    BadAlias,
    /// The policy refused the device (CONNACK with a failure code).
    Refused,
    /// A connected device was banned and is being kicked.
    Kicked,
    /// A new connection with the same client ID took this one's place.
    TakenOver,
    /// A publish outside the class's permissions, where the class closes the connection.
    NotAuthorized,
    /// More unacknowledged packets than any client window allows.
    Overflow,
    /// The device closed cleanly (WebSocket Close, DISCONNECT, FIN).
    DeviceClosed,
    /// The device vanished without a close.
    Gone,
    /// The upstream closed its side.
    UpstreamClosed,
    /// The gateway is draining.
    Shutdown,
    /// A frame or message larger than the configured maximum.
    TooBig,
    /// The device stopped answering pings or sent nothing before a deadline.
    Timeout,
    /// No healthy upstream in the pool.
    NoUpstream,
    /// An established upstream connection failed.
    UpstreamIo,
}

pub struct Error {
    kind: Kind,
    side: Side,
    detail: Box<str>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: Kind, side: Side, detail: impl fmt::Display) -> Self {
        Error {
            kind,
            side,
            detail: detail.to_string().into_boxed_str(),
        }
    }

    pub(crate) fn device(kind: Kind, detail: impl fmt::Display) -> Self {
        Self::new(kind, Side::Device, detail)
    }

    pub(crate) fn upstream(kind: Kind, detail: impl fmt::Display) -> Self {
        Self::new(kind, Side::Upstream, detail)
    }

    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn is_device(&self) -> bool {
        self.side == Side::Device
    }

    pub fn is_upstream(&self) -> bool {
        self.side == Side::Upstream
    }

    pub fn is_too_big(&self) -> bool {
        self.kind == Kind::TooBig
    }

    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The WebSocket close code a device is sent for this error (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> CloseCode {
        match self.kind {
            Kind::Protocol | Kind::Malformed | Kind::BadAlias => CloseCode::Protocol,
            Kind::Refused
            | Kind::Kicked
            | Kind::Overflow
            | Kind::TakenOver
            | Kind::NotAuthorized => CloseCode::Policy,
            Kind::DeviceClosed | Kind::UpstreamClosed => CloseCode::Normal,
            Kind::Gone => CloseCode::Abnormal,
            Kind::Shutdown => CloseCode::Away,
            Kind::TooBig => CloseCode::Size,
            Kind::Timeout => CloseCode::Policy,
            // 1013 "try again later": the device should back off and reconnect.
            Kind::NoUpstream => CloseCode::Again,
            Kind::UpstreamIo => CloseCode::Error,
        }
    }

    /// The HTTP status for an error that happens before the WebSocket upgrade.
    pub fn http_status(&self) -> http::StatusCode {
        match self.kind {
            Kind::Protocol | Kind::Malformed | Kind::BadAlias | Kind::Gone | Kind::DeviceClosed => {
                http::StatusCode::BAD_REQUEST
            }
            Kind::Refused | Kind::Kicked | Kind::NotAuthorized => http::StatusCode::FORBIDDEN,
            Kind::TakenOver => http::StatusCode::CONFLICT,
            Kind::Overflow => http::StatusCode::TOO_MANY_REQUESTS,
            Kind::UpstreamClosed => http::StatusCode::BAD_GATEWAY,
            Kind::Shutdown => http::StatusCode::SERVICE_UNAVAILABLE,
            Kind::TooBig => http::StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Timeout => http::StatusCode::REQUEST_TIMEOUT,
            Kind::NoUpstream => http::StatusCode::SERVICE_UNAVAILABLE,
            Kind::UpstreamIo => http::StatusCode::BAD_GATEWAY,
        }
    }
}

// === MQTT: the codes a device sees, all in this one place ===

#[cfg(feature = "gateway")]
impl Kind {
    pub(crate) fn from_wire(e: &crate::mqtt::wire::WireError) -> Kind {
        match e {
            crate::mqtt::wire::WireError::TooBig(_) => Kind::TooBig,
            _ => Kind::Malformed,
        }
    }
}

#[cfg(feature = "gateway")]
impl Error {
    /// The MQTT 5 DISCONNECT reason a device is sent for this error, where one applies.
    pub fn mqtt_reason(&self) -> Option<u8> {
        use crate::mqtt::server::reason;
        Some(match self.kind {
            Kind::Malformed => reason::MALFORMED,
            Kind::Protocol => reason::PROTOCOL_ERROR,
            Kind::BadAlias => reason::TOPIC_ALIAS_INVALID,
            Kind::TooBig => reason::PACKET_TOO_LARGE,
            Kind::Timeout => reason::KEEP_ALIVE_TIMEOUT,
            Kind::Kicked => reason::ADMINISTRATIVE_ACTION,
            Kind::TakenOver => reason::SESSION_TAKEN_OVER,
            Kind::NotAuthorized => reason::NOT_AUTHORIZED,
            Kind::Overflow => reason::RECEIVE_MAXIMUM_EXCEEDED,
            Kind::Shutdown => reason::SERVER_SHUTTING_DOWN,
            Kind::NoUpstream | Kind::UpstreamIo | Kind::UpstreamClosed => {
                reason::SERVER_UNAVAILABLE
            }
            Kind::Refused | Kind::DeviceClosed | Kind::Gone => return None,
        })
    }
}

/// Why an HTTP push upload or check-in gets no delivery: the one mapping to HTTP statuses.
#[cfg(feature = "gateway")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRefusal {
    /// Neither the path nor the configured header names a serial, or it is not one.
    NoSerial,
    /// The route requires a transaction id and none came (the header's name).
    NoTransaction(String),
    /// The transaction id is not a short visible-ASCII string.
    BadTransaction,
    /// `Content-Length` or the body itself is over `push.max_body_size`.
    TooLarge,
    /// The serial (or its IP) is banned: for this many seconds (`None`: until lifted).
    Banned(Option<u64>),
    /// Over the serial's rate, or reconnecting too fast: retry after this many seconds.
    RateLimited(u64),
    /// Matched no device rule and unknown devices are refused.
    UnknownDevice,
    /// The same transaction is in flight: retry after this many seconds.
    InFlight(u64),
    /// The same transaction id came with a different body.
    BodyMismatch,
    /// The device's body broke off or stalled.
    BodyBroken,
    /// No collector answered (nothing recorded: the upload stays retryable).
    CollectorFailed,
    /// The collector answered 5xx (nothing recorded: retryable).
    CollectorError(u16),
    /// Only POST uploads, GET check-ins.
    Method(&'static str),
    /// `[push] max_devices` devices are known already: a new one must wait.
    TooManyDevices,
}

#[cfg(feature = "gateway")]
impl PushRefusal {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            PushRefusal::NoSerial | PushRefusal::NoTransaction(_) | PushRefusal::BadTransaction => {
                S::BAD_REQUEST
            }
            PushRefusal::TooLarge => S::PAYLOAD_TOO_LARGE,
            PushRefusal::Banned(_) | PushRefusal::UnknownDevice => S::FORBIDDEN,
            PushRefusal::RateLimited(_) => S::TOO_MANY_REQUESTS,
            PushRefusal::InFlight(_) => S::CONFLICT,
            PushRefusal::BodyMismatch => S::UNPROCESSABLE_ENTITY,
            PushRefusal::BodyBroken => S::BAD_REQUEST,
            PushRefusal::CollectorFailed => S::BAD_GATEWAY,
            PushRefusal::CollectorError(_) => S::BAD_GATEWAY,
            PushRefusal::Method(_) => S::METHOD_NOT_ALLOWED,
            PushRefusal::TooManyDevices => S::SERVICE_UNAVAILABLE,
        }
    }

    /// `Retry-After` seconds, where the device should come back.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            PushRefusal::Banned(secs) => *secs,
            PushRefusal::RateLimited(s) | PushRefusal::InFlight(s) => Some(*s),
            PushRefusal::CollectorFailed | PushRefusal::CollectorError(_) => Some(5),
            PushRefusal::TooManyDevices => Some(60),
            _ => None,
        }
    }

    /// The short word metrics count it under.
    pub fn label(&self) -> &'static str {
        match self {
            PushRefusal::NoSerial => "no_serial",
            PushRefusal::NoTransaction(_) | PushRefusal::BadTransaction => "bad_transaction",
            PushRefusal::TooLarge => "too_large",
            PushRefusal::Banned(_) => "banned",
            PushRefusal::RateLimited(_) => "rate_limited",
            PushRefusal::UnknownDevice => "unknown_device",
            PushRefusal::InFlight(_) => "conflict",
            PushRefusal::BodyMismatch => "mismatch",
            PushRefusal::BodyBroken => "body_broken",
            PushRefusal::CollectorFailed | PushRefusal::CollectorError(_) => "collector_failed",
            PushRefusal::Method(_) => "method",
            PushRefusal::TooManyDevices => "too_many_devices",
        }
    }

    /// A device the policy refused at admission.
    pub fn from_policy(r: &crate::policy::Refusal) -> PushRefusal {
        use crate::policy::Refusal;
        match r {
            Refusal::Banned(ban) => PushRefusal::banned(ban),
            Refusal::UnknownDevice => PushRefusal::UnknownDevice,
            Refusal::ConnectRate | Refusal::TooManyConnections => PushRefusal::RateLimited(1),
        }
    }

    /// Banned: `Retry-After` is the time until the ban ends (none for a ban until lifted).
    pub fn banned(ban: &crate::policy::Ban) -> PushRefusal {
        let left = ban.expires.map(|until| {
            let left = until.duration_since(std::time::SystemTime::now());
            left.unwrap_or_default().as_secs().max(1)
        });
        PushRefusal::Banned(left)
    }
}

#[cfg(feature = "gateway")]
impl fmt::Display for PushRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushRefusal::NoSerial => f.write_str(
                "no serial: POST /push/{serial} (letters, digits, '.', '_', '-', ':'; at most 128)",
            ),
            PushRefusal::NoTransaction(h) => write!(f, "no transaction id: send the {h} header"),
            PushRefusal::BadTransaction => {
                f.write_str("the transaction id must be 1 to 255 visible ASCII characters")
            }
            PushRefusal::TooLarge => f.write_str("body over push.max_body_size"),
            PushRefusal::Banned(_) => f.write_str("banned"),
            PushRefusal::RateLimited(_) => f.write_str("too many uploads: slow down"),
            PushRefusal::UnknownDevice => f.write_str("unknown device"),
            PushRefusal::InFlight(_) => {
                f.write_str("this transaction is being delivered: retry later")
            }
            PushRefusal::BodyMismatch => {
                f.write_str("this transaction id came before with a different body")
            }
            PushRefusal::BodyBroken => f.write_str("the body broke off or stalled"),
            PushRefusal::CollectorFailed => f.write_str(
                "no collector could take the upload: retry later (nothing was recorded)",
            ),
            PushRefusal::CollectorError(s) => write!(
                f,
                "the collector answered {s}: retry later (nothing was recorded)"
            ),
            PushRefusal::Method(m) => write!(f, "this endpoint takes {m}"),
            PushRefusal::TooManyDevices => {
                f.write_str("too many push devices at once: retry later")
            }
        }
    }
}

/// CONNACK code for a CONNECT the policy refused. MQTT 3.1.1 has no "banned": 0x05, as EMQX.
#[cfg(feature = "gateway")]
pub fn connack_for_refusal(
    refusal: &crate::policy::Refusal,
    version: crate::mqtt::wire::Version,
) -> u8 {
    use crate::mqtt::server::reason;
    use crate::policy::Refusal;
    let v5 = version == crate::mqtt::wire::Version::V5;
    match (refusal, v5) {
        (Refusal::Banned(_), true) => reason::BANNED,
        (Refusal::UnknownDevice, true) => reason::NOT_AUTHORIZED,
        (Refusal::ConnectRate, true) => reason::CONNECTION_RATE_EXCEEDED,
        (Refusal::TooManyConnections, true) => reason::QUOTA_EXCEEDED,
        (Refusal::Banned(_) | Refusal::UnknownDevice, false) => reason::V3_NOT_AUTHORIZED,
        (Refusal::ConnectRate | Refusal::TooManyConnections, false) => {
            reason::V3_SERVER_UNAVAILABLE
        }
    }
}

/// An upgrade refused by authentication: its status and `WWW-Authenticate` challenge
/// (RFC 9110 §11.6.1; RFC 6750 §3 for the Bearer errors). 401: prove who you are (again);
/// 403: proven, and not let in here.
#[cfg(feature = "gateway")]
pub fn auth_refusal(refusal: &crate::auth::Refusal) -> (http::StatusCode, Option<String>) {
    use crate::auth::Refusal as R;
    use crate::config::AuthMode;
    let realm = r#"realm="portcullis""#;
    let challenge = match refusal {
        R::Missing {
            mode: AuthMode::Mtls,
        }
        | R::InvalidCertificate(_) => format!("ClientCertificate {realm}"),
        R::Missing { .. } => format!("Bearer {realm}"),
        R::InvalidToken(_) => {
            format!(r#"Bearer {realm}, error="invalid_token", error_description="token rejected""#)
        }
        R::Ambiguous => format!(r#"Bearer {realm}, error="invalid_request""#),
        R::Expired => {
            format!(r#"Bearer {realm}, error="invalid_token", error_description="token expired""#)
        }
        R::NotYetValid => format!(
            r#"Bearer {realm}, error="invalid_token", error_description="token not valid yet""#
        ),
        R::NotForRoute | R::Revoked(_) => return (http::StatusCode::FORBIDDEN, None),
    };
    (http::StatusCode::UNAUTHORIZED, Some(challenge))
}

/// CONNACK code for a CONNECT whose client ID is not the identity the device proved (or from
/// a device that proved none where the route asks for it).
#[cfg(feature = "gateway")]
pub fn connack_not_authorized(version: crate::mqtt::wire::Version) -> u8 {
    use crate::mqtt::server::reason;
    match version {
        crate::mqtt::wire::Version::V5 => reason::NOT_AUTHORIZED,
        crate::mqtt::wire::Version::V311 => reason::V3_NOT_AUTHORIZED,
    }
}

/// CONNACK code when no broker could be reached for the device.
#[cfg(feature = "gateway")]
pub fn connack_unavailable(version: crate::mqtt::wire::Version) -> u8 {
    use crate::mqtt::server::reason;
    match version {
        crate::mqtt::wire::Version::V5 => reason::SERVER_UNAVAILABLE,
        crate::mqtt::wire::Version::V311 => reason::V3_SERVER_UNAVAILABLE,
    }
}

/// CONNACK code for an empty client ID, which identifies no device.
#[cfg(feature = "gateway")]
pub fn connack_for_empty_client_id(version: crate::mqtt::wire::Version) -> u8 {
    use crate::mqtt::server::reason;
    match version {
        crate::mqtt::wire::Version::V5 => reason::CLIENT_IDENTIFIER_NOT_VALID,
        crate::mqtt::wire::Version::V311 => reason::V3_IDENTIFIER_REJECTED,
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}, {}: {})", self.kind, self.side, self.detail)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            // Endings that are nobody's fault read as what happened, not as an error.
            Kind::Shutdown | Kind::DeviceClosed | Kind::UpstreamClosed => f.write_str(&self.detail),
            _ => write!(f, "{} error: {}", self.side, self.detail),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_a_close_code_and_status() {
        let cases = [
            (Kind::Protocol, 1002, 400),
            (Kind::TooBig, 1009, 413),
            (Kind::Timeout, 1008, 408),
            (Kind::NoUpstream, 1013, 503),
            (Kind::UpstreamIo, 1011, 502),
        ];
        for (kind, close, status) in cases {
            let e = Error::new(kind, Side::Internal, "x");
            assert_eq!(u16::from(e.close_code()), close, "{kind:?}");
            assert_eq!(e.http_status().as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn side_is_recorded() {
        assert!(Error::device(Kind::Protocol, "x").is_device());
        assert!(Error::upstream(Kind::NoUpstream, "x").is_upstream());
    }
}
