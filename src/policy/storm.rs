//! Reconnect-storm damping.
//!
//! After a broker or gateway restart the whole fleet reconnects at once, and a NAT puts
//! hundreds of those devices behind one address: by the per-IP and per-client connect limits
//! that looks exactly like a flood. EMQX's flapping detector counts every CONNECT and mass-bans
//! in that moment. Here, when `min_devices` *distinct* client IDs complete a CONNECT within one
//! (tumbling) window, a storm is on for `hold_secs`: connect-rate violations are still refused,
//! but they are not strikes. One device flapping alone is one ID and can never start a storm;
//! publish violations are strikes whatever the weather.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Storm {
    window: Mutex<Window>,
    /// Policy time at which the current storm ends (0: none yet). Read lock-free.
    until: AtomicU64,
}

#[derive(Debug, Default)]
struct Window {
    start: u64,
    /// Hashes of the distinct client IDs seen in this window; never more than `min`.
    seen: HashSet<u64>,
}

impl Storm {
    pub(crate) fn active(&self, now: u64) -> bool {
        now < self.until.load(Relaxed)
    }

    /// Records a completed CONNECT. True when this one starts (or prolongs) a storm.
    ///
    /// The lock is per CONNECT, never per publish, and held for one set insert.
    pub(crate) fn connected(&self, id: u64, now: u64, min: usize, window: u64, hold: u64) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.seen.is_empty() || now.saturating_sub(w.start) >= window {
            w.start = now;
            w.seen.clear();
        }
        w.seen.insert(id);
        if w.seen.len() < min {
            return false;
        }
        // Start a fresh window: a storm that goes on is detected again and prolonged.
        w.seen.clear();
        self.until.fetch_max(now.saturating_add(hold), Relaxed);
        true
    }
}
