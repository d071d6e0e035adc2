//! Policy tests. Every one runs on `FakeRelativeClock` with a wall clock that follows it, so
//! times are exact and nothing sleeps.

mod bans;
mod config;
mod connect;
mod live;
mod push;
mod rates;
mod storm;
mod strikes;
mod sweep;
mod timing;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::FakeRelativeClock;

use super::*;
use crate::config::policy::{DeviceClass, PolicyConfig};

pub(super) struct Harness {
    pub clock: FakeRelativeClock,
    pub bans: Arc<MemoryBanList>,
    pub policy: Policy<FakeRelativeClock>,
}

impl Harness {
    pub fn new(cfg: PolicyConfig) -> Harness {
        let clock = FakeRelativeClock::default();
        let bans = Arc::new(MemoryBanList::new());
        let wall = FakeWallClock::following(clock.clone(), FakeWallClock::base());
        let policy = Policy::new(&cfg, bans.clone(), clock.clone())
            .unwrap_or_else(|e| panic!("config: {e}"))
            .with_wall_clock(Arc::new(wall));
        Harness {
            clock,
            bans,
            policy,
        }
    }

    /// The default test setup: see [`rhythm_config`].
    pub fn rhythm() -> Harness {
        Harness::new(rhythm_config())
    }

    pub fn advance(&self, secs: f64) {
        self.clock.advance(Duration::from_secs_f64(secs));
    }

    pub fn advance_nanos(&self, n: u64) {
        self.clock.advance(Duration::from_nanos(n));
    }

    pub fn wall(&self) -> std::time::SystemTime {
        FakeWallClock::following(self.clock.clone(), FakeWallClock::base()).now()
    }

    pub fn connect(&self, client_id: &str) -> Session {
        self.connect_as(&ident(client_id))
    }

    pub fn connect_as(&self, id: &Identity) -> Session {
        self.policy
            .on_connect(id)
            .unwrap_or_else(|r| panic!("{}: refused: {r}", id.client_id))
    }

    /// A 10-byte publish on `topic`.
    pub fn publish(&self, s: &mut Session, topic: &str) -> Decision {
        self.policy.on_publish(s, &facts(topic, 10))
    }

    pub fn verdict(&self, s: &mut Session) -> Verdict {
        self.publish(s, "t").verdict
    }

    /// Arms the session's rhythm clock, then publishes `n` times at once: `n` early strikes.
    /// Returns the last decision.
    pub fn strike_early(&self, s: &mut Session, n: usize) -> Decision {
        let mut last = self.publish(s, "t");
        assert_eq!(last.verdict, Verdict::Forward, "arming publish");
        for _ in 0..n {
            last = self.publish(s, "t");
            assert_eq!(last.verdict, Verdict::Discard(Reason::Early));
        }
        last
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.policy.stats().snapshot()
    }

    /// Ban `subject` until lifted, as a file would.
    pub fn ban_forever(&self, subject: Subject) {
        let ban = Ban {
            subject,
            reason: "test".into(),
            source: BanSource::File,
            created: self.wall(),
            expires: None,
        };
        self.bans
            .insert(ban, self.wall())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn ban_on(&self, subject: Subject) -> Option<Ban> {
        self.bans.get(&subject, self.wall())
    }
}

/// One class "default": T = 60 s, E = 5 s on every topic, generous rates (so only the test's
/// subject decides), unknown devices admitted, the shipped strike/storm defaults
/// (5 strikes in 60 s → 300 s, cap 86 400 s).
pub(super) fn rhythm_config() -> PolicyConfig {
    let mut cfg = PolicyConfig::default();
    cfg.classes.insert(
        "default".into(),
        DeviceClass {
            push_interval_secs: Some(60.0),
            tolerance_secs: 5.0,
            messages_per_sec: 1_000,
            message_burst: 1_000,
            bytes_per_sec: 1_000_000,
            byte_burst: 1_000_000,
            ..DeviceClass::default()
        },
    );
    cfg
}

pub(super) fn facts(topic: &str, len: usize) -> PublishFacts<'_> {
    PublishFacts {
        topic,
        qos: 1,
        len,
        retransmit: false,
    }
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub(super) fn ident(client_id: &str) -> Identity {
    Identity {
        client_id: client_id.into(),
        username: None,
        ip: ip("10.0.0.1"),
        named: Naming::ClientId,
    }
}

pub(super) fn ident_full(client_id: &str, username: Option<&str>, addr: &str) -> Identity {
    Identity {
        client_id: client_id.into(),
        username: username.map(Into::into),
        ip: ip(addr),
        named: Naming::ClientId,
    }
}

pub(super) fn client(id: &str) -> Subject {
    Subject::ClientId(id.into())
}

#[test]
fn policy_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Policy>();
    check::<Policy<FakeRelativeClock>>();
    check::<Session>();
    check::<MemoryBanList>();
}
