//! Bans shared by every gateway of a cluster, through Redis (`[cluster] redis, node`).
//!
//! Memory stays the truth each gateway enforces from; Redis is where the cluster meets. A ban
//! made here (by the policy or an admin) is written to Redis with its expiry and announced on a
//! channel; every other node applies the announcement to its memory (as `by = peer:<node>`) and
//! kicks what it covers. Pub/sub is at-most-once, so each node also resyncs fully on every
//! (re)connect and periodically. Redis down: nothing waits for it. Every node keeps serving and
//! enforcing what it knows, logs the outage once, counts it, and pushes the changes it made
//! meanwhile when Redis is back (memory says what they are: only the subjects are remembered).

mod sync;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterSettings;
use crate::gateway::bans::AnnouncedBans;
use crate::policy::Subject;
pub use wire::Keys;

/// Every Redis round trip is bounded: a hung Redis is a Redis that is down.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What the rest of the gateway sees of the cluster: where to say a subject changed, and the
/// counters for metrics.
#[derive(Clone, Default)]
pub struct Handle {
    inner: Arc<State>,
}

#[derive(Default)]
struct State {
    /// Subjects changed here and not yet in Redis, with what happened last. A map: a flood of
    /// changes to one subject is one write, and its size is bounded by the subjects that exist.
    pending: Mutex<HashMap<Subject, Change>>,
    wake: Notify,
    connected: AtomicBool,
    resyncs: AtomicU64,
    outages: AtomicU64,
    stop: CancellationToken,
}

/// What happened to a subject here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Banned (or the ban replaced): Redis gets what memory holds, if it still holds it.
    Banned,
    /// Lifted by an admin at this time (ms): Redis drops its copy unless a newer ban is there.
    /// (An expiry is not a lift: Redis expires its copy by itself.)
    Lifted(u64),
}

impl Handle {
    /// A ban on `subject` was made here: write it to Redis.
    pub fn changed(&self, subject: Subject) {
        self.note(subject, Change::Banned);
    }

    /// The ban on `subject` was lifted here: lift it in the cluster.
    pub fn lifted(&self, subject: Subject) {
        self.note(
            subject,
            Change::Lifted(sync::ms(std::time::SystemTime::now())),
        );
    }

    fn note(&self, subject: Subject, change: Change) {
        self.pending().insert(subject, change);
        self.inner.wake.notify_one();
    }

    pub fn connected(&self) -> bool {
        self.inner.connected.load(Relaxed)
    }

    /// Full resyncs done (at every (re)connect and periodically).
    pub fn resyncs(&self) -> u64 {
        self.inner.resyncs.load(Relaxed)
    }

    /// Times Redis was lost (or could not be reached).
    pub fn outages(&self) -> u64 {
        self.inner.outages.load(Relaxed)
    }

    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Subject, Change>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Join the cluster: the first sync is waited for (bounded), so that a gateway starting while
/// Redis is up enforces the cluster's bans before it admits anyone (if the first attempt fails,
/// the start goes on at once); then one task keeps the two in step until [`Handle::stop`].
pub async fn join(settings: &ClusterSettings, bans: &Arc<AnnouncedBans>) -> Result<Handle, String> {
    let client =
        redis::Client::open(settings.redis.as_str()).map_err(|e| format!("cluster.redis: {e}"))?;
    let name = settings.node_name()?;
    let handle = Handle::default();
    let node = Node {
        client,
        name: name.clone(),
        keys: Keys::new(&settings.key_prefix),
        resync_every: Duration::from_secs(settings.resync_secs),
        bans: Arc::downgrade(bans),
        handle: handle.clone(),
    };
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    tokio::spawn(node.run(synced_tx));
    match tokio::time::timeout(IO_TIMEOUT * 2, synced).await {
        Ok(Ok(())) => tracing::info!(node = %name, "cluster: in sync with Redis"),
        _ => tracing::warn!(
            node = %name,
            "cluster: Redis not reachable at start; serving with the bans known here, and syncing when it is"
        ),
    }
    Ok(handle)
}

struct Node {
    client: redis::Client,
    name: String,
    keys: Keys,
    resync_every: Duration,
    bans: Weak<AnnouncedBans>,
    handle: Handle,
}

impl Node {
    async fn run(self, synced: tokio::sync::oneshot::Sender<()>) {
        const FIRST_RETRY: Duration = Duration::from_millis(500);
        let mut synced = Some(synced);
        let mut wait = FIRST_RETRY;
        let mut down_logged = false;
        let stop = self.handle.inner.stop.clone();
        loop {
            let ended = tokio::select! {
                () = stop.cancelled() => return,
                ended = self.session(&mut synced, &mut down_logged) => ended,
            };
            // The start waits no longer once the first attempt has failed.
            synced.take();
            if self.handle.inner.connected.swap(false, Relaxed) {
                // It was up: the next outage starts its backoff afresh.
                wait = FIRST_RETRY;
            }
            if self.bans.upgrade().is_none() {
                return;
            }
            self.handle.inner.outages.fetch_add(1, Relaxed);
            if !down_logged {
                tracing::warn!(error = %ended, "cluster: Redis lost; serving and enforcing the bans known here, retrying");
                down_logged = true;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    /// One connection's life: subscribe, push what changed while away, resync, then follow.
    /// Returns why it ended.
    async fn session(
        &self,
        synced: &mut Option<tokio::sync::oneshot::Sender<()>>,
        down_logged: &mut bool,
    ) -> String {
        let bounded = |what: &'static str| move |_| format!("{what}: no answer within 3 s");
        let con = tokio::time::timeout(IO_TIMEOUT, self.client.get_multiplexed_async_connection())
            .await
            .map_err(bounded("connect"));
        let mut con = match con {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return format!("connect: {e}"),
            Err(e) => return e,
        };
        let pubsub = tokio::time::timeout(IO_TIMEOUT, self.client.get_async_pubsub()).await;
        let mut pubsub = match pubsub {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return format!("subscribe: {e}"),
            Err(_) => return "subscribe: no answer within 3 s".into(),
        };
        match tokio::time::timeout(IO_TIMEOUT, pubsub.subscribe(self.keys.channel())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return format!("subscribe: {e}"),
            Err(_) => return "subscribe: no answer within 3 s".into(),
        }
        let mut messages = pubsub.into_on_message();
        // Subscribed before the resync: nothing announced from here on is missed.
        if let Err(e) = self.push_pending(&mut con).await {
            return e;
        }
        if let Err(e) = self.resync(&mut con).await {
            return e;
        }
        self.handle.inner.connected.store(true, Relaxed);
        if *down_logged {
            tracing::info!("cluster: Redis is back; bans in sync");
            *down_logged = false;
        }
        if let Some(tx) = synced.take() {
            let _ = tx.send(());
        }
        let mut tick = tokio::time::interval(self.resync_every);
        tick.reset();
        loop {
            tokio::select! {
                () = self.handle.inner.wake.notified() => {
                    if let Err(e) = self.push_pending(&mut con).await {
                        return e;
                    }
                }
                msg = messages.next() => match msg {
                    Some(m) => self.apply(m.get_payload_bytes()),
                    None => return "the subscription ended".into(),
                },
                _ = tick.tick() => {
                    if let Err(e) = self.resync(&mut con).await {
                        return e;
                    }
                }
            }
        }
    }

    /// An announcement from the channel: another node's change, into memory.
    fn apply(&self, payload: &[u8]) {
        let Some(bans) = self.bans.upgrade() else {
            return;
        };
        let Ok(a) = serde_json::from_slice::<wire::Announcement>(payload) else {
            tracing::debug!("cluster: an announcement that does not parse; ignored");
            return;
        };
        if a.node() == self.name {
            return;
        }
        sync::apply(&bans, a);
    }
}
