//! The policy's per-publish decision (`Policy::on_publish`), on the production clock
//! (`MonotonicClock`), with 1,000,000 registered devices: the `devices` map has 1M entries and
//! every device has connected and published once, so 1M per-device entries hold counters and
//! rate limiters.
//!
//! - `forward/one_device`: one device's publish, in rhythm, forwarded (its state stays hot in
//!   cache: the floor).
//! - `forward/100k_devices_round_robin`: publishes cycle over 100,000 connected devices, each in
//!   rhythm and forwarded: the cache misses a busy gateway actually pays.
//! - `rate_limited/one_device`: a device over its message rate: discarded and struck. The
//!   strike threshold is raised to its maximum (1000) so that the measurement is the steady
//!   discard-and-strike path; the ban issued every 1000 strikes is amortised into it.
//!
//! - `acl/…`: one device's publish with and without topic permissions on its class (two
//!   filters with placeholders; the topic matches the second, the longer path), on a small
//!   policy of its own: what the permission check adds per publish.
//!
//! To keep every publish in rhythm on a real clock, the meters' class has T = 1 s and
//! E = 1 s − 1 ns: a sample is in rhythm iff 1 ns ≤ Δ ≤ 2 s − 1 ns, so the full rhythm check
//! runs and passes. Run: `cargo bench --bench policy`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::config::policy::{DeviceClass, PolicyConfig, UnknownDevices};
use portcullis::policy::{
    Identity, MemoryBanList, Policy, PublishFacts, Reason, Session, StatsSnapshot, Verdict,
};

const DEVICES: u32 = 1_000_000;
const ROUND_ROBIN: usize = 100_000;
const SLOW: &str = "dev-0000001";

fn id(i: u32) -> String {
    format!("dev-{i:07}")
}

fn config() -> PolicyConfig {
    let mut cfg = PolicyConfig {
        unknown_devices: UnknownDevices::Refuse,
        ..PolicyConfig::default()
    };
    cfg.classes.insert("meter".into(), meter_class(Vec::new()));
    cfg.classes.insert(
        "slow".into(),
        DeviceClass {
            messages_per_sec: 1,
            message_burst: 1,
            ..DeviceClass::default()
        },
    );
    for i in 0..DEVICES {
        cfg.devices.insert(id(i), "meter".into());
    }
    cfg.devices.insert(SLOW.into(), "slow".into());
    cfg.strikes.threshold = 1_000;
    cfg.connects.per_client_per_minute = 1_000;
    cfg
}

/// Every publish in rhythm on a real clock, rates that never bind; `publish_topics` as given.
fn meter_class(publish_topics: Vec<String>) -> DeviceClass {
    DeviceClass {
        push_interval_secs: Some(1.0),
        tolerance_secs: 0.999_999_999,
        messages_per_sec: 1_000_000_000,
        message_burst: 1_000_000,
        bytes_per_sec: 1_000_000_000,
        byte_burst: 100_000_000,
        publish_topics,
        ..DeviceClass::default()
    }
}

fn facts() -> PublishFacts<'static> {
    PublishFacts {
        topic: "meters/reading",
        qos: 1,
        len: 120,
        retransmit: false,
    }
}

/// Connects and publishes once as every device; keeps the first `ROUND_ROBIN` sessions open.
fn prime(policy: &Policy) -> Vec<Session> {
    let mut open = Vec::with_capacity(ROUND_ROBIN);
    for i in 0..DEVICES {
        let identity = Identity {
            client_id: id(i).into(),
            username: None,
            ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            named: portcullis::policy::Naming::ClientId,
        };
        let mut s = match policy.on_connect(&identity) {
            Ok(s) => s,
            Err(r) => panic!("{}: {r}", identity.client_id),
        };
        policy.on_publish(&mut s, &facts());
        if open.len() < ROUND_ROBIN {
            open.push(s);
        }
    }
    open
}

fn bench(c: &mut Criterion) {
    let started = std::time::Instant::now();
    let cfg = config();
    let policy = match Policy::new(&cfg, Arc::new(MemoryBanList::new()), Default::default()) {
        Ok(p) => p,
        Err(e) => panic!("config: {e}"),
    };
    drop(cfg);
    let mut sessions = prime(&policy);
    let fp = policy.footprint();
    eprintln!(
        "primed in {:.1?}: {} devices with rate limiters, {} devices",
        started.elapsed(),
        fp.device_rate_limiters,
        fp.devices
    );
    let p = facts();
    // Out of the round robin, which must only see forwarded publishes.
    let mut slow = sessions.swap_remove(1);
    assert_eq!(&**slow.client_id(), SLOW);

    // Priming took seconds, longer than T + E: re-arm (a late publish re-arms), then check.
    let one = &mut sessions[ROUND_ROBIN / 2];
    policy.on_publish(one, &p);
    assert_eq!(policy.on_publish(one, &p).verdict, Verdict::Forward);
    let mut group = c.benchmark_group("forward");
    let before = policy.stats().snapshot();
    group.bench_function("one_device", |b| {
        b.iter(|| black_box(policy.on_publish(one, black_box(&p))))
    });
    report(&policy, &before, "forward/one_device");
    on_cpu("forward/one_device", 5_000_000, || {
        black_box(policy.on_publish(one, black_box(&p)));
    });
    for s in sessions.iter_mut() {
        policy.on_publish(s, &p);
    }
    let before = policy.stats().snapshot();
    let mut next = 0;
    group.bench_function("100k_devices_round_robin", |b| {
        b.iter(|| {
            next = (next + 1) % sessions.len();
            black_box(policy.on_publish(&mut sessions[next], black_box(&p)))
        })
    });
    report(&policy, &before, "forward/100k_devices_round_robin");
    on_cpu("forward/100k_devices_round_robin", 2_000_000, || {
        next = (next + 1) % sessions.len();
        black_box(policy.on_publish(&mut sessions[next], black_box(&p)));
    });
    group.finish();

    // Its one cell per second has come back during the benchmarks above: spend it.
    policy.on_publish(&mut slow, &p);
    assert_eq!(
        policy.on_publish(&mut slow, &p).verdict,
        Verdict::Discard(Reason::MessageRate)
    );
    let before = policy.stats().snapshot();
    c.benchmark_group("rate_limited")
        .bench_function("one_device", |b| {
            b.iter(|| black_box(policy.on_publish(&mut slow, black_box(&p))))
        });
    report(&policy, &before, "rate_limited/one_device");
    on_cpu("rate_limited/one_device", 5_000_000, || {
        black_box(policy.on_publish(&mut slow, black_box(&p)));
    });
}

/// The same decision timed by the thread's on-CPU time (`/proc/thread-self/schedstat`) as well
/// as by the wall clock: on a shared machine the wall clock also counts the time this thread
/// waited for a core, which is not the decision's cost.
fn on_cpu(name: &str, n: u32, mut f: impl FnMut()) {
    let cpu = || -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        stat.split_whitespace().next()?.parse().ok()
    };
    let (c0, t0) = (cpu(), std::time::Instant::now());
    for _ in 0..n {
        f();
    }
    let wall = t0.elapsed().as_nanos() as f64 / f64::from(n);
    match (c0, cpu()) {
        (Some(a), Some(b)) => eprintln!(
            "{name}: {:.1} ns/decision on-CPU, {wall:.1} ns wall ({n} decisions)",
            (b - a) as f64 / f64::from(n)
        ),
        _ => eprintln!("{name}: {wall:.1} ns wall ({n} decisions; no schedstat)"),
    }
}

/// What the benchmark's publishes got (warm-up included): a forward benchmark whose publishes
/// were not forwarded would be measuring another path.
fn report(policy: &Policy, before: &StatsSnapshot, name: &str) {
    let st = policy.stats().snapshot();
    eprintln!(
        "{name}: forwarded {}, early {}, late {}, rate-limited {}, bans issued {}",
        st.forwarded - before.forwarded,
        st.discarded_early - before.discarded_early,
        st.discarded_late - before.discarded_late,
        st.rate_limited - before.rate_limited,
        st.bans_issued - before.bans_issued,
    );
}

/// One device, its class with or without `publish_topics`.
fn bench_acl(c: &mut Criterion) {
    let mut group = c.benchmark_group("acl");
    for (name, topics) in [
        ("without_permissions", vec![]),
        (
            "with_permissions",
            vec![
                "plant/{clientid}/#".to_string(),
                "fleet/{username}/status".to_string(),
            ],
        ),
    ] {
        let mut cfg = PolicyConfig::default();
        cfg.classes.insert("default".into(), meter_class(topics));
        let policy: Policy =
            match Policy::new(&cfg, Arc::new(MemoryBanList::new()), Default::default()) {
                Ok(p) => p,
                Err(e) => panic!("config: {e}"),
            };
        let identity = Identity {
            client_id: "m1".into(),
            username: Some("acme".into()),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            named: portcullis::policy::Naming::ClientId,
        };
        let mut s = match policy.on_connect(&identity) {
            Ok(s) => s,
            Err(r) => panic!("{r}"),
        };
        let p = PublishFacts {
            topic: "fleet/acme/status",
            qos: 1,
            len: 120,
            retransmit: false,
        };
        policy.on_publish(&mut s, &p);
        assert_eq!(policy.on_publish(&mut s, &p).verdict, Verdict::Forward);
        group.bench_function(name, |b| {
            b.iter(|| black_box(policy.on_publish(&mut s, black_box(&p))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_acl);
criterion_main!(benches);
