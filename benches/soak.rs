//! The soak (run with `bash benches/soak.sh`): thousands of MQTT 5 devices through the
//! gateway's `/mqtt` to mosquitto (meters and sensors in two rhythms, trackers under a message
//! rate), a few abusers among them, for a set time, with a SIGHUP every 30 s; a subscriber on
//! mosquitto checks every message the gateway forwarded and the broker acknowledged.
//!
//! Every 10 s it prints the gateway's RSS and CPU, messages per second at the subscriber and
//! the window's p99 latency (device send → subscriber receipt, one clock: same process). At
//! the end: RSS at start and end and its slope, messages acknowledged as forwarded (PUBACK
//! 0x00 from the broker) that never arrived (must be 0), duplicates, discards by the policy
//! (PUBACK 0x10 from the gateway: the policy is set to say "no matching subscribers").
//!
//! Settings (environment): SOAK_DEVICES (default 9,000: the gateway holds two descriptors per
//! device and the hard limit here is 20,000), SOAK_SECS (600), SOAK_RATE (total msg/s,
//! 20,000), SOAK_ABUSERS (5: publishing every 10 ms, struck out and banned), SOAK_SIGHUP (1: a
//! SIGHUP to the gateway every 30 s, as a deploy reloading its config would send).
//!
//! Client, gateway and mosquitto share the machine: the gateway's share of the CPU is what it
//! gets next to the other two.

#[allow(dead_code)]
#[path = "e2e/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "e2e/procs.rs"]
mod procs;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Endpoints, MqttConn, Path};
use portcullis::mqtt::wire::{self, Incoming, Version};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WINDOW: Duration = Duration::from_secs(10);

struct Settings {
    devices: usize,
    secs: u64,
    rate: f64,
    abusers: usize,
    /// SIGHUP the gateway every 30 s (SOAK_SIGHUP=0 to turn off).
    sighup: bool,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One device's tally: what it sent, what the broker acknowledged as forwarded, what the
/// gateway discarded; what the subscriber received of it, and duplicates.
#[derive(Default)]
struct Tally {
    forwarded: AtomicU32,
    discarded: AtomicU32,
    received: AtomicU32,
    last_seq: AtomicU32,
    duplicates: AtomicU32,
}

struct Shared {
    start: Instant,
    tallies: Vec<Tally>,
    /// Latencies (µs) received in the current window.
    window: Mutex<Vec<u32>>,
    received_total: AtomicU64,
    abusers_refused: AtomicU64,
    /// Well-behaved devices whose connection ended before the run did (kicked, banned).
    ended_early: AtomicU64,
    stop: AtomicBool,
}

/// The fleet: 60 % meters reporting every P, 30 % sensors every 2 P (both in rhythm, E = ¾ T),
/// 10 % trackers with no rhythm, every P under a message rate. P is chosen for the rate.
#[derive(Clone, Copy)]
enum Kind {
    Meter,
    Sensor,
    Tracker,
}

impl Kind {
    fn of(i: usize, devices: usize) -> Kind {
        match i * 10 / devices.max(1) {
            0..=5 => Kind::Meter,
            6..=8 => Kind::Sensor,
            _ => Kind::Tracker,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::Meter => "m",
            Kind::Sensor => "s",
            Kind::Tracker => "t",
        }
    }

    /// Its period, in units of P.
    fn periods(self) -> f64 {
        match self {
            Kind::Sensor => 2.0,
            Kind::Meter | Kind::Tracker => 1.0,
        }
    }
}

/// P such that the fleet sends `rate` msg/s: 0.6/P + 0.3/(2P) + 0.1/P = 0.85/P per device.
fn base_period(devices: usize, rate: f64) -> f64 {
    0.85 * devices as f64 / rate
}

fn gateway_config(port: u16, broker: std::net::SocketAddr, p: f64) -> String {
    format!(
        r#"[[listener]]
bind = "127.0.0.1:{port}"
max_connections = 19000

[routes.mqtt]
upstreams = ["{broker}"]

[policy]
default_class = "meter"
discard_reason = "no-matching-subscribers"

# In rhythm iff T - E <= interval <= T + E, with E three quarters of T. The periods are short
# (a second or less, to reach the rate with thousands of devices), so the machine's own
# scheduling jitter is a large part of them; real fleets report every minute or so with
# seconds of tolerance.
[policy.classes.meter]
push_interval_secs = {p:.3}
tolerance_secs = {e1:.3}
messages_per_sec = 1000
message_burst = 1000

[policy.classes.sensor]
push_interval_secs = {p2:.3}
tolerance_secs = {e2:.3}
messages_per_sec = 1000
message_burst = 1000

# No rhythm: a message rate (ten times what they send) is their only limit.
[policy.classes.tracker]
messages_per_sec = {tracker_rate}
message_burst = {tracker_rate}

[[policy.device_prefixes]]
prefix = "dev-m"
class = "meter"

[[policy.device_prefixes]]
prefix = "dev-s"
class = "sensor"

[[policy.device_prefixes]]
prefix = "dev-t"
class = "tracker"

[policy.connects]
# Every device comes from 127.0.0.1.
per_ip_per_sec = 1000000
per_ip_burst = 1000000
per_listener_per_sec = 1000000
per_listener_burst = 1000000

[policy.strikes]
threshold = 3
ip_min_client_ids = 1000

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 3
"#,
        e1 = p * 0.75,
        p2 = p * 2.0,
        e2 = p * 2.0 * 0.75,
        tracker_rate = ((10.0 / p).ceil() as u32).max(1),
    )
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(soak()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn soak() -> Result<bool, BoxError> {
    let s = Settings {
        devices: env("SOAK_DEVICES", 9000),
        secs: env("SOAK_SECS", 600),
        rate: env("SOAK_RATE", 20_000.0),
        abusers: env("SOAK_ABUSERS", 5),
        sighup: env("SOAK_SIGHUP", 1) != 0,
    };
    let period = base_period(s.devices, s.rate);
    println!(
        "soak: {} devices (60 % meters every {:.3} s, 30 % sensors every twice that, 10 % trackers without rhythm), {} msg/s, {} abusers, {} s; open files limit {:?}",
        s.devices,
        period,
        s.rate,
        s.abusers,
        s.secs,
        procs::open_files_limit()
    );
    let dir = tempfile::tempdir()?;
    let broker = procs::Broker::spawn(dir.path()).await?;
    let b = broker.tcp;
    let gw =
        procs::GatewayProc::spawn_with(dir.path(), |port| gateway_config(port, b, period)).await?;
    let ep = Endpoints {
        broker_tcp: broker.tcp,
        broker_ws: broker.ws,
        gateway: gw.addr,
        agent: None,
        tls: None,
    };
    let shared = Arc::new(Shared {
        start: Instant::now(),
        tallies: (0..s.devices).map(|_| Tally::default()).collect(),
        window: Mutex::new(Vec::new()),
        received_total: AtomicU64::new(0),
        abusers_refused: AtomicU64::new(0),
        ended_early: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let sub = subscriber(ep, shared.clone()).await?;

    // Connect in batches, each device starting at a random point of its period.
    let mut devices = Vec::with_capacity(s.devices);
    let devices_n = s.devices;
    for batch in (0..s.devices).collect::<Vec<_>>().chunks(500) {
        let mut connecting = Vec::new();
        for &i in batch {
            connecting.push(tokio::spawn(async move {
                let kind = Kind::of(i, devices_n);
                let c = connect_v5(&ep, &format!("dev-{}{i:05}", kind.prefix())).await;
                (i, c)
            }));
        }
        for c in connecting {
            let (i, conn) = c.await?;
            let conn = conn.map_err(|e| format!("device {i}: {e}"))?;
            let shared = shared.clone();
            let every = period * Kind::of(i, s.devices).periods();
            devices.push(tokio::spawn(device(conn, i, every, shared)));
        }
    }
    let abusers: Vec<_> = (0..s.abusers)
        .map(|i| tokio::spawn(abuser(ep, i, shared.clone())))
        .collect();
    println!(
        "{} devices connected in {:.1} s",
        s.devices,
        shared.start.elapsed().as_secs_f64()
    );

    let pid = gw.proc.pid();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut cpu_before = cpu_ticks(pid);
    let mut received_before = 0u64;
    let t0 = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + WINDOW, WINDOW);
    let mut worst_p99 = 0u32;
    let mut window = 0u64;
    let mut reloads = 0u32;
    while t0.elapsed() < Duration::from_secs(s.secs) {
        tick.tick().await;
        window += 1;
        // A deploy's SIGHUP every 30 s, under the load: nothing may be dropped or lost.
        if s.sighup && window.is_multiple_of(3) {
            let sent = std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status();
            if sent.is_ok_and(|st| st.success()) {
                reloads += 1;
            }
        }
        let rss = procs::rss_kib(pid).unwrap_or(0);
        let cpu = cpu_ticks(pid);
        let received = shared.received_total.load(Relaxed);
        let mut lat = std::mem::take(&mut *shared.window.lock().map_err(|_| "poisoned")?);
        lat.sort_unstable();
        let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or(0);
        worst_p99 = worst_p99.max(p99);
        let secs = WINDOW.as_secs_f64();
        // CLK_TCK is 100 on Linux x86-64.
        let cpu_pct = (cpu.saturating_sub(cpu_before)) as f64 / secs;
        let t = t0.elapsed().as_secs_f64();
        println!(
            "t={t:>5.0}s  {:>7.0} msg/s  gateway rss {:>7.1} MiB  cpu {:>5.1}%  p99 {:>7.2} ms  cut off {}",
            (received - received_before) as f64 / secs,
            rss as f64 / 1024.0,
            cpu_pct,
            f64::from(p99) / 1000.0,
            shared.ended_early.load(Relaxed)
        );
        samples.push((t, rss));
        cpu_before = cpu;
        received_before = received;
    }
    println!("SIGHUP sent {reloads} times");
    shared.stop.store(true, Relaxed);
    for d in devices {
        let _ = d.await;
    }
    for a in abusers {
        a.abort();
    }
    // Everything acknowledged as forwarded has reached the broker; give its deliveries a moment.
    let forwarded: u64 = shared
        .tallies
        .iter()
        .map(|t| u64::from(t.forwarded.load(Relaxed)))
        .sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.received_total.load(Relaxed) < forwarded && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sub.abort();
    report(&shared, &samples, worst_p99)
}

fn report(shared: &Shared, samples: &[(f64, u64)], worst_p99: u32) -> Result<bool, BoxError> {
    let (mut forwarded, mut discarded, mut lost, mut dups) = (0u64, 0u64, 0u64, 0u64);
    for t in &shared.tallies {
        let f = u64::from(t.forwarded.load(Relaxed));
        let r = u64::from(t.received.load(Relaxed));
        forwarded += f;
        discarded += u64::from(t.discarded.load(Relaxed));
        lost += f.saturating_sub(r);
        dups += u64::from(t.duplicates.load(Relaxed));
    }
    // RSS slope over the run after its first minute (connections and buffers settle first).
    let settled: Vec<&(f64, u64)> = samples.iter().filter(|(t, _)| *t >= 60.0).collect();
    let slope = match (settled.first(), settled.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (b.1 as f64 - a.1 as f64) / ((b.0 - a.0) / 60.0),
        _ => 0.0,
    };
    let (first, last) = (
        samples.first().map_or(0, |s| s.1),
        samples.last().map_or(0, |s| s.1),
    );
    println!(
        "\nforwarded and acknowledged: {forwarded}  lost: {lost}  duplicated: {dups}  discarded by the policy: {discarded}"
    );
    let ended = shared.ended_early.load(Relaxed);
    println!(
        "abusers refused or banned: {}  well-behaved devices cut off early: {ended}  worst window p99: {:.2} ms",
        shared.abusers_refused.load(Relaxed),
        f64::from(worst_p99) / 1000.0
    );
    println!(
        "gateway rss: {:.1} MiB at the first sample, {:.1} MiB at the end; slope after the first minute {slope:+.0} KiB/min",
        first as f64 / 1024.0,
        last as f64 / 1024.0
    );
    Ok(lost == 0 && ended == 0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ')'.
    get(11) + get(12)
}

async fn connect_v5(ep: &Endpoints, id: &str) -> Result<MqttConn, BoxError> {
    let mut c = MqttConn::open(Path::GatewayMqtt, ep).await?;
    c.send(wire::connect(id, 60, Version::V5)).await?;
    let p = c.next_packet().await?;
    match wire::parse(&p, Version::V5)? {
        Incoming::ConnAck { code: 0 } => Ok(c),
        other => Err(format!("CONNECT refused: {other:?}").into()),
    }
}

/// Publish `soak/{i}` QoS 1 every `period` (from a random phase), payload: sequence number and
/// send time; wait for each PUBACK and tally its reason code.
async fn device(mut c: MqttConn, i: usize, period: f64, shared: Arc<Shared>) {
    let topic = format!("soak/{i}");
    let phase = Duration::from_secs_f64(period * rand::random::<f64>());
    let every = Duration::from_secs_f64(period);
    let mut next = tokio::time::Instant::now() + phase;
    let mut seq = 0u32;
    while !shared.stop.load(Relaxed) {
        tokio::time::sleep_until(next).await;
        // A device that fell behind (its last PUBACK came late) reports at its next slot,
        // not twice in a row: at most once per half period, as a real device would.
        next = (next + every).max(tokio::time::Instant::now() + every / 2);
        seq += 1;
        let sent = shared.start.elapsed().as_micros() as u64;
        let mut payload = seq.to_be_bytes().to_vec();
        payload.extend_from_slice(&sent.to_be_bytes());
        let id = (seq % 60_000 + 1) as u16;
        if c.send(wire::publish(&topic, 1, id, &payload, Version::V5))
            .await
            .is_err()
        {
            shared.ended_early.fetch_add(1, Relaxed);
            return;
        }
        let Ok(p) = c.next_packet().await else {
            shared.ended_early.fetch_add(1, Relaxed);
            return;
        };
        let t = &shared.tallies[i];
        // PUBACK: 0x40, length, id (2), then the reason code when it is not 0.
        match p.get(4).copied().unwrap_or(0) {
            0 => t.forwarded.fetch_add(1, Relaxed),
            _ => t.discarded.fetch_add(1, Relaxed),
        };
    }
    c.close().await;
}

/// Publishes every 10 ms: early every time, struck, banned; reconnects every second.
async fn abuser(ep: Endpoints, i: usize, shared: Arc<Shared>) {
    let id = format!("abuser-{i}");
    loop {
        match connect_v5(&ep, &id).await {
            Ok(mut c) => {
                let mut n = 0u16;
                loop {
                    n = n % 60_000 + 1;
                    let publish = wire::publish("soak/abuse", 1, n, b"x", Version::V5);
                    if c.send(publish).await.is_err() || c.next_packet().await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                shared.abusers_refused.fetch_add(1, Relaxed);
            }
            Err(_) => {
                shared.abusers_refused.fetch_add(1, Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Subscribed to `soak/#` on mosquitto (QoS 1): tallies each message by device, in order.
async fn subscriber(
    ep: Endpoints,
    shared: Arc<Shared>,
) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    let mut c = MqttConn::connect(Path::Direct, &ep, "soak-platform", 60).await?;
    c.send(wire::subscribe(1, "soak/#", 1, Version::V311))
        .await?;
    let _suback = c.next_packet().await?;
    Ok(tokio::spawn(async move {
        while let Ok(p) = c.next_packet().await {
            let Ok(Incoming::Publish {
                topic,
                packet_id,
                payload,
                ..
            }) = wire::parse(&p, Version::V311)
            else {
                continue;
            };
            if let Some(id) = packet_id {
                if c.send(wire::puback(id, Version::V311)).await.is_err() {
                    return;
                }
            }
            let Some(i) = topic
                .strip_prefix("soak/")
                .and_then(|d| d.parse::<usize>().ok())
            else {
                continue;
            };
            let (Some(t), Some(seq), Some(sent)) = (
                shared.tallies.get(i),
                payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes),
                payload
                    .get(4..12)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
            ) else {
                continue;
            };
            shared.received_total.fetch_add(1, Relaxed);
            if seq <= t.last_seq.load(Relaxed) {
                t.duplicates.fetch_add(1, Relaxed);
                continue;
            }
            t.last_seq.store(seq, Relaxed);
            t.received.fetch_add(1, Relaxed);
            let now = shared.start.elapsed().as_micros() as u64;
            let lat = u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX);
            if let Ok(mut w) = shared.window.lock() {
                w.push(lat);
            }
        }
    }))
}
