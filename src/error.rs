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
pub(crate) enum Kind {
    /// The device broke the protocol (bad frame, text frame on /mqtt, bad PROXY header...).
    Protocol,
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
            Kind::Protocol => CloseCode::Protocol,
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
            Kind::Protocol => http::StatusCode::BAD_REQUEST,
            Kind::TooBig => http::StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Timeout => http::StatusCode::REQUEST_TIMEOUT,
            Kind::NoUpstream => http::StatusCode::SERVICE_UNAVAILABLE,
            Kind::UpstreamIo => http::StatusCode::BAD_GATEWAY,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}, {}: {})", self.kind, self.side, self.detail)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.side, self.detail)
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
