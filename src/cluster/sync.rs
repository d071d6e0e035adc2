//! Keeping memory and Redis in step: this node's changes out, other nodes' changes in, and the
//! full comparison that repairs what pub/sub lost.
//!
//! Rule everywhere: the later act wins. A ban replaces another only if it was made at or after
//! it; a lift removes a ban only if the ban was made at or before the lift. Writes to Redis
//! check this inside a script (and announce only when they changed something), so a node back
//! from an outage cannot overwrite a newer ban or lift one made while it was away.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;

use super::wire::{Announcement, Entry};
use super::{Change, Node, IO_TIMEOUT};
use crate::gateway::bans::AnnouncedBans;
use crate::policy::{Ban, BanList, BanSource, Subject};
use crate::store::Record;

/// A lifted ban's tombstone outlives any outage worth resyncing after.
const TOMBSTONE_SECS: u64 = 86_400;
/// Keys asked for per round trip in a resync.
const BATCH: usize = 500;

/// KEYS: ban, tombstone. ARGV: entry JSON, its at_ms, PXAT ms or "", channel, announcement.
/// Set unless a newer ban is there or the subject was lifted after this ban was made.
const SET_IF_NEWER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, e = pcall(cjson.decode, cur)
  if ok and type(e) == 'table' and tonumber(e.at_ms) and tonumber(e.at_ms) > tonumber(ARGV[2]) then
    return 0
  end
end
local lifted = tonumber(redis.call('GET', KEYS[2]))
if lifted and lifted >= tonumber(ARGV[2]) then return 0 end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// KEYS: ban, tombstone. ARGV: lift ms, tombstone seconds, channel, announcement.
/// Delete unless the ban there was made after the lift; leave a tombstone either way.
const DEL_IF_OLDER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, e = pcall(cjson.decode, cur)
  if ok and type(e) == 'table' and tonumber(e.at_ms) and tonumber(e.at_ms) > tonumber(ARGV[1]) then
    return 0
  end
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"#;

pub(super) fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

/// Another node's change, into memory, if it is the later act.
pub(super) fn apply(bans: &AnnouncedBans, a: Announcement) {
    let now = SystemTime::now();
    match a {
        Announcement::Set { node, ban } => match ban.to_ban() {
            Ok(mut b) => {
                if bans
                    .get_exact(&b.subject, now)
                    .is_some_and(|local| ms(local.created) > ms(b.created))
                {
                    return;
                }
                b.source = BanSource::Peer(node.as_str().into());
                bans.apply_peer(b, now);
            }
            Err(e) => tracing::debug!("cluster: a ban from {node} that does not load: {e}"),
        },
        Announcement::Del { kind, who, at, .. } => {
            let Ok(s) = crate::store::subject(&kind, &who) else {
                return;
            };
            if bans
                .get_exact(&s, now)
                .is_some_and(|local| ms(local.created) <= at)
            {
                bans.remove_peer(&s);
            }
        }
    }
}

impl Node {
    /// Write what memory holds now for every subject changed here, in one pipeline of scripts
    /// that each check they are the later act and announce only what they changed. On failure
    /// the changes go back to pending, to be pushed after a reconnect.
    pub(super) async fn push_pending(&self, con: &mut MultiplexedConnection) -> Result<(), String> {
        let Some(bans) = self.bans.upgrade() else {
            return Ok(());
        };
        let changes: Vec<(Subject, Change)> = self.handle.pending().drain().collect();
        if changes.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now();
        let mut pipe = redis::pipe();
        let mut any = false;
        for (s, change) in &changes {
            let (ban_key, tomb_key) = (self.keys.ban(s), self.keys.lifted(s));
            match (change, bans.get_exact(s, now)) {
                // A peer's ban here is the peer's to write; ours only ever follows it.
                (_, Some(b)) if matches!(b.source, BanSource::Peer(_)) => {}
                (_, Some(b)) => {
                    let record = Record::of(&b);
                    let entry = Entry {
                        node: self.name.clone(),
                        at_ms: ms(b.created),
                        ban: record.clone(),
                    };
                    let a = Announcement::Set {
                        node: self.name.clone(),
                        ban: record,
                    };
                    let pxat = b.expires.map(|t| ms(t).max(1).to_string());
                    pipe.cmd("EVAL")
                        .arg(SET_IF_NEWER)
                        .arg(2)
                        .arg(ban_key)
                        .arg(tomb_key)
                        .arg(serde_json::to_string(&entry).unwrap_or_default())
                        .arg(entry.at_ms)
                        .arg(pxat.unwrap_or_default())
                        .arg(self.keys.channel())
                        .arg(serde_json::to_string(&a).unwrap_or_default())
                        .ignore();
                    any = true;
                }
                // Banned here, then expired before it could be written: Redis's copy, if it
                // has one, expires by itself. Nothing to lift.
                (Change::Banned, None) => {}
                (Change::Lifted(at), None) => {
                    let (kind, who) = crate::store::subject_words(s);
                    let a = Announcement::Del {
                        node: self.name.clone(),
                        kind: kind.to_owned(),
                        who,
                        at: *at,
                    };
                    pipe.cmd("EVAL")
                        .arg(DEL_IF_OLDER)
                        .arg(2)
                        .arg(ban_key)
                        .arg(tomb_key)
                        .arg(*at)
                        .arg(TOMBSTONE_SECS)
                        .arg(self.keys.channel())
                        .arg(serde_json::to_string(&a).unwrap_or_default())
                        .ignore();
                    any = true;
                }
            }
        }
        if !any {
            return Ok(());
        }
        let done: Result<(), String> = bounded("push", pipe.query_async(con)).await;
        if done.is_err() {
            let mut pending = self.handle.pending();
            for (s, change) in changes {
                // A newer change made meanwhile stays.
                pending.entry(s).or_insert(change);
            }
        }
        done
    }

    /// Compare every ban in Redis with memory and repair both:
    /// - a ban in Redis that is later than what memory holds comes in (a lost announcement,
    ///   or this node's own ban from before a restart without a store);
    /// - a peer's ban no longer in Redis goes (lifted or expired elsewhere);
    /// - our own ban missing from Redis, or later than Redis's, is pushed, unless a tombstone
    ///   says it was lifted after it was made (by an admin on another node while we were away).
    pub(super) async fn resync(&self, con: &mut MultiplexedConnection) -> Result<(), String> {
        let Some(bans) = self.bans.upgrade() else {
            return Ok(());
        };
        let remote = self.read_all(con).await?;
        let now = SystemTime::now();
        for (subject, entry) in &remote {
            let Ok(mut ban) = entry.ban.to_ban() else {
                continue;
            };
            if entry.node != self.name {
                ban.source = BanSource::Peer(entry.node.as_str().into());
            }
            // Compared in milliseconds: records keep no finer time.
            match bans.get_exact(subject, now) {
                None => bans.apply_peer(ban, now),
                Some(local) if ms(local.created) < ms(ban.created) => bans.apply_peer(ban, now),
                Some(local) if ms(local.created) > ms(ban.created) => {
                    if !matches!(local.source, BanSource::Peer(_)) {
                        self.handle.changed(local.subject);
                    }
                }
                // Made in the same millisecond: a peer's ban here is replaced by what Redis
                // holds if they differ, so every node converges on Redis's copy.
                Some(local)
                    if matches!(local.source, BanSource::Peer(_))
                        && (local.expires, &local.reason, &local.source)
                            != (ban.expires, &ban.reason, &ban.source) =>
                {
                    bans.apply_peer(ban, now)
                }
                Some(_) => {}
            }
        }
        let missing: Vec<Ban> = bans
            .list(now)
            .into_iter()
            .filter(|b| !remote.contains_key(&b.subject))
            .collect();
        let mut ours = Vec::new();
        for local in missing {
            match local.source {
                BanSource::Peer(_) => {
                    bans.remove_peer(&local.subject);
                }
                _ => ours.push(local),
            }
        }
        let lifted = self.tombstones(con, &ours).await?;
        for (local, lifted_at) in ours.into_iter().zip(lifted) {
            if lifted_at.is_some_and(|at| at >= ms(local.created)) {
                bans.remove_peer(&local.subject);
            } else {
                self.handle.changed(local.subject);
            }
        }
        self.push_pending(con).await?;
        self.handle
            .inner
            .resyncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// When each of `bans` was lifted in the cluster, if it was (batched; anything that does
    /// not read as a time is no tombstone).
    async fn tombstones(
        &self,
        con: &mut MultiplexedConnection,
        bans: &[Ban],
    ) -> Result<Vec<Option<u64>>, String> {
        let mut out = Vec::with_capacity(bans.len());
        for chunk in bans.chunks(BATCH) {
            let keys: Vec<String> = chunk.iter().map(|b| self.keys.lifted(&b.subject)).collect();
            let values: Vec<Option<String>> = bounded(
                "resync tombstones",
                redis::cmd("MGET").arg(&keys).query_async(con),
            )
            .await?;
            out.extend(
                values
                    .into_iter()
                    .map(|v| v.and_then(|t| t.trim().parse().ok())),
            );
        }
        Ok(out)
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
