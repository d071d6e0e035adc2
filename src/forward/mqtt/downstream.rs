//! Broker → device: pass everything through in order, settle pending acks, swallow the
//! PINGRESPs that answer our own PINGREQs, and slot local acks in at packet boundaries.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::device::DeviceTx;
use super::scan::{Piece, Scanner};
use super::state::AckKind;
use super::upstream::Counters;
use super::{lock, Guarded};
use crate::error::{Error, Kind, Side};
use crate::forward::relay::RelaySettings;
use crate::mqtt::server::{self, BrokerPacket, Version};

const CHUNK: usize = 16 * 1024;

/// Runs until the broker side ends or the device cannot be written; returns why.
pub async fn run<T: DeviceTx>(
    tx: &mut T,
    up: &TcpStream,
    version: Version,
    shared: &Guarded,
    notify: &Notify,
    counters: &Counters<'_>,
    relay: &RelaySettings,
) -> Error {
    let mut scanner = Scanner::default();
    // A device that stops reading blocks our sends; pings cannot tell while we are blocked, so
    // the send itself gives up after as long as the missed pongs would have taken.
    let stall = relay.ping_interval * (relay.max_missed_pongs + 1);
    let start = tokio::time::Instant::now() + relay.ping_interval;
    let mut ping = tokio::time::interval_at(start, relay.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = up.readable() => {
                if let Err(e) = ready {
                    return Error::upstream(Kind::UpstreamIo, e);
                }
                let mut buf = BytesMut::with_capacity(CHUNK);
                match up.try_read_buf(&mut buf) {
                    Ok(0) => return Error::new(Kind::UpstreamClosed, Side::Upstream, "broker closed the connection"),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Error::upstream(Kind::UpstreamIo, format!("reading from broker: {e}")),
                }
                let mut out = BytesMut::with_capacity(buf.len());
                let scanned = scanner.feed(&buf, |piece| match piece {
                    Piece::Pass(b) => out.extend_from_slice(b),
                    Piece::Control(packet) => control(packet, version, shared, &mut out),
                });
                if scanned.is_err() {
                    return Error::upstream(Kind::UpstreamIo, "malformed packet from the broker");
                }
                if scanner.at_boundary() {
                    take_due(shared, &mut out);
                }
                if !out.is_empty() {
                    counters.add_down(out.len());
                    if let Err(e) = send_within(tx, out.freeze(), stall).await {
                        return e;
                    }
                }
            }
            () = notify.notified() => {
                // Local acks may only go between the broker's packets.
                if scanner.at_boundary() {
                    let mut out = BytesMut::new();
                    take_due(shared, &mut out);
                    if !out.is_empty() {
                        if let Err(e) = send_within(tx, out.freeze(), stall).await {
                            return e;
                        }
                    }
                }
            }
            _ = ping.tick(), if tx.has_pings() => {
                let missed = counters.missed_pongs.fetch_add(1, Ordering::Relaxed);
                if missed >= relay.max_missed_pongs {
                    return Error::device(Kind::Timeout, format!("device missed {missed} pongs"));
                }
                if tx.ping().await.is_err() {
                    return Error::new(Kind::Gone, Side::Device, "device went away");
                }
            }
        }
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

async fn send_within<T: DeviceTx>(
    tx: &mut T,
    data: bytes::Bytes,
    limit: std::time::Duration,
) -> Result<(), Error> {
    match tokio::time::timeout(limit, tx.send(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(())) => Err(Error::new(Kind::Gone, Side::Device, "device went away")),
        Err(_) => Err(Error::device(Kind::Timeout, "device stopped reading")),
    }
}

fn take_due(shared: &Guarded, out: &mut BytesMut) {
    let mut s = lock(shared);
    while let Some(p) = s.to_device.pop_front() {
        out.extend_from_slice(&p);
    }
}
