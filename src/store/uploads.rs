//! Outcomes of HTTP push transactions, in the same file as the bans: a completed upload's
//! answer, kept for replays for `[push] retention_secs`, across restarts.
//!
//! The value is opaque here (the push stage encodes it). Every write is durable before the
//! device is answered, so a retry after a crash never delivers twice; writes arriving
//! together share one commit (one fsync), which is what keeps this off the critical path at
//! load. Expired records are deleted by time through a second table keyed by expiry.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::BanStore;

/// key: `serial\0transaction`; value: (expiry in Unix ms, the encoded outcome).
const UPLOADS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("uploads");
/// key: (expiry in Unix ms, the upload's key).
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("uploads_expiry");

/// Most writes one commit takes.
const BATCH: usize = 512;

struct Put {
    key: String,
    expires_ms: u64,
    value: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

enum Op {
    Put(Put),
    /// Stop after what was sent before, letting go of the file.
    Close(oneshot::Sender<()>),
}

/// The outcome records, open, with their writer. Closed, it reads nothing and lets go of the
/// file, so the next gateway on the same dir can open it.
#[derive(Clone)]
pub struct UploadStore {
    store: std::sync::Arc<std::sync::Mutex<Option<BanStore>>>,
    tx: mpsc::Sender<Op>,
}

impl UploadStore {
    /// Open the tables (created on first use) and start the writer on the current runtime.
    pub fn open(store: &BanStore) -> Result<UploadStore, String> {
        store.commit_with(|txn| {
            txn.open_table(UPLOADS)?;
            txn.open_table(EXPIRY)?;
            Ok(())
        })?;
        let (tx, rx) = mpsc::channel(4 * BATCH);
        tokio::spawn(write_loop(store.clone(), rx));
        Ok(UploadStore {
            store: std::sync::Arc::new(std::sync::Mutex::new(Some(store.clone()))),
            tx,
        })
    }

    fn file(&self) -> Option<BanStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Write what was sent, then let go of the file (a clean shutdown).
    pub async fn close(&self) {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The record of `key` unless it expired before `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, String> {
        let fail = |e: &dyn std::fmt::Display| format!("upload records: {e}");
        let store = self.file().ok_or("the upload records are closed")?;
        let txn = store.db.begin_read().map_err(|e| fail(&e))?;
        let table = txn.open_table(UPLOADS).map_err(|e| fail(&e))?;
        let found = table.get(key).map_err(|e| fail(&e))?;
        Ok(found.and_then(|v| {
            let (expires, value) = v.value();
            (expires > now_ms).then(|| value.to_vec())
        }))
    }

    /// Write the record durably; resolves once it is on disk.
    pub async fn put(&self, key: String, expires_ms: u64, value: Vec<u8>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        let put = Put {
            key,
            expires_ms,
            value,
            done,
        };
        self.tx
            .send(Op::Put(put))
            .await
            .map_err(|_| "the upload records are closed".to_string())?;
        wait.await
            .unwrap_or_else(|_| Err("the upload record writer stopped".into()))
    }

    /// Delete every record that expired before `now_ms`; returns how many.
    pub fn sweep(&self, now_ms: u64) -> Result<usize, String> {
        let mut n = 0;
        let Some(store) = self.file() else {
            return Ok(0);
        };
        store.commit_with(|txn| {
            let mut expiry = txn.open_table(EXPIRY)?;
            let mut uploads = txn.open_table(UPLOADS)?;
            let gone: Vec<(u64, String)> = expiry
                .range::<(u64, &str)>(..(now_ms, ""))?
                .take(100_000)
                .filter_map(|e| e.ok())
                .map(|(k, _)| {
                    let (t, key) = k.value();
                    (t, key.to_string())
                })
                .collect();
            for (t, key) in &gone {
                expiry.remove((*t, key.as_str()))?;
                // Rewritten since with a later expiry: that record stays.
                let current = uploads.get(key.as_str())?.map(|v| v.value().0);
                if current.is_some_and(|c| c <= now_ms) {
                    uploads.remove(key.as_str())?;
                }
            }
            n = gone.len();
            Ok(())
        })?;
        Ok(n)
    }
}

async fn write_loop(store: BanStore, mut rx: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut puts = Vec::with_capacity(batch.len());
        let mut closing = None;
        for op in batch.drain(..) {
            match op {
                Op::Put(p) => puts.push(p),
                Op::Close(done) => closing = Some(done),
            }
        }
        let s = store.clone();
        // redb commits wait for fsync: off the async workers.
        let outcome = tokio::task::spawn_blocking(move || {
            let result = s.commit_with(|txn| {
                let mut uploads = txn.open_table(UPLOADS)?;
                let mut expiry = txn.open_table(EXPIRY)?;
                for p in &puts {
                    uploads.insert(p.key.as_str(), (p.expires_ms, p.value.as_slice()))?;
                    expiry.insert((p.expires_ms, p.key.as_str()), ())?;
                }
                Ok(())
            });
            (result, puts)
        })
        .await;
        match outcome {
            Ok((result, puts)) => {
                if let Err(e) = &result {
                    tracing::error!("{e}: the uploads of this commit stay retryable");
                }
                for p in puts {
                    let _ = p.done.send(result.clone());
                }
            }
            Err(e) => tracing::error!("upload record writer: {e}"),
        }
        if let Some(done) = closing {
            drop(store);
            let _ = done.send(());
            return;
        }
    }
}
