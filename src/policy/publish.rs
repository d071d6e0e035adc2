//! The per-publish decision: rhythm, then rates.
//!
//! Order, and why:
//! 1. A retransmission (DUP=1, packet id not yet acknowledged) is the same message again: it
//!    is not a timing sample and is not counted against the rates, and the policy returns
//!    `Forward` without touching any state. The relay decides what to do with it (forward it
//!    if the original went upstream, re-ack locally if the original was discarded); the
//!    policy's verdict on the original stands. The relay must only set `retransmit` for an id
//!    it has seen and not acknowledged, or DUP=1 would be a free pass.
//! 2. Rhythm. An early publish is discarded and struck *before* the rate limiters, so it does
//!    not also eat the budget of the publishes that are on time (and is not struck twice).
//! 3. Message rate, then byte rate. A publish refused for bytes has used a message cell: it
//!    was a message. A single publish larger than the byte burst can never pass.
//! 4. Only then does the publish count as accepted and move the rhythm clock: in rhythm, the
//!    arming publish, and a late one (late re-arms, or a device back from being offline would
//!    be judged against a stale clock forever).

use governor::clock::Clock;

use super::bans::BanSource;
use super::class::Rhythm;
use super::session::Session;
use super::stats::inc;
use super::types::{Decision, PublishFacts, Reason};
use super::Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// Not a rhythm sample (class without T, or topic outside `rhythm_topics`).
    Skip,
    /// First sample on this connection.
    Arm,
    InRhythm,
    Early,
    Late,
}

impl Timing {
    fn of(r: Rhythm, last: Option<u64>, now: u64) -> Timing {
        let Some(last) = last else {
            return Timing::Arm;
        };
        let delta = now.saturating_sub(last);
        if delta < r.lo {
            Timing::Early
        } else if delta > r.hi {
            Timing::Late
        } else {
            Timing::InRhythm
        }
    }
}

impl<C: Clock + Clone> Policy<C> {
    /// The classes changed since this session resolved its own (a reload, an admin's
    /// override): resolve again. Its rhythm state stays; its rate cells stay unless its quotas
    /// changed. A device the new rules no longer admit keeps its class until it reconnects.
    fn follow_reload(&self, s: &mut Session) {
        let generation = self.live.generation();
        if generation == s.generation {
            return;
        }
        let Some(r) = self.live.resolve(&s.id.client_id) else {
            s.generation = generation;
            return;
        };
        s.rates = self.device_rates(&s.device, r.class.index, &r.quotas, self.now());
        s.class = r.class;
        s.generation = r.generation;
    }

    /// Whether this session's SUBSCRIBE filters need looking at (its class limits them).
    pub fn checks_subscriptions(&self, s: &mut Session) -> bool {
        self.follow_reload(s);
        !s.class.subscribe.is_empty()
    }

    /// May this session subscribe to `filter`? A refusal is counted (not a strike: SUBACK
    /// failure codes are the protocol's own answer, and clients do not retry them).
    pub fn may_subscribe(&self, s: &Session, filter: &str) -> bool {
        let ok = s
            .class
            .subscribe
            .covers(filter, &s.id.client_id, s.id.username.as_deref());
        if !ok {
            inc(&self.stats.subscriptions_refused);
        }
        ok
    }

    /// One device PUBLISH on an admitted connection.
    pub fn on_publish(&self, s: &mut Session, p: &PublishFacts) -> Decision {
        if p.retransmit {
            inc(&self.stats.retransmits);
            return Decision::FORWARD;
        }
        self.follow_reload(s);
        // Permissions first: a publish where it may not go is no rhythm sample and uses no
        // rate budget, it is refused and struck.
        if !s
            .class
            .publish
            .allows(p.topic, &s.id.client_id, s.id.username.as_deref())
        {
            inc(&self.stats.discarded_not_authorized);
            inc(&s.device.not_authorized);
            let now = self.now();
            let why = "publish outside the topic permissions";
            let ban = self.strike_client(&s.id, &s.key, Some(&s.device), now, BanSource::Acl, why);
            return Decision::discard(Reason::NotAuthorized, ban);
        }
        let sample = s.class.topics.matches(p.topic);
        self.judge(s, sample, p.len)
    }

    /// One HTTP upload by a push device, on its session (which the gateway keeps across
    /// uploads, so the rhythm spans them). Every upload is a rhythm sample: uploads have no
    /// topic for `rhythm_topics` to choose by. It counts against the message rate only: the
    /// class's byte limits are sized for MQTT publishes, and an upload's size has its own
    /// bound (`[push] max_body_size`).
    pub fn on_upload(&self, s: &mut Session) -> Decision {
        self.follow_reload(s);
        self.judge(s, true, 0)
    }

    /// A push device's check-in: counted against its message rate, not a rhythm sample.
    pub fn on_checkin(&self, s: &mut Session) -> Decision {
        self.follow_reload(s);
        self.judge(s, false, 0)
    }

    /// Rhythm (when `sample`), then rates, then the verdict (see the module's order).
    fn judge(&self, s: &mut Session, sample: bool, len: usize) -> Decision {
        let now = self.now();
        let timing = match s.class.rhythm {
            Some(r) if sample => Timing::of(r, s.last_accepted, now),
            _ => Timing::Skip,
        };
        s.device.touch(now);
        if timing == Timing::Early {
            inc(&s.device.early);
            inc(&self.stats.discarded_early);
            let ban = self.strike_client(
                &s.id,
                &s.key,
                Some(&s.device),
                now,
                BanSource::Rhythm,
                "publish early (out of rhythm)",
            );
            return Decision::discard(Reason::Early, ban);
        }
        if let Some(reason) = s.rates.over(now, len) {
            inc(&s.device.rate_limited);
            inc(&self.stats.rate_limited);
            let why = match reason {
                Reason::ByteRate => "over the byte rate",
                _ => "over the message rate",
            };
            let ban = self.strike_client(&s.id, &s.key, Some(&s.device), now, BanSource::Rate, why);
            return Decision::discard(reason, ban);
        }
        if timing != Timing::Skip {
            s.last_accepted = Some(now);
        }
        if timing == Timing::Late {
            inc(&s.device.late);
            if !self.rules.late_forward {
                inc(&s.device.late_discarded);
                inc(&self.stats.discarded_late);
                return Decision::discard(Reason::Late, None);
            }
            inc(&self.stats.late_forwarded);
        }
        inc(&s.device.forwarded);
        inc(&self.stats.forwarded);
        Decision::FORWARD
    }
}
