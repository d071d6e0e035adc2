//! The cluster's arbiter of transactions: one Redis key per (serial, transaction id), holding
//! either an in-flight mark (`flight:<node>:<token>`, expiring with its lease) or the outcome
//! (`done:<json>`, expiring with the retention). Claiming is one atomic script, so two gateways
//! receiving the same retry at once see one winner.

use std::time::Duration;

use tokio::sync::Mutex;

use super::ledger::Outcome;

/// Every Redis round trip is bounded: a hung Redis is a Redis that is down.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Returns the value already there with its remaining ms, or claims the key.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return {v, redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'claimed', 0}
";

/// Extends the mark's lease only if it is still ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// Deletes the mark only if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub enum RedisClaim {
    Claimed,
    Done(Box<Outcome>),
    /// In flight elsewhere: seconds left on its lease.
    Busy(u64),
}

#[derive(Clone)]
pub struct RedisLedger {
    client: redis::Client,
    conn: std::sync::Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
    prefix: String,
    node: String,
    /// After a failed connect, calls fail at once until then: uploads must not each wait
    /// out a timeout while Redis is down.
    retry_at: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl RedisLedger {
    pub fn new(settings: &crate::config::ClusterSettings) -> Result<RedisLedger, String> {
        let client = redis::Client::open(settings.redis.as_str())
            .map_err(|e| format!("cluster.redis: {e}"))?;
        Ok(RedisLedger {
            client,
            conn: Default::default(),
            prefix: format!("{}:upload:", settings.key_prefix),
            node: settings.node_name()?,
            retry_at: Default::default(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn mark(&self, token: u64) -> String {
        format!("flight:{}:{token:x}", self.node)
    }

    pub async fn claim(
        &self,
        key: &str,
        token: u64,
        lease: Duration,
    ) -> Result<RedisClaim, String> {
        let mut script = redis::cmd("EVAL");
        script
            .arg(CLAIM)
            .arg(1)
            .arg(self.key(key))
            .arg(self.mark(token))
            .arg(lease.as_millis() as u64);
        let (value, pttl): (String, i64) = self.run(script).await?;
        if value == "claimed" {
            return Ok(RedisClaim::Claimed);
        }
        if let Some(json) = value.strip_prefix("done:") {
            return Ok(match serde_json::from_str(json) {
                Ok(outcome) => RedisClaim::Done(Box::new(outcome)),
                // Written by another version, say: delivered, but its answer cannot be read
                // here. Never a second delivery: the sender hears that it was delivered.
                Err(e) => {
                    tracing::warn!(key, "push: an outcome in Redis does not parse: {e}");
                    RedisClaim::Done(Box::new(Outcome {
                        status: 200,
                        content_type: Some("text/plain; charset=utf-8".into()),
                        discarded: None,
                        body: bytes::Bytes::from_static(b"delivered earlier\n"),
                        fingerprint: String::new(),
                        at: 0,
                    }))
                }
            });
        }
        let secs = u64::try_from(pttl).unwrap_or(0).div_ceil(1000).max(1);
        Ok(RedisClaim::Busy(secs))
    }

    pub async fn complete(
        &self,
        key: &str,
        outcome: &Outcome,
        retention: Duration,
    ) -> Result<(), String> {
        let json = serde_json::to_string(outcome).map_err(|e| e.to_string())?;
        let mut set = redis::cmd("SET");
        set.arg(self.key(key))
            .arg(format!("done:{json}"))
            .arg("PX")
            .arg(retention.as_millis() as u64);
        let _: () = self.run(set).await?;
        Ok(())
    }

    /// Renew the mark every third of its lease until the returned guard drops (the ticket
    /// completes or is released).
    pub fn keep_renewed(
        &self,
        key: &str,
        token: u64,
        lease: Duration,
    ) -> tokio_util::sync::DropGuard {
        let stop = tokio_util::sync::CancellationToken::new();
        let (me, key, done) = (self.clone(), key.to_string(), stop.clone());
        tokio::spawn(async move {
            let every = lease / 3;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    () = done.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let mut renew = redis::cmd("EVAL");
                renew
                    .arg(RENEW)
                    .arg(1)
                    .arg(me.key(&key))
                    .arg(me.mark(token))
                    .arg(lease.as_millis() as u64);
                // Bounded by the tick: a renewal must not outlast the lease it renews.
                match tokio::time::timeout(every, me.run::<i64>(renew)).await {
                    Ok(Ok(1)) => {}
                    Ok(Ok(_)) => {
                        tracing::warn!(key, "push: the Redis mark of a delivery under way was lost (a Redis failover?); another gateway may deliver it too");
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!(key, "push: renewing a lease in Redis: {e}"),
                    Err(_) => {
                        tracing::debug!(key, "push: renewing a lease in Redis: no answer in time")
                    }
                }
            }
        });
        stop.drop_guard()
    }

    pub async fn release(&self, key: &str, token: u64) -> Result<(), String> {
        let mut script = redis::cmd("EVAL");
        script
            .arg(RELEASE)
            .arg(1)
            .arg(self.key(key))
            .arg(self.mark(token));
        let _: i64 = self.run(script).await?;
        Ok(())
    }

    /// One command on the shared connection, (re)connecting as needed; a failure drops the
    /// connection so the next call makes a new one.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, String> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(IO_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() {
                    *self.conn.lock().await = None;
                }
                Err(e.to_string())
            }
            Err(_) => {
                *self.conn.lock().await = None;
                Err("no answer from Redis within 3 s".into())
            }
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let retry_at = || self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        if retry_at().is_some_and(|t| t > std::time::Instant::now()) {
            return Err("Redis was unreachable moments ago".into());
        }
        let connected =
            tokio::time::timeout(IO_TIMEOUT, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| "Redis did not answer within 3 s".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
        match connected {
            Ok(c) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                *retry_at() = Some(std::time::Instant::now() + Duration::from_secs(2));
                Err(e)
            }
        }
    }
}
