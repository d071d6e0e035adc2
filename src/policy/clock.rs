//! The wall clock, for ban timestamps only.
//!
//! Every decision (rhythm, rates, strike windows, storms, escalation) runs on the monotonic
//! `governor::clock::Clock` the policy is built with. Bans are the exception: they persist and
//! are shared between gateways, so their `created`/`expires` must be wall-clock times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, FakeRelativeClock};

pub trait WallClock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// `SystemTime::now()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that moves with a [`FakeRelativeClock`], so a test advances one clock and both
/// the policy's decisions and its bans' expiry see the same time.
#[derive(Debug, Clone)]
pub struct FakeWallClock {
    base: SystemTime,
    clock: FakeRelativeClock,
}

impl FakeWallClock {
    /// Reads `base + (time elapsed on clock)`.
    pub fn following(clock: FakeRelativeClock, base: SystemTime) -> Self {
        FakeWallClock { base, clock }
    }

    /// 2023-11-14T22:13:20Z, an arbitrary fixed start.
    pub fn base() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }
}

impl WallClock for FakeWallClock {
    fn now(&self) -> SystemTime {
        self.base + Duration::from_nanos(u64::from(self.clock.now()))
    }
}
