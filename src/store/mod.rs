//! Bans that outlive the process: an embedded transactional store (redb) under `[store] dir`.
//!
//! The hot path never reads it: every ban lives in memory (`policy::MemoryBanList`), and this
//! file is where they are written down. An admin's ban is committed before the call returns;
//! the gateway's own bans (strikes, floods) are written behind, batched, within a second, so a
//! flood of automatic bans costs one commit, not one per ban. Every commit is durable (fsync), so
//! what was committed survives `kill -9` and a power cut; at start every unexpired ban is loaded
//! before a listener is bound. Expired records are deleted at start and by the sweeper.

mod bootstrap;
mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::policy::{Ban, Subject};
pub use bootstrap::read_bootstrap;
pub use record::Record;

/// key: `as\0who`; value: the record as JSON.
const BANS: TableDefinition<&str, &str> = TableDefinition::new("bans");

/// How long the writer gathers automatic bans before one commit.
const WRITE_BEHIND: Duration = Duration::from_millis(250);

/// The ban store file, open.
#[derive(Clone)]
pub struct BanStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

/// One change to the store.
#[derive(Debug, Clone)]
pub enum Change {
    Put(Box<Ban>),
    Delete(Subject),
    /// Delete the record only if it has expired by this time (the sweeper's deletes, which
    /// must not take away a newer ban on the same subject).
    DeleteExpired(Subject, SystemTime),
}

/// What the writer is sent.
enum Op {
    Change(Change),
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
    /// As `Flush`, then the writer ends and lets go of the file.
    Close(oneshot::Sender<()>),
}

/// Sends automatic bans to the writer task.
#[derive(Clone)]
pub struct WriteBehind {
    tx: mpsc::Sender<Op>,
}

impl BanStore {
    /// Open (or create) `dir/bans.redb`. A file that is not a readable store is refused with
    /// what to do about it: the gateway must not start and silently forget its bans.
    pub fn open(dir: &Path) -> Result<BanStore, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("[store] dir {}: cannot create it: {e}", dir.display()))?;
        let path = dir.join("bans.redb");
        let db = Database::create(&path).map_err(|e| unreadable(&path, &e.to_string()))?;
        let store = BanStore {
            db: Arc::new(db),
            path: Arc::new(path),
        };
        // The table exists from the first start on, so that a read never meets "no table".
        store.commit(|_| Ok(()))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every ban in force at `now`; expired records are deleted on the way.
    pub fn load(&self, now: SystemTime) -> Result<Vec<Ban>, String> {
        let read = |e: &dyn std::fmt::Display| unreadable(&self.path, &e.to_string());
        let txn = self.db.begin_read().map_err(|e| read(&e))?;
        let table = txn.open_table(BANS).map_err(|e| read(&e))?;
        let mut bans = Vec::new();
        let mut expired = Vec::new();
        for entry in table.iter().map_err(|e| read(&e))? {
            let (key, value) = entry.map_err(|e| read(&e))?;
            let record: Record = serde_json::from_str(value.value())
                .map_err(|e| read(&format!("record {:?}: {e}", key.value())))?;
            let ban = record
                .to_ban()
                .map_err(|e| read(&format!("record {:?}: {e}", key.value())))?;
            if ban.active(now) {
                bans.push(ban);
            } else {
                expired.push(key.value().to_string());
            }
        }
        drop(table);
        drop(txn);
        if !expired.is_empty() {
            self.commit(|t| {
                for k in &expired {
                    t.remove(k.as_str())?;
                }
                Ok(())
            })?;
        }
        Ok(bans)
    }

    /// Write `bans` now, in one durable commit.
    pub fn put(&self, bans: &[Ban]) -> Result<(), String> {
        let changes: Vec<Change> = bans
            .iter()
            .map(|b| Change::Put(Box::new(b.clone())))
            .collect();
        self.apply(&changes)
    }

    /// Delete the ban on exactly `subject` now.
    pub fn delete(&self, subject: &Subject) -> Result<(), String> {
        self.apply(&[Change::Delete(subject.clone())])
    }

    /// `changes`, in order, in one durable commit.
    pub fn apply(&self, changes: &[Change]) -> Result<(), String> {
        self.commit(|t| {
            for change in changes {
                match change {
                    Change::Put(ban) => {
                        let json = serde_json::to_string(&Record::of(ban)).unwrap_or_default();
                        t.insert(record::key(&ban.subject).as_str(), json.as_str())?;
                    }
                    Change::Delete(subject) => {
                        t.remove(record::key(subject).as_str())?;
                    }
                    Change::DeleteExpired(subject, now) => {
                        let key = record::key(subject);
                        let expired = t
                            .get(key.as_str())?
                            .and_then(|v| serde_json::from_str::<Record>(v.value()).ok())
                            .and_then(|r| r.to_ban().ok())
                            .is_some_and(|b| !b.active(*now));
                        if expired {
                            t.remove(key.as_str())?;
                        }
                    }
                }
            }
            Ok(())
        })
    }

    fn commit(
        &self,
        work: impl FnOnce(&mut redb::Table<&str, &str>) -> Result<(), redb::StorageError>,
    ) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("ban store {}: {e}", self.path.display());
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut table = txn.open_table(BANS).map_err(|e| fail(&e))?;
            work(&mut table).map_err(|e| fail(&e))?;
        }
        txn.commit().map_err(|e| fail(&e))
    }

    /// Start the writer for automatic bans, on the current runtime.
    pub fn write_behind(&self) -> WriteBehind {
        // Far more than a second's worth of bans; past it a ban stays in memory only (logged).
        let (tx, rx) = mpsc::channel(65_536);
        tokio::spawn(writer(self.clone(), rx));
        WriteBehind { tx }
    }
}

impl WriteBehind {
    /// Queue `change` to be written within a second.
    pub fn send(&self, change: Change) {
        if self.tx.try_send(Op::Change(change)).is_err() {
            tracing::warn!("ban store: writer queue full; a change is kept in memory only");
        }
    }

    /// Wait until everything queued so far is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Commit everything queued, then stop the writer (a clean shutdown: the file is let go,
    /// so the same process can open it again).
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Gathers changes for [`WRITE_BEHIND`] after the first one, then commits them together.
async fn writer(store: BanStore, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        let deadline = tokio::time::Instant::now() + WRITE_BEHIND;
        while !matches!(ops.last(), Some(Op::Flush(_) | Op::Close(_))) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(op)) => ops.push(op),
                Ok(None) | Err(_) => break,
            }
        }
        let mut changes = Vec::new();
        let mut acks = Vec::new();
        let mut closing = false;
        for op in ops {
            match op {
                Op::Change(c) => changes.push(c),
                Op::Flush(ack) => acks.push(ack),
                Op::Close(ack) => {
                    acks.push(ack);
                    closing = true;
                }
            }
        }
        let n = changes.len();
        let s = store.clone();
        // redb commits block on fsync: off the async workers.
        let result = tokio::task::spawn_blocking(move || s.apply(&changes)).await;
        match result {
            Ok(Ok(())) if n > 0 => tracing::debug!(changes = n, "bans persisted"),
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{e}; these changes are kept in memory only"),
            Err(e) => tracing::error!("ban store writer: {e}"),
        }
        if closing {
            drop(store);
            for ack in acks {
                let _ = ack.send(());
            }
            return;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

fn unreadable(path: &Path, why: &str) -> String {
    format!(
        "{}: the ban store cannot be read ({why}). Start refused so that no ban is silently \
         forgotten: restore the file from a backup, or move it aside to start with no \
         persisted bans",
        path.display()
    )
}
