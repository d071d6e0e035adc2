//! Bans that outlive the process: an embedded transactional store (redb) under `[store] dir`.
//!
//! The hot path never reads it: every ban lives in memory (`policy::MemoryBanList`), which is
//! the truth; this file is where it is written down. One writer task owns every write. It is
//! told which subjects changed and, inside one transaction, writes what memory holds for each
//! of them now (the ban, or its absence), so the file converges on memory whatever the order of
//! admin and automatic changes. Changes are gathered for a quarter second, so a flood of bans
//! costs one commit; an admin's change asks for a commit at once and waits for it. Every commit
//! is durable (fsync) and runs off the async workers. At start every unexpired ban is loaded
//! before a listener is bound.

mod bootstrap;
mod record;
mod uploads;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::policy::{Ban, BanList, MemoryBanList, Subject};
pub use bootstrap::read_bootstrap;
pub use record::{subject, subject_words, Record, KINDS};
pub use uploads::UploadStore;

/// key: `as\0who`; value: the record as JSON.
const BANS: TableDefinition<&str, &str> = TableDefinition::new("bans");

/// How long the writer gathers automatic changes before one commit.
const GATHER: Duration = Duration::from_millis(250);

/// Pages redb keeps in memory: bans are read once at start, so a small cache is enough (redb's
/// default is 1 GiB, too much for a gateway on small hardware).
const CACHE_BYTES: usize = 8 << 20;

/// The ban store file, open.
#[derive(Clone)]
pub struct BanStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

/// What the writer is sent.
enum Op {
    /// The ban on this subject was added, replaced or removed in memory.
    Changed(Subject),
    /// Commit now; answered with the outcome of everything sent before it.
    Flush(oneshot::Sender<Result<(), String>>),
    /// As `Flush`, then the writer ends and lets go of the file.
    Close(oneshot::Sender<Result<(), String>>),
}

/// The writer's address.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
    /// Seconds per commit, fsync included (for `/metrics`).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Set when a change could not be queued: the next commit writes all of memory instead.
    resync: Arc<AtomicBool>,
}

impl BanStore {
    /// Open (or create) `dir/bans.redb`. A file that cannot be used is refused with what to do
    /// about it: the gateway must not start and silently forget its bans.
    pub fn open(dir: &Path) -> Result<BanStore, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("[store] dir {}: cannot create it: {e}", dir.display()))?;
        let path = dir.join("bans.redb");
        let mut builder = Database::builder();
        // A damaged file is then an error, not a panic deep inside a later read.
        builder
            .set_check_integrity_on_open(true)
            .set_cache_size(CACHE_BYTES);
        let opened = match std::fs::metadata(&path) {
            Ok(m) if m.len() == 0 => return Err(unreadable(&path, "the file is empty")),
            Ok(_) => builder.open(&path),
            Err(_) => builder.create(&path),
        };
        let db = opened.map_err(|e| open_error(&path, e))?;
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
            let ban = serde_json::from_str::<Record>(value.value())
                .map_err(|e| e.to_string())
                .and_then(|r| r.to_ban())
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

    /// Write `bans` now, in one durable commit (the bootstrap file, and tests).
    pub fn put(&self, bans: &[Ban]) -> Result<(), String> {
        self.commit(|t| {
            for ban in bans {
                put(t, ban)?;
            }
            Ok(())
        })
    }

    /// Make the record of each subject what `memory` holds now, in one durable commit. With
    /// `everything`, also every ban in memory, and no record memory does not hold.
    fn sync(
        &self,
        memory: &MemoryBanList,
        subjects: &HashSet<Subject>,
        everything: bool,
    ) -> Result<usize, String> {
        let now = SystemTime::now();
        self.commit(|t| {
            if everything {
                t.retain(|_, _| false)?;
                for ban in memory.list(now) {
                    put(t, &ban)?;
                }
                return Ok(());
            }
            for subject in subjects {
                match memory.get_exact(subject, now) {
                    Some(ban) => put(t, &ban)?,
                    None => {
                        t.remove(record::key(subject).as_str())?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(subjects.len())
    }

    /// One durable write transaction over any tables of the file.
    fn commit_with(
        &self,
        work: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("store {}: {e}", self.path.display());
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        work(&txn).map_err(|e| fail(&e))?;
        txn.commit().map_err(|e| fail(&e))
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

    /// Start the writer, on the current runtime. It reads what to write from `memory`.
    pub fn writer(&self, memory: Arc<MemoryBanList>) -> Writer {
        // Far more than a second's worth of changes; past it the next commit writes everything.
        let (tx, rx) = mpsc::channel(65_536);
        let resync = Arc::new(AtomicBool::new(false));
        let commit_seconds = crate::gateway::timings::commit_histogram();
        let timer = commit_seconds.clone();
        tokio::spawn(write_loop(self.clone(), memory, rx, resync.clone(), timer));
        Writer {
            tx,
            commit_seconds,
            resync,
        }
    }
}

fn put(t: &mut redb::Table<&str, &str>, ban: &Ban) -> Result<(), redb::StorageError> {
    // Records always serialize (strings only); an empty value would be refused at load.
    let json = serde_json::to_string(&Record::of(ban)).unwrap_or_default();
    t.insert(record::key(&ban.subject).as_str(), json.as_str())?;
    Ok(())
}

impl Writer {
    /// The ban on `subject` changed in memory: written within a second.
    pub fn changed(&self, subject: Subject) {
        match self.tx.try_send(Op::Changed(subject)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.resync.swap(true, Ordering::Relaxed) {
                    tracing::warn!("ban store: changes come faster than they are written; the next commit writes every ban");
                }
            }
            // The store is closed (shutdown): memory is all there is now.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Commit everything sent so far, now, and say whether it was written.
    pub async fn flush(&self) -> Result<(), String> {
        self.ask(Op::Flush).await
    }

    /// Commit everything, then stop the writer and let go of the file (a clean shutdown).
    pub async fn close(&self) -> Result<(), String> {
        self.ask(Op::Close).await
    }

    async fn ask(&self, op: fn(oneshot::Sender<Result<(), String>>) -> Op) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(op(done))
            .await
            .map_err(|_| "the ban store is closed".to_string())?;
        wait.await
            .unwrap_or_else(|_| Err("the ban store writer stopped".into()))
    }
}

async fn write_loop(
    store: BanStore,
    memory: Arc<MemoryBanList>,
    mut rx: mpsc::Receiver<Op>,
    resync: Arc<AtomicBool>,
    timer: prometheus_client::metrics::histogram::Histogram,
) {
    while let Some(first) = rx.recv().await {
        let mut subjects = HashSet::new();
        let mut acks = Vec::new();
        let mut closing = false;
        let deadline = tokio::time::Instant::now() + GATHER;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                Op::Changed(s) => {
                    subjects.insert(s);
                }
                Op::Flush(ack) => acks.push(ack),
                Op::Close(ack) => {
                    acks.push(ack);
                    closing = true;
                }
            }
            if !acks.is_empty() {
                break; // someone waits: commit now
            }
            next = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .ok()
                .flatten();
        }
        let everything = resync.swap(false, Ordering::Relaxed);
        let (s, m) = (store.clone(), memory.clone());
        // redb commits wait for fsync: off the async workers.
        let t0 = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || s.sync(&m, &subjects, everything))
            .await
            .unwrap_or_else(|e| Err(format!("ban store writer: {e}")));
        timer.observe(t0.elapsed().as_secs_f64());
        match &outcome {
            Ok(n) if *n > 0 || everything => {
                tracing::debug!(changes = n, everything, "bans persisted")
            }
            Ok(_) => {}
            Err(e) => {
                // Nothing is lost from memory; the next commit writes it all again.
                resync.store(true, Ordering::Relaxed);
                tracing::error!("{e}; bans are enforced, and written again with the next change");
            }
        }
        for ack in acks {
            let _ = ack.send(outcome.clone().map(|_| ()));
        }
        if closing {
            return;
        }
    }
}

fn open_error(path: &Path, e: DatabaseError) -> String {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => format!(
            "{}: the ban store is in use by another process (another gateway with the same [store] dir?); give each gateway its own dir",
            path.display()
        ),
        DatabaseError::UpgradeRequired(v) => format!(
            "{}: the ban store has file format {v}, which this redb cannot open without an upgrade",
            path.display()
        ),
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            format!(
                "{}: permission denied: the gateway's user must be able to read and write it",
                path.display()
            )
        }
        other => unreadable(path, &other.to_string()),
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
