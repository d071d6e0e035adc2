//! Counters for metrics: fleet-wide atomics and per-device counters.
//!
//! Per-device counters are shared with the device's sessions (each `Session` holds an `Arc` to
//! its device's entry), so a publish bumps them without a map lookup; the same entry counts the
//! device's concurrent connections and holds its rate limiters (see `rates`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dashmap::DashMap;

use super::rates::DeviceRates;
use super::rules::secs;

/// A disconnected device's entry is forgotten after this long…
const DEVICE_IDLE: u64 = 600;
/// …or as soon as its rate limiters are full again when more than this many disconnected
/// devices are being remembered.
pub(crate) const MAX_IDLE_DEVICES: usize = 100_000;

#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) forwarded: AtomicU64,
    pub(crate) retransmits: AtomicU64,
    pub(crate) discarded_early: AtomicU64,
    pub(crate) discarded_not_authorized: AtomicU64,
    pub(crate) subscriptions_refused: AtomicU64,
    pub(crate) discarded_late: AtomicU64,
    pub(crate) late_forwarded: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) refused_banned: AtomicU64,
    pub(crate) refused_unknown: AtomicU64,
    pub(crate) refused_connect_rate: AtomicU64,
    pub(crate) refused_too_many: AtomicU64,
    pub(crate) accept_banned: AtomicU64,
    pub(crate) accept_rate_limited: AtomicU64,
    pub(crate) listener_rate_limited: AtomicU64,
    pub(crate) bans_issued: AtomicU64,
    pub(crate) strikes: AtomicU64,
    pub(crate) storms: AtomicU64,
    pub(crate) storm_active: AtomicBool,
    pub(crate) devices: DashMap<Arc<str>, Arc<DeviceCounters>>,
}

/// A point-in-time copy of [`Stats`], for metrics exporters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Publishes forwarded, late ones forwarded under `late = "forward"` included.
    pub forwarded: u64,
    /// Retransmissions passed through without judgement.
    pub retransmits: u64,
    pub discarded_early: u64,
    /// Publishes outside the class's topic permissions.
    pub discarded_not_authorized: u64,
    /// SUBSCRIBE filters outside the class's `subscribe_topics`.
    pub subscriptions_refused: u64,
    pub discarded_late: u64,
    pub late_forwarded: u64,
    /// Publishes over the message or byte rate.
    pub rate_limited: u64,
    pub refused_banned: u64,
    pub refused_unknown: u64,
    pub refused_connect_rate: u64,
    pub refused_too_many: u64,
    /// Connections refused at accept: banned IP/CIDR, too many attempts from the IP.
    pub accept_banned: u64,
    pub accept_rate_limited: u64,
    pub listener_rate_limited: u64,
    pub bans_issued: u64,
    pub strikes: u64,
    /// Reconnect storms detected (a storm that continues is counted again each window).
    pub storms: u64,
    pub storm_active: bool,
    /// Devices with counters in memory.
    pub devices: usize,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Relaxed);
        StatsSnapshot {
            forwarded: g(&self.forwarded),
            retransmits: g(&self.retransmits),
            discarded_early: g(&self.discarded_early),
            discarded_not_authorized: g(&self.discarded_not_authorized),
            subscriptions_refused: g(&self.subscriptions_refused),
            discarded_late: g(&self.discarded_late),
            late_forwarded: g(&self.late_forwarded),
            rate_limited: g(&self.rate_limited),
            refused_banned: g(&self.refused_banned),
            refused_unknown: g(&self.refused_unknown),
            refused_connect_rate: g(&self.refused_connect_rate),
            refused_too_many: g(&self.refused_too_many),
            accept_banned: g(&self.accept_banned),
            accept_rate_limited: g(&self.accept_rate_limited),
            listener_rate_limited: g(&self.listener_rate_limited),
            bans_issued: g(&self.bans_issued),
            strikes: g(&self.strikes),
            storms: g(&self.storms),
            storm_active: self.storm_active.load(Relaxed),
            devices: self.devices.len(),
        }
    }

    /// One device's counters, if it is connected or was recently.
    pub fn device(&self, client_id: &str) -> Option<DeviceSnapshot> {
        self.devices.get(client_id).map(|d| d.snapshot())
    }

    /// Every device in memory with its counters (for the admin API's offenders: a walk over
    /// the map, shard by shard, taken every monitor sample, never per publish).
    pub fn each_device(&self, mut f: impl FnMut(&Arc<str>, DeviceSnapshot)) {
        for d in self.devices.iter() {
            f(d.key(), d.value().snapshot());
        }
    }

    /// The counters entry for a device that is connecting, created on first sight, with the
    /// entry's own copy of the client ID (interned: every session of the device shares it).
    pub(crate) fn device_entry(&self, client_id: &Arc<str>) -> (Arc<str>, Arc<DeviceCounters>) {
        if let Some(d) = self.devices.get(client_id) {
            return (Arc::clone(d.key()), Arc::clone(d.value()));
        }
        let d = self.devices.entry(Arc::clone(client_id)).or_default();
        (Arc::clone(d.key()), Arc::clone(d.value()))
    }

    /// Forgets devices that are disconnected and idle; `now` in policy nanoseconds.
    ///
    /// An entry some session still references (`strong_count > 1`) is never removed: the
    /// session would keep counting into a detached entry and a later CONNECT would see a
    /// connection count of zero. The check runs under the shard's write lock, and sessions
    /// take their reference under the same lock, so the two cannot interleave.
    ///
    /// An entry also holds the device's rate limiters, so it is only removed once they are
    /// full again: `last_active` (the latest CONNECT or publish, so at or after the last
    /// limiter check) at least [`DeviceRates::refill`] ago. That is when governor's
    /// `retain_recent` would have dropped the device's keys from keyed limiters, so a device
    /// reconnecting after a sweep never gets a fresh budget earlier than it would have there.
    /// Rule: removed iff unreferenced, and idle for `max(refill, DEVICE_IDLE)`, or for
    /// `refill` when more than `MAX_IDLE_DEVICES` are left. Entries kept over the cap are those
    /// active within their refill time, the same population keyed limiters would hold.
    pub(crate) fn sweep_devices(&self, now: u64) {
        let idle =
            |d: &Arc<DeviceCounters>| Arc::strong_count(d) == 1 && d.connections.load(Relaxed) == 0;
        let full = |d: &DeviceCounters| d.idle_for(now) >= d.refill();
        let mut idle_left = 0usize;
        self.devices.retain(|_, d| {
            if !idle(d) {
                return true;
            }
            let keep = !full(d) || d.idle_for(now) < secs(DEVICE_IDLE);
            idle_left += usize::from(keep);
            keep
        });
        if idle_left > MAX_IDLE_DEVICES {
            self.devices.retain(|_, d| !idle(d) || !full(d));
        }
        self.devices.shrink_to_fit();
    }

    /// How many devices hold rate limiters.
    pub(crate) fn devices_with_rates(&self) -> usize {
        self.devices.iter().filter(|d| d.rates().is_some()).count()
    }
}

#[derive(Debug, Default)]
pub struct DeviceCounters {
    pub(crate) forwarded: AtomicU64,
    pub(crate) early: AtomicU64,
    pub(crate) late: AtomicU64,
    /// Late publishes discarded (all of `late`, unless `late = "forward"`).
    pub(crate) late_discarded: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) not_authorized: AtomicU64,
    /// Strikes against this client ID (any rule).
    pub(crate) strikes: AtomicU64,
    pub(crate) connections: AtomicU32,
    /// Policy time of the last CONNECT or publish (only ever moves forward, see
    /// [`DeviceCounters::touch`]).
    pub(crate) last_active: AtomicU64,
    /// The device's rate limiters, set at CONNECT (see `rates`); sessions hold their own
    /// `Arc`, so a publish never takes this lock.
    rates: Mutex<Option<Arc<DeviceRates>>>,
}

impl DeviceCounters {
    /// Records activity at `now`. `fetch_max`, not a store: with concurrent connections a
    /// stale reading must not move it back, or a sweep could drop limiters that are not full.
    pub(crate) fn touch(&self, now: u64) {
        self.last_active.fetch_max(now, Relaxed);
    }

    fn idle_for(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_active.load(Relaxed))
    }

    /// Time for this device's limiters to be full again (0 without limiters).
    fn refill(&self) -> u64 {
        self.rates().as_ref().map_or(0, |r| r.refill())
    }

    /// The rate limiters slot (taken at CONNECT and by sweeps, never per publish).
    pub(crate) fn rates(&self) -> MutexGuard<'_, Option<Arc<DeviceRates>>> {
        self.rates.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            forwarded: self.forwarded.load(Relaxed),
            early: self.early.load(Relaxed),
            late: self.late.load(Relaxed),
            late_discarded: self.late_discarded.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            not_authorized: self.not_authorized.load(Relaxed),
            strikes: self.strikes.load(Relaxed),
            connections: self.connections.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceSnapshot {
    pub forwarded: u64,
    pub early: u64,
    /// Late publishes, discarded or (with `late = "forward"`) forwarded.
    pub late: u64,
    /// Late publishes discarded (all of `late`, unless `late = "forward"`).
    pub late_discarded: u64,
    pub rate_limited: u64,
    /// Publishes outside the class's topic permissions.
    pub not_authorized: u64,
    pub strikes: u64,
    pub connections: u32,
}

/// Bumps a counter.
pub(crate) fn inc(a: &AtomicU64) {
    a.fetch_add(1, Relaxed);
}
