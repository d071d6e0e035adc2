//! What the agent has done, as counters: for a periodic status line in the log, for tests and
//! benches (`Agent::status()`), and for `--check`-style summaries.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Status {
    up: AtomicU64,
    opened: AtomicU64,
    reconnects: AtomicU64,
    dial_failures: AtomicU64,
    refused_local: AtomicU64,
    drops: AtomicU64,
    resumed: AtomicU64,
    resume_failures: AtomicU64,
    bytes_to_gateway: AtomicU64,
    bytes_from_gateway: AtomicU64,
    last_error: Mutex<Option<(Instant, String)>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// Tunnels open now.
    pub tunnels_up: u64,
    /// Tunnels opened since start.
    pub tunnels_opened: u64,
    /// Times a gateway that had failed was reached again.
    pub reconnects: u64,
    /// Attempts to open a tunnel that failed (proxy, TLS, pin, upgrade...).
    pub dial_failures: u64,
    /// Local connections closed because no tunnel could be had in time (or over the cap).
    pub local_refused: u64,
    /// Resumable tunnels whose WebSocket dropped, resumed, and not resumed (local closed).
    pub drops: u64,
    pub resumed: u64,
    pub resume_failures: u64,
    pub bytes_to_gateway: u64,
    pub bytes_from_gateway: u64,
    /// The last failure, and how long ago it was.
    pub last_error: Option<(Duration, String)>,
}

impl Status {
    pub fn opened(&self, recovered: bool) {
        self.up.fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        if recovered {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn closed(&self, to_gateway: u64, from_gateway: u64) {
        self.up.fetch_sub(1, Ordering::Relaxed);
        self.bytes_to_gateway
            .fetch_add(to_gateway, Ordering::Relaxed);
        self.bytes_from_gateway
            .fetch_add(from_gateway, Ordering::Relaxed);
    }

    pub fn dial_failed(&self, error: &str) {
        self.dial_failures.fetch_add(1, Ordering::Relaxed);
        self.error(error);
    }

    pub fn dropped(&self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn resumed(&self) {
        self.resumed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn resume_failed(&self) {
        self.resume_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused_local(&self) {
        self.refused_local.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, error: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((Instant::now(), error.to_string()));
        }
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatusSnapshot {
            tunnels_up: n(&self.up),
            tunnels_opened: n(&self.opened),
            reconnects: n(&self.reconnects),
            dial_failures: n(&self.dial_failures),
            local_refused: n(&self.refused_local),
            drops: n(&self.drops),
            resumed: n(&self.resumed),
            resume_failures: n(&self.resume_failures),
            bytes_to_gateway: n(&self.bytes_to_gateway),
            bytes_from_gateway: n(&self.bytes_from_gateway),
            last_error: self
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.as_ref().map(|(at, e)| (at.elapsed(), e.clone()))),
        }
    }
}

/// The status line: `3 up, 17 opened, 2 reconnects, 5 dial failures, 1 local refused,
/// 1.2 MB to / 3.4 MB from gateway; last error 12 s ago: ...`.
impl fmt::Display for StatusSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} up, {} opened, {} reconnects, {} dial failures, {} local refused, {} to / {} from gateway",
            self.tunnels_up,
            self.tunnels_opened,
            self.reconnects,
            self.dial_failures,
            self.local_refused,
            Bytes(self.bytes_to_gateway),
            Bytes(self.bytes_from_gateway),
        )?;
        if self.drops > 0 {
            write!(
                f,
                "; {} dropped, {} resumed, {} not resumed",
                self.drops, self.resumed, self.resume_failures
            )?;
        }
        match &self.last_error {
            Some((ago, e)) => write!(f, "; last error {} s ago: {e}", ago.as_secs()),
            None => Ok(()),
        }
    }
}

struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            0..1_000 => write!(f, "{} B", self.0),
            1_000..1_000_000 => write!(f, "{:.1} kB", b / 1e3),
            1_000_000..1_000_000_000 => write!(f, "{:.1} MB", b / 1e6),
            _ => write!(f, "{:.2} GB", b / 1e9),
        }
    }
}

/// Log the status line every `every`, when something changed since the last one.
pub async fn log_periodically(status: std::sync::Arc<Status>, every: Duration) {
    let mut last = StatusSnapshot::default();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let mut now = status.snapshot();
        let ago = now.last_error.take();
        if now != last {
            last = now.clone();
            now.last_error = ago;
            tracing::info!("agent status: {now}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_reads_well() {
        let s = Status::default();
        s.opened(false);
        s.opened(true);
        s.closed(1_234_567, 999);
        s.dial_failed("proxy authentication failed (407)");
        let line = s.snapshot().to_string();
        assert_eq!(
            line,
            "1 up, 2 opened, 1 reconnects, 1 dial failures, 0 local refused, 1.2 MB to / 999 B from gateway; last error 0 s ago: proxy authentication failed (407)"
        );
    }
}
