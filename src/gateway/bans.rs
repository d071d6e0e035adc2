//! The gateway's ban list: the policy's store, plus a signal to every live connection.
//!
//! Bans come from several places (a publish that struck out, a connect flood at accept, a
//! flapping client at CONNECT, an admin). Wrapping the store is the one place that sees them
//! all, so whichever path issues a ban, connected devices it covers are kicked.

use std::time::SystemTime;

use tokio::sync::watch;

use crate::policy::{Ban, BanError, BanList, MemoryBanList, Subject};

pub struct AnnouncedBans {
    store: MemoryBanList,
    /// Bumped on every insert; each connection re-checks its identity when it changes.
    epoch: watch::Sender<u64>,
}

impl AnnouncedBans {
    pub fn new() -> Self {
        AnnouncedBans {
            store: MemoryBanList::default(),
            epoch: watch::channel(0).0,
        }
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
        self.store.insert(ban, now)?;
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
        Ok(())
    }

    fn remove(&self, subject: &Subject) -> Option<Ban> {
        self.store.remove(subject)
    }

    fn list(&self, now: SystemTime) -> Vec<Ban> {
        self.store.list(now)
    }

    fn sweep(&self, now: SystemTime) -> usize {
        self.store.sweep(now)
    }
}
