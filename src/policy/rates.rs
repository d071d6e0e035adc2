//! Per-device message and byte rate limiters (governor direct limiters, GCRA).
//!
//! Each device (client ID) has one [`DeviceRates`]: created at its CONNECT for its class, kept
//! in its per-device entry (`DeviceCounters::rates`) and shared by every session of that
//! client ID, each of which holds an `Arc` to it. A publish therefore checks its rates without
//! any map lookup, and a reconnect finds the same cells, so it does not reset the budget.
//!
//! Class changes: the cells are made for one class's quotas. If a CONNECT resolves the client
//! ID to a different class than the entry's cells were made for, the entry gets fresh cells
//! for the new class (the current connection's class wins; budgets of different quotas are
//! not comparable). Sessions already open keep the cells of the class they were admitted
//! under until they close.
//!
//! Memory: the cells are dropped with the per-device entry, which `Stats::sweep_devices` only
//! does once no session holds the entry *and* the device has been inactive for at least
//! [`DeviceRates::refill`]: by then both buckets are full again, indistinguishable from fresh
//! cells, exactly when governor's `retain_recent` would have dropped a keyed limiter's entry.
//! A device that reconnects after a sweep thus never gets a fresh budget earlier than it would
//! have with the keyed limiters.

use std::num::NonZeroU32;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::class::RateSpec;
use super::ticks::DeviceTicks;
use super::types::Reason;

type Direct = RateLimiter<NotKeyed, InMemoryState, DeviceTicks, NoOpMiddleware<Nanos>>;

/// A class's quotas, compiled once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClassQuotas {
    messages: Quota,
    bytes: Quota,
    refill: u64,
}

impl ClassQuotas {
    pub(crate) fn new(r: &RateSpec) -> Self {
        let messages = Quota::per_second(r.messages_per_sec).allow_burst(r.message_burst);
        let bytes = Quota::per_second(r.bytes_per_sec).allow_burst(r.byte_burst);
        ClassQuotas {
            messages,
            bytes,
            refill: refill(&messages).max(refill(&bytes)),
        }
    }
}

/// Nanoseconds after a limiter's last conforming check until its bucket is full again *and*
/// governor's `retain_recent` would drop it: GCRA leaves the theoretical arrival time (TAT) at
/// most `burst × interval` after the check, and `retain_recent` drops a key once its TAT is at
/// least one interval in the past. Hence `(burst + 1) × interval`.
fn refill(q: &Quota) -> u64 {
    // Governor never uses an interval below 1 ns.
    let t = u64::try_from(q.replenish_interval().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    t.saturating_mul(u64::from(q.burst_size().get()) + 1)
}

/// One device's message and byte limiters, on the policy's clock.
pub(crate) struct DeviceRates {
    /// The class (index) whose quotas these cells enforce, and the quotas (a reload may give an
    /// index other quotas).
    class: usize,
    quotas: ClassQuotas,
    refill: u64,
    clock: DeviceTicks,
    messages: Direct,
    bytes: Direct,
}

impl DeviceRates {
    /// Fresh (full) cells for `class`; `now` in policy nanoseconds.
    pub(crate) fn new(class: usize, q: &ClassQuotas, clock: DeviceTicks, now: u64) -> Self {
        // The limiters read their start time from the clock: pin it.
        clock.pinned(now, || DeviceRates {
            class,
            quotas: *q,
            refill: q.refill,
            clock,
            messages: RateLimiter::direct_with_clock(q.messages, clock),
            bytes: RateLimiter::direct_with_clock(q.bytes, clock),
        })
    }

    /// Whether these cells enforce `q` for class `class`.
    pub(crate) fn enforces(&self, class: usize, q: &ClassQuotas) -> bool {
        self.class == class && self.quotas == *q
    }

    /// How long after its last publish (or CONNECT) an unconnected device's cells are full
    /// again and may be forgotten; nanoseconds.
    pub(crate) fn refill(&self) -> u64 {
        self.refill
    }

    /// `None` when within both rates (and the cells are consumed); `now` in policy nanoseconds.
    /// Message rate first: a publish refused for bytes has used a message cell (it was a
    /// message). A single publish larger than the byte burst can never pass.
    pub(crate) fn over(&self, now: u64, len: usize) -> Option<Reason> {
        self.clock.pinned(now, || {
            if self.messages.check().is_err() {
                return Some(Reason::MessageRate);
            }
            // An empty publish costs no bytes; a length beyond u32 is beyond any byte burst.
            let n = NonZeroU32::new(u32::try_from(len).unwrap_or(u32::MAX))?;
            match self.bytes.check_n(n) {
                Ok(Ok(())) => None,
                // Err: larger than the burst, so it could never conform.
                Ok(Err(_)) | Err(_) => Some(Reason::ByteRate),
            }
        })
    }
}

impl std::fmt::Debug for DeviceRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRates")
            .field("class", &self.class)
            .field("refill", &self.refill)
            .finish_non_exhaustive()
    }
}
