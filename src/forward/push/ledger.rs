//! Transaction records: for one (serial, transaction id) the collectors get the body at most
//! once, and every sender gets the same answer.
//!
//! A transaction is first marked in flight (here, and in Redis when clustered: `SET NX` with a
//! lease, so two gateways receiving the same retry at once deliver once), then either completed
//! (the outcome is written durably, then answered) or released (a collector failure: nothing
//! recorded, the upload stays retryable). A local mark lives exactly as long as its ticket;
//! the Redis mark is renewed while its delivery runs, so a gateway that dies mid-flight leaves
//! one that expires with its lease, and a slow delivery never does. Redis unreachable: each gateway arbitrates alone (counted, logged).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::redis_ledger::{RedisClaim, RedisLedger};
use crate::store::UploadStore;

/// What the first delivery of a transaction answered, replayed to every retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Set when the gateway itself discarded the upload (out of rhythm): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<String>,
    /// Base64 when written down.
    #[serde(with = "base64_bytes")]
    pub body: bytes::Bytes,
    /// SHA-256 of the upload's body as sent (hex): a retry must carry the same body.
    pub fingerprint: String,
    /// Unix ms.
    pub at: u64,
}

/// What a sender may do with its transaction now.
pub enum Claim {
    /// Deliver it; the ticket completes or releases the mark.
    Go(Ticket),
    /// Delivered before: answer this.
    Done(Outcome),
    /// Another delivery of it is in flight: try again after this many seconds.
    Busy(u64),
}

/// The right to deliver one transaction. Dropped unfinished (the sender left, a collector
/// failed), it releases the mark and the upload stays retryable.
pub struct Ticket {
    ledger: Arc<Ledger>,
    key: String,
    token: u64,
    finished: bool,
    /// Stops renewing the Redis lease when the ticket goes.
    _renewal: Option<tokio_util::sync::DropGuard>,
}

struct Flight {
    token: u64,
    until: Instant,
}

/// Outcomes kept in memory when there is no `[store]`: by key, and in expiry order.
#[derive(Default)]
struct Memory {
    records: HashMap<String, (u64, Outcome)>,
    order: VecDeque<(u64, String)>,
    /// What the records hold, roughly (keys and bodies).
    bytes: usize,
}

/// At most this much of outcomes in memory (no `[store]`), whatever their number.
const MEMORY_BYTES: usize = 64 << 20;

fn weight(key: &str, o: &Outcome) -> usize {
    key.len() * 2 + o.body.len() + o.fingerprint.len() + 128
}

pub struct Ledger {
    flights: Mutex<HashMap<String, Flight>>,
    memory: Mutex<Memory>,
    max_in_memory: usize,
    disk: Option<UploadStore>,
    redis: Option<RedisLedger>,
    lease: Duration,
    retention: Duration,
    next_token: AtomicU64,
    /// Outcomes evicted from memory before their time (no `[store]`, over the cap).
    pub evicted: AtomicU64,
    /// Claims decided here alone because Redis could not be asked.
    pub redis_fallbacks: AtomicU64,
}

impl Ledger {
    pub fn new(
        disk: Option<UploadStore>,
        redis: Option<RedisLedger>,
        settings: &crate::config::PushSettings,
    ) -> Arc<Ledger> {
        Arc::new(Ledger {
            flights: Mutex::default(),
            memory: Mutex::default(),
            max_in_memory: settings.max_records_in_memory,
            disk,
            redis,
            lease: Duration::from_secs(settings.lease_secs),
            retention: Duration::from_secs(settings.retention_secs),
            next_token: AtomicU64::new(rand::random::<u64>() >> 1),
            evicted: AtomicU64::new(0),
            redis_fallbacks: AtomicU64::new(0),
        })
    }

    /// May this transaction be delivered now?
    pub async fn claim(self: &Arc<Self>, key: String) -> Claim {
        let token = self.next_token.fetch_add(1, Relaxed);
        {
            let mut flights = lock(&self.flights);
            let now = Instant::now();
            // A local mark is a live ticket (dropping one removes it), however long it takes.
            if let Some(f) = flights.get(&key) {
                return Claim::Busy(secs_until(f.until, now));
            }
            if let Some(outcome) = self.local_outcome(&key) {
                return Claim::Done(outcome);
            }
            // Marked before Redis is asked: a concurrent retry on this node waits here.
            let until = now + self.lease;
            flights.insert(key.clone(), Flight { token, until });
        }
        let mut ticket = Ticket {
            ledger: self.clone(),
            key,
            token,
            finished: false,
            _renewal: None,
        };
        let Some(redis) = &self.redis else {
            return Claim::Go(ticket);
        };
        match redis.claim(&ticket.key, token, self.lease).await {
            Ok(RedisClaim::Claimed) => {
                ticket._renewal = Some(redis.keep_renewed(&ticket.key, token, self.lease));
                Claim::Go(ticket)
            }
            Ok(RedisClaim::Done(outcome)) => {
                ticket.forget();
                Claim::Done(*outcome)
            }
            Ok(RedisClaim::Busy(secs)) => {
                ticket.forget();
                Claim::Busy(secs)
            }
            Err(e) => {
                if self.redis_fallbacks.fetch_add(1, Relaxed) == 0 {
                    tracing::warn!("push: Redis cannot arbitrate transactions ({e}); this gateway decides alone until it can");
                }
                Claim::Go(ticket)
            }
        }
    }

    /// The outcome on record here, if any (memory or the store file).
    fn local_outcome(&self, key: &str) -> Option<Outcome> {
        let now = unix_ms(SystemTime::now());
        match &self.disk {
            Some(disk) => match disk.get(key, now) {
                Ok(v) => v.and_then(|bytes| serde_json::from_slice(&bytes).ok()),
                Err(e) => {
                    tracing::error!("push: {e}");
                    None
                }
            },
            None => lock(&self.memory)
                .records
                .get(key)
                .filter(|(expires, _)| *expires > now)
                .map(|(_, o)| o.clone()),
        }
    }

    fn expiry_ms(&self, outcome: &Outcome) -> u64 {
        outcome.at.saturating_add(self.retention.as_millis() as u64)
    }

    /// Forget expired outcomes; call every few seconds. (Marks go with their tickets.)
    pub fn sweep(&self) {
        let now_ms = unix_ms(SystemTime::now());
        let mut memory = lock(&self.memory);
        while memory.order.front().is_some_and(|(t, _)| *t <= now_ms) {
            if let Some((t, key)) = memory.order.pop_front() {
                memory.forget(&key, t);
            }
        }
        memory.records.shrink_to_fit();
        drop(memory);
        if let Some(disk) = self.disk.clone() {
            tokio::task::spawn_blocking(move || match disk.sweep(now_ms) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(records = n, "push: expired upload records deleted"),
                Err(e) => tracing::error!("push: sweeping upload records: {e}"),
            });
        }
    }

    /// Write what is pending and let go of the store's file (a clean shutdown).
    pub async fn close(&self) {
        if let Some(disk) = &self.disk {
            disk.close().await;
        }
    }

    /// Transactions in flight on this node.
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }
}

impl Ticket {
    /// The delivery finished with `outcome`: on record (durably, with a store; in Redis when
    /// clustered) before this returns, so the answer the sender gets is the one every retry
    /// will get. A record that cannot be written is logged: the delivery happened regardless.
    pub async fn complete(mut self, outcome: &Outcome) {
        let ledger = self.ledger.clone();
        let expires = ledger.expiry_ms(outcome);
        let encoded = serde_json::to_vec(outcome).unwrap_or_default();
        match &ledger.disk {
            Some(disk) => {
                if let Err(e) = disk.put(self.key.clone(), expires, encoded).await {
                    tracing::error!(key = %self.key, "push: outcome not written down ({e}); a retry after a restart may be delivered again");
                }
            }
            None => ledger.remember(&self.key, expires, outcome),
        }
        if let Some(redis) = &ledger.redis {
            if let Err(e) = redis.complete(&self.key, outcome, ledger.retention).await {
                tracing::warn!(key = %self.key, "push: outcome not written to Redis ({e}); other gateways will not know it");
            }
        }
        self.finished = true;
        self.unmark();
    }

    /// Another gateway holds the transaction: drop the local mark, release nothing there.
    fn forget(mut self) {
        self.unmark();
        self.finished = true;
    }

    fn unmark(&self) {
        let mut flights = lock(&self.ledger.flights);
        if flights
            .get(&self.key)
            .is_some_and(|f| f.token == self.token)
        {
            flights.remove(&self.key);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.unmark();
        if let Some(redis) = self.ledger.redis.clone() {
            let (key, token) = (std::mem::take(&mut self.key), self.token);
            // Runs on: a released mark must not wait for its lease. Within a runtime always
            // (tickets live in request handlers).
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = redis.release(&key, token).await {
                        tracing::debug!("push: releasing {key} in Redis: {e}; its lease ends it");
                    }
                });
            }
        }
    }
}

impl Ledger {
    fn remember(&self, key: &str, expires: u64, outcome: &Outcome) {
        let mut memory = lock(&self.memory);
        memory.bytes += weight(key, outcome);
        let replaced = memory
            .records
            .insert(key.to_string(), (expires, outcome.clone()));
        if let Some((_, old)) = replaced {
            memory.bytes = memory.bytes.saturating_sub(weight(key, &old));
        }
        memory.order.push_back((expires, key.to_string()));
        while memory.records.len() > self.max_in_memory || memory.bytes > MEMORY_BYTES {
            let Some((t, old)) = memory.order.pop_front() else {
                break;
            };
            if memory.forget(&old, t) {
                self.evicted.fetch_add(1, Relaxed);
            }
        }
    }
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

impl Memory {
    /// Drop the record of `key` if it is still the one that expires at `t`.
    fn forget(&mut self, key: &str, t: u64) -> bool {
        if self.records.get(key).is_none_or(|(e, _)| *e != t) {
            return false;
        }
        if let Some((_, o)) = self.records.remove(key) {
            self.bytes = self.bytes.saturating_sub(weight(key, &o));
        }
        true
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn secs_until(t: Instant, now: Instant) -> u64 {
    t.saturating_duration_since(now).as_secs().max(1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
