//! MQTT as the gateway sees it from the server's chair: parse what a device sends (strictly,
//! because the gateway applies policy to it), parse what the broker answers (leniently, only
//! what the relay acts on), and encode the few packets the gateway sends on the broker's behalf.
//!
//! Everything that reads peer bytes returns an error and never panics; packets are delimited
//! beforehand by [`super::wire::packet_len`] or [`Framer`].

mod connect;
mod encode;
mod framer;
mod props;
mod subscribe;
#[cfg(test)]
mod tests;

pub use super::wire::{Version, WireError};
pub use encode::{ack, connack, disconnect, pingreq, publish_with_topic, AckKind};
pub use framer::Framer;
pub use subscribe::{suback, suback_id, suback_merged, subscribe_parts, SubscribeParts};

use super::wire::{take_str, take_u16, varint};
use props::take_props;

/// Reason codes (MQTT 5) and return codes (3.1.1, `V3_` prefix) the gateway sends.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    /// Success class: clients treat it as delivered (a "silent" discard).
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const MALFORMED: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// CONNACK only.
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    /// CONNACK only.
    pub const BANNED: u8 = 0x8A;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// DISCONNECT only.
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    /// 3.1.1 CONNACK "Identifier rejected".
    pub const V3_IDENTIFIER_REJECTED: u8 = 0x02;
    /// 3.1.1 CONNACK "Server unavailable".
    pub const V3_SERVER_UNAVAILABLE: u8 = 0x03;
    /// 3.1.1 CONNACK "Not authorized": 3.1.1 has no "banned", so this stands in for it.
    pub const V3_NOT_AUTHORIZED: u8 = 0x05;
    /// 3.1.1 SUBACK "Failure" (the only failure code 3.1.1 has).
    pub const V3_SUBSCRIBE_FAILURE: u8 = 0x80;
}

/// CONNECT as the gateway needs it. Level 3 ("MQIsdp", 3.1) and 4 → `V311`; 5 → `V5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    pub version: Version,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub keep_alive: u16,
    pub clean_start: bool,
    pub will: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    /// Empty when a v5 PUBLISH uses an alias already defined on the connection.
    pub topic: &'a str,
    /// Present (and non-zero) exactly when QoS > 0.
    pub packet_id: Option<u16>,
    /// Never `Some(0)`: a zero alias is rejected as malformed.
    pub topic_alias: Option<u16>,
    pub payload_len: usize,
    pub layout: PublishLayout,
}

/// Where the topic sits in the packet a [`Publish`] was parsed from, for [`publish_with_topic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLayout {
    /// Offset of the first byte after the topic string (packet id, properties, payload follow).
    topic_end: usize,
    /// Length of the parsed packet, to catch a layout applied to another packet.
    packet_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePacket<'a> {
    Connect(Connect<'a>),
    Publish(Publish<'a>),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe,
    Unsubscribe,
    PingReq,
    Disconnect,
    Auth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerPacket {
    ConnAck {
        code: u8,
        topic_alias_max: Option<u16>,
    },
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
    PingResp,
    Other,
}

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const UNSUBSCRIBE: u8 = 10;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// Topic Alias Maximum (CONNACK) and Topic Alias (PUBLISH) property identifiers.
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;

/// Parse one complete device→server packet (delimited by `wire::packet_len`). `version` is the
/// session's (from CONNECT; use `V311` before CONNECT — CONNECT parsing reads the level itself).
///
/// Checks what a server must before acting on a packet: reserved flag bits, QoS 3, DUP on
/// QoS 0, non-zero packet ids, topic names (UTF-8, no wildcards, no U+0000, empty only with an
/// alias), CONNECT protocol name/level and flags, and that every v5 property block walks to its
/// exact end. A packet type only a server sends (CONNACK, SUBACK, PINGRESP, ...) is malformed.
/// It does not check what only the broker can (session state, alias maxima, property values).
pub fn parse_device(packet: &[u8], version: Version) -> Result<DevicePacket<'_>, WireError> {
    let (first, body) = split_packet(packet)?;
    let (kind, flags) = (first >> 4, first & 0x0f);
    let bad = WireError::Malformed(name(kind));
    // PUBLISH flags carry DUP/QoS/RETAIN; three types have the fixed 0b0010; the rest 0.
    let reserved = match kind {
        PUBLISH => flags,
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != reserved {
        return Err(bad);
    }
    let v5 = version == Version::V5;
    let parsed = match kind {
        CONNECT => connect::parse(body).map(DevicePacket::Connect),
        PUBLISH => publish(flags, body, packet.len(), v5).map(DevicePacket::Publish),
        PUBACK => device_ack(body, v5).map(DevicePacket::PubAck),
        PUBREC => device_ack(body, v5).map(DevicePacket::PubRec),
        PUBREL => device_ack(body, v5).map(DevicePacket::PubRel),
        PUBCOMP => device_ack(body, v5).map(DevicePacket::PubComp),
        SUBSCRIBE => subscribe(body, v5).map(|()| DevicePacket::Subscribe),
        UNSUBSCRIBE => unsubscribe(body, v5).map(|()| DevicePacket::Unsubscribe),
        PINGREQ => body.is_empty().then_some(DevicePacket::PingReq),
        DISCONNECT if v5 => reason_and_props(body).map(|()| DevicePacket::Disconnect),
        DISCONNECT => body.is_empty().then_some(DevicePacket::Disconnect),
        AUTH if v5 => reason_and_props(body).map(|()| DevicePacket::Auth),
        _ => None,
    };
    parsed.ok_or(bad)
}

/// Parse one broker→device packet, only as far as the gateway needs: acks (for ordering),
/// PINGRESP (to swallow the ones answering injected pings) and CONNACK. Lenient: flags and
/// anything after what is read are ignored, and any other type is [`BrokerPacket::Other`].
pub fn parse_broker(packet: &[u8], version: Version) -> Result<BrokerPacket, WireError> {
    let (first, body) = split_packet(packet)?;
    let kind = first >> 4;
    let bad = WireError::Malformed(name(kind));
    let id = || take_u16(body).map(|(id, _)| id).ok_or(bad);
    Ok(match kind {
        CONNACK => {
            let [_session_present, code, props @ ..] = body else {
                return Err(bad);
            };
            // A v5 CONNACK without a property block is tolerated: it cannot set a maximum.
            let topic_alias_max = if version == Version::V5 && !props.is_empty() {
                let (props, _) = take_props(props).ok_or(bad)?;
                props.two_byte(TOPIC_ALIAS_MAXIMUM).ok_or(bad)?
            } else {
                None
            };
            BrokerPacket::ConnAck {
                code: *code,
                topic_alias_max,
            }
        }
        PUBACK => BrokerPacket::PubAck(id()?),
        PUBREC => BrokerPacket::PubRec(id()?),
        PUBCOMP => BrokerPacket::PubComp(id()?),
        PINGRESP => BrokerPacket::PingResp,
        _ => BrokerPacket::Other,
    })
}

/// The first byte and the body of a packet whose remaining length must match its size exactly.
fn split_packet(packet: &[u8]) -> Result<(u8, &[u8]), WireError> {
    let Some((&first, rest)) = packet.split_first() else {
        return Err(WireError::Malformed("empty"));
    };
    let Some((len, used)) = varint(rest)? else {
        return Err(WireError::RemainingLength);
    };
    match rest.get(used..) {
        Some(body) if body.len() == len => Ok((first, body)),
        _ => Err(WireError::Malformed(name(first >> 4))),
    }
}

fn publish(flags: u8, body: &[u8], packet_len: usize, v5: bool) -> Option<Publish<'_>> {
    let (dup, qos, retain) = (flags & 0x08 != 0, (flags >> 1) & 0x03, flags & 0x01 != 0);
    // DUP on QoS 0 is forbidden [MQTT-3.3.1-2]; mosquitto disconnects it as malformed too.
    if qos == 3 || (dup && qos == 0) {
        return None;
    }
    let (topic, rest) = take_text(body)?;
    if !topic_name_chars(topic) {
        return None;
    }
    let topic_end = packet_len - rest.len();
    let (packet_id, rest) = match qos {
        0 => (None, rest),
        _ => take_id(rest).map(|(id, rest)| (Some(id), rest))?,
    };
    let (topic_alias, payload) = if v5 {
        let (props, payload) = take_props(rest)?;
        (props.two_byte(TOPIC_ALIAS)?, payload)
    } else {
        (None, rest)
    };
    // Alias 0 is never valid [MQTT-3.3.2-8]; an empty topic needs an alias to stand for it.
    if topic_alias == Some(0) || (topic.is_empty() && topic_alias.is_none()) {
        return None;
    }
    Some(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        topic_alias,
        payload_len: payload.len(),
        layout: PublishLayout {
            topic_end,
            packet_len,
        },
    })
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP: the packet id, then (v5 only) an optional reason code and an
/// optional property block, each omitted only if everything after it is.
fn device_ack(body: &[u8], v5: bool) -> Option<u16> {
    let (id, rest) = take_id(body)?;
    let ok = if v5 {
        rest.split_first()
            .is_none_or(|(_reason, props)| props.is_empty() || whole_props(props))
    } else {
        rest.is_empty()
    };
    ok.then_some(id)
}

/// A v5 DISCONNECT or AUTH body: empty, a reason code, or a reason code and properties.
fn reason_and_props(body: &[u8]) -> Option<()> {
    match body.split_first() {
        None => Some(()),
        Some((_reason, props)) => (props.is_empty() || whole_props(props)).then_some(()),
    }
}

fn subscribe(body: &[u8], v5: bool) -> Option<()> {
    let mut rest = filters_start(body, v5)?;
    loop {
        let (filter, after) = take_text(rest)?;
        let (&options, after) = after.split_first()?;
        // 3.1.1: only the QoS bits; v5 adds no-local, retain-as-published, retain handling.
        let reserved = if v5 { 0xc0 } else { 0xfc };
        let bad = options & reserved != 0 || options & 0x03 == 3 || (options >> 4) & 0x03 == 3;
        if filter.is_empty() || bad {
            return None;
        }
        if after.is_empty() {
            return Some(());
        }
        rest = after;
    }
}

fn unsubscribe(body: &[u8], v5: bool) -> Option<()> {
    let mut rest = filters_start(body, v5)?;
    loop {
        let (filter, after) = take_text(rest)?;
        if filter.is_empty() {
            return None;
        }
        if after.is_empty() {
            return Some(());
        }
        rest = after;
    }
}

/// SUBSCRIBE/UNSUBSCRIBE: the packet id and (v5) properties, then at least one filter.
fn filters_start(body: &[u8], v5: bool) -> Option<&[u8]> {
    let (_, rest) = take_id(body)?;
    let rest = if v5 { take_props(rest)?.1 } else { rest };
    (!rest.is_empty()).then_some(rest)
}

/// A property block that is all of `bytes`.
fn whole_props(bytes: &[u8]) -> bool {
    take_props(bytes).is_some_and(|(_, rest)| rest.is_empty())
}

/// A packet identifier, which is never 0 ([MQTT-2.3.1-1] in 3.1.1, the same rule in 5).
fn take_id(bytes: &[u8]) -> Option<(u16, &[u8])> {
    take_u16(bytes).filter(|&(id, _)| id != 0)
}

/// An MQTT UTF-8 string: valid UTF-8 (so no surrogates) and no U+0000 ([MQTT-1.5.3-2] in
/// 3.1.1, [MQTT-1.5.4-2] in 5).
fn take_text(bytes: &[u8]) -> Option<(&str, &[u8])> {
    take_str(bytes).filter(|(s, _)| !s.contains('\0'))
}

/// The bytes after binary data (a two-byte length and that many bytes).
fn skip_binary(bytes: &[u8]) -> Option<&[u8]> {
    let (len, rest) = take_u16(bytes)?;
    rest.get(usize::from(len)..)
}

/// No wildcards in a topic name [MQTT-3.3.2-2] (U+0000 is already excluded by `take_text`).
fn topic_name_chars(topic: &str) -> bool {
    !topic.contains(['+', '#'])
}

fn name(kind: u8) -> &'static str {
    match kind {
        CONNECT => "CONNECT",
        CONNACK => "CONNACK",
        PUBLISH => "PUBLISH",
        PUBACK => "PUBACK",
        PUBREC => "PUBREC",
        PUBREL => "PUBREL",
        PUBCOMP => "PUBCOMP",
        SUBSCRIBE => "SUBSCRIBE",
        9 => "SUBACK",
        UNSUBSCRIBE => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        PINGREQ => "PINGREQ",
        PINGRESP => "PINGRESP",
        DISCONNECT => "DISCONNECT",
        AUTH => "AUTH",
        _ => "reserved-type",
    }
}
