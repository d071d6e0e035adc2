//! SUBSCRIBE as topic permissions need it: its filters, a copy keeping only the allowed ones,
//! a SUBACK of the gateway's own, and the broker's SUBACK with the refused filters' codes put
//! back in their places.

use super::{split_packet, take_id, take_props, take_text, Version, SUBSCRIBE};
use crate::mqtt::wire::header;

const SUBACK: u8 = 9;

/// A well-formed SUBSCRIBE (already checked by `parse_device`), in pieces.
#[derive(Debug)]
pub struct SubscribeParts<'a> {
    pub packet_id: u16,
    /// Packet id and (v5) properties: kept as they are in a rewritten packet.
    head: &'a [u8],
    /// Each filter and its whole entry (length, text, options).
    entries: Vec<(&'a str, &'a [u8])>,
}

impl<'a> SubscribeParts<'a> {
    pub fn filters(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.entries.iter().map(|(f, _)| *f)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The same SUBSCRIBE with only the filters whose `keep` is true (at least one).
    pub fn keeping(&self, keep: &[bool]) -> Vec<u8> {
        let kept: Vec<&[u8]> = self
            .entries
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|((_, e), _)| *e)
            .collect();
        let remaining = self.head.len() + kept.iter().map(|e| e.len()).sum::<usize>();
        let mut out = header(SUBSCRIBE << 4 | 0x02, remaining);
        out.extend_from_slice(self.head);
        for e in kept {
            out.extend_from_slice(e);
        }
        out
    }
}

/// The filters of a SUBSCRIBE; `None` if it is not one (`parse_device` said it was).
pub fn subscribe_parts(packet: &[u8], version: Version) -> Option<SubscribeParts<'_>> {
    let (first, body) = split_packet(packet).ok()?;
    if first >> 4 != SUBSCRIBE {
        return None;
    }
    let (packet_id, rest) = take_id(body)?;
    let mut rest = match version {
        Version::V5 => take_props(rest)?.1,
        Version::V311 => rest,
    };
    let head = &body[..body.len() - rest.len()];
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let (filter, after) = take_text(rest)?;
        let after = after.get(1..)?;
        entries.push((filter, &rest[..rest.len() - after.len()]));
        rest = after;
    }
    Some(SubscribeParts {
        packet_id,
        head,
        entries,
    })
}

/// A SUBACK with `codes`, one per filter, and (v5) no properties.
pub fn suback(packet_id: u16, codes: &[u8], version: Version) -> Vec<u8> {
    let props = usize::from(version == Version::V5);
    let mut out = header(SUBACK << 4, 2 + props + codes.len());
    out.extend_from_slice(&packet_id.to_be_bytes());
    if props == 1 {
        out.push(0);
    }
    out.extend_from_slice(codes);
    out
}

/// The broker's SUBACK for a SUBSCRIBE we sent with only the `kept` filters, made whole again:
/// its codes in the kept places, `refusal` in the others, its properties kept. `None` if it
/// does not fit (another packet id's SUBACK, or a code count that does not match).
pub fn suback_merged(
    broker: &[u8],
    version: Version,
    kept: &[bool],
    refusal: u8,
) -> Option<Vec<u8>> {
    let (first, body) = split_packet(broker).ok()?;
    if first >> 4 != SUBACK {
        return None;
    }
    let (_, rest) = take_id(body)?;
    let codes = match version {
        Version::V5 => take_props(rest)?.1,
        Version::V311 => rest,
    };
    if codes.len() != kept.iter().filter(|k| **k).count() {
        return None;
    }
    let head = &body[..body.len() - codes.len()];
    let mut broker_codes = codes.iter();
    let merged: Vec<u8> = kept
        .iter()
        .map(|k| match k {
            true => broker_codes.next().copied().unwrap_or(refusal),
            false => refusal,
        })
        .collect();
    let mut out = header(SUBACK << 4, head.len() + merged.len());
    out.extend_from_slice(head);
    out.extend_from_slice(&merged);
    Some(out)
}

/// The packet id of a SUBACK from the broker.
pub fn suback_id(packet: &[u8]) -> Option<u16> {
    let (first, body) = split_packet(packet).ok()?;
    (first >> 4 == SUBACK).then_some(())?;
    take_id(body).map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::wire;

    #[test]
    fn a_subscribe_keeps_its_head_and_chosen_filters() {
        for version in [Version::V311, Version::V5] {
            let p = wire::subscribe_many(7, &[("a/#", 1), ("b", 0), ("c/+", 2)], version);
            let parts = subscribe_parts(&p, version).expect("parts");
            assert_eq!(parts.packet_id, 7);
            assert_eq!(parts.filters().collect::<Vec<_>>(), ["a/#", "b", "c/+"]);
            let kept = parts.keeping(&[true, false, true]);
            assert_eq!(
                kept,
                wire::subscribe_many(7, &[("a/#", 1), ("c/+", 2)], version)
            );
            assert_eq!(parts.keeping(&[true, true, true]), p);
        }
    }

    #[test]
    fn the_brokers_suback_gets_the_refusals_back_in_place() {
        let v3 = suback(7, &[1, 2], Version::V311);
        let merged = suback_merged(&v3, Version::V311, &[true, false, true], 0x80);
        assert_eq!(merged, Some(suback(7, &[1, 0x80, 2], Version::V311)));
        let v5 = suback(7, &[1, 2], Version::V5);
        let merged = suback_merged(&v5, Version::V5, &[false, true, true], 0x87);
        assert_eq!(merged, Some(suback(7, &[0x87, 1, 2], Version::V5)));
        // With a reason string property from the broker: kept.
        let with_props = vec![0x90, 10, 0, 7, 5, 0x1f, 0, 2, b'o', b'k', 1, 2];
        let merged = suback_merged(&with_props, Version::V5, &[true, false, true], 0x87);
        assert_eq!(
            merged,
            Some(vec![0x90, 11, 0, 7, 5, 0x1f, 0, 2, b'o', b'k', 1, 0x87, 2])
        );
        // A count that does not fit is not guessed at.
        assert_eq!(suback_merged(&v3, Version::V311, &[true], 0x80), None);
        assert_eq!(suback_id(&v3), Some(7));
        assert_eq!(suback_id(&[0x90, 1, 0]), None);
    }

    #[test]
    fn hostile_bytes_never_panic() {
        for p in [
            &[][..],
            &[0x82],
            &[0x82, 0],
            &[0x82, 2, 0, 1],
            &[0x82, 5, 0, 1, 0, 9, b'a'],
        ] {
            for v in [Version::V311, Version::V5] {
                let _ = subscribe_parts(p, v);
                let _ = suback_merged(p, v, &[true], 0x80);
                let _ = suback_id(p);
            }
        }
    }
}
