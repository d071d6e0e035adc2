//! The ban check on the paths that run it (accept: an IP; CONNECT: a client ID and username)
//! with 100,000 bans in force: 40,000 client IDs, 30,000 usernames, 20,000 IPs and 10,000
//! IPv4 CIDRs spread over /16../30, so a lookup for an address walks every prefix length that
//! holds a CIDR ban. Then the store: importing the same 100,000 bans from an EMQX-style CSV
//! bootstrap file into `[store]` (time and bytes on disk), and loading them back at start.
//!
//! Then the same with the cap's worth of regex bans added (100 `clientid_re` patterns, all in
//! one `RegexSet`): what a CONNECT costs when the exact lookup misses and the set runs.
//!
//! Run: `cargo bench --bench bans`.

use std::hint::black_box;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::policy::{Ban, BanList, BanSource, MemoryBanList, Subject};
use portcullis::store::{read_bootstrap, BanStore};

fn ipv4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | i))
}

/// The 100,000 subjects, as (as, who) pairs in EMQX's words.
fn subjects() -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(100_000);
    out.extend((0..40_000).map(|i| ("clientid", format!("dev-{i:06}"))));
    out.extend((0..30_000).map(|i| ("username", format!("user-{i:06}"))));
    out.extend((0..20_000u32).map(|i| ("peerhost", ipv4(i * 7).to_string())));
    out.extend((0..10_000u32).map(|i| {
        // Prefix lengths /16../30 in turn, each network distinct from every other of its length.
        let len = 16 + (i % 15);
        let base = 0x6400_0000u64 + (u64::from(i) << (32 - len));
        let base = Ipv4Addr::from(u32::try_from(base & 0xFFFF_FFFF).unwrap_or(0));
        ("peerhost_net", format!("{base}/{len}"))
    }));
    out
}

fn ban(kind: &str, who: &str, now: SystemTime) -> Ban {
    let subject = match kind {
        "clientid" => Subject::ClientId(who.into()),
        "username" => Subject::Username(who.into()),
        "peerhost" => Subject::Ip(who.parse().expect("ip")),
        _ => Subject::Cidr(who.parse::<ipnet::IpNet>().expect("cidr").trunc()),
    };
    Ban {
        subject,
        reason: "bench".into(),
        source: BanSource::File,
        created: now,
        expires: Some(now + Duration::from_secs(86_400)),
    }
}

fn lookups(c: &mut Criterion) {
    let now = SystemTime::now();
    let bans = MemoryBanList::new();
    for (kind, who) in subjects() {
        bans.insert(ban(kind, &who, now), now).expect("insert");
    }
    let mut g = c.benchmark_group("ban_check_100k");
    let hit = Subject::ClientId("dev-012345".into());
    let miss = Subject::ClientId("dev-999999".into());
    let user = Subject::Username("user-029999".into());
    let ip_hit = Subject::Ip(ipv4(7 * 1234));
    // An address no ban covers: every prefix length holding a CIDR ban is tried.
    let ip_miss = Subject::Ip(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
    g.bench_function("client_id_banned", |b| {
        b.iter(|| bans.get(black_box(&hit), now))
    });
    g.bench_function("client_id_not_banned", |b| {
        b.iter(|| bans.get(black_box(&miss), now))
    });
    g.bench_function("username_banned", |b| {
        b.iter(|| bans.get(black_box(&user), now))
    });
    g.bench_function("ip_banned_exact", |b| {
        b.iter(|| bans.get(black_box(&ip_hit), now))
    });
    g.bench_function("ip_not_banned_all_cidr_lengths", |b| {
        b.iter(|| bans.get(black_box(&ip_miss), now))
    });
    g.finish();

    for i in 0..100 {
        let pattern = format!("^rogue-{i:03}-[0-9a-f]{{8}}$");
        let mut b = ban("clientid", "x", now);
        b.subject = Subject::ClientIdRe(pattern.into());
        bans.insert(b, now).expect("regex ban");
    }
    let mut g = c.benchmark_group("ban_check_100k_and_100_regex");
    let by_regex = Subject::ClientId("rogue-042-deadbeef".into());
    g.bench_function("client_id_banned_exact", |b| {
        b.iter(|| bans.get(black_box(&hit), now))
    });
    g.bench_function("client_id_banned_by_regex", |b| {
        b.iter(|| bans.get(black_box(&by_regex), now))
    });
    g.bench_function("client_id_not_banned_set_runs", |b| {
        b.iter(|| bans.get(black_box(&miss), now))
    });
    g.finish();
}

/// Not a criterion loop: one import and one load, timed, with the file's size.
fn import(_: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("bans.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).expect("csv"));
    writeln!(f, "as,who,by,reason,at,until").expect("write");
    for (kind, who) in subjects() {
        writeln!(f, "{kind},{who},mgmt_api,bench,,").expect("write");
    }
    drop(f);
    let now = SystemTime::now();
    let started = Instant::now();
    let bans = read_bootstrap(&csv, now).expect("bootstrap");
    let parsed = started.elapsed();
    let store = BanStore::open(&dir.path().join("store")).expect("store");
    store.put(&bans).expect("put");
    let imported = started.elapsed();
    let size = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    let started = Instant::now();
    let loaded = store.load(now).expect("load");
    let load = started.elapsed();
    println!(
        "import_100k_bans: {} bans, CSV parsed in {parsed:.2?}, in the store (one commit) after {imported:.2?}, \
         {:.1} MiB on disk ({} B per ban); loaded back in {load:.2?}",
        loaded.len(),
        size as f64 / (1 << 20) as f64,
        size / loaded.len().max(1) as u64,
    );
}

criterion_group!(benches, lookups, import);
criterion_main!(benches);
