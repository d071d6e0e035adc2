//! MQTT 5 property blocks. The gateway reads two properties (Topic Alias, Topic Alias Maximum)
//! but must walk every block to the end: a block whose declared length cuts a property in half,
//! or that holds an identifier it cannot size, would otherwise shift where the payload starts.
//!
//! Values are not validated (UTF-8 in strings, allowed-in-this-packet, duplicates other than
//! the ones read here): the broker behind the gateway does that and answers with its own code.

use crate::mqtt::wire::{take_u16, varint};

/// A property block whose every property has been sized.
#[derive(Debug, Clone, Copy)]
pub(super) struct Props<'a> {
    block: &'a [u8],
}

/// The property block at the start of `bytes` and the bytes after it; `None` if the length is
/// malformed, runs past `bytes`, or the properties inside do not fill it exactly.
pub(super) fn take_props(bytes: &[u8]) -> Option<(Props<'_>, &[u8])> {
    let (len, used) = varint(bytes).ok()??;
    let (block, rest) = bytes.get(used..)?.split_at_checked(len)?;
    let mut walk = block;
    while !walk.is_empty() {
        walk = split_prop(walk)?.2;
    }
    Some((Props { block }, rest))
}

impl Props<'_> {
    /// The value of a two-byte integer property: `Some(None)` if absent, `None` if repeated
    /// (only User Property and Subscription Identifier may appear more than once).
    pub(super) fn two_byte(self, id: u8) -> Option<Option<u16>> {
        let mut found = None;
        let mut walk = self.block;
        while let Some((prop, value, rest)) = split_prop(walk) {
            if prop == id {
                if found.is_some() {
                    return None;
                }
                found = Some(take_u16(value)?.0);
            }
            walk = rest;
        }
        Some(found)
    }
}

/// One property off the front of `block`: (identifier, value bytes, rest).
///
/// Identifiers are variable byte integers, but every defined one is below 0x80 and fits in one
/// byte, so a byte with the continuation bit is as unknown as an undefined one.
fn split_prop(block: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&id, rest) = block.split_first()?;
    let string = |b: &[u8]| take_u16(b).map(|(n, _)| 2 + usize::from(n));
    let len = match id {
        // Byte: payload format, request problem/response info, maximum QoS, the "available"s.
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
        // Two-byte integer: server keep alive, receive maximum, topic alias maximum and alias.
        0x13 | 0x21 | 0x22 | 0x23 => 2,
        // Four-byte integer: message expiry, session expiry, will delay, maximum packet size.
        0x02 | 0x11 | 0x18 | 0x27 => 4,
        // Variable byte integer: subscription identifier.
        0x0b => varint(rest).ok()??.1,
        // UTF-8 string or binary data: content type, response topic, correlation data,
        // assigned client id, authentication method/data, response info, server reference,
        // reason string.
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => string(rest)?,
        // String pair: user property.
        0x26 => {
            let key = string(rest)?;
            key + string(rest.get(key..)?)?
        }
        _ => return None,
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((id, value, rest))
}
