//! Encoders for the packets a client sends and a decoder for the ones it receives, MQTT 3.1.1
//! and 5. The encoders take our own inputs; `packet_len` and `parse` take the peer's bytes and
//! return errors, never panic.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed remaining length")]
    RemainingLength,
    #[error("packet of {0} bytes exceeds the limit")]
    TooBig(usize),
    #[error("malformed {0} packet")]
    Malformed(&'static str),
}

/// What a client receives. Payload and topic borrow from the packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    ConnAck {
        code: u8,
    },
    Publish {
        topic: &'a str,
        qos: u8,
        packet_id: Option<u16>,
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
    },
    PubRec {
        packet_id: u16,
    },
    PubComp {
        packet_id: u16,
    },
    SubAck {
        packet_id: u16,
    },
    PingResp,
    /// `reason` is `None` in 3.1.1; in 5 an omitted reason code means 0 (normal).
    Disconnect {
        reason: Option<u8>,
    },
    /// Anything else (including packets only a server should receive).
    Other {
        packet_type: u8,
    },
}

/// The largest remaining length four varint bytes can express (256 MiB - 1).
const MAX_REMAINING: usize = 268_435_455;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

// === encoders ===
//
// Each computes its remaining length up front so the packet is built in one allocation.
// They panic only on caller bugs: a string over 65,535 bytes, QoS over 2, a packet over 256 MiB.

/// CONNECT with clean session (3.1.1) / clean start (5), no will, no credentials.
pub fn connect(client_id: &str, keep_alive_secs: u16, version: Version) -> Vec<u8> {
    connect_packet(client_id, None, keep_alive_secs, version)
}

/// CONNECT with a user name and no password (brokers that map names to tenants or ACLs).
pub fn connect_with_username(
    client_id: &str,
    username: &str,
    keep_alive_secs: u16,
    version: Version,
) -> Vec<u8> {
    connect_packet(client_id, Some(username), keep_alive_secs, version)
}

fn connect_packet(
    client_id: &str,
    username: Option<&str>,
    keep_alive_secs: u16,
    version: Version,
) -> Vec<u8> {
    let remaining = 2 + 4 + 1 + 1 + 2 // "MQTT", level, flags, keep alive
        + props_len(version)
        + 2 + client_id.len()
        + username.map_or(0, |u| 2 + u.len());
    let mut out = header(CONNECT << 4, remaining);
    put_str(&mut out, "MQTT");
    out.push(match version {
        Version::V311 => 4,
        Version::V5 => 5,
    });
    // Clean session (3.1.1) / clean start (5), plus the user name flag when there is one.
    out.push(if username.is_some() { 0x82 } else { 0x02 });
    out.extend_from_slice(&keep_alive_secs.to_be_bytes());
    put_empty_props(&mut out, version);
    put_str(&mut out, client_id);
    if let Some(u) = username {
        put_str(&mut out, u);
    }
    out
}

/// PUBLISH, not retained, not a duplicate. `packet_id` is only written for QoS 1 and 2.
pub fn publish(topic: &str, qos: u8, packet_id: u16, payload: &[u8], version: Version) -> Vec<u8> {
    assert!(qos <= 2, "QoS is 0, 1 or 2");
    let id_len = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + id_len + props_len(version) + payload.len();
    let mut out = header(PUBLISH << 4 | qos << 1, remaining);
    put_str(&mut out, topic);
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    put_empty_props(&mut out, version);
    out.extend_from_slice(payload);
    out
}

/// SUBSCRIBE to one filter (in 5: no-local, retain-as-published and retain handling all 0).
pub fn subscribe(packet_id: u16, filter: &str, qos: u8, version: Version) -> Vec<u8> {
    assert!(qos <= 2, "QoS is 0, 1 or 2");
    let remaining = 2 + props_len(version) + 2 + filter.len() + 1;
    // The low nibble 0b0010 is mandatory for SUBSCRIBE.
    let mut out = header(SUBSCRIBE << 4 | 0x02, remaining);
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_empty_props(&mut out, version);
    put_str(&mut out, filter);
    out.push(qos);
    out
}

/// SUBSCRIBE to several `(filter, qos)` at once.
pub fn subscribe_many(packet_id: u16, filters: &[(&str, u8)], version: Version) -> Vec<u8> {
    let entries: usize = filters.iter().map(|(f, _)| 2 + f.len() + 1).sum();
    let remaining = 2 + props_len(version) + entries;
    let mut out = header(SUBSCRIBE << 4 | 0x02, remaining);
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_empty_props(&mut out, version);
    for (filter, qos) in filters {
        put_str(&mut out, filter);
        out.push(*qos);
    }
    out
}

/// PUBACK. Identical in both versions: 5 lets a success reason code be omitted.
pub fn puback(packet_id: u16, version: Version) -> Vec<u8> {
    let _ = version;
    let [hi, lo] = packet_id.to_be_bytes();
    vec![PUBACK << 4, 2, hi, lo]
}

pub fn pingreq() -> [u8; 2] {
    [PINGREQ << 4, 0]
}

/// DISCONNECT. Identical in both versions: in 5 a zero remaining length means reason 0x00
/// (normal) without properties. rumqttd 0.20 accepts only this form or a full one (reason and
/// property length), not a lone reason byte.
pub fn disconnect(version: Version) -> Vec<u8> {
    let _ = version;
    vec![DISCONNECT << 4, 0]
}

/// Fixed header, with capacity for the `remaining` bytes that follow.
pub(super) fn header(first: u8, remaining: usize) -> Vec<u8> {
    assert!(
        remaining <= MAX_REMAINING,
        "MQTT packets are at most 256 MiB"
    );
    let mut out = Vec::with_capacity(5 + remaining);
    out.push(first);
    let mut n = remaining;
    loop {
        let digit = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { digit | 0x80 } else { digit });
        if n == 0 {
            return out;
        }
    }
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("MQTT strings are at most 65,535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn props_len(version: Version) -> usize {
    usize::from(version == Version::V5)
}

fn put_empty_props(out: &mut Vec<u8>, version: Version) {
    if version == Version::V5 {
        out.push(0);
    }
}

// === decoding ===

/// Length of the first complete packet in `buf` (fixed header + body), `Ok(None)` if incomplete,
/// error if the remaining length is malformed or over `max`.
///
/// The limit is checked as soon as the length is known, before the body arrives.
pub fn packet_len(buf: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    let Some((len, used)) = varint(buf.get(1..).unwrap_or_default())? else {
        return Ok(None);
    };
    let total = 1 + used + len;
    if total > max {
        return Err(WireError::TooBig(total));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// A variable byte integer at the start of `bytes`: `(value, bytes used)`, or `None` if
/// `bytes` ends inside it. At most four bytes, shortest form only.
pub(super) fn varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
    let mut value = 0;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // A zero last byte means the value fitted in fewer: padding, which MQTT 5 forbids
            // outright and no 3.1.1 encoder produces.
            if i > 0 && b == 0 {
                return Err(WireError::RemainingLength);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(WireError::RemainingLength)
    } else {
        Ok(None)
    }
}

/// Parse one complete packet (as delimited by packet_len). Never panics on any input.
pub fn parse(packet: &[u8], version: Version) -> Result<Incoming<'_>, WireError> {
    let Some((&first, rest)) = packet.split_first() else {
        return Err(WireError::Malformed("empty"));
    };
    let (packet_type, flags) = (first >> 4, first & 0x0f);
    let name = name(packet_type);
    let Some((len, used)) = varint(rest)? else {
        return Err(WireError::RemainingLength);
    };
    let body = &rest[used..];
    if body.len() != len {
        return Err(WireError::Malformed(name));
    }
    let bad = || WireError::Malformed(name);
    // The flag bits of every type decoded here except PUBLISH are reserved zeros.
    let decoded = matches!(
        packet_type,
        CONNACK | PUBACK | PUBREC | PUBCOMP | SUBACK | PINGRESP | DISCONNECT
    );
    if decoded && flags != 0 {
        return Err(bad());
    }
    let v5 = version == Version::V5;
    Ok(match packet_type {
        CONNACK => {
            let [_session_present, code, props @ ..] = body else {
                return Err(bad());
            };
            let props_ok = match version {
                Version::V5 => skip_props(props).is_some_and(<[u8]>::is_empty),
                Version::V311 => props.is_empty(),
            };
            if !props_ok {
                return Err(bad());
            }
            Incoming::ConnAck { code: *code }
        }
        PUBLISH => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(bad());
            }
            let (topic, mut rest) = take_str(body).ok_or_else(bad)?;
            let mut packet_id = None;
            if qos > 0 {
                let (id, after) = take_u16(rest).ok_or_else(bad)?;
                packet_id = Some(id);
                rest = after;
            }
            if v5 {
                rest = skip_props(rest).ok_or_else(bad)?;
            }
            Incoming::Publish {
                topic,
                qos,
                packet_id,
                payload: rest,
            }
        }
        PUBACK | PUBREC | PUBCOMP | SUBACK => {
            let (packet_id, rest) = take_u16(body).ok_or_else(bad)?;
            // 3.1.1 acks are exactly the id (SUBACK adds return codes); 5 may add a reason
            // code and properties, which a client of this subset does not need.
            let well_sized = match packet_type {
                SUBACK => !rest.is_empty(),
                _ => v5 || rest.is_empty(),
            };
            if !well_sized {
                return Err(bad());
            }
            match packet_type {
                PUBACK => Incoming::PubAck { packet_id },
                PUBREC => Incoming::PubRec { packet_id },
                PUBCOMP => Incoming::PubComp { packet_id },
                _ => Incoming::SubAck { packet_id },
            }
        }
        PINGRESP if body.is_empty() => Incoming::PingResp,
        PINGRESP => return Err(bad()),
        DISCONNECT if v5 => Incoming::Disconnect {
            reason: Some(body.first().copied().unwrap_or(0)),
        },
        DISCONNECT if body.is_empty() => Incoming::Disconnect { reason: None },
        DISCONNECT => return Err(bad()),
        0 => return Err(bad()),
        _ => Incoming::Other { packet_type },
    })
}

fn name(packet_type: u8) -> &'static str {
    match packet_type {
        CONNACK => "CONNACK",
        PUBLISH => "PUBLISH",
        PUBACK => "PUBACK",
        PUBREC => "PUBREC",
        PUBCOMP => "PUBCOMP",
        SUBACK => "SUBACK",
        PINGRESP => "PINGRESP",
        DISCONNECT => "DISCONNECT",
        0 => "reserved-type",
        _ => "MQTT",
    }
}

pub(super) fn take_u16(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let (&[hi, lo], rest) = bytes.split_first_chunk::<2>()?;
    Some((u16::from_be_bytes([hi, lo]), rest))
}

pub(super) fn take_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = take_u16(bytes)?;
    let (s, rest) = rest.split_at_checked(usize::from(len))?;
    Some((std::str::from_utf8(s).ok()?, rest))
}

/// The bytes after an MQTT 5 property block (length-prefixed; the properties are not read).
fn skip_props(bytes: &[u8]) -> Option<&[u8]> {
    let (len, used) = varint(bytes).ok()??;
    bytes.get(used..)?.get(len..)
}

/// Read one packet's bytes from `r`, buffering in `buf` (which keeps anything read past it).
/// `None` on a clean EOF between packets; `InvalidData` for a malformed or oversized packet.
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<Option<BytesMut>> {
    loop {
        if let Some(n) =
            packet_len(buf, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            return Ok(Some(buf.split_to(n)));
        }
        buf.reserve(4096);
        if r.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside an MQTT packet",
            ));
        }
    }
}

#[cfg(test)]
mod tests;
