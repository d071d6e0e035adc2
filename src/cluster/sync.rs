//! Keeping memory and Redis in step: this node's changes out, other nodes' changes in, and the
//! full comparison that repairs what pub/sub lost.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;

use super::wire::{self, Announcement, Entry};
use super::{Node, IO_TIMEOUT};
use crate::gateway::bans::AnnouncedBans;
use crate::policy::{Ban, BanList, BanSource, Subject};
use crate::store::Record;

/// A lifted ban's tombstone outlives any outage worth resyncing after.
const TOMBSTONE_SECS: u64 = 86_400;
/// Keys asked for per round trip in a resync.
const BATCH: usize = 500;

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within 3 s")),
    }
}

/// Another node's change, into memory.
pub(super) fn apply(bans: &AnnouncedBans, a: Announcement) {
    match a {
        Announcement::Set { node, ban } => match ban.to_ban() {
            Ok(mut b) => {
                b.source = BanSource::Peer(node.as_str().into());
                bans.apply_peer(b, SystemTime::now());
            }
            Err(e) => tracing::debug!("cluster: a ban from {node} that does not load: {e}"),
        },
        Announcement::Del { kind, who, .. } => {
            if let Some(s) = wire::subject(&kind, &who) {
                bans.remove_peer(&s);
            }
        }
    }
}

impl Node {
    /// Write what memory holds now for every subject changed here, in one pipeline, and
    /// announce it. On failure the subjects go back to pending, to be pushed after a reconnect.
    pub(super) async fn push_pending(&self, con: &mut MultiplexedConnection) -> Result<(), String> {
        let Some(bans) = self.bans.upgrade() else {
            return Ok(());
        };
        let subjects: Vec<Subject> = self.handle.pending().drain().collect();
        if subjects.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now();
        let mut pipe = redis::pipe();
        for s in &subjects {
            let (kind, who) = wire::words(s);
            match bans.get_exact(s, now) {
                // A peer's ban here is the peer's to write; ours only ever follows it.
                Some(b) if matches!(b.source, BanSource::Peer(_)) => continue,
                Some(b) => {
                    let record = Record::of(&b);
                    let entry = Entry {
                        node: self.name.clone(),
                        ban: record.clone(),
                    };
                    let value = serde_json::to_string(&entry).unwrap_or_default();
                    let set = pipe.cmd("SET").arg(self.keys.ban(s)).arg(value);
                    if let Some(until) = b.expires {
                        set.arg("PXAT").arg(ms(until).max(1));
                    }
                    set.ignore();
                    pipe.cmd("DEL").arg(self.keys.lifted(s)).ignore();
                    let a = Announcement::Set {
                        node: self.name.clone(),
                        ban: record,
                    };
                    self.announce(&mut pipe, &a);
                }
                None => {
                    pipe.cmd("DEL").arg(self.keys.ban(s)).ignore();
                    pipe.cmd("SET")
                        .arg(self.keys.lifted(s))
                        .arg(ms(now))
                        .arg("EX")
                        .arg(TOMBSTONE_SECS)
                        .ignore();
                    let a = Announcement::Del {
                        node: self.name.clone(),
                        kind,
                        who,
                    };
                    self.announce(&mut pipe, &a);
                }
            }
        }
        let done: Result<(), String> = bounded("push", pipe.query_async(con)).await;
        if done.is_err() {
            self.handle.pending().extend(subjects);
        }
        done
    }

    fn announce(&self, pipe: &mut redis::Pipeline, a: &Announcement) {
        let text = serde_json::to_string(a).unwrap_or_default();
        pipe.cmd("PUBLISH")
            .arg(self.keys.channel())
            .arg(text)
            .ignore();
    }

    /// Compare every ban in Redis with memory and repair both: what others banned while an
    /// announcement was lost comes in; peer bans no longer in Redis (lifted, expired) go; our
    /// own bans missing from Redis are pushed, unless a tombstone says they were lifted after
    /// they were made (by an admin on another node while we were away).
    pub(super) async fn resync(&self, con: &mut MultiplexedConnection) -> Result<(), String> {
        let Some(bans) = self.bans.upgrade() else {
            return Ok(());
        };
        let remote = self.read_all(con).await?;
        let now = SystemTime::now();
        for (subject, entry) in &remote {
            if entry.node == self.name {
                continue;
            }
            let Ok(mut ban) = entry.ban.to_ban() else {
                continue;
            };
            let newer = match bans.get_exact(subject, now) {
                None => true,
                Some(local) => match local.source {
                    BanSource::Peer(_) => local != peer(&ban, &entry.node),
                    _ => ban.created > local.created,
                },
            };
            if newer && ban.active(now) {
                ban.source = BanSource::Peer(entry.node.as_str().into());
                bans.apply_peer(ban, now);
            }
        }
        let mut ours_missing = Vec::new();
        for local in bans.list(now) {
            if remote.contains_key(&local.subject) {
                continue;
            }
            match local.source {
                BanSource::Peer(_) => {
                    bans.remove_peer(&local.subject);
                }
                _ => ours_missing.push(local),
            }
        }
        for local in ours_missing {
            let lifted: Option<u64> = bounded(
                "resync",
                redis::cmd("GET")
                    .arg(self.keys.lifted(&local.subject))
                    .query_async(con),
            )
            .await?;
            if lifted.is_some_and(|at| at >= ms(local.created)) {
                bans.remove_peer(&local.subject);
            } else {
                self.handle.pending().insert(local.subject.clone());
            }
        }
        self.push_pending(con).await?;
        self.handle
            .inner
            .resyncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Every ban in Redis, by subject. SCAN, then MGET in batches: no command blocks Redis.
    async fn read_all(
        &self,
        con: &mut MultiplexedConnection,
    ) -> Result<HashMap<Subject, Entry>, String> {
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(self.keys.all_bans())
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<String>) =
                bounded("resync scan", scan.query_async(con)).await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            let values: Vec<Option<String>> = bounded(
                "resync read",
                redis::cmd("MGET").arg(chunk).query_async(con),
            )
            .await?;
            for v in values.into_iter().flatten() {
                let Ok(entry) = serde_json::from_str::<Entry>(&v) else {
                    continue;
                };
                if let Ok(ban) = entry.ban.to_ban() {
                    out.insert(ban.subject.clone(), entry);
                }
            }
        }
        Ok(out)
    }
}

/// `ban` as this node holds a peer's ban.
fn peer(ban: &Ban, node: &str) -> Ban {
    let mut b = ban.clone();
    b.source = BanSource::Peer(node.into());
    b
}
