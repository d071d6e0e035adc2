//! What the gateway times and counts for `/metrics` beyond the policy's counters: handshakes by
//! outcome, the policy's decision time (sampled), and the ban store's commit time. Histograms
//! are prometheus-client's (shared state behind `Clone`), registered at each scrape.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// One publish in this many is timed: two clock reads on every publish would cost more than
/// the decision itself on the fast path.
pub const DECISION_SAMPLE: u32 = 64;

pub struct Timings {
    /// Seconds per `on_publish`, sampled.
    pub decision: Histogram,
    upgraded: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
}

/// How a connection's HTTP/1.1 part ended.
#[derive(Debug, Clone, Copy)]
pub enum Handshake {
    /// Became a WebSocket.
    Upgraded,
    /// Answered and done (health checks, `POST /probe`).
    Answered,
    /// Refused (bad upgrade, unknown route, banned, timeout, TLS or PROXY failure).
    Refused,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            // 100 ns to ~0.4 ms.
            decision: Histogram::new(exponential_buckets(1e-7, 2.0, 13)),
            upgraded: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

impl Timings {
    pub fn handshake(&self, outcome: Handshake) {
        let n = match outcome {
            Handshake::Upgraded => &self.upgraded,
            Handshake::Answered => &self.answered,
            Handshake::Refused => &self.refused,
        };
        n.fetch_add(1, Relaxed);
    }

    /// `(outcome, count)` for each outcome.
    pub fn handshakes(&self) -> [(&'static str, u64); 3] {
        [
            ("upgraded", self.upgraded.load(Relaxed)),
            ("answered", self.answered.load(Relaxed)),
            ("refused", self.refused.load(Relaxed)),
        ]
    }
}

/// Seconds per ban store commit (fsync included): ~0.1 ms to ~3 s.
pub fn commit_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 2.0, 15))
}
