//! The gateway's ban list: the policy's store, plus a signal to every live connection.
//!
//! Bans come from several places (a publish that struck out, a connect flood at accept, a
//! flapping client at CONNECT, an admin). Wrapping the store is the one place that sees them
//! all, so whichever path issues a ban, connected devices it covers are kicked, and, with a
//! `[store]`, it is written down: an admin's (or the file's) before the call returns, the
//! gateway's own within a second, batched.

use std::sync::RwLock;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::policy::{Ban, BanError, BanList, BanSource, MemoryBanList, Subject};
use crate::store::{BanStore, Change, WriteBehind};

pub struct AnnouncedBans {
    store: MemoryBanList,
    /// Bumped on every insert; each connection re-checks its identity when it changes.
    epoch: watch::Sender<u64>,
    /// Taken out at shutdown, so that the store's file is closed when the gateway is.
    disk: RwLock<Option<Disk>>,
}

struct Disk {
    store: BanStore,
    behind: WriteBehind,
}

impl AnnouncedBans {
    /// Bans in memory only.
    pub fn new() -> Self {
        AnnouncedBans {
            store: MemoryBanList::default(),
            epoch: watch::channel(0).0,
            disk: RwLock::new(None),
        }
    }

    /// Bans in memory, written to `store` (the writer runs on the current runtime).
    pub fn persistent(store: BanStore) -> Self {
        let behind = store.write_behind();
        AnnouncedBans {
            disk: RwLock::new(Some(Disk { store, behind })),
            ..AnnouncedBans::new()
        }
    }

    /// Bans read back from the store at start: into memory, not written again.
    pub fn restore(&self, bans: Vec<Ban>, now: SystemTime) -> usize {
        bans.into_iter()
            .filter(|b| self.store.insert(b.clone(), now).is_ok())
            .count()
    }

    /// Everything queued for the store is committed.
    pub async fn flush(&self) {
        let behind = self.disk().as_ref().map(|d| d.behind.clone());
        if let Some(behind) = behind {
            behind.flush().await;
        }
    }

    /// Commit what is queued and close the store (a clean shutdown). Bans stay in memory.
    pub async fn close(&self) {
        let disk = self.disk.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(disk) = disk {
            disk.behind.close().await;
        }
    }

    fn disk(&self) -> std::sync::RwLockReadGuard<'_, Option<Disk>> {
        // Poisoned only by a panic elsewhere; the Option is always consistent.
        self.disk.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }
}

impl BanList for AnnouncedBans {
    fn get(&self, subject: &Subject, now: SystemTime) -> Option<Ban> {
        self.store.get(subject, now)
    }

    fn insert(&self, ban: Ban, now: SystemTime) -> Result<(), BanError> {
        self.store.insert(ban.clone(), now)?;
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
        let disk = self.disk();
        let Some(disk) = disk.as_ref() else {
            return Ok(());
        };
        match ban.source {
            // A person (or their file) is told the ban is kept only once it is on disk.
            BanSource::Admin | BanSource::File => disk
                .store
                .put(std::slice::from_ref(&ban))
                .map_err(|e| BanError::NotPersisted(ban.subject.clone(), e)),
            BanSource::Auto | BanSource::Peer => {
                disk.behind.send(Change::Put(Box::new(ban)));
                Ok(())
            }
        }
    }

    fn remove(&self, subject: &Subject) -> Option<Ban> {
        let removed = self.store.remove(subject);
        if let Some(disk) = self.disk().as_ref() {
            if let Err(e) = disk.store.delete(subject) {
                tracing::error!("{e}: the ban on {subject} is lifted until the next restart only");
            }
        }
        removed
    }

    fn list(&self, now: SystemTime) -> Vec<Ban> {
        self.store.list(now)
    }

    fn sweep(&self, now: SystemTime) -> usize {
        let expired = self.store.sweep_expired(now);
        if let Some(disk) = self.disk().as_ref() {
            for subject in &expired {
                disk.behind
                    .send(Change::DeleteExpired(subject.clone(), now));
            }
        }
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ban(id: &str, source: BanSource, now: SystemTime) -> Ban {
        Ban {
            subject: Subject::ClientId(id.into()),
            reason: "test".into(),
            source,
            created: now,
            expires: Some(now + Duration::from_secs(600)),
        }
    }

    #[tokio::test]
    async fn an_admin_ban_is_on_disk_when_insert_returns_an_automatic_one_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = BanStore::open(dir.path()).unwrap();
        let bans = AnnouncedBans::persistent(store.clone());
        let now = SystemTime::now();
        bans.insert(ban("by-admin", BanSource::Admin, now), now)
            .unwrap();
        let on_disk = |id: &str| {
            store
                .load(now)
                .unwrap()
                .iter()
                .any(|b| b.subject == Subject::ClientId(id.into()))
        };
        assert!(on_disk("by-admin"), "written before insert returned");
        bans.insert(ban("by-policy", BanSource::Auto, now), now)
            .unwrap();
        bans.flush().await;
        assert!(on_disk("by-policy"));
        assert!(bans.remove(&Subject::ClientId("by-admin".into())).is_some());
        assert!(!on_disk("by-admin"), "removed before remove returned");
    }

    #[tokio::test]
    async fn the_sweeper_deletes_an_expired_record_but_not_a_newer_ban_on_the_subject() {
        let dir = tempfile::tempdir().unwrap();
        let store = BanStore::open(dir.path()).unwrap();
        let bans = AnnouncedBans::persistent(store.clone());
        let t0 = SystemTime::now();
        let mut short = ban("dev", BanSource::Admin, t0);
        short.expires = Some(t0 + Duration::from_secs(1));
        bans.insert(short, t0).unwrap();
        let later = t0 + Duration::from_secs(2);
        assert_eq!(bans.sweep(later), 1);
        // A new ban on the same device before the writer ran: the sweep's delete must spare it.
        bans.insert(ban("dev", BanSource::Admin, later), later)
            .unwrap();
        bans.flush().await;
        let kept = store.load(later).unwrap();
        assert_eq!(kept.len(), 1);
        // The newer ban (ten minutes from `later`), not the expired one.
        assert!(kept[0].active(later + Duration::from_secs(60)), "{kept:?}");
    }
}
