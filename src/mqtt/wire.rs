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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
fn header(first: u8, remaining: usize) -> Vec<u8> {
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

fn put_str(out: &mut Vec<u8>, s: &str) {
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
fn varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
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

fn take_u16(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let (&[hi, lo], rest) = bytes.split_first_chunk::<2>()?;
    Some((u16::from_be_bytes([hi, lo]), rest))
}

fn take_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
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
mod tests {
    use super::*;
    use Version::{V311, V5};

    /// Delimit with `packet_len` (in a buffer with trailing junk) and parse.
    fn roundtrip(bytes: &[u8], version: Version) -> Incoming<'_> {
        let mut buf = bytes.to_vec();
        buf.extend_from_slice(&[0x30, 0x7f]); // the start of another packet
        assert_eq!(packet_len(&buf, 1 << 20), Ok(Some(bytes.len())));
        for cut in 0..bytes.len() {
            assert_eq!(packet_len(&bytes[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        parse(bytes, version).expect("parses")
    }

    #[test]
    fn connect_matches_the_spec_bytes() {
        let v3 = connect("c1", 60, V311);
        assert_eq!(v3, b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1");
        let v5 = connect_with_username("c1", "u", 60, V5);
        assert_eq!(
            v5,
            b"\x10\x12\x00\x04MQTT\x05\x82\x00\x3c\x00\x00\x02c1\x00\x01u"
        );
        assert_eq!(roundtrip(&v5, V5), Incoming::Other { packet_type: 1 });
    }

    /// rumqttc's decoders (a dev-dependency) read what we write.
    #[test]
    fn client_packets_decode_with_rumqttc() {
        use rumqttc::mqttbytes::v4::Packet as P4;
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        let v4 = |b: Vec<u8>| P4::read(&mut BytesMut::from(&b[..]), 1 << 20).expect("v4 decodes");
        let v5 = |b: Vec<u8>| P5::read(&mut BytesMut::from(&b[..]), None).expect("v5 decodes");

        let P4::Connect(c) = v4(connect_with_username("dev", "tenant", 30, V311)) else {
            panic!("not a CONNECT")
        };
        assert_eq!(
            (c.client_id.as_str(), c.clean_session, c.keep_alive),
            ("dev", true, 30)
        );
        assert_eq!(c.login.map(|l| l.username), Some("tenant".into()));
        let P5::Connect(c, None, None) = v5(connect("dev", 30, V5)) else {
            panic!("not a plain CONNECT")
        };
        assert_eq!(
            (c.client_id.as_str(), c.clean_start, c.keep_alive),
            ("dev", true, 30)
        );

        let P4::Publish(p) = v4(publish("a/b", 1, 7, b"hi", V311)) else {
            panic!()
        };
        assert_eq!(
            (p.topic.as_str(), p.pkid, &p.payload[..]),
            ("a/b", 7, &b"hi"[..])
        );
        let P5::Publish(p) = v5(publish("a/b", 2, 9, b"hi", V5)) else {
            panic!()
        };
        assert_eq!(
            (&p.topic[..], p.pkid, &p.payload[..]),
            (&b"a/b"[..], 9, &b"hi"[..])
        );

        let P4::Subscribe(s) = v4(subscribe(3, "plant/#", 1, V311)) else {
            panic!()
        };
        assert_eq!((s.pkid, s.filters[0].path.as_str()), (3, "plant/#"));
        let P5::Subscribe(s) = v5(subscribe(3, "plant/#", 1, V5)) else {
            panic!()
        };
        assert_eq!((s.pkid, s.filters[0].path.as_str()), (3, "plant/#"));

        assert!(matches!(v4(puback(5, V311)), P4::PubAck(a) if a.pkid == 5));
        assert!(matches!(v5(puback(5, V5)), P5::PubAck(a) if a.pkid == 5));
        assert!(matches!(v4(pingreq().to_vec()), P4::PingReq));
        assert!(matches!(v4(disconnect(V311)), P4::Disconnect));
        // rumqttc's v5 decoder refuses the (legal) zero-length DISCONNECT; rumqttd takes it.
        assert_eq!(disconnect(V5), disconnect(V311));
    }

    #[test]
    fn publish_round_trips_in_both_versions() {
        for version in [V311, V5] {
            for qos in 0..=2 {
                let bytes = publish("plant/boiler-1/temp", qos, 42, b"21.4", version);
                let expected = Incoming::Publish {
                    topic: "plant/boiler-1/temp",
                    qos,
                    packet_id: (qos > 0).then_some(42),
                    payload: b"21.4",
                };
                assert_eq!(
                    roundtrip(&bytes, version),
                    expected,
                    "{version:?} qos {qos}"
                );
            }
        }
    }

    #[test]
    fn server_packets_parse_in_both_versions() {
        let cases: [(&[u8], Version, Incoming); 13] = [
            (b"\x20\x02\x00\x05", V311, Incoming::ConnAck { code: 5 }),
            (b"\x20\x03\x01\x00\x00", V5, Incoming::ConnAck { code: 0 }),
            (
                b"\x20\x06\x00\x87\x03\x21\x00\x0a",
                V5,
                Incoming::ConnAck { code: 0x87 },
            ),
            (&puback(9, V311), V311, Incoming::PubAck { packet_id: 9 }),
            (
                b"\x40\x04\x01\x02\x10\x00",
                V5,
                Incoming::PubAck { packet_id: 258 },
            ),
            (b"\x50\x02\x00\x03", V311, Incoming::PubRec { packet_id: 3 }),
            (b"\x70\x02\x00\x03", V5, Incoming::PubComp { packet_id: 3 }),
            (
                b"\x90\x03\x00\x04\x01",
                V311,
                Incoming::SubAck { packet_id: 4 },
            ),
            (
                b"\x90\x04\x00\x04\x00\x01",
                V5,
                Incoming::SubAck { packet_id: 4 },
            ),
            (b"\xd0\x00", V311, Incoming::PingResp),
            (b"\xe0\x00", V311, Incoming::Disconnect { reason: None }),
            (b"\xe0\x00", V5, Incoming::Disconnect { reason: Some(0) }),
            (
                b"\xe0\x01\x8e",
                V5,
                Incoming::Disconnect { reason: Some(0x8e) },
            ),
        ];
        for (bytes, version, expected) in cases {
            assert_eq!(roundtrip(bytes, version), expected, "{bytes:02x?}");
        }
        assert_eq!(
            roundtrip(b"\x62\x02\x00\x01", V311),
            Incoming::Other { packet_type: 6 }
        );
    }

    #[test]
    fn remaining_length_boundaries() {
        // (remaining length, header bytes): one more byte of header at each boundary.
        for (len, header) in [(127, 2), (128, 3), (16_383, 3), (16_384, 4)] {
            let payload = vec![0xa5; len - 2 - 1]; // topic "t" takes 3 bytes
            let bytes = publish("t", 0, 0, &payload, V311);
            assert_eq!(bytes.len(), header + len);
            let parsed = roundtrip(&bytes, V311);
            assert!(
                matches!(parsed, Incoming::Publish { payload: p, .. } if p.len() == payload.len())
            );
            assert_eq!(
                packet_len(&bytes, bytes.len() - 1),
                Err(WireError::TooBig(bytes.len()))
            );
        }
        // The limit applies from the header alone, before the body arrives.
        assert_eq!(
            packet_len(b"\x30\xff\xff\x7f", 1024),
            Err(WireError::TooBig(2_097_155))
        );
        assert_eq!(packet_len(b"\x30\xff\xff\xff\x7f", usize::MAX), Ok(None));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let bad_len = Err(WireError::RemainingLength);
        assert_eq!(packet_len(b"\x30\xff\xff\xff\xff\x01", usize::MAX), bad_len);
        assert_eq!(packet_len(b"\x30\x80\x00", usize::MAX), bad_len); // padded zero
        assert_eq!(parse(b"\x30\x80", V311), Err(WireError::RemainingLength));
        let malformed = |b: &[u8], v| matches!(parse(b, v), Err(WireError::Malformed(_)));
        for (bytes, version) in [
            (&b""[..], V311),
            (b"\x00\x00", V311),                  // packet type 0
            (b"\x20\x02\x00", V311),              // shorter than its length
            (b"\x20\x01\x00\x00", V311),          // longer than its length
            (b"\x20\x03\x00\x00\x00", V311),      // 3.1.1 CONNACK with a tail
            (b"\x20\x03\x00\x00\x05", V5),        // properties longer than the packet
            (b"\x36\x05\x00\x01t\x00\x01", V311), // QoS 3
            (b"\x32\x03\x00\x01t", V311),         // QoS 1 without a packet id
            (b"\x30\x03\x00\x05t", V311),         // topic longer than the packet
            (b"\x30\x04\x00\x02\xff\xfe", V311),  // topic not UTF-8
            (b"\x42\x02\x00\x01", V311),          // reserved flags set
            (b"\x40\x03\x00\x01\x00", V311),      // 3.1.1 PUBACK with a tail
            (b"\x90\x02\x00\x01", V311),          // SUBACK without return codes
            (b"\xd0\x01\x00", V311),              // PINGRESP with a body
            (b"\xe0\x01\x00", V311),              // 3.1.1 DISCONNECT with a body
        ] {
            assert!(malformed(bytes, version), "{bytes:02x?} {version:?}");
        }
    }

    /// Every 1-3 byte input and a large random sample of longer ones: errors, never panics.
    #[test]
    fn parse_never_panics() {
        use rand::{Rng, SeedableRng};
        let check = |bytes: &[u8]| {
            let _ = packet_len(bytes, 1 << 16);
            let _ = parse(bytes, V311);
            let _ = parse(bytes, V5);
        };
        for a in 0..=255u8 {
            check(&[a]);
            for b in 0..=255u8 {
                check(&[a, b]);
                check(&[a, 1, b]);
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200_000 {
            let len = rng.random_range(2..24);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            bytes[1] = (len - 2) as u8; // a consistent length, to reach the body decoders
            check(&bytes);
        }
    }

    #[tokio::test]
    async fn read_packet_splits_a_stream() {
        let mut stream = publish("a", 1, 1, b"x", V311);
        stream.extend_from_slice(&pingreq());
        let mut r = &stream[..];
        let mut buf = BytesMut::new();
        let first = read_packet(&mut r, &mut buf, 1024).await.expect("reads");
        assert_eq!(first.as_deref(), Some(&publish("a", 1, 1, b"x", V311)[..]));
        let second = read_packet(&mut r, &mut buf, 1024).await.expect("reads");
        assert_eq!(second.as_deref(), Some(&pingreq()[..]));
        assert!(read_packet(&mut r, &mut buf, 1024)
            .await
            .expect("eof")
            .is_none());

        let mut truncated = &stream[..3];
        let err = read_packet(&mut truncated, &mut BytesMut::new(), 1024).await;
        assert_eq!(err.map_err(|e| e.kind()), Err(io::ErrorKind::UnexpectedEof));
    }
}
