//! Reconnect pacing: exponential backoff with full jitter, a floor and a cap, shared by every
//! local connection that goes to the same gateway.
//!
//! While the gateway answers, every local connection dials at once. After a failure the path
//! is "down": one connection at a time (the probe) may try, no sooner than the backoff says;
//! the others wait for its outcome instead of hammering a dead gateway. The failure count only
//! resets once a tunnel has stayed up for `stable_after` (a gateway that accepts and then drops
//! every tunnel keeps backing off), and a tunnel the gateway ends sooner counts as a failure.

use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::ReconnectSettings;

/// The pure part: how long to wait after the n-th consecutive failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// Record a failure and return the delay before the next attempt, with `unit` in [0, 1)
    /// choosing where in the jitter range it falls.
    pub fn fail(&mut self, unit: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay(unit)
    }

    /// Full jitter above the floor: uniform in `[min, min(max, min · 2^failures)]`.
    pub fn delay(&self, unit: f64) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.min + (ceiling - self.min).mul_f64(unit.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

struct State {
    backoff: Backoff,
    /// `Some`: the path is down; the next probe may start at this instant.
    retry_at: Option<Instant>,
    probing: bool,
}

/// Shared pacing for one gateway.
pub struct Gate {
    state: Mutex<State>,
    changed: Notify,
    stable_after: Duration,
}

/// The right to make one dial. Report its outcome; dropping it unreported (a cancelled
/// attempt) frees the probe slot for someone else.
pub struct Attempt<'a> {
    gate: &'a Gate,
    probe: bool,
    reported: bool,
}

/// What a reported success changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The path was already up.
    Up,
    /// The path was down and is back: a reconnect.
    Recovered,
}

impl Gate {
    pub fn new(settings: &ReconnectSettings) -> Gate {
        Gate {
            state: Mutex::new(State {
                backoff: Backoff::new(
                    Duration::from_millis(settings.min_delay_ms),
                    Duration::from_secs(settings.max_delay_secs),
                ),
                retry_at: None,
                probing: false,
            }),
            changed: Notify::new(),
            stable_after: Duration::from_secs(settings.stable_after_secs),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent (plain fields).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for the right to dial, or `None` once `deadline` passes.
    pub async fn admit(&self, deadline: Instant) -> Option<Attempt<'_>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake = {
                let mut s = self.lock();
                let now = Instant::now();
                match s.retry_at {
                    None => return Some(self.attempt(false)),
                    Some(at) if at <= now && !s.probing => {
                        s.probing = true;
                        return Some(self.attempt(true));
                    }
                    // Someone is probing: wait for the outcome.
                    Some(_) if s.probing => deadline,
                    Some(at) => at.min(deadline),
                }
            };
            if Instant::now() >= deadline {
                return None;
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn attempt(&self, probe: bool) -> Attempt<'_> {
        Attempt {
            gate: self,
            probe,
            reported: false,
        }
    }

    /// Count one failure and schedule the next probe (no-op when the path is already down
    /// and this was not the probe: several dials that raced the same outage are one failure).
    fn down(&self, s: &mut State, probe: bool) -> Duration {
        if s.retry_at.is_some() && !probe {
            return s
                .retry_at
                .map_or(Duration::ZERO, |at| at - Instant::now().min(at));
        }
        let delay = s.backoff.fail(rand::rng().random::<f64>());
        s.retry_at = Some(Instant::now() + delay);
        s.probing = false;
        delay
    }

    /// A tunnel that lived `lived` ended, `by_gateway` or not. Short-lived ones the gateway
    /// ended count as failures, so a gateway that drops every tunnel is not hammered.
    pub fn ended(&self, lived: Duration, by_gateway: bool) {
        if lived >= self.stable_after || !by_gateway {
            return;
        }
        let mut s = self.lock();
        self.down(&mut s, false);
        drop(s);
        self.changed.notify_waiters();
    }

    /// A tunnel has stayed up for `stable_after`: the backoff starts over.
    pub fn stable(&self) {
        self.lock().backoff.reset();
    }

    pub fn stable_after(&self) -> Duration {
        self.stable_after
    }

    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.lock().backoff.failures()
    }
}

impl Attempt<'_> {
    /// The dial failed; returns how long until the next probe.
    pub fn failed(mut self) -> Duration {
        self.reported = true;
        let mut s = self.gate.lock();
        let delay = self.gate.down(&mut s, self.probe);
        drop(s);
        self.gate.changed.notify_waiters();
        delay
    }

    pub fn succeeded(mut self) -> Outcome {
        self.reported = true;
        let mut s = self.gate.lock();
        let was_down = s.retry_at.take().is_some();
        s.probing = false;
        drop(s);
        self.gate.changed.notify_waiters();
        if was_down {
            Outcome::Recovered
        } else {
            Outcome::Up
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.gate.lock().probing = false;
            self.gate.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn delays_double_under_a_cap_with_full_jitter_above_the_floor() {
        let mut b = Backoff::new(secs(1.0), secs(30.0));
        // The range after n failures is [1, min(30, 2^n)] s; unit picks the point in it.
        assert_eq!(b.fail(0.0), secs(1.0));
        assert_eq!(b.delay(1.0), secs(2.0));
        assert_eq!(b.fail(1.0), secs(4.0));
        assert_eq!(b.fail(0.5), secs(4.5));
        for _ in 0..40 {
            b.fail(0.999);
        }
        assert!(b.delay(1.0) <= secs(30.0) && b.delay(1.0) > secs(29.9));
        assert_eq!(b.delay(0.0), secs(1.0), "never below the floor");
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.fail(1.0), secs(2.0));
    }

    #[test]
    fn random_delays_stay_in_range() {
        let settings: ReconnectSettings = toml::from_str("max_delay_secs = 8").unwrap();
        let gate = Gate::new(&settings);
        for n in 1..=6u32 {
            let mut s = gate.lock();
            s.retry_at = None;
            let d = gate.down(&mut s, true);
            let ceiling = secs(f64::from(1u32 << n).min(8.0));
            assert!(d >= secs(0.99) && d <= ceiling, "failure {n}: {d:?}");
        }
    }

    fn gate() -> Gate {
        let settings: ReconnectSettings =
            toml::from_str("min_delay_ms = 1000\nmax_delay_secs = 4\nstable_after_secs = 5")
                .unwrap();
        Gate::new(&settings)
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_while_down_and_everyone_when_up() {
        let g = gate();
        let far = Instant::now() + secs(100.0);
        // Up: concurrent attempts are all admitted at once.
        let a = g.admit(far).await.unwrap();
        let b = g.admit(far).await.unwrap();
        let t0 = Instant::now();
        a.failed();
        b.failed(); // the same outage: still one failure
        assert_eq!(g.failures(), 1);
        // Down: the next attempt waits at least the floor, and is the only probe.
        let probe = g.admit(far).await.unwrap();
        assert!(Instant::now() - t0 >= secs(1.0));
        assert!(probe.probe);
        let waiting = tokio::time::timeout(secs(30.0), g.admit(far));
        let (outcome, other) = tokio::join!(
            async {
                tokio::time::sleep(secs(10.0)).await;
                probe.succeeded()
            },
            waiting
        );
        assert_eq!(outcome, Outcome::Recovered);
        // The waiter got in right after the probe succeeded, not before.
        assert!(Instant::now() - t0 >= secs(10.0));
        assert!(!other.unwrap().unwrap().probe);
        // Not reset by a success alone...
        assert_eq!(g.failures(), 1);
        // ...only by a stable tunnel.
        g.stable();
        assert_eq!(g.failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn admission_gives_up_at_the_deadline() {
        let g = gate();
        g.admit(Instant::now() + secs(1.0)).await.unwrap().failed();
        let t0 = Instant::now();
        let got = g.admit(t0 + secs(0.5)).await;
        assert!(got.is_none());
        assert_eq!(Instant::now() - t0, secs(0.5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_the_slot() {
        let g = gate();
        let far = Instant::now() + secs(100.0);
        g.admit(far).await.unwrap().failed();
        let probe = g.admit(far).await.unwrap();
        assert!(probe.probe);
        drop(probe);
        assert!(g.admit(far).await.unwrap().probe);
    }

    #[tokio::test(start_paused = true)]
    async fn short_tunnels_ended_by_the_gateway_count_as_failures() {
        let g = gate();
        g.ended(secs(1.0), false);
        assert_eq!(g.failures(), 0, "the local client ended it");
        g.ended(secs(6.0), true);
        assert_eq!(g.failures(), 0, "it lived long enough");
        g.ended(secs(1.0), true);
        assert_eq!(g.failures(), 1);
        let t0 = Instant::now();
        g.admit(t0 + secs(100.0)).await.unwrap();
        assert!(Instant::now() - t0 >= secs(1.0));
    }
}
