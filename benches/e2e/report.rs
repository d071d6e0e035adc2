//! Aggregation and printing: a readable table, target verdicts, and Markdown for the README.

use std::time::Duration;

use crate::bulk::{BulkPath, BulkResult};
use crate::client::Path;
use crate::cpu::Cpu;
use crate::idle::{AgentRss, IdleResult};
use crate::measure::{percentile, Qos0};
use crate::scale::ScalePoint;

/// QoS 1 through the gateway (issue 11): at least this share of direct, in the median.
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.95;
/// The gateway's CPU per QoS 1 message, at most this share of mosquitto's in the same run.
pub const TARGET_CPU_SHARE: f64 = 0.5;
/// Round-trip p99 added by the gateway, at most this many µs.
pub const TARGET_ADDED_P99_US: f64 = 50.0;
/// device → agent → gateway → mosquitto: two relays and a fourth process on the same cores.
pub const TARGET_AGENT_RATIO: f64 = 0.7;
pub const TARGET_IDLE_KIB: f64 = 8.0;
pub const TARGET_AGENT_RSS_MIB: f64 = 20.0;

/// Everything measured on one path, over all rounds.
pub struct PathResult {
    pub path: Path,
    pub qos0: Vec<Qos0>,
    pub qos1: Vec<f64>,
    pub latency: Vec<Duration>,
    /// CPU used during the QoS 0 runs and the messages delivered in them; same for QoS 1.
    pub cpu_qos0: (Cpu, usize),
    pub cpu_qos1: (Cpu, usize),
}

/// The summary of one path: medians over rounds, percentiles over all samples.
pub struct Summary {
    pub path: Path,
    pub qos0: f64,
    pub sent: usize,
    pub delivered: usize,
    pub qos1: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// CPU µs per QoS 1 message: the gateway's, mosquitto's.
    pub cpu_q1: (f64, f64),
}

impl PathResult {
    pub fn new(path: Path) -> PathResult {
        PathResult {
            path,
            qos0: Vec::new(),
            qos1: Vec::new(),
            latency: Vec::new(),
            cpu_qos0: Default::default(),
            cpu_qos1: Default::default(),
        }
    }

    pub fn summary(&mut self) -> Summary {
        let mut q0: Vec<f64> = self.qos0.iter().map(|q| q.rate).collect();
        Summary {
            path: self.path,
            qos0: median(&mut q0),
            sent: self.qos0.iter().map(|q| q.sent).sum(),
            delivered: self.qos0.iter().map(|q| q.delivered).sum(),
            qos1: median(&mut self.qos1),
            p50: percentile(&mut self.latency, 50),
            p99: percentile(&mut self.latency, 99),
            cpu_q1: {
                let (cpu, n) = self.cpu_qos1;
                let per = |s: f64| s * 1e6 / n.max(1) as f64;
                (per(cpu.gateway), per(cpu.broker))
            },
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(x: f64, base: f64) -> f64 {
    if base > 0.0 {
        x / base
    } else {
        f64::NAN
    }
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs (nproc), {model}, Linux {}", kernel.trim())
}

/// The 1/5/15-minute load averages: on a shared machine, context for every number here.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn throughput(summaries: &[Summary]) {
    let Some(direct) = summaries.iter().find(|s| s.path == Path::Direct) else {
        return;
    };
    println!(
        "\n{:<27} {:>11} {:>6} {:>11} {:>6} {:>8} {:>6} {:>8} {:>6} {:>9}",
        "path",
        "QoS0 msg/s",
        "ratio",
        "QoS1 msg/s",
        "ratio",
        "p50 µs",
        "ratio",
        "p99 µs",
        "ratio",
        "QoS0 lost"
    );
    for s in summaries {
        println!(
            "{:<27} {:>11.0} {:>6.2} {:>11.0} {:>6.2} {:>8.0} {:>6.2} {:>8.0} {:>6.2} {:>9}",
            s.path.to_string(),
            s.qos0,
            ratio(s.qos0, direct.qos0),
            s.qos1,
            ratio(s.qos1, direct.qos1),
            us(s.p50),
            ratio(us(s.p50), us(direct.p50)),
            us(s.p99),
            ratio(us(s.p99), us(direct.p99)),
            s.sent - s.delivered,
        );
    }
    println!(
        "\ntargets: QoS 1 >= {TARGET_THROUGHPUT_RATIO:.2} x direct through the gateway, \
         >= {TARGET_AGENT_RATIO:.2} x direct through the agent and the gateway; \
         added round-trip p99 <= {TARGET_ADDED_P99_US:.0} µs through the gateway"
    );
    for s in summaries {
        let Some(target) = target_ratio(s.path) else {
            continue;
        };
        let r = ratio(s.qos1, direct.qos1);
        println!(
            "  {:<27} QoS1: {r:.2}  target {target:.2}: {}",
            s.path.to_string(),
            verdict(r >= target)
        );
        if matches!(s.path, Path::GatewayMqtt | Path::GatewayTunnel) {
            let added = us(s.p99) - us(direct.p99);
            println!(
                "  {:<27} added p99: {added:.0} µs  target {TARGET_ADDED_P99_US:.0}: {}",
                s.path.to_string(),
                verdict(added <= TARGET_ADDED_P99_US)
            );
        }
    }
}

/// The throughput ratio a path must reach, if it has a target.
fn target_ratio(p: Path) -> Option<f64> {
    match p {
        Path::GatewayMqtt | Path::GatewayTunnel => Some(TARGET_THROUGHPUT_RATIO),
        Path::Agent => Some(TARGET_AGENT_RATIO),
        Path::Direct | Path::PeerMosquittoWs => None,
    }
}

/// Where the CPU goes: on a 2-core machine, the sum per message bounds the rate.
pub fn cpu(results: &[PathResult]) {
    println!("\nCPU µs per message, client / mosquitto / gateway / agent (all rounds):");
    for r in results {
        println!(
            "  {:<27} QoS0 {}   QoS1 {}",
            r.path.to_string(),
            r.cpu_qos0.0.per_msg(r.cpu_qos0.1),
            r.cpu_qos1.0.per_msg(r.cpu_qos1.1)
        );
    }
    println!("target: the gateway's CPU per QoS 1 message <= {TARGET_CPU_SHARE} x mosquitto's");
    for r in results {
        if !matches!(r.path, Path::GatewayMqtt | Path::GatewayTunnel) {
            continue;
        }
        let (cpu, n) = r.cpu_qos1;
        let share = cpu.gateway / cpu.broker.max(1e-9);
        println!(
            "  {:<27} gateway {:.1} µs, mosquitto {:.1} µs: {share:.2}, {}",
            r.path.to_string(),
            cpu.gateway * 1e6 / n.max(1) as f64,
            cpu.broker * 1e6 / n.max(1) as f64,
            verdict(share <= TARGET_CPU_SHARE)
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

pub fn memory_line(r: &IdleResult) -> String {
    let per = r.per_conn_kib();
    let failed = if r.failed > 0 {
        format!(", {} of them FAILED to connect", r.failed)
    } else {
        String::new()
    };
    format!(
        "gateway RSS per idle {} connection, N = {:>6}: {per:>6.1} KiB  (RSS {} -> {} KiB{failed})  target <= {TARGET_IDLE_KIB} KiB{}",
        match (r.path, r.tls) {
            (Path::GatewayTunnel, false) => "/tunnel",
            (Path::GatewayTunnel, true) => "/tunnel (TLS here)",
            (_, false) => "/mqtt",
            (_, true) => "/mqtt (TLS here)",
        },
        r.n,
        r.before_kib,
        r.after_kib,
        match r.tls {
            // The target is for plain WebSocket; with TLS the figure is reported.
            true => String::new(),
            false => format!(": {}", verdict(per <= TARGET_IDLE_KIB && r.failed == 0)),
        },
    )
}

pub fn agent_memory_line(r: &AgentRss) -> String {
    let mib = r.after_kib as f64 / 1024.0;
    let failed = if r.failed > 0 {
        format!(", {} of them FAILED to connect", r.failed)
    } else {
        String::new()
    };
    format!(
        "agent RSS with {} local connections: {mib:.1} MiB  (RSS {} -> {} KiB, {:.1} KiB per connection{failed})  target < {TARGET_AGENT_RSS_MIB:.0} MiB: {}",
        r.n,
        r.before_kib,
        r.after_kib,
        r.per_conn_kib(),
        verdict(mib < TARGET_AGENT_RSS_MIB && r.failed == 0),
    )
}

pub fn markdown(
    summaries: &[Summary],
    memory: &[IdleResult],
    agent: Option<&AgentRss>,
    machine: &str,
) {
    let Some(direct) = summaries.iter().find(|s| s.path == Path::Direct) else {
        return;
    };
    println!("\n| path | QoS0 msg/s | ratio | QoS1 msg/s | ratio | p50 µs | p99 µs | QoS1 CPU µs/msg gateway / mosquitto |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in summaries {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} | {:.1} / {:.1} |",
            s.path,
            s.qos0,
            ratio(s.qos0, direct.qos0),
            s.qos1,
            ratio(s.qos1, direct.qos1),
            us(s.p50),
            us(s.p99),
            s.cpu_q1.0,
            s.cpu_q1.1,
        );
    }
    println!();
    for r in memory {
        println!("- {}", memory_line(r));
    }
    if let Some(r) = agent {
        println!("- {}", agent_memory_line(r));
    }
    println!("\nMachine: {machine}.");
}

/// Target for bulk bytes through the agent and the gateway, as a share of direct TCP.
pub const TARGET_BULK_RATIO: f64 = 0.9;

fn bulk_rows(results: &[BulkResult]) -> Vec<(String, f64, f64, String, String)> {
    let median_of = |r: &BulkResult| median(&mut r.gbits.clone());
    let direct = results
        .iter()
        .find(|r| r.path == BulkPath::Direct)
        .map_or(f64::NAN, median_of);
    let gib = |r: &BulkResult| r.bytes as f64 / (1u64 << 30) as f64;
    results
        .iter()
        .map(|r| {
            let per_gib = |s: f64| match r.path {
                BulkPath::Direct => "-".to_string(),
                _ => format!("{:.2}", s / gib(r).max(1e-9)),
            };
            let agent = match r.path {
                BulkPath::AgentGateway | BulkPath::AgentWebsockify => per_gib(r.agent_cpu),
                _ => "-".into(),
            };
            (
                r.path.name().to_string(),
                median_of(r),
                ratio(median_of(r), direct),
                per_gib(r.relay_cpu),
                agent,
            )
        })
        .collect()
}

pub fn bulk(results: &[BulkResult], hwm0: u64, hwm1: u64) {
    println!(
        "\n{:<30} {:>8} {:>6} {:>14} {:>14}   (median of rounds; CPU s per GiB moved)",
        "bulk path", "Gbit/s", "ratio", "relay CPU", "agent CPU"
    );
    for (name, g, r, relay, agent) in bulk_rows(results) {
        println!("{name:<30} {g:>8.2} {r:>6.2} {relay:>14} {agent:>14}");
    }
    for r in results {
        let all: Vec<String> = r.gbits.iter().map(|g| format!("{g:.2}")).collect();
        println!("  {:<28} rounds: {}", r.path.name(), all.join(", "));
    }
    let median_of = |p: BulkPath| {
        results
            .iter()
            .find(|r| r.path == p)
            .map(|r| median(&mut r.gbits.clone()))
    };
    if let (Some(d), Some(a)) = (
        median_of(BulkPath::Direct),
        median_of(BulkPath::AgentGateway),
    ) {
        println!(
            "target: agent → gateway ≥ {TARGET_BULK_RATIO} × direct: {:.2}, {}",
            a / d,
            verdict(a / d >= TARGET_BULK_RATIO)
        );
    }
    for r in results.iter().filter(|r| r.path.is_peer()) {
        if let (Some(ours), Some(peer)) =
            (r.path.ours_beside().and_then(median_of), median_of(r.path))
        {
            println!(
                "target: ahead of {}: {ours:.2} vs {peer:.2} Gbit/s, {}",
                r.path.name(),
                verdict(ours > peer)
            );
        }
    }
    println!("gateway peak RSS (VmHWM) before the bulk runs {hwm0} KiB, after {hwm1} KiB");
}

pub fn bulk_markdown(results: &[BulkResult], hwm0: u64, hwm1: u64) {
    println!("\n| bulk path | Gbit/s | ratio | relay CPU s/GiB | agent CPU s/GiB |");
    println!("|---|---:|---:|---:|---:|");
    for (name, g, r, relay, agent) in bulk_rows(results) {
        println!("| {name} | {g:.2} | {r:.2} | {relay} | {agent} |");
    }
    println!("\nGateway peak RSS: {hwm0} KiB before the bulk rounds, {hwm1} KiB after.");
}

pub struct ConnRate {
    pub path: Path,
    /// TLS ended by the gateway (each connection a full handshake, no resumption).
    pub tls: bool,
    pub per_sec: f64,
    pub cpu: Cpu,
    pub n: usize,
}

pub fn scale_line(p: &ScalePoint) -> String {
    format!(
        "scale {:<27} {:>6} devices: {:>7} msgs, CPU µs/msg gateway {:>5.1} mosquitto {:>5.1}, RTT p50 {:>6.0} µs p99 {:>6.0} µs, {} late",
        p.path.to_string(),
        p.devices,
        p.messages,
        p.us_per_msg(p.cpu.gateway),
        p.us_per_msg(p.cpu.broker),
        us(p.p50),
        us(p.p99),
        p.late
    )
}

pub fn conn_rate_line(r: &ConnRate) -> String {
    let per = |s: f64| s * 1e6 / r.n.max(1) as f64;
    format!(
        "connections/s {:<27} {:>7.0}/s  CPU µs per connection gateway {:>6.1} mosquitto {:>6.1} client {:>6.1}",
        conn_label(r),
        r.per_sec,
        per(r.cpu.gateway),
        per(r.cpu.broker),
        per(r.cpu.client)
    )
}

fn conn_label(r: &ConnRate) -> String {
    match r.tls {
        true => format!("{} (TLS here)", r.path),
        false => r.path.to_string(),
    }
}

pub fn scale(points: &[ScalePoint], rates: &[ConnRate]) {
    if !points.is_empty() {
        println!("\nscale: QoS 1, one in flight per device, the same total rate at every N");
        for p in points {
            println!("  {}", scale_line(p));
        }
    }
    for r in rates {
        println!("  {}", conn_rate_line(r));
    }
}

pub fn scale_markdown(points: &[ScalePoint], rates: &[ConnRate]) {
    if !points.is_empty() {
        println!("\n| devices | path | CPU µs/msg gateway | CPU µs/msg mosquitto | RTT p50 µs | RTT p99 µs |");
        println!("|---:|---|---:|---:|---:|---:|");
        for p in points {
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.0} | {:.0} |",
                p.devices,
                p.path,
                p.us_per_msg(p.cpu.gateway),
                p.us_per_msg(p.cpu.broker),
                us(p.p50),
                us(p.p99)
            );
        }
    }
    if !rates.is_empty() {
        println!("\n| new connections | per second | ratio | gateway CPU µs each |");
        println!("|---|---:|---:|---:|");
        let direct = rates
            .iter()
            .find(|r| r.path == Path::Direct)
            .map_or(f64::NAN, |r| r.per_sec);
        for r in rates {
            println!(
                "| {} | {:.0} | {:.2} | {:.0} |",
                conn_label(r),
                r.per_sec,
                ratio(r.per_sec, direct),
                r.cpu.gateway * 1e6 / r.n.max(1) as f64
            );
        }
    }
}
