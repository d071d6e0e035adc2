//! What goes into the policy and what comes out of it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::bans::{Ban, Subject};

/// Who is connecting, as far as the gateway knows at CONNECT (or at an HTTP upload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The device's name: its MQTT client ID, or its serial for HTTP push (see `named`). Its
    /// class, counters and rate limits are keyed by it.
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    /// The real client IP (after trusted-proxy resolution).
    pub ip: IpAddr,
    pub named: Naming,
}

/// What no MQTT client ID can start with (a NUL), so that serials and client IDs never meet.
const SERIAL_PREFIX: &str = "\u{0}serial:";

/// The policy's state key for a push device's serial (see [`Identity::state_key`]).
pub fn serial_key(serial: &str) -> Arc<str> {
    format!("{SERIAL_PREFIX}{serial}").into()
}

/// The serial a [`serial_key`] names; `None` for a client ID.
pub fn serial_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(SERIAL_PREFIX)
}

/// What kind of name `Identity::client_id` is, so that bans and strikes name it as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// An MQTT client ID (bans `as = clientid`).
    ClientId,
    /// An HTTP push device's serial (bans `as = serial`).
    Serial,
}

impl Identity {
    /// An HTTP push device: named by its serial, no username.
    pub fn serial(serial: Arc<str>, ip: IpAddr) -> Identity {
        Identity {
            client_id: serial,
            username: None,
            ip,
            named: Naming::Serial,
        }
    }

    /// The name the policy keeps this device's state under (counters, rate limiters, connect
    /// rate, strikes). A serial gets its own namespace, starting with a NUL that no MQTT
    /// client ID can contain (MQTT strings exclude U+0000), so an HTTP device naming itself
    /// after an MQTT client ID shares none of its state or connection slots.
    pub fn state_key(&self) -> Arc<str> {
        match self.named {
            Naming::ClientId => Arc::clone(&self.client_id),
            Naming::Serial => serial_key(&self.client_id),
        }
    }

    /// The ban subject that names this device itself (the first in the seed's order).
    pub fn device_subject(&self) -> Subject {
        match self.named {
            Naming::ClientId => Subject::ClientId(Arc::clone(&self.client_id)),
            Naming::Serial => Subject::Serial(Arc::clone(&self.client_id)),
        }
    }
}

/// Outcome of the accept-stage check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Ok,
    Banned(Ban),
    /// Too many connection attempts from this address; refuse before TLS.
    RateLimited,
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Banned(Ban),
    /// Matched no device rule and `unknown_devices = "refuse"`.
    UnknownDevice,
    /// The class's `max_connections` for this client ID are all in use.
    TooManyConnections,
    /// Reconnecting faster than `per_client_per_minute` (flapping).
    ConnectRate,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Banned(ban) => write!(f, "banned ({}: {})", ban.subject, ban.reason),
            Refusal::UnknownDevice => f.write_str("unknown device"),
            Refusal::TooManyConnections => f.write_str("too many connections for this client ID"),
            Refusal::ConnectRate => f.write_str("reconnecting too fast"),
        }
    }
}

/// One device PUBLISH, as the relay saw it.
#[derive(Debug, Clone, Copy)]
pub struct PublishFacts<'a> {
    /// The full topic (the relay re-expands MQTT 5 topic aliases before asking).
    pub topic: &'a str,
    pub qos: u8,
    /// Bytes the publish occupies on the wire (what the byte rate counts).
    pub len: usize,
    /// DUP=1 for a packet id the device has not had acknowledged yet.
    pub retransmit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Δ < T − E: a strike.
    Early,
    /// Δ > T + E: not a strike.
    Late,
    /// Over the class's messages/s: a strike.
    MessageRate,
    /// Over the class's bytes/s (or one publish larger than the byte burst): a strike.
    ByteRate,
    /// A topic outside the class's `publish_topics`: a strike.
    NotAuthorized,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Early => "early (out of rhythm)",
            Reason::Late => "late (out of rhythm)",
            Reason::MessageRate => "over the message rate",
            Reason::ByteRate => "over the byte rate",
            Reason::NotAuthorized => "outside the topic permissions",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Acknowledge to the device, do not forward.
    Discard(Reason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// A ban this decision just issued; the gateway kicks whoever it covers. When one strike
    /// escalates to several bans at once (client ID, then its username or IP), this is the
    /// widest of them, since kicking its subject also kicks the narrower ones.
    pub ban: Option<Ban>,
}

impl Decision {
    pub(crate) const FORWARD: Decision = Decision {
        verdict: Verdict::Forward,
        ban: None,
    };

    pub(crate) fn discard(reason: Reason, ban: Option<Ban>) -> Decision {
        Decision {
            verdict: Verdict::Discard(reason),
            ban,
        }
    }
}
