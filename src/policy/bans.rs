//! Bans: who is refused, why, by whom, until when.
//!
//! Bans carry wall-clock times because they outlive the process and travel between gateways;
//! every read therefore takes `now: SystemTime` from the caller (the policy's [`WallClock`]),
//! which keeps expiry testable. An expired ban is not a ban, and inserting one is an error:
//! EMQX silently accepts an `until` in the past and the operator believes a device is banned
//! (emqx#2943).
//!
//! [`WallClock`]: super::WallClock

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use ipnet::IpNet;

use super::patterns::Patterns;

/// What a ban applies to. Ordered (kind, then value) only so that lists are in one order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    ClientId(Arc<str>),
    Username(Arc<str>),
    Ip(IpAddr),
    Cidr(IpNet),
    /// A regex over client IDs (see `patterns`).
    ClientIdRe(Arc<str>),
    /// A regex over usernames.
    UsernameRe(Arc<str>),
    /// An HTTP push device's serial.
    Serial(Arc<str>),
}

impl Subject {
    /// The form the ban list stores: IPv4-mapped IPv6 addresses as IPv4 (a dual-stack socket
    /// reports `::ffff:a.b.c.d`, an admin types `a.b.c.d`), CIDRs truncated to their network.
    pub fn canonical(self) -> Subject {
        match self {
            Subject::Ip(ip) => Subject::Ip(ip.to_canonical()),
            Subject::Cidr(net) => Subject::Cidr(canonical_net(net)),
            other => other,
        }
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
                .map(|n| n.trunc())
                .unwrap_or(net.trunc()),
            None => net.trunc(),
        },
        _ => net.trunc(),
    }
}

impl Subject {
    /// EMQX's word for the kind (`as`).
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::ClientId(_) => "clientid",
            Subject::Username(_) => "username",
            Subject::Ip(_) => "peerhost",
            Subject::Cidr(_) => "peerhost_net",
            Subject::ClientIdRe(_) => "clientid_re",
            Subject::UsernameRe(_) => "username_re",
            Subject::Serial(_) => "serial",
        }
    }

    /// A regex ban's pattern.
    pub fn pattern(&self) -> Option<&str> {
        match self {
            Subject::ClientIdRe(p) | Subject::UsernameRe(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::ClientId(id) => write!(f, "client_id:{id}"),
            Subject::Username(u) => write!(f, "username:{u}"),
            Subject::Ip(ip) => write!(f, "ip:{ip}"),
            Subject::Cidr(net) => write!(f, "cidr:{net}"),
            Subject::ClientIdRe(p) => write!(f, "client_id_re:{p}"),
            Subject::UsernameRe(p) => write!(f, "username_re:{p}"),
            Subject::Serial(s) => write!(f, "serial:{s}"),
        }
    }
}

/// Who created a ban: its `by`, EMQX style (`portcullis:rate`, `admin:ops`, `file`, `peer:gw-2`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BanSource {
    /// The policy: publishes out of rhythm struck the device out.
    Rhythm,
    /// The policy: over a message, byte or connect rate.
    Rate,
    /// The policy: reconnecting too fast.
    Flapping,
    /// The policy: publishing outside the class's topic permissions.
    Acl,
    /// The policy: failed device authentications from one address.
    Auth,
    /// The admin API, by the name of the caller's token.
    Admin(Arc<str>),
    /// A seed file.
    File,
    /// Another gateway, by its node name.
    Peer(Arc<str>),
}

impl BanSource {
    pub fn admin(name: &str) -> BanSource {
        BanSource::Admin(name.into())
    }

    /// The issuers, for counting: `Admin` and `Peer` without their names.
    pub const FAMILIES: [&'static str; 8] = [
        "portcullis:rhythm",
        "portcullis:rate",
        "portcullis:flapping",
        "portcullis:acl",
        "portcullis:auth",
        "admin",
        "file",
        "peer",
    ];

    /// Index into [`BanSource::FAMILIES`].
    pub fn family(&self) -> usize {
        match self {
            BanSource::Rhythm => 0,
            BanSource::Rate => 1,
            BanSource::Flapping => 2,
            BanSource::Acl => 3,
            BanSource::Auth => 4,
            BanSource::Admin(_) => 5,
            BanSource::File => 6,
            BanSource::Peer(_) => 7,
        }
    }

    /// Issued by this gateway's policy (as opposed to a person, a file or a peer).
    pub fn is_policy(&self) -> bool {
        self.family() < 5
    }

    /// The `by` text.
    pub fn by(&self) -> String {
        match self {
            BanSource::Admin(name) if name.is_empty() => "admin".into(),
            BanSource::Admin(name) => format!("admin:{name}"),
            BanSource::Peer(node) => format!("peer:{node}"),
            other => Self::FAMILIES[other.family()].to_owned(),
        }
    }

    /// From a `by` text. Anything unknown (EMQX's `mgmt_api`, a user name) is an admin of
    /// that name; `portcullis:policy`, written by earlier releases, is a rate ban.
    pub fn parse(by: &str) -> BanSource {
        match by.split_once(':') {
            Some(("portcullis", "rhythm")) => BanSource::Rhythm,
            Some(("portcullis", "flapping")) => BanSource::Flapping,
            Some(("portcullis", "acl")) => BanSource::Acl,
            Some(("portcullis", "auth")) => BanSource::Auth,
            Some(("portcullis", _)) => BanSource::Rate,
            Some(("admin", name)) => BanSource::admin(name),
            // Earlier releases wrote a bare `admin`.
            None if by == "admin" => BanSource::admin(""),
            Some(("peer", node)) => BanSource::Peer(node.into()),
            _ if by == "file" => BanSource::File,
            _ if by == "peer" => BanSource::Peer("".into()),
            _ => BanSource::admin(by),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub subject: Subject,
    pub reason: String,
    pub source: BanSource,
    pub created: SystemTime,
    /// `None`: until removed.
    pub expires: Option<SystemTime>,
}

impl Ban {
    /// In force at `now` (expiry is exclusive: at `expires` the ban is over).
    pub fn active(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|t| now < t)
    }
}

/// How many bans are in force, by kind (`as`) and by issuer (`by`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub active: usize,
    pub by_kind: std::collections::BTreeMap<&'static str, usize>,
    pub by_source: std::collections::BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanError {
    #[error("ban on {0} expired before it was inserted (expires is in the past)")]
    AlreadyExpired(Subject),
    /// `[policy] max_regex_bans` regex bans exist already.
    #[error("at most {0} regex bans may exist (policy.max_regex_bans)")]
    TooManyPatterns(usize),
    #[error("{0}")]
    BadPattern(String),
    /// In force in memory, but not written down: it will not survive a restart.
    #[error("ban on {0} is enforced but not persisted: {1}")]
    NotPersisted(Subject, String),
}

/// For callers that report errors as text (`?` into `Result<_, String>`).
impl From<BanError> for String {
    fn from(e: BanError) -> String {
        e.to_string()
    }
}

/// The ban store the policy reads and writes. Implementations: [`MemoryBanList`] here; the
/// persistent and clustered stores wrap it. Every insert goes through this trait, so a wrapper
/// is also the place to notice new bans (kick connected devices, tell peers), including the
/// ones the policy issues on paths whose return type has no room for them (accept, CONNECT).
pub trait BanList: Send + Sync {
    /// The ban in force for `subject`. For `Subject::Ip` that is an exact IP ban or, failing
    /// that, a CIDR ban containing the address; other subjects match exactly.
    fn get(&self, subject: &Subject, now: SystemTime) -> Option<Ban>;
    /// Adds or replaces the ban on `ban.subject`.
    fn insert(&self, ban: Ban, now: SystemTime) -> Result<(), BanError>;
    /// Removes the ban on exactly this subject (a CIDR ban is not lifted by removing one IP).
    fn remove(&self, subject: &Subject) -> Option<Ban>;
    /// Bans in force, oldest first.
    fn list(&self, now: SystemTime) -> Vec<Ban>;
    /// Forgets expired bans; returns how many.
    fn sweep(&self, now: SystemTime) -> usize;
}

/// Bans in memory. Read-mostly (checked at accept and CONNECT, never per publish), hence one
/// `RwLock`. CIDR bans are found by prefix length: for each length that has a ban, truncate the
/// address and look it up, so the cost is bounded by the number of distinct lengths (≤ 33 for
/// IPv4, 129 for IPv6), not by the number of CIDR bans (EMQX scans every rule on CONNECT).
#[derive(Debug, Default)]
pub struct MemoryBanList {
    inner: RwLock<Inner>,
}

#[derive(Debug)]
struct Inner {
    bans: HashMap<Subject, Ban>,
    /// Number of CIDR bans per prefix length, IPv4 and IPv6.
    v4_lens: [u32; 33],
    v6_lens: [u32; 129],
    client_re: Patterns,
    user_re: Patterns,
    max_patterns: usize,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            bans: HashMap::new(),
            v4_lens: [0; 33],
            v6_lens: [0; 129],
            client_re: Patterns::default(),
            user_re: Patterns::default(),
            max_patterns: super::patterns::DEFAULT_MAX,
        }
    }
}

impl Inner {
    fn lens(&mut self, net: &IpNet) -> Option<&mut u32> {
        let len = usize::from(net.prefix_len());
        match net {
            IpNet::V4(_) => self.v4_lens.get_mut(len),
            IpNet::V6(_) => self.v6_lens.get_mut(len),
        }
    }

    fn count(&mut self, subject: &Subject, delta: i32) {
        if let Subject::Cidr(net) = subject {
            if let Some(n) = self.lens(net) {
                *n = n.saturating_add_signed(delta);
            }
        }
    }

    fn active(&self, subject: &Subject, now: SystemTime) -> Option<&Ban> {
        self.bans.get(subject).filter(|b| b.active(now))
    }

    /// An exact ban on the value, else the first regex ban in force that matches it.
    fn value(&self, exact: &Subject, value: &str, now: SystemTime) -> Option<&Ban> {
        let patterns = match exact {
            Subject::ClientId(_) => &self.client_re,
            _ => &self.user_re,
        };
        self.active(exact, now)
            .or_else(|| patterns.matching(value).find_map(|s| self.active(s, now)))
    }

    /// Adds or replaces a ban (canonical, in force). Regex bans are checked against the cap
    /// and compiled into their kind's set; a ban that cannot be is refused and nothing changes.
    fn put(&mut self, ban: Ban) -> Result<(), BanError> {
        let subject = ban.subject.clone();
        let new = !self.bans.contains_key(&subject);
        if let Some(p) = subject.pattern() {
            super::patterns::compile(p).map_err(|e| BanError::BadPattern(format!("who: {e}")))?;
            if new && self.client_re.len() + self.user_re.len() >= self.max_patterns {
                return Err(BanError::TooManyPatterns(self.max_patterns));
            }
        }
        let old = self.bans.insert(subject.clone(), ban);
        if old.is_none() {
            self.count(&subject, 1);
        }
        if let Err(e) = self.repattern(&subject) {
            match old {
                Some(b) => self.bans.insert(subject.clone(), b),
                None => self.bans.remove(&subject),
            };
            let _ = self.repattern(&subject);
            return Err(BanError::BadPattern(e));
        }
        Ok(())
    }

    fn take(&mut self, subject: &Subject) -> Option<Ban> {
        let removed = self.take_quietly(subject);
        if removed.is_some() {
            let _ = self.repattern(subject);
        }
        removed
    }

    /// As `take`, leaving the regex sets to the caller (a sweep rebuilds each kind once).
    fn take_quietly(&mut self, subject: &Subject) -> Option<Ban> {
        let removed = self.bans.remove(subject);
        if removed.is_some() {
            self.count(subject, -1);
        }
        removed
    }

    /// After a regex ban of `subject`'s kind came or went: rebuild that kind's set. Nothing for
    /// other kinds (this runs on every insert and removal: it must cost nothing for them).
    fn repattern(&mut self, subject: &Subject) -> Result<(), String> {
        if subject.pattern().is_none() {
            return Ok(());
        }
        let of_kind = |k: &Subject| std::mem::discriminant(k) == std::mem::discriminant(subject);
        let subjects: Vec<Subject> = self.bans.keys().filter(|k| of_kind(k)).cloned().collect();
        match subject {
            Subject::ClientIdRe(_) => self.client_re.rebuild(subjects),
            Subject::UsernameRe(_) => self.user_re.rebuild(subjects),
            _ => Ok(()),
        }
    }

    fn ip(&self, ip: IpAddr, now: SystemTime) -> Option<&Ban> {
        if let Some(b) = self.active(&Subject::Ip(ip), now) {
            return Some(b);
        }
        let lens: &[u32] = match ip {
            IpAddr::V4(_) => &self.v4_lens,
            IpAddr::V6(_) => &self.v6_lens,
        };
        // Longest prefix first, so the most specific ban (and its reason) is reported.
        lens.iter()
            .enumerate()
            .rev()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(len, _)| IpNet::new(ip, u8::try_from(len).ok()?).ok())
            .find_map(|net| self.active(&Subject::Cidr(net.trunc()), now))
    }
}

impl MemoryBanList {
    pub fn new() -> Self {
        Self::default()
    }

    /// With room for at most `max` regex bans (`[policy] max_regex_bans`).
    pub fn with_max_patterns(max: usize) -> Self {
        let list = Self::default();
        list.write().max_patterns = max;
        list
    }

    // A poisoned lock only means another thread panicked mid-operation; every operation here
    // leaves the map consistent, so keep serving rather than cascade the panic.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries stored, expired ones included until the next sweep.
    pub fn len(&self) -> usize {
        self.read().bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ban in force on exactly `subject` (an IP does not match a CIDR ban here).
    pub fn get_exact(&self, subject: &Subject, now: SystemTime) -> Option<Ban> {
        self.read()
            .active(&subject.clone().canonical(), now)
            .cloned()
    }

    /// Inserts `ban` unless a ban is in force on exactly its subject: then that one is returned
    /// and nothing changes. Checked and inserted under one lock, so two admins adding the same
    /// ban at once get one 201 and one 409.
    pub fn insert_new(&self, mut ban: Ban, now: SystemTime) -> Result<Result<(), Ban>, BanError> {
        ban.subject = ban.subject.canonical();
        if !ban.active(now) {
            return Err(BanError::AlreadyExpired(ban.subject));
        }
        let mut inner = self.write();
        if let Some(existing) = inner.active(&ban.subject, now) {
            return Ok(Err(existing.clone()));
        }
        inner.put(ban)?;
        Ok(Ok(()))
    }

    /// Bans in force, counted by kind and by issuer, without copying them: the metrics and the
    /// stats ask for this, and a copy of 100,000 bans under the lock would hold up inserts.
    pub fn tally(&self, now: SystemTime) -> Tally {
        let inner = self.read();
        let mut t = Tally::default();
        // Counted by reference, named once per issuer: `by()` formats a string, and the
        // dashboard asks for this every few seconds with tens of thousands of bans.
        let mut by_source: HashMap<&BanSource, usize> = HashMap::new();
        for b in inner.bans.values().filter(|b| b.active(now)) {
            t.active += 1;
            *t.by_kind.entry(b.subject.kind()).or_default() += 1;
            *by_source.entry(&b.source).or_default() += 1;
        }
        for (source, n) in by_source {
            *t.by_source.entry(source.by()).or_default() += n;
        }
        t
    }

    /// Forgets expired bans; returns their subjects (a persistent store deletes them too).
    pub fn sweep_expired(&self, now: SystemTime) -> Vec<Subject> {
        let mut inner = self.write();
        let expired: Vec<Subject> = inner
            .bans
            .values()
            .filter(|b| !b.active(now))
            .map(|b| b.subject.clone())
            .collect();
        for s in &expired {
            inner.take_quietly(s);
        }
        // Each regex kind rebuilt once, if any of its bans went.
        for kind in [
            Subject::ClientIdRe("".into()),
            Subject::UsernameRe("".into()),
        ] {
            let same = |s: &Subject| std::mem::discriminant(s) == std::mem::discriminant(&kind);
            if expired.iter().any(same) {
                let _ = inner.repattern(&kind);
            }
        }
        inner.bans.shrink_to_fit();
        expired
    }
}

impl BanList for MemoryBanList {
    fn get(&self, subject: &Subject, now: SystemTime) -> Option<Ban> {
        let inner = self.read();
        // No clone of the subject on the CONNECT path: IDs and names are canonical as they are.
        match subject {
            Subject::Ip(ip) => inner.ip(ip.to_canonical(), now).cloned(),
            Subject::ClientId(v) | Subject::Username(v) => inner.value(subject, v, now).cloned(),
            s => inner.active(&s.clone().canonical(), now).cloned(),
        }
    }

    fn insert(&self, mut ban: Ban, now: SystemTime) -> Result<(), BanError> {
        ban.subject = ban.subject.canonical();
        if !ban.active(now) {
            return Err(BanError::AlreadyExpired(ban.subject));
        }
        self.write().put(ban)
    }

    fn remove(&self, subject: &Subject) -> Option<Ban> {
        let subject = subject.clone().canonical();
        self.write().take(&subject)
    }

    fn list(&self, now: SystemTime) -> Vec<Ban> {
        let mut out: Vec<Ban> = self
            .read()
            .bans
            .values()
            .filter(|b| b.active(now))
            .cloned()
            .collect();
        // Bans made in the same millisecond (times are kept to the millisecond) in one order,
        // not the map's: pages of a list must neither repeat nor skip a ban.
        out.sort_by(|a, b| (a.created, &a.subject).cmp(&(b.created, &b.subject)));
        out
    }

    fn sweep(&self, now: SystemTime) -> usize {
        self.sweep_expired(now).len()
    }
}
