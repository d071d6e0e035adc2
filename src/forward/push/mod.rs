//! HTTP push: uploads and check-ins of devices that cannot keep a socket open, proxied to the
//! platform's collectors exactly once per transaction (see `ledger`), redirected by serial.
//!
//! The story of one upload is in `pipeline::upload`; this module holds what it needs: the
//! settings, the push devices' policy sessions, the redirect rules, the transaction records,
//! the connections to the collectors, and the counters.

mod collector;
pub mod ledger;
mod redirect;
mod redis_ledger;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::PushSettings;
use crate::error::PushRefusal;
use crate::gateway::clients::Registration;
use crate::policy::{Policy, Session};

pub use collector::{
    drain, fingerprint, hex, BodyFault, BodyReport, Collectors, Metered, Progress,
};
pub use ledger::{Claim, Ledger, Outcome, Ticket};
pub use redirect::Redirects;
pub use redis_ledger::RedisLedger;

/// Uploads by how they ended, for `/metrics`.
pub const OUTCOMES: [&str; 16] = [
    "delivered",
    "replayed",
    "discarded",
    "redirected",
    "conflict",
    "mismatch",
    "too_large",
    "banned",
    "rate_limited",
    "unknown_device",
    "collector_failed",
    "body_broken",
    "bad_transaction",
    "no_serial",
    "method",
    "too_many_devices",
];

pub struct PushStats {
    outcomes: [AtomicU64; OUTCOMES.len()],
    pub checkins: AtomicU64,
    /// Collector answer times, seconds.
    pub collector_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for PushStats {
    fn default() -> Self {
        PushStats {
            outcomes: Default::default(),
            checkins: AtomicU64::new(0),
            // 100 µs to ~3 s.
            collector_seconds: crate::gateway::timings::commit_histogram(),
        }
    }
}

impl PushStats {
    pub fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].fetch_add(1, Relaxed);
        }
    }

    pub fn outcomes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        OUTCOMES
            .iter()
            .zip(&self.outcomes)
            .map(|(o, n)| (*o, n.load(Relaxed)))
    }
}

/// A push device known to the gateway: its policy session (so the rhythm spans uploads) and
/// its line in the admin API's clients.
pub struct PushDevice {
    pub session: Session,
    last_seen: Instant,
    _listed: Registration,
}

pub struct Push {
    settings: RwLock<Arc<PushSettings>>,
    redirects: RwLock<Arc<Redirects>>,
    pub ledger: Arc<Ledger>,
    pub collectors: Collectors,
    devices: Mutex<HashMap<Arc<str>, Arc<Mutex<PushDevice>>>>,
    pub stats: PushStats,
    /// Deliveries under way, run apart from their requests: waited for at shutdown before
    /// the records close, so none is delivered and then left unrecorded.
    pub tasks: tokio_util::task::TaskTracker,
}

impl Push {
    pub fn new(settings: &PushSettings, ledger: Arc<Ledger>) -> Result<Push, String> {
        Ok(Push {
            redirects: RwLock::new(Arc::new(Redirects::compile(settings)?)),
            settings: RwLock::new(Arc::new(settings.clone())),
            ledger,
            collectors: Collectors::default(),
            devices: Mutex::default(),
            stats: PushStats::default(),
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    pub fn settings(&self) -> Arc<PushSettings> {
        self.settings
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn redirects(&self) -> Arc<Redirects> {
        self.redirects
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Compile what a reload would put in force; nothing changes yet.
    pub fn prepare(settings: &PushSettings) -> Result<Redirects, String> {
        Redirects::compile(settings)
    }

    /// Redirect rules and the other settings from a reload. The transaction records keep their
    /// lease and retention until a restart.
    pub fn apply(&self, settings: &PushSettings, redirects: Redirects) {
        if let Ok(mut g) = self.redirects.write() {
            *g = Arc::new(redirects);
        }
        if let Ok(mut g) = self.settings.write() {
            *g = Arc::new(settings.clone());
        }
        self.collectors.clear();
    }

    /// The device's session, admitted by the policy at its first upload (bans, device rules,
    /// connect rate) and kept while it keeps uploading. A ban issued since is checked by the
    /// caller on every upload.
    pub fn device(
        &self,
        policy: &Policy,
        serial: &Arc<str>,
        ip: IpAddr,
        list: impl FnOnce() -> Registration,
    ) -> Result<Arc<Mutex<PushDevice>>, PushRefusal> {
        let mut devices = lock(&self.devices);
        if let Some(d) = devices.get(serial) {
            lock(d).last_seen = Instant::now();
            return Ok(d.clone());
        }
        if devices.len() >= self.settings().max_devices {
            return Err(PushRefusal::TooManyDevices);
        }
        let identity = crate::policy::Identity::serial(serial.clone(), ip);
        let session = policy
            .on_connect(&identity)
            .map_err(|r| PushRefusal::from_policy(&r))?;
        let device = Arc::new(Mutex::new(PushDevice {
            session,
            last_seen: Instant::now(),
            _listed: list(),
        }));
        devices.insert(serial.clone(), device.clone());
        Ok(device)
    }

    /// Forget a device (banned, or kicked by an admin): its next upload is judged afresh.
    pub fn forget(&self, serial: &str) {
        lock(&self.devices).remove(serial);
    }

    /// Drop devices silent longer than `device_idle_secs`; sweep the transaction records.
    pub fn sweep(&self) {
        let idle = Duration::from_secs(self.settings().device_idle_secs);
        let now = Instant::now();
        lock(&self.devices).retain(|_, d| now.duration_since(lock(d).last_seen) < idle);
        self.ledger.sweep();
    }

    pub fn devices(&self) -> usize {
        lock(&self.devices).len()
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
