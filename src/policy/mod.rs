//! The policy stage: bans, connect limits, the reporting-rhythm check, per-device rate limits,
//! strikes and escalation. DESIGN.md "The policy, precisely" is the spec.
//!
//! Pure and synchronous: no I/O, no async, no lock shared by all publishes. Monotonic time
//! comes only from the injected `governor` clock (the same one drives the rate limiters, so a
//! test with `FakeRelativeClock` is exact to the nanosecond); wall-clock time, for ban
//! timestamps only, from a [`WallClock`].
//!
//! Where state lives:
//! - per connection, in [`Session`]: identity, class, rhythm clock, the connection slot;
//! - per device, in its entry in `Stats` (counters, message and byte rate limiters), which
//!   every session of the device references, so a publish does no map lookup;
//! - per device/subject, in sharded `DashMap`s (connect limiters, strikes, escalation);
//! - fleet-wide: the ban list (read-mostly `RwLock`, touched at accept/CONNECT and when a ban
//!   is issued, not per publish), the storm window (one short lock per CONNECT), atomics.
//!
//! Everything keyed by something a device controls is swept by [`Policy::sweep`].

mod acl;
mod auth;
mod bans;
mod class;
mod clock;
mod connect;
mod key;
pub mod live;
pub mod patterns;
mod publish;
mod rates;
mod rules;
mod session;
mod stats;
mod storm;
mod strikes;
mod ticks;
mod topic;
mod types;

#[cfg(test)]
mod tests;

use std::hash::RandomState;
use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::RateLimiter;

pub use auth::client_id_bound;
pub use bans::{Ban, BanError, BanList, BanSource, MemoryBanList, Subject, Tally};
pub use clock::{FakeWallClock, SystemWallClock, WallClock};
pub use live::DeviceClassView;
pub use session::{RhythmMark, Session};
pub use stats::{DeviceSnapshot, Stats, StatsSnapshot};
pub use types::{
    serial_key, serial_of_key, Admit, Decision, Identity, Naming, PublishFacts, Reason, Refusal,
    Verdict,
};

use crate::config::policy::PolicyConfig;

use key::{DeviceKey, PassThrough};
use rules::Rules;
use storm::Storm;
use strikes::{Escalation, IdSet, StrikeWindow};
use ticks::Ticks;

/// Every limiter runs on policy time (`Ticks`), so one clock reading serves a whole decision.
type Keyed<K, C, S = RandomState> =
    RateLimiter<K, DashMapStateStore<K, S>, Ticks<C>, NoOpMiddleware<Nanos>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, Ticks<C>, NoOpMiddleware<Nanos>>;

/// The policy. `Send + Sync`; share it as `Arc<Policy>`.
pub struct Policy<C: Clock = MonotonicClock> {
    clock: Ticks<C>,
    wall: Arc<dyn WallClock>,
    bans: Arc<dyn BanList>,
    rules: Rules,
    /// The classes, their quotas and the admin's per-device overrides; swappable (see `live`).
    live: live::Live,
    /// Connect attempts per address (see `strikes::ip_key`).
    per_ip: Keyed<IpAddr, C>,
    /// CONNECTs per client ID.
    per_client: Keyed<Arc<str>, C>,
    /// Accepts per listener, created on first use: listener names come from the config, not
    /// from devices, so this map is as small as the config.
    listeners: DashMap<Box<str>, Direct<C>>,
    client_strikes: DashMap<DeviceKey, StrikeWindow, PassThrough>,
    ip_strikes: DashMap<IpAddr, StrikeWindow>,
    username_ids: DashMap<Arc<str>, IdSet>,
    ip_ids: DashMap<IpAddr, IdSet>,
    escalation: DashMap<Subject, Escalation>,
    storm: Storm,
    /// Hashes client IDs (limiter keys, distinct-ID sets, storms); randomly keyed so IDs
    /// cannot be chosen to collide.
    hasher: RandomState,
    stats: Stats,
}

/// How many entries each keyed structure holds (for tests and memory metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Devices holding message and byte rate limiters (a subset of `devices`).
    pub device_rate_limiters: usize,
    pub ip_limiter_keys: usize,
    pub client_limiter_keys: usize,
    pub client_strikes: usize,
    pub ip_strikes: usize,
    pub username_sets: usize,
    pub ip_sets: usize,
    pub escalations: usize,
    pub devices: usize,
}

impl<C: Clock + Clone> Policy<C> {
    /// Validates `cfg` (errors name the key) and builds the policy. Ban timestamps use the
    /// system wall clock; see [`Policy::with_wall_clock`].
    pub fn new(cfg: &PolicyConfig, bans: Arc<dyn BanList>, clock: C) -> Result<Self, String> {
        let classes = live::Classes::compile(cfg)?;
        let rules = rules::compile(cfg)?;
        let clock = Ticks::new(clock);
        Ok(Policy {
            wall: Arc::new(SystemWallClock),
            bans,
            live: live::Live::new(classes),
            per_ip: RateLimiter::dashmap_with_clock(rules.per_ip, clock.clone()),
            per_client: RateLimiter::dashmap_with_clock(rules.per_client, clock.clone()),
            listeners: DashMap::new(),
            client_strikes: DashMap::with_hasher(PassThrough),
            ip_strikes: DashMap::new(),
            username_ids: DashMap::new(),
            ip_ids: DashMap::new(),
            escalation: DashMap::new(),
            storm: Storm::default(),
            hasher: RandomState::new(),
            stats: Stats::default(),
            rules,
            clock,
        })
    }

    /// Replaces the wall clock used for ban `created`/`expires` and ban expiry checks.
    pub fn with_wall_clock(mut self, wall: Arc<dyn WallClock>) -> Self {
        self.wall = wall;
        self
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn bans(&self) -> &Arc<dyn BanList> {
        &self.bans
    }

    /// The class `client_id` gets now, and whether an admin set it.
    pub fn class_of(&self, client_id: &str) -> Option<DeviceClassView> {
        self.live.view(client_id)
    }

    /// Put `client_id` in `class` (which must exist) from its next publish on, all its
    /// sessions included, until cleared or the process ends.
    pub fn set_override(&self, client_id: &str, class: &str) -> Result<(), String> {
        self.live.set_override(client_id, class)
    }

    /// Every class of `[policy.classes]` as configured (reloads included), by name.
    pub fn classes(
        &self,
    ) -> std::collections::BTreeMap<String, crate::config::policy::DeviceClass> {
        self.live.classes()
    }

    /// The admin's per-device overrides (client ID, class), sorted by client ID.
    pub fn overrides(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.live.overrides()
    }

    /// Back to the class `[policy]` gives it; false if there was no override.
    pub fn clear_override(&self, client_id: &str) -> bool {
        self.live.clear_override(client_id)
    }

    /// `[policy]` classes, devices, prefixes, default class and unknown devices, compiled
    /// (errors name the key) and not yet in force: a reload checks everything first.
    pub fn prepare_classes(&self, cfg: &PolicyConfig) -> Result<live::Classes, String> {
        live::Classes::compile(cfg)
    }

    /// Put prepared classes in force from each session's next publish on, keeping every
    /// device's state. Returns the client IDs whose override named a class now gone.
    pub fn apply_classes(&self, classes: live::Classes) -> Vec<Arc<str>> {
        self.live.apply(classes)
    }

    /// Whether a reconnect storm is damping connect-rate strikes right now.
    pub fn storm_active(&self) -> bool {
        self.storm_on(self.now())
    }

    /// Housekeeping; call every few seconds. Drops every keyed entry that no longer affects a
    /// decision, so memory follows the active population, not the number of keys ever seen.
    /// Each map is walked shard by shard, so publishes wait at most for one shard.
    pub fn sweep(&self) {
        let now = self.now();
        shrink(&self.per_ip);
        shrink(&self.per_client);
        let w = self.rules.window;
        self.client_strikes.retain(|_, s| s.live(now, w));
        self.ip_strikes.retain(|_, s| s.live(now, w));
        self.username_ids.retain(|_, s| s.live(now, w));
        self.ip_ids.retain(|_, s| s.live(now, w));
        self.escalation.retain(|_, e| e.forget_at > now);
        self.client_strikes.shrink_to_fit();
        self.ip_strikes.shrink_to_fit();
        self.username_ids.shrink_to_fit();
        self.ip_ids.shrink_to_fit();
        self.escalation.shrink_to_fit();
        self.stats.sweep_devices(now);
        self.bans.sweep(self.wall.now());
        self.storm_on(now);
    }

    pub fn footprint(&self) -> Footprint {
        Footprint {
            device_rate_limiters: self.stats.devices_with_rates(),
            ip_limiter_keys: self.per_ip.len(),
            client_limiter_keys: self.per_client.len(),
            client_strikes: self.client_strikes.len(),
            ip_strikes: self.ip_strikes.len(),
            username_sets: self.username_ids.len(),
            ip_sets: self.ip_ids.len(),
            escalations: self.escalation.len(),
            devices: self.stats.devices.len(),
        }
    }

    /// Policy time: nanoseconds since construction on the injected clock.
    fn now(&self) -> u64 {
        self.clock.read()
    }

    fn storm_on(&self, now: u64) -> bool {
        let on = self.storm.active(now);
        self.stats
            .storm_active
            .store(on, std::sync::atomic::Ordering::Relaxed);
        on
    }
}

impl<C: Clock> std::fmt::Debug for Policy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("classes", &self.live.class_count())
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

fn shrink<K, C, S>(l: &Keyed<K, C, S>)
where
    K: std::hash::Hash + Eq + Clone,
    C: Clock,
    S: std::hash::BuildHasher + Clone,
{
    l.retain_recent();
    l.shrink_to_fit();
}
