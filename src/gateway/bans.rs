//! The gateway's ban list: the policy's store, plus a signal to every live connection.
//!
//! Bans come from several places (a publish that struck out, a connect flood at accept, a
//! flapping client at CONNECT, an admin). Wrapping the store is the one place that sees them
//! all, so whichever path issues a ban, connected devices it covers are kicked, and, with a
//! `[store]`, it is written down: the gateway's own within a second, batched; an admin's before
//! `Gateway::ban` returns (it waits for [`AnnouncedBans::flush`]).

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::policy::{Ban, BanError, BanList, MemoryBanList, Subject};
use crate::store::{BanStore, Writer};

pub struct AnnouncedBans {
    store: Arc<MemoryBanList>,
    /// Bumped on every insert; each connection re-checks its identity when it changes.
    epoch: watch::Sender<u64>,
    /// Taken out at shutdown, so that the store's file is closed when the gateway is.
    disk: RwLock<Option<Writer>>,
}

impl AnnouncedBans {
    /// Bans in memory only.
    pub fn new() -> Self {
        AnnouncedBans {
            store: Arc::default(),
            epoch: watch::channel(0).0,
            disk: RwLock::new(None),
        }
    }

    /// Bans in memory, written to `store` by its writer (started on the current runtime).
    pub fn persistent(store: &BanStore) -> Self {
        let memory: Arc<MemoryBanList> = Arc::default();
        let writer = store.writer(memory.clone());
        AnnouncedBans {
            store: memory,
            epoch: watch::channel(0).0,
            disk: RwLock::new(Some(writer)),
        }
    }

    /// Bans read back from the store (or just written there) at start: into memory only.
    pub fn restore(&self, bans: Vec<Ban>, now: SystemTime) -> usize {
        bans.into_iter()
            .filter(|b| self.store.insert(b.clone(), now).is_ok())
            .count()
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

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// The writer, cloned out of the lock: nothing waits under it.
    fn writer(&self) -> Option<Writer> {
        // Poisoned only by a panic elsewhere; the Option is always consistent.
        self.disk.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn changed(&self, subject: &Subject) {
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
        let subject = ban.subject.clone();
        self.store.insert(ban, now)?;
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
        self.changed(&subject);
        Ok(())
    }

    fn remove(&self, subject: &Subject) -> Option<Ban> {
        let removed = self.store.remove(subject);
        self.changed(subject);
        removed
    }

    fn list(&self, now: SystemTime) -> Vec<Ban> {
        self.store.list(now)
    }

    fn sweep(&self, now: SystemTime) -> usize {
        let expired = self.store.sweep_expired(now);
        // The writer writes what memory holds for them: nothing, unless a newer ban came.
        for subject in &expired {
            self.changed(subject);
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
        let bans = AnnouncedBans::persistent(&store);
        let now = SystemTime::now();
        bans.insert(ban("by-policy", BanSource::Auto, now, Some(600)), now)
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
        let bans = AnnouncedBans::persistent(&store);
        let now = SystemTime::now();
        // An automatic ban, then an admin lifting it, before the writer ran: stays lifted.
        bans.insert(ban("a", BanSource::Auto, now, Some(600)), now)
            .unwrap();
        bans.remove(&Subject::ClientId("a".into()));
        // An automatic ban, then an admin's permanent one on the same device: the admin's wins.
        bans.insert(ban("b", BanSource::Auto, now, Some(600)), now)
            .unwrap();
        bans.insert(ban("b", BanSource::Admin, now, None), now)
            .unwrap();
        bans.flush().await.unwrap();
        assert!(on_disk(&store, "a").is_none());
        let b = on_disk(&store, "b").expect("b on disk");
        assert_eq!((b.source, b.expires), (BanSource::Admin, None));
    }

    #[tokio::test]
    async fn the_sweeper_deletes_an_expired_record_but_not_a_newer_ban_on_the_subject() {
        let dir = tempfile::tempdir().unwrap();
        let store = BanStore::open(dir.path()).unwrap();
        let bans = AnnouncedBans::persistent(&store);
        let t0 = SystemTime::now() - Duration::from_secs(10);
        bans.insert(ban("old", BanSource::Admin, t0, Some(600)), t0)
            .unwrap();
        bans.insert(ban("dev", BanSource::Admin, t0, Some(600)), t0)
            .unwrap();
        bans.flush().await.unwrap();
        // Both have expired by `later`; "dev" is banned anew before the writer runs.
        let later = t0 + Duration::from_secs(601);
        assert_eq!(bans.sweep(later), 2);
        bans.insert(ban("dev", BanSource::Admin, later, Some(600)), later)
            .unwrap();
        bans.flush().await.unwrap();
        assert!(on_disk(&store, "old").is_none());
        let dev = on_disk(&store, "dev").expect("the newer ban is kept");
        assert!(dev.active(later + Duration::from_secs(60)), "{dev:?}");
    }
}
