//! Device → broker: read packets, judge publishes, forward or answer locally.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::state::{AckKind, AliasError, Aliases, Disposition, Upstream};
use super::{lock, Guarded, MqttCtx, Shared};
use crate::config::policy::DiscardReasonCode;
use crate::error::{Error, Kind, Side};
use crate::forward::relay::UpRules;
use crate::mqtt::server::{self, reason, DevicePacket, Framer, Publish, Version};
use crate::mqtt::wire::packet_len;
use crate::policy::{PublishFacts, Reason, Session, Verdict};

/// The device → broker half's rules for one MQTT connection.
pub struct Up<'a> {
    pub framer: Framer,
    pub version: Version,
    pub keep_alive: u16,
    pub session: Session,
    pub shared: &'a Guarded,
    pub notify: &'a Notify,
    pub ctx: &'a MqttCtx<'a>,
    /// Publishes judged so far (to sample the decision time).
    pub judged: u32,
    pub aliases: Aliases,
}

impl UpRules for Up<'_> {
    fn on_device_data(&mut self, mut data: Bytes, out: &mut Vec<Bytes>) -> Result<(), Error> {
        let malformed = |e| Error::device(Kind::from_wire(&e), format!("device packet: {e}"));
        if self.framer.buffered() == 0 {
            // The common case: the frame holds whole packets. They are taken from it as they
            // are, without a copy; only a partial packet at its end waits in the framer.
            while let Some(n) = packet_len(&data, self.framer.max_packet()).map_err(malformed)? {
                let p = data.split_to(n);
                handle(self, p, out)?;
            }
            if data.is_empty() {
                return Ok(());
            }
        }
        self.framer.push(&data);
        while let Some(p) = self.framer.next_packet().map_err(malformed)? {
            handle(self, p, out)?;
        }
        Ok(())
    }

    // A device whose publishes are all discarded sends the broker nothing, and the broker drops
    // it after 1.5 × keep-alive; we send PINGREQ for it when nothing went up for half of that.
    fn tick_every(&self) -> Option<Duration> {
        let keep_alive = Duration::from_secs(u64::from(self.keep_alive));
        (self.keep_alive > 0).then(|| (keep_alive / 2).max(Duration::from_millis(500)))
    }

    fn tick(&mut self, silent: Duration, sent_up: bool) -> Result<Option<Bytes>, Error> {
        let keep_alive = Duration::from_secs(u64::from(self.keep_alive));
        if silent > keep_alive + keep_alive / 2 {
            return Err(Error::device(
                Kind::Timeout,
                "nothing from the device within 1.5 × its keep-alive",
            ));
        }
        if sent_up {
            return Ok(None);
        }
        lock(self.shared).injected_pings += 1;
        Ok(Some(Bytes::copy_from_slice(&server::pingreq())))
    }
}

fn handle(u: &mut Up<'_>, p: Bytes, out: &mut Vec<Bytes>) -> Result<(), Error> {
    let packet = server::parse_device(&p, u.version)
        .map_err(|e| Error::device(Kind::from_wire(&e), format!("device packet: {e}")))?;
    match packet {
        DevicePacket::Publish(pb) => publish(u, &p, &pb, out),
        DevicePacket::PubRel(id) => {
            let mut s = lock(u.shared);
            if s.local_qos2.remove(&id) {
                // Ours to answer: the broker never saw this QoS 2 publish.
                let ack = Bytes::from(server::ack(
                    AckKind::PubComp,
                    id,
                    reason::SUCCESS,
                    u.version,
                ));
                local_ack(&mut s, u.notify, id, ack)
            } else {
                s.acks
                    .expect_from_broker(AckKind::PubComp, id)
                    .map_err(|_| overflow())?;
                out.push(p);
                Ok(())
            }
        }
        DevicePacket::Subscribe => subscribe(u, p, out),
        DevicePacket::Connect(_) => Err(Error::device(Kind::Protocol, "a second CONNECT")),
        DevicePacket::Disconnect => {
            out.push(p);
            Err(Error::new(
                Kind::DeviceClosed,
                Side::Device,
                "device sent DISCONNECT",
            ))
        }
        _ => {
            out.push(p);
            Ok(())
        }
    }
}

fn publish(u: &mut Up<'_>, p: &Bytes, pb: &Publish<'_>, out: &mut Vec<Bytes>) -> Result<(), Error> {
    // The broker's alias maximum arrives with its CONNACK, on the other half: taken over once,
    // so that only aliased publishes before it take the lock.
    if pb.topic_alias.is_some() && !u.aliases.knows_broker_max() {
        if let Some(max) = lock(u.shared).alias_max {
            u.aliases.set_broker_max(max);
        }
    }
    // Without an alias the topic is the packet's own: no copy per publish on the hot path.
    let topic: Cow<'_, str> = match pb.topic_alias {
        None => Cow::Borrowed(pb.topic),
        Some(_) => match u.aliases.resolve(pb.topic, pb.topic_alias) {
            Ok(t) => Cow::Owned(t.to_string()),
            Err(AliasError::Unknown(a)) => {
                return Err(Error::device(
                    Kind::BadAlias,
                    format!("topic alias {a} was never defined"),
                ))
            }
            Err(AliasError::TooMany) => {
                return Err(Error::device(Kind::BadAlias, "too many topic aliases"))
            }
            Err(AliasError::OverMaximum { alias, max }) => {
                return Err(Error::device(
                    Kind::BadAlias,
                    format!("topic alias {alias} is over the broker's maximum ({max})"),
                ))
            }
        },
    };
    let earlier = pb
        .packet_id
        .and_then(|id| lock(u.shared).inflight.disposition(pb.dup, id));
    let verdict = match earlier {
        // A resend of an id still awaiting its ack is answered by the ack the original gets
        // (ours or the broker's). It is not forwarded again: nothing proves it is the same
        // message, and forwarding it would let DUP=1 copies bypass the policy.
        Some(Disposition::Local | Disposition::Broker) => return Ok(()),
        None => {
            // DUP=1 on an id this connection has no record of is judged as a new message:
            // trusting the flag would let a device skip every rule by setting it. (A resend
            // after reconnect is the session's first publish, which only arms the clock.)
            let facts = PublishFacts {
                topic: &topic,
                qos: pb.qos,
                len: p.len(),
                retransmit: false,
            };
            u.judged = u.judged.wrapping_add(1);
            let timed = (u.judged % crate::gateway::timings::DECISION_SAMPLE == 1)
                .then(std::time::Instant::now);
            let decision = u.ctx.policy.on_publish(&mut u.session, &facts);
            if let Some(t0) = timed {
                u.ctx.decision_time.observe(t0.elapsed().as_secs_f64());
            }
            if let Some(ban) = decision.ban {
                // The ban list announces it; this connection is kicked on its next turn.
                tracing::warn!(subject = %ban.subject, reason = %ban.reason, "banned");
            }
            decision.verdict
        }
    };
    match verdict {
        Verdict::Forward => {
            let bytes = match u.aliases.forwarding(pb.topic, &topic, pb.topic_alias) {
                Upstream::AsIs => p.clone(),
                Upstream::WithTopic(t) => Bytes::from(server::publish_with_topic(p, pb, &t)),
            };
            if let Some(id) = pb.packet_id {
                let kind = if pb.qos == 1 {
                    AckKind::PubAck
                } else {
                    AckKind::PubRec
                };
                let mut s = lock(u.shared);
                s.acks
                    .expect_from_broker(kind, id)
                    .map_err(|_| overflow())?;
                s.inflight
                    .insert(id, Disposition::Broker)
                    .map_err(|_| overflow())?;
            }
            out.push(bytes);
            Ok(())
        }
        Verdict::Discard(Reason::NotAuthorized) if u.session.disconnects_when_denied() => {
            Err(Error::device(
                Kind::NotAuthorized,
                format!("publish to {topic:?} outside the class's publish_topics"),
            ))
        }
        Verdict::Discard(why) => {
            tracing::debug!(topic = %topic, qos = pb.qos, ?why, "publish discarded");
            let Some(id) = pb.packet_id else {
                return Ok(());
            }; // QoS 0: dropped
            let code = discard_code(why, u.ctx.policy_config.discard_reason);
            let mut s = lock(u.shared);
            let ack = if pb.qos == 1 {
                server::ack(AckKind::PubAck, id, code, u.version)
            } else {
                // A PUBREC of 0x80 or more ends the QoS 2 flow; below, a PUBREL will follow.
                // On 3.1.1 every PUBREC looks like success, so a PUBREL follows and is ours.
                if code < 0x80 || u.version == Version::V311 {
                    s.local_qos2.insert(id);
                }
                server::ack(AckKind::PubRec, id, code, u.version)
            };
            s.inflight
                .insert(id, Disposition::Local)
                .map_err(|_| overflow())?;
            local_ack(&mut s, u.notify, id, Bytes::from(ack))
        }
    }
}

/// Most filters one SUBSCRIBE may carry where a class limits subscriptions: the broker's
/// SUBACK for them must stay small enough to be captured and merged (see `scan`).
const MAX_CHECKED_FILTERS: usize = 256;

/// Most SUBSCRIBEs awaiting a SUBACK to merge: a client waits for each before reusing its id.
const MAX_PENDING_SUBACKS: usize = 64;

/// A SUBSCRIBE, under the class's topic permissions: the allowed filters go on to the broker,
/// the others are refused in the SUBACK (the broker's, made whole again on the way back, or
/// ours when no filter is left for the broker).
fn subscribe(u: &mut Up<'_>, p: Bytes, out: &mut Vec<Bytes>) -> Result<(), Error> {
    if !u.ctx.policy.checks_subscriptions(&mut u.session) {
        out.push(p);
        return Ok(());
    }
    let parts = server::subscribe_parts(&p, u.version)
        .ok_or_else(|| Error::device(Kind::Malformed, "device packet: malformed SUBSCRIBE"))?;
    let keep: Vec<bool> = match parts.len() > MAX_CHECKED_FILTERS {
        true => vec![false; parts.len()],
        false => parts
            .filters()
            .map(|f| u.ctx.policy.may_subscribe(&u.session, f))
            .collect(),
    };
    if keep.iter().all(|k| *k) {
        out.push(p);
        return Ok(());
    }
    let refused: Vec<&str> = parts
        .filters()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|(f, _)| f)
        .collect();
    tracing::info!(?refused, "subscriptions outside subscribe_topics refused");
    let refusal = match u.version {
        Version::V5 => reason::NOT_AUTHORIZED,
        Version::V311 => reason::V3_SUBSCRIBE_FAILURE,
    };
    let mut s = lock(u.shared);
    if keep.iter().all(|k| !*k) {
        // Nothing left for the broker: the SUBACK is ours.
        if s.to_device.len() >= super::state::MAX_PENDING_ACKS {
            return Err(overflow());
        }
        let codes = vec![refusal; keep.len()];
        let suback = server::suback(parts.packet_id, &codes, u.version);
        s.to_device.push_back(Bytes::from(suback));
        u.notify.notify_one();
        return Ok(());
    }
    if s.subacks.len() >= MAX_PENDING_SUBACKS && !s.subacks.contains_key(&parts.packet_id) {
        return Err(overflow());
    }
    out.push(Bytes::from(parts.keeping(&keep)));
    s.subacks.insert(parts.packet_id, keep);
    Ok(())
}

/// Hand a local ack to the device side: now if nothing is pending before it, else in turn.
fn local_ack(s: &mut Shared, notify: &Notify, id: u16, ack: Bytes) -> Result<(), Error> {
    // A device that stops reading must not grow this queue: it is bounded like the acks.
    if s.to_device.len() >= super::state::MAX_PENDING_ACKS {
        return Err(overflow());
    }
    if let Some(now) = s.acks.local(id, ack).map_err(|_| overflow())? {
        s.inflight.acked(id);
        s.to_device.push_back(now);
        notify.notify_one();
    }
    Ok(())
}

fn discard_code(why: Reason, configured: DiscardReasonCode) -> u8 {
    match why {
        // Over a rate: say so (EMQX does the same), MQTT 5 clients see a quota error.
        Reason::MessageRate | Reason::ByteRate => reason::QUOTA_EXCEEDED,
        Reason::NotAuthorized => reason::NOT_AUTHORIZED,
        Reason::Early | Reason::Late => match configured {
            DiscardReasonCode::Success => reason::SUCCESS,
            DiscardReasonCode::NoMatchingSubscribers => reason::NO_MATCHING_SUBSCRIBERS,
        },
    }
}

fn overflow() -> Error {
    Error::device(
        Kind::Overflow,
        "more unacknowledged packets than any client window allows",
    )
}
