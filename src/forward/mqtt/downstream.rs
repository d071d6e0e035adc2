//! Broker → device: pass everything through in order, settle pending acks, swallow the
//! PINGRESPs that answer our own PINGREQs, and slot local acks in at packet boundaries.

use bytes::{Bytes, BytesMut};

use super::scan::{Piece, Scanner};
use super::state::AckKind;
use super::{lock, Guarded};
use crate::error::{Error, Kind};
use crate::forward::relay::DownRules;
use crate::mqtt::server::{self, BrokerPacket, Version};

/// The broker → device half's rules for one MQTT connection.
pub struct Down<'a> {
    pub scanner: Scanner,
    pub version: Version,
    pub shared: &'a Guarded,
}

impl DownRules for Down<'_> {
    fn on_upstream_data(&mut self, buf: BytesMut) -> Result<Option<Bytes>, Error> {
        let mut out = BytesMut::with_capacity(buf.len());
        let (version, shared) = (self.version, self.shared);
        let scanned = self.scanner.feed(&buf, |piece| match piece {
            Piece::Pass(b) => out.extend_from_slice(b),
            Piece::Control(packet) => control(packet, version, shared, &mut out),
        });
        if scanned.is_err() {
            return Err(Error::upstream(
                Kind::UpstreamIo,
                "malformed packet from the broker",
            ));
        }
        if self.scanner.at_boundary() {
            take_due(shared, &mut out);
        }
        Ok(Some(out.freeze()))
    }

    fn due(&mut self) -> Option<Bytes> {
        // Local acks may only go between the broker's packets.
        if !self.scanner.at_boundary() {
            return None;
        }
        let mut out = BytesMut::new();
        take_due(self.shared, &mut out);
        Some(out.freeze())
    }

    /// The local acks still owed, then (MQTT 5) a DISCONNECT saying why, unless the device
    /// itself ended it.
    fn last_words(&mut self, why: &Error) -> Vec<Bytes> {
        if !self.scanner.at_boundary() {
            // Inside a broker packet already partly relayed: anything sent now would land in
            // its middle. The device gets only the transport's close.
            return Vec::new();
        }
        let mut words: Vec<Bytes> = lock(self.shared).to_device.drain(..).collect();
        if !matches!(why.kind(), Kind::Gone | Kind::DeviceClosed) {
            if let (Version::V5, Some(reason)) = (self.version, why.mqtt_reason()) {
                words.push(Bytes::from(server::disconnect(reason)));
            }
        }
        words
    }
}

/// One whole control packet from the broker: pass it on (unless it answers our own PINGREQ)
/// and release the local acks that were waiting for it.
fn control(packet: &[u8], version: Version, shared: &Guarded, out: &mut BytesMut) {
    let parsed = server::parse_broker(packet, version).unwrap_or(BrokerPacket::Other);
    let mut s = lock(shared);
    // The SUBACK for a SUBSCRIBE we forwarded without its refused filters: made whole again.
    // (One too large to be captured passes as the broker sent it.)
    let merged = server::suback_id(packet)
        .and_then(|id| s.subacks.remove(&id))
        .and_then(|kept| {
            let refusal = match version {
                Version::V5 => server::reason::NOT_AUTHORIZED,
                Version::V311 => server::reason::V3_SUBSCRIBE_FAILURE,
            };
            server::suback_merged(packet, version, &kept, refusal)
        });
    if let Some(whole) = merged {
        while let Some(p) = s.to_device.pop_front() {
            out.extend_from_slice(&p);
        }
        out.extend_from_slice(&whole);
        return;
    }
    let settled = match parsed {
        BrokerPacket::PingResp if s.injected_pings > 0 => {
            s.injected_pings -= 1;
            return;
        }
        BrokerPacket::ConnAck {
            topic_alias_max, ..
        } if version == Version::V5 => {
            s.alias_max = Some(topic_alias_max.unwrap_or(0));
            None
        }
        BrokerPacket::PubAck(id) => Some((AckKind::PubAck, id)),
        BrokerPacket::PubRec(id) => Some((AckKind::PubRec, id)),
        BrokerPacket::PubComp(id) => Some((AckKind::PubComp, id)),
        _ => None,
    };
    // Local acks already due go first: they were owed before this broker packet arrived.
    while let Some(p) = s.to_device.pop_front() {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(packet);
    if let Some((kind, id)) = settled {
        if kind != AckKind::PubComp {
            s.inflight.acked(id);
        }
        for (local_id, ack) in s.acks.broker_acked(kind, id) {
            s.inflight.acked(local_id);
            out.extend_from_slice(&ack);
        }
    }
}

fn take_due(shared: &Guarded, out: &mut BytesMut) {
    let mut s = lock(shared);
    while let Some(p) = s.to_device.pop_front() {
        out.extend_from_slice(&p);
    }
}
