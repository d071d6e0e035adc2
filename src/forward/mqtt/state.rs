//! Per-connection MQTT bookkeeping for a relay that sometimes answers on the broker's behalf.
//!
//! Three traps (mqtt-abuse.md §6) live here, each as plain data with no I/O:
//! - acknowledgement order: a local PUBACK/PUBREC/PUBCOMP must not overtake an ack the broker
//!   still owes for an earlier packet on this connection;
//! - retransmissions: DUP=1 with a packet id not yet acknowledged is the same message again;
//! - topic aliases: the broker knows only the aliases of publishes it actually received.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// Acks a device is waiting for are at most this many (its inflight window); more is abuse.
pub const MAX_PENDING_ACKS: usize = 1024;
/// Topic aliases we track per direction; MQTT allows 65535 but brokers grant ~10.
pub const MAX_ALIASES: usize = 1024;
/// Topic bytes the alias maps may hold per connection: aliases are set before the policy judges
/// a publish, so without this a device could park 1024 × 64 KiB topics here.
pub const MAX_ALIAS_BYTES: usize = 64 * 1024;

pub use crate::mqtt::server::AckKind;

#[derive(Debug)]
enum Entry {
    /// The broker owes this ack.
    Broker(AckKind, u16),
    /// We owe this ack (the publish was discarded) once everything before it is answered.
    Local(u16, Bytes),
}

/// Acks owed to the device, in the order it is owed them.
#[derive(Debug, Default)]
pub struct AckOrder {
    queue: VecDeque<Entry>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

impl AckOrder {
    pub fn expect_from_broker(&mut self, kind: AckKind, packet_id: u16) -> Result<(), Overflow> {
        self.push(Entry::Broker(kind, packet_id))
    }

    /// A local ack for `packet_id`: returned at once if nothing is pending before it, else queued.
    pub fn local(&mut self, packet_id: u16, ack: Bytes) -> Result<Option<Bytes>, Overflow> {
        if self.queue.is_empty() {
            return Ok(Some(ack));
        }
        self.push(Entry::Local(packet_id, ack)).map(|()| None)
    }

    /// The broker sent an ack: it goes to the device as is; return the local acks now due.
    pub fn broker_acked(&mut self, kind: AckKind, packet_id: u16) -> Vec<(u16, Bytes)> {
        let pos = self
            .queue
            .iter()
            .position(|e| matches!(e, Entry::Broker(k, id) if *k == kind && *id == packet_id));
        if let Some(pos) = pos {
            self.queue.remove(pos);
        }
        let mut due = Vec::new();
        while let Some(Entry::Local(..)) = self.queue.front() {
            if let Some(Entry::Local(id, ack)) = self.queue.pop_front() {
                due.push((id, ack));
            }
        }
        due
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn push(&mut self, e: Entry) -> Result<(), Overflow> {
        if self.queue.len() >= MAX_PENDING_ACKS {
            return Err(Overflow);
        }
        self.queue.push_back(e);
        Ok(())
    }
}

/// What happened to an inbound QoS 1/2 packet id that the device has not seen acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Forwarded; the broker will answer.
    Broker,
    /// Discarded; our (possibly queued) ack answers.
    Local,
}

/// Inbound packet ids awaiting their first ack, to recognise retransmissions.
#[derive(Debug, Default)]
pub struct Inflight {
    ids: HashMap<u16, Disposition>,
}

impl Inflight {
    /// DUP=1 on an id still awaiting its ack: the same message again, with its first fate.
    pub fn disposition(&self, dup: bool, packet_id: u16) -> Option<Disposition> {
        if dup {
            self.ids.get(&packet_id).copied()
        } else {
            None
        }
    }

    pub fn insert(&mut self, packet_id: u16, d: Disposition) -> Result<(), Overflow> {
        if self.ids.len() >= MAX_PENDING_ACKS && !self.ids.contains_key(&packet_id) {
            return Err(Overflow);
        }
        self.ids.insert(packet_id, d);
        Ok(())
    }

    /// The device has been sent its PUBACK or PUBREC: a later publish with this id is new.
    pub fn acked(&mut self, packet_id: u16) {
        self.ids.remove(&packet_id);
    }
}

/// MQTT 5 topic aliases, as the device set them and as the broker has seen them.
#[derive(Debug, Default)]
pub struct Aliases {
    device: HashMap<u16, Box<str>>,
    broker: HashMap<u16, Box<str>>,
    device_bytes: usize,
    broker_bytes: usize,
    /// The broker's Topic Alias Maximum, once its CONNACK has said it (absent there: 0).
    broker_max: Option<u16>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AliasError {
    /// An empty topic with an alias the device never defined.
    Unknown(u16),
    TooMany,
    /// Over the maximum the broker announced (which the device saw in the CONNACK): the
    /// device's error, answered 0x94 here rather than by the broker dropping the session.
    OverMaximum {
        alias: u16,
        max: u16,
    },
}

/// How a publish must go upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The original bytes are right for the broker.
    AsIs,
    /// The broker never saw this alias defined (its defining publish was discarded):
    /// send the full topic, which also (re)defines the alias there.
    WithTopic(Box<str>),
}

impl Aliases {
    /// Whether the broker's maximum is known yet.
    pub fn knows_broker_max(&self) -> bool {
        self.broker_max.is_some()
    }

    pub fn set_broker_max(&mut self, max: u16) {
        self.broker_max = Some(max);
    }

    /// The publish's real topic: its own, or the one its alias stands for.
    pub fn resolve<'a>(
        &'a mut self,
        topic: &'a str,
        alias: Option<u16>,
    ) -> Result<&'a str, AliasError> {
        if let (Some(alias), Some(max)) = (alias, self.broker_max) {
            if alias > max {
                return Err(AliasError::OverMaximum { alias, max });
            }
        }
        match alias {
            None => Ok(topic),
            Some(a) if topic.is_empty() => self
                .device
                .get(&a)
                .map(|t| &**t)
                .ok_or(AliasError::Unknown(a)),
            Some(a) => {
                let old = self.device.get(&a).map_or(0, |t| t.len());
                let bytes = self.device_bytes - old + topic.len();
                if (self.device.len() >= MAX_ALIASES && old == 0) || bytes > MAX_ALIAS_BYTES {
                    return Err(AliasError::TooMany);
                }
                self.device_bytes = bytes;
                self.device.insert(a, topic.into());
                Ok(topic)
            }
        }
    }

    /// A publish with `topic` (resolved) and `alias` is being forwarded.
    pub fn forwarding(&mut self, wire_topic: &str, topic: &str, alias: Option<u16>) -> Upstream {
        let Some(a) = alias else {
            return Upstream::AsIs;
        };
        if wire_topic.is_empty() && self.broker.get(&a).map(|t| &**t) == Some(topic) {
            return Upstream::AsIs;
        }
        self.broker_knows(a, topic);
        if wire_topic.is_empty() {
            Upstream::WithTopic(topic.into())
        } else {
            Upstream::AsIs
        }
    }

    /// Record what the broker now maps `a` to. Over the byte cap, forget everything: a
    /// forgotten alias is merely re-sent with its full topic, which is always correct.
    fn broker_knows(&mut self, a: u16, topic: &str) {
        let old = self.broker.get(&a).map_or(0, |t| t.len());
        self.broker_bytes = self.broker_bytes - old + topic.len();
        self.broker.insert(a, topic.into());
        if self.broker_bytes > MAX_ALIAS_BYTES {
            self.broker.clear();
            self.broker_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn local_ack_goes_at_once_when_nothing_is_pending() {
        let mut o = AckOrder::default();
        assert_eq!(o.local(1, b("L1")).unwrap(), Some(b("L1")));
        assert!(o.is_empty());
    }

    #[test]
    fn local_ack_waits_for_earlier_broker_acks() {
        let mut o = AckOrder::default();
        o.expect_from_broker(AckKind::PubAck, 1).unwrap();
        o.expect_from_broker(AckKind::PubAck, 2).unwrap();
        assert_eq!(o.local(3, b("L3")).unwrap(), None);
        o.expect_from_broker(AckKind::PubAck, 4).unwrap();
        assert_eq!(o.local(5, b("L5")).unwrap(), None);
        // Broker acks 2 first (out of order): 1 still pending, nothing local is due.
        assert!(o.broker_acked(AckKind::PubAck, 2).is_empty());
        // Now 1: L3 is due; L5 still waits for 4.
        assert_eq!(o.broker_acked(AckKind::PubAck, 1), vec![(3, b("L3"))]);
        assert_eq!(o.broker_acked(AckKind::PubAck, 4), vec![(5, b("L5"))]);
        assert!(o.is_empty());
    }

    #[test]
    fn ack_kinds_are_distinct_and_unknown_acks_are_harmless() {
        let mut o = AckOrder::default();
        o.expect_from_broker(AckKind::PubRec, 7).unwrap();
        o.local(8, b("L")).unwrap();
        assert!(
            o.broker_acked(AckKind::PubAck, 7).is_empty(),
            "a PUBACK does not settle a PUBREC"
        );
        assert!(o.broker_acked(AckKind::PubComp, 99).is_empty());
        assert_eq!(o.broker_acked(AckKind::PubRec, 7), vec![(8, b("L"))]);
    }

    #[test]
    fn queue_is_bounded() {
        let mut o = AckOrder::default();
        for i in 0..MAX_PENDING_ACKS {
            o.expect_from_broker(AckKind::PubAck, i as u16).unwrap();
        }
        assert_eq!(o.expect_from_broker(AckKind::PubAck, 0), Err(Overflow));
        assert_eq!(o.local(1, b("x")), Err(Overflow));
    }

    #[test]
    fn retransmission_needs_dup_and_an_unacked_id() {
        let mut f = Inflight::default();
        f.insert(5, Disposition::Local).unwrap();
        assert_eq!(f.disposition(true, 5), Some(Disposition::Local));
        assert_eq!(f.disposition(false, 5), None, "DUP=0 is a new message");
        assert_eq!(f.disposition(true, 6), None);
        f.acked(5);
        // MQTT-4.3.2-5: once acknowledged, the id may carry a new message whatever DUP says.
        assert_eq!(f.disposition(true, 5), None);
    }

    #[test]
    fn alias_defined_by_a_discarded_publish_is_expanded_for_the_broker() {
        let mut a = Aliases::default();
        // Publish 1 defines alias 3 = "t/x" and is discarded: the broker never sees it.
        assert_eq!(a.resolve("t/x", Some(3)).unwrap(), "t/x");
        // Publish 2 uses the alias alone and is forwarded: it must carry the full topic.
        let topic = a.resolve("", Some(3)).unwrap().to_string();
        assert_eq!(topic, "t/x");
        assert_eq!(
            a.forwarding("", &topic, Some(3)),
            Upstream::WithTopic("t/x".into())
        );
        // Publish 3 likewise: now the broker knows it.
        let topic = a.resolve("", Some(3)).unwrap().to_string();
        assert_eq!(a.forwarding("", &topic, Some(3)), Upstream::AsIs);
    }

    #[test]
    fn alias_redefinition_is_tracked() {
        let mut a = Aliases::default();
        a.resolve("t/a", Some(1)).unwrap();
        assert_eq!(a.forwarding("t/a", "t/a", Some(1)), Upstream::AsIs);
        // Redefined to t/b by a publish that is discarded.
        a.resolve("t/b", Some(1)).unwrap();
        let topic = a.resolve("", Some(1)).unwrap().to_string();
        assert_eq!(topic, "t/b");
        assert_eq!(
            a.forwarding("", &topic, Some(1)),
            Upstream::WithTopic("t/b".into())
        );
    }

    #[test]
    fn alias_topic_bytes_are_capped() {
        let mut a = Aliases::default();
        let long = "t".repeat(40 * 1024);
        a.resolve(&long, Some(1)).unwrap();
        assert_eq!(a.resolve(&long, Some(2)), Err(AliasError::TooMany));
        // Redefining the same alias replaces its bytes rather than adding to them.
        a.resolve(&long, Some(1)).unwrap();
        a.resolve("short", Some(1)).unwrap();
        a.resolve(&long, Some(2)).unwrap();
    }

    #[test]
    fn unknown_alias_is_an_error() {
        let mut a = Aliases::default();
        assert_eq!(a.resolve("", Some(9)), Err(AliasError::Unknown(9)));
        a.set_broker_max(10);
        assert_eq!(
            a.resolve("t/x", Some(11)),
            Err(AliasError::OverMaximum { alias: 11, max: 10 })
        );
        assert_eq!(a.resolve("t/x", Some(10)).unwrap(), "t/x");
        assert_eq!(a.resolve("t", None).unwrap(), "t");
    }
}
