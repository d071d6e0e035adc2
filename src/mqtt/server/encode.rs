//! Packets the gateway writes to a device on the broker's behalf, and the PUBLISH rewrite for
//! topic-alias re-expansion. Shortest legal forms, checked against what rumqttc decodes.

use super::{Publish, PublishLayout, Version, PUBLISH};
use crate::mqtt::wire::{self, header, put_str};

/// Which acknowledgement of a device's PUBLISH (or, for PUBCOMP, of its PUBREL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubComp,
}

/// CONNACK with session present 0. In 5, `code` is a reason code and the property block is
/// empty; in 3.1.1 it is a return code (see [`super::reason`] for both).
pub fn connack(code: u8, version: Version) -> Vec<u8> {
    match version {
        Version::V311 => vec![0x20, 2, 0, code],
        Version::V5 => vec![0x20, 3, 0, code, 0],
    }
}

/// PUBACK, PUBREC or PUBCOMP. 3.1.1 has no reason code, so `reason` is ignored; 5 omits it
/// when it is 0 (success) and never sends properties (a remaining length of 3 is legal: the
/// property length may be omitted when nothing follows, §3.4.2.2.1).
pub fn ack(kind: AckKind, packet_id: u16, reason: u8, version: Version) -> Vec<u8> {
    let first = match kind {
        AckKind::PubAck => 0x40,
        AckKind::PubRec => 0x50,
        AckKind::PubComp => 0x70,
    };
    let [hi, lo] = packet_id.to_be_bytes();
    if version == Version::V311 || reason == 0 {
        vec![first, 2, hi, lo]
    } else {
        vec![first, 3, hi, lo, reason]
    }
}

/// A v5 DISCONNECT with `reason` and an empty property block (3.1.1 servers cannot send
/// DISCONNECT: close the socket instead).
///
/// The spec allows shorter forms, but clients do not all read them: rumqttc 0.25 rejects
/// `E0 00` (its decoder requires a body) and silently drops `E0 01 rr` (it reads a property
/// length that is not there, reports "need more bytes" after consuming the packet, and waits);
/// libmosquitto rejects `E0 00` (it always reads a reason byte). `E0 02 rr 00` suits all.
pub fn disconnect(reason: u8) -> Vec<u8> {
    vec![0xe0, 2, reason, 0]
}

/// PINGREQ, which the gateway injects upstream when it has swallowed a device's traffic, so the
/// broker's keep-alive timer does not expire.
pub fn pingreq() -> [u8; 2] {
    wire::pingreq()
}

/// Re-encode a PUBLISH with `topic` as its topic name; flags, packet id, properties (including
/// the alias) and payload are copied unchanged, and the remaining length is recomputed.
///
/// `packet` must be the bytes `publish` was parsed from. Panics only on a caller bug: a topic
/// over 65,535 bytes or a result over 256 MiB.
pub fn publish_with_topic(packet: &[u8], publish: &Publish<'_>, topic: &str) -> Vec<u8> {
    let PublishLayout {
        topic_end,
        packet_len,
    } = publish.layout;
    debug_assert_eq!(
        packet.len(),
        packet_len,
        "not the packet `publish` came from"
    );
    let first = packet.first().copied().unwrap_or(PUBLISH << 4);
    let tail = packet.get(topic_end..).unwrap_or_default();
    let mut out = header(first, 2 + topic.len() + tail.len());
    put_str(&mut out, topic);
    out.extend_from_slice(tail);
    out
}
