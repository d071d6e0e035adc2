//! The gateway's ban list: the policy's store, plus a kick for the live connections it covers.
//!
//! Bans come from several places (a publish that struck out, a connect flood at accept, a
//! flapping client at CONNECT, an admin). Wrapping the store is the one place that sees them
//! all, so whichever path issues a ban, connected devices it covers are kicked (found through
//! the index of live connections, [`Clients`]: a ban wakes only them), and, with a
//! `[store]`, it is written down: the gateway's own within a second, batched; an admin's before
//! `Gateway::ban` returns (it waits for [`AnnouncedBans::flush`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::clients::Clients;
use crate::policy::{Ban, BanError, BanList, BanSource, MemoryBanList, Subject};
use crate::store::{BanStore, Writer};

pub struct AnnouncedBans {
    store: Arc<MemoryBanList>,
    /// The live connections, to kick the ones a new ban covers.
    clients: Arc<Clients>,
    /// Bans issued since start, by [`BanSource::family`] (restored ones are not counted).
    issued: [AtomicU64; BanSource::FAMILIES.len()],
    /// Taken out at shutdown, so that the store's file is closed when the gateway is.
    disk: RwLock<Option<Writer>>,
    /// With `[cluster]`: where this node's own changes go out to the others.
    cluster: RwLock<Option<crate::cluster::Handle>>,
}

impl AnnouncedBans {
    /// Bans in memory only.
    pub fn new(clients: Arc<Clients>, max_patterns: usize) -> Self {
        let memory = Arc::new(MemoryBanList::with_max_patterns(max_patterns));
        Self::with(memory, None, clients)
    }

    /// Bans in memory, written to `store` by its writer (started on the current runtime).
    pub fn persistent(store: &BanStore, clients: Arc<Clients>, max_patterns: usize) -> Self {
        let memory = Arc::new(MemoryBanList::with_max_patterns(max_patterns));
        let writer = store.writer(memory.clone());
        Self::with(memory, Some(writer), clients)
    }

    fn with(store: Arc<MemoryBanList>, disk: Option<Writer>, clients: Arc<Clients>) -> Self {
        AnnouncedBans {
            store,
            clients,
            issued: Default::default(),
            disk: RwLock::new(disk),
            cluster: RwLock::new(None),
        }
    }

    /// Like [`BanList::insert`], unless a ban on exactly that subject is in force: then that
    /// ban comes back and nothing changes (an admin's duplicate is a conflict, not a replace).
    pub fn insert_new(&self, ban: Ban, now: SystemTime) -> Result<Result<(), Ban>, BanError> {
        let announced = ban.clone();
        match self.store.insert_new(ban, now)? {
            Ok(()) => {
                self.announce(&announced);
                Ok(Ok(()))
            }
            Err(existing) => Ok(Err(existing)),
        }
    }

    /// From now on this node's own changes are shared with the cluster.
    pub fn join_cluster(&self, handle: crate::cluster::Handle) {
        *self.cluster.write().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    /// Seconds per store commit, with a store.
    pub fn commit_seconds(&self) -> Option<prometheus_client::metrics::histogram::Histogram> {
        self.writer().map(|w| w.commit_seconds)
    }

    pub fn cluster(&self) -> Option<crate::cluster::Handle> {
        self.cluster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A ban from the cluster (another node's, or this node's own read back from Redis):
    /// enforced and kicked here, written to the store, not sent back out.
    pub fn apply_peer(&self, ban: Ban, now: SystemTime) {
        let announced = ban.clone();
        match self.store.insert(ban, now) {
            Ok(()) => {
                self.kick_and_count(&announced);
                self.written(&announced.subject);
            }
            Err(e) => {
                tracing::warn!(subject = %announced.subject, "a ban from the cluster not enforced here: {e}")
            }
        }
    }

    /// Another node lifted a ban (or a resync found it gone): lifted here, not sent back out.
    pub fn remove_peer(&self, subject: &Subject) -> Option<Ban> {
        let removed = self.store.remove(subject);
        self.written(subject);
        removed
    }

    /// Bans issued since start, by issuer family (`portcullis:rate`, `admin`, …).
    pub fn issued(&self) -> Vec<(&'static str, u64)> {
        BanSource::FAMILIES
            .iter()
            .zip(&self.issued)
            .map(|(name, n)| (*name, n.load(Relaxed)))
            .collect()
    }

    /// A ban is in force: count it, kick whoever it covers, write it down, tell the cluster.
    fn announce(&self, ban: &Ban) {
        self.kick_and_count(ban);
        self.changed(&ban.subject);
    }

    fn kick_and_count(&self, ban: &Ban) {
        if let Some(n) = self.issued.get(ban.source.family()) {
            n.fetch_add(1, Relaxed);
        }
        let why = format!("banned while connected: {}", ban.reason);
        self.clients
            .kick_covered(&ban.subject.clone().canonical(), &why);
    }

    /// Bans read back from the store (or just written there) at start: into memory only.
    pub fn restore(&self, bans: Vec<Ban>, now: SystemTime) -> usize {
        bans.into_iter()
            .filter(|b| self.store.insert(b.clone(), now).is_ok())
            .count()
    }

    /// Bans in force, counted by kind and issuer (no copy of the list).
    pub fn tally(&self, now: SystemTime) -> crate::policy::Tally {
        self.store.tally(now)
    }

    /// The ban on exactly `subject`, if one is in force.
    pub fn get_exact(&self, subject: &Subject, now: SystemTime) -> Option<Ban> {
        self.store.get_exact(subject, now)
    }

    /// Everything changed so far is on disk (an admin's change waits for this before it is
    /// confirmed). `Ok` without a store.
    pub async fn flush(&self) -> Result<(), String> {
        match self.writer() {
            Some(w) => w.flush().await,
            None => Ok(()),
        }
    }

    /// Commit what is pending and close the store (a clean shutdown). Bans stay in memory.
    pub async fn close(&self) {
        let writer = self.disk.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            if let Err(e) = w.close().await {
                tracing::error!("closing the ban store: {e}");
            }
        }
    }

    /// The writer, cloned out of the lock: nothing waits under it.
    fn writer(&self) -> Option<Writer> {
        // Poisoned only by a panic elsewhere; the Option is always consistent.
        self.disk.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This node changed the ban on `subject`: the store and the cluster follow memory.
    fn changed(&self, subject: &Subject) {
        self.written(subject);
        if let Some(c) = self.cluster() {
            c.changed(subject.clone().canonical());
        }
    }

    /// The store follows memory for `subject`.
    fn written(&self, subject: &Subject) {
        if let Some(w) = self.writer() {
            w.changed(subject.clone().canonical());
        }
    }
}

impl BanList for AnnouncedBans {
    fn get(&self, subject: &Subject, now: SystemTime) -> Option<Ban> {
        self.store.get(subject, now)
    }

    fn insert(&self, ban: Ban, now: SystemTime) -> Result<(), BanError> {
        let announced = ban.clone();
        self.store.insert(ban, now)?;
        self.announce(&announced);
        Ok(())
    }

    fn remove(&self, subject: &Subject) -> Option<Ban> {
        let removed = self.store.remove(subject);
        self.written(subject);
        if let Some(c) = self.cluster() {
            c.lifted(subject.clone().canonical());
        }
        removed
    }

    fn list(&self, now: SystemTime) -> Vec<Ban> {
        self.store.list(now)
    }

    fn sweep(&self, now: SystemTime) -> usize {
        let expired = self.store.sweep_expired(now);
        // The writer writes what memory holds for them: nothing, unless a newer ban came.
        // Redis expires its copy by itself: an expiry is nothing to announce.
        for subject in &expired {
            self.written(subject);
        }
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BanSource;
    use std::time::Duration;

    fn ban(id: &str, source: BanSource, now: SystemTime, lasting: Option<u64>) -> Ban {
        Ban {
            subject: Subject::ClientId(id.into()),
            reason: "test".into(),
            source,
            created: now,
            expires: lasting.map(|s| now + Duration::from_secs(s)),
        }
    }

    fn on_disk(store: &BanStore, id: &str) -> Option<Ban> {
        let far = SystemTime::UNIX_EPOCH;
        store
            .load(far)
            .unwrap()
            .into_iter()
            .find(|b| b.subject == Subject::ClientId(id.into()))
    }

    #[tokio::test]
    async fn a_flush_puts_every_change_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = BanStore::open(dir.path()).unwrap();
        let bans = AnnouncedBans::persistent(&store, Clients::new(), 100);
        let now = SystemTime::now();
        bans.insert(ban("by-policy", BanSource::Rate, now, Some(600)), now)
            .unwrap();
        bans.flush().await.unwrap();
        assert!(on_disk(&store, "by-policy").is_some());
        bans.remove(&Subject::ClientId("by-policy".into()));
        bans.flush().await.unwrap();
        assert!(on_disk(&store, "by-policy").is_none());
    }

    #[tokio::test]
    async fn the_file_ends_as_memory_whatever_the_order_of_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BanStore::open(dir.path()).unwrap();
        let bans = AnnouncedBans::persistent(&store, Clients::new(), 100);
        let now = SystemTime::now();
        // An automatic ban, then an admin lifting it, before the writer ran: stays lifted.
        bans.insert(ban("a", BanSource::Rate, now, Some(600)), now)
            .unwrap();
        bans.remove(&Subject::ClientId("a".into()));
        // An automatic ban, then an admin's permanent one on the same device: the admin's wins.
        bans.insert(ban("b", BanSource::Rate, now, Some(600)), now)
            .unwrap();
        bans.insert(ban("b", BanSource::admin("ops"), now, None), now)
            .unwrap();
        bans.flush().await.unwrap();
        assert!(on_disk(&store, "a").is_none());
        let b = on_disk(&store, "b").expect("b on disk");
        assert_eq!((b.source, b.expires), (BanSource::admin("ops"), None));
    }

    #[tokio::test]
    async fn the_sweeper_deletes_an_expired_record_but_not_a_newer_ban_on_the_subject() {
        let dir = tempfile::tempdir().unwrap();
        let store = BanStore::open(dir.path()).unwrap();
        let bans = AnnouncedBans::persistent(&store, Clients::new(), 100);
        let t0 = SystemTime::now() - Duration::from_secs(10);
        bans.insert(ban("old", BanSource::admin("ops"), t0, Some(600)), t0)
            .unwrap();
        bans.insert(ban("dev", BanSource::admin("ops"), t0, Some(600)), t0)
            .unwrap();
        bans.flush().await.unwrap();
        // Both have expired by `later`; "dev" is banned anew before the writer runs.
        let later = t0 + Duration::from_secs(601);
        assert_eq!(bans.sweep(later), 2);
        bans.insert(ban("dev", BanSource::admin("ops"), later, Some(600)), later)
            .unwrap();
        bans.flush().await.unwrap();
        assert!(on_disk(&store, "old").is_none());
        let dev = on_disk(&store, "dev").expect("the newer ban is kept");
        assert!(dev.active(later + Duration::from_secs(60)), "{dev:?}");
    }
}
