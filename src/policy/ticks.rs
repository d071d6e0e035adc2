//! Policy time: nanoseconds since the policy was built, on the injected clock, and the clock
//! its rate limiters run on.
//!
//! A publish needs "now" three times: for the rhythm check and inside each of the two governor
//! limiters, which read their clock themselves. On the production clock each read is a
//! `clock_gettime` (about a third of a decision's cost when measured). So a decision reads the
//! clock once and *pins* that reading for the limiter checks it makes: [`Ticks::now`] returns
//! the pinned value on the pinning thread while the check runs, and reads the real clock
//! otherwise (other threads, sweeps). All decisions and limiters therefore see one consistent
//! time per decision, which is also what makes the tests on `FakeRelativeClock` exact.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;

thread_local! {
    /// (tag of the pinning `Ticks`, pinned time); tag 0 = nothing pinned.
    static PINNED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Distinguishes policies, so a time pinned by one is never read by another's limiters.
static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone)]
pub(crate) struct Ticks<C: Clock> {
    inner: C,
    start: C::Instant,
    tag: u64,
}

impl<C: Clock> Ticks<C> {
    pub(crate) fn new(inner: C) -> Self {
        Ticks {
            start: inner.now(),
            inner,
            tag: NEXT_TAG.fetch_add(1, Relaxed),
        }
    }

    /// Reads the injected clock: nanoseconds since the policy was built.
    pub(crate) fn read(&self) -> u64 {
        u64::from(self.inner.now().duration_since(self.start))
    }

    /// Runs `f` with this clock (and every clone of it, and its [`DeviceTicks`]) reading `now`
    /// on this thread.
    pub(crate) fn pinned<T>(&self, now: u64, f: impl FnOnce() -> T) -> T {
        pin(self.tag, now, f)
    }

    /// The clock for per-device limiters: this clock's pinned readings, without its type.
    pub(crate) fn device_clock(&self) -> DeviceTicks {
        DeviceTicks { tag: self.tag }
    }
}

fn pin<T>(tag: u64, now: u64, f: impl FnOnce() -> T) -> T {
    /// Restores the previous pin even if `f` unwinds.
    struct Unpin((u64, u64));
    impl Drop for Unpin {
        fn drop(&mut self) {
            PINNED.set(self.0);
        }
    }
    let _unpin = Unpin(PINNED.replace((tag, now)));
    f()
}

/// The clock of the per-device rate limiters (`DeviceRates`), which live in the per-device
/// entry and the [`Session`](super::Session), neither of them generic over the injected clock.
/// It is a [`Ticks`] reduced to its pins: it reads the time its `Ticks` (same tag) pinned on
/// this thread, i.e. the policy's one reading of the injected clock for the decision.
///
/// It has no clock of its own to fall back on, so it must only be read inside
/// [`DeviceTicks::pinned`] (or the policy's [`Ticks::pinned`]); `DeviceRates` does exactly
/// that for every read, construction included. An unpinned read is a bug: it asserts in debug
/// builds and reads 0 (policy start) in release, which can only refuse, never grant, cells.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceTicks {
    tag: u64,
}

impl DeviceTicks {
    /// Runs `f` with this clock (and the policy's `Ticks`) reading `now` on this thread.
    pub(crate) fn pinned<T>(&self, now: u64, f: impl FnOnce() -> T) -> T {
        pin(self.tag, now, f)
    }
}

impl Clock for DeviceTicks {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match PINNED.get() {
            (tag, now) if tag == self.tag => Nanos::from(now),
            _ => {
                debug_assert!(false, "DeviceTicks read outside a pin");
                Nanos::from(0u64)
            }
        }
    }
}

impl<C: Clock> Clock for Ticks<C> {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match PINNED.get() {
            (tag, now) if tag == self.tag => Nanos::from(now),
            _ => Nanos::from(self.read()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn pinned_only_for_this_clock_on_this_thread_during_the_call() {
        let fake = FakeRelativeClock::default();
        let a = Ticks::new(fake.clone());
        let b = Ticks::new(fake.clone());
        fake.advance(Duration::from_nanos(10));
        let seen = a.pinned(3, || {
            let other_thread = std::thread::scope(|s| s.spawn(|| a.now()).join().ok());
            (a.clone().now(), b.now(), other_thread)
        });
        let ten = Nanos::from(10u64);
        assert_eq!(seen, (Nanos::from(3u64), ten, Some(ten)));
        assert_eq!(a.now(), ten, "unpinned after the call");
    }

    #[test]
    fn device_clock_reads_the_pins_of_its_policy_clock() {
        let fake = FakeRelativeClock::default();
        let a = Ticks::new(fake.clone());
        let d = a.device_clock();
        assert_eq!(a.pinned(7, || d.now()), Nanos::from(7u64));
        assert_eq!(
            d.pinned(9, || (d.now(), a.now())),
            (Nanos::from(9u64), Nanos::from(9u64))
        );
    }
}
