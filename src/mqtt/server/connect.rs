//! CONNECT: the one packet whose layout depends on what it says (protocol level, flags).

use super::props::take_props;
use super::{skip_binary, take_text, topic_name_chars, Connect, Version};
use crate::mqtt::wire::take_u16;

const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

/// The body of a CONNECT (after the fixed header); `None` if malformed.
pub(super) fn parse(body: &[u8]) -> Option<Connect<'_>> {
    let (protocol, rest) = take_text(body)?;
    let (&level, rest) = rest.split_first()?;
    // The name fixes the level: 3.1 clients say "MQIsdp" (level 3), later ones "MQTT". Bridges'
    // 0x80 "try private" bit is for broker-to-broker links, never devices.
    let version = match (protocol, level) {
        ("MQIsdp", 3) | ("MQTT", 4) => Version::V311,
        ("MQTT", 5) => Version::V5,
        _ => return None,
    };
    let v5 = version == Version::V5;
    let (&flags, rest) = rest.split_first()?;
    let (keep_alive, rest) = take_u16(rest)?;
    let will = flags & WILL != 0;
    let will_qos = (flags >> 3) & 0x03;
    // [MQTT-3.1.2-3] reserved bit; will QoS/retain only with a will [MQTT-3.1.2-11/13/15].
    if flags & RESERVED != 0 || will_qos == 3 || (!will && flags & (0x18 | WILL_RETAIN) != 0) {
        return None;
    }
    // 3.1 and 3.1.1 forbid a password without a user name [MQTT-3.1.2-22]; 5 allows it.
    if !v5 && flags & PASSWORD != 0 && flags & USERNAME == 0 {
        return None;
    }
    let rest = if v5 { take_props(rest)?.1 } else { rest };
    let (client_id, mut rest) = take_text(rest)?;
    if will {
        if v5 {
            rest = take_props(rest)?.1;
        }
        let (topic, after) = take_text(rest)?;
        if topic.is_empty() || !topic_name_chars(topic) {
            return None;
        }
        rest = skip_binary(after)?;
    }
    let mut username = None;
    if flags & USERNAME != 0 {
        let (name, after) = take_text(rest)?;
        username = Some(name);
        rest = after;
    }
    if flags & PASSWORD != 0 {
        rest = skip_binary(rest)?;
    }
    rest.is_empty().then_some(Connect {
        version,
        client_id,
        username,
        keep_alive,
        clean_start: flags & CLEAN_START != 0,
        will,
    })
}
