//! End-to-end benchmark (a measurement, not a test), issue 11's table in one run:
//!
//! - MQTT publish throughput (QoS 0, QoS 1 with a window of 32) and one-at-a-time latency,
//!   direct to mosquitto, through the gateway's `/mqtt` (MQTT-aware relay, policy on) and
//!   `/tunnel` (opaque bytes), through mosquitto's own WebSocket listener, and through the
//!   device agent; with CPU µs per message of every process, from /proc (the figure that
//!   survives a noisy machine);
//! - bulk bytes: direct TCP, the agent → the gateway's `/tunnel`, and websockify as the peer,
//!   with the same client and sink (`bulk.rs`);
//! - scale curves: 1 … 10,000 publishing devices at one total rate, and new connections per
//!   second (`scale.rs`);
//! - the gateway's memory per idle device, and the agent's RSS with 100 local connections.
//!
//! Run with `bash benches/run.sh` (it installs mosquitto and websockify where missing and
//! raises the open-files limit the 10,000-device cases need). Knobs: BENCH_ROUNDS,
//! BENCH_QOS0_N, BENCH_QOS1_N, BENCH_LATENCY_N, BENCH_PATHS (tags, e.g. `direct,agent`; direct
//! is always run), BENCH_BULK_MIB (0: no bulk), BENCH_SCALE (device counts, empty: none),
//! BENCH_SCALE_RATE, BENCH_SCALE_SECS, BENCH_CONN_RATE_SECS (0: none), BENCH_IDLE
//! (comma-separated device counts, empty for none), BENCH_AGENT_CONNS (0: none),
//! BENCH_AGENT_RESUME (0: the agent's tunnels are not resumable; they are by default),
//! BENCH_GATEWAY_WORKERS (the gateway's tokio worker threads).
//!
//! Everything runs on one machine: client, gateway, agent and mosquitto share its cores, so
//! the gateway paths pay for a third process that the direct path does not have, and the
//! agent path for a fourth.

#[path = "e2e/bulk.rs"]
mod bulk;
#[path = "e2e/client.rs"]
mod client;
#[path = "e2e/cpu.rs"]
mod cpu;
#[path = "e2e/idle.rs"]
mod idle;
#[path = "e2e/measure.rs"]
mod measure;
#[path = "e2e/procs.rs"]
mod procs;
#[path = "e2e/report.rs"]
mod report;
#[path = "e2e/scale.rs"]
mod scale;

use std::process::ExitCode;
use std::time::Instant;

use client::{Endpoints, Path};
use procs::{AgentProc, Broker, GatewayProc};
use report::PathResult;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Descriptors the gateway needs beyond its sockets (listener, epoll, log, health checks):
/// about 15 measured; with margin.
const FD_SLACK: u64 = 100;

struct Settings {
    rounds: usize,
    qos0_n: usize,
    qos1_n: usize,
    latency_n: usize,
    idle: Vec<usize>,
    agent_conns: usize,
    paths: Vec<Path>,
    /// Bytes per bulk transfer (0: no bulk rows).
    bulk_bytes: u64,
    /// Publishing device counts for the scale curve (empty: none), their total QoS 1 rate and
    /// seconds per point; seconds per connection-rate run (0: none).
    scale: Vec<usize>,
    scale_rate: f64,
    scale_secs: f64,
    conn_rate_secs: f64,
}

impl Settings {
    fn from_env() -> Settings {
        let num = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let idle = std::env::var("BENCH_IDLE")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1_000, 10_000]);
        let paths = std::env::var("BENCH_PATHS")
            .ok()
            .map_or(Path::ALL.to_vec(), |v| {
                let tags: Vec<&str> = v.split(',').map(str::trim).collect();
                Path::ALL
                    .into_iter()
                    .filter(|p| *p == Path::Direct || tags.contains(&p.tag()))
                    .collect()
            });
        Settings {
            paths,
            rounds: num("BENCH_ROUNDS", 5).max(1),
            qos0_n: num("BENCH_QOS0_N", 200_000),
            qos1_n: num("BENCH_QOS1_N", 100_000),
            latency_n: num("BENCH_LATENCY_N", 2_000),
            idle,
            agent_conns: num("BENCH_AGENT_CONNS", 100),
            bulk_bytes: num("BENCH_BULK_MIB", 512) as u64 * 1024 * 1024,
            scale: std::env::var("BENCH_SCALE")
                .ok()
                .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![1, 100, 1_000, 10_000]),
            scale_rate: num("BENCH_SCALE_RATE", 5_000) as f64,
            scale_secs: num("BENCH_SCALE_SECS", 5) as f64,
            conn_rate_secs: num("BENCH_CONN_RATE_SECS", 3) as f64,
        }
    }
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C or SIGTERM drops `run`, and with it every child-process guard.
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(Settings::from_env()) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
            _ = term.recv() => Err("terminated".into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(s: Settings) -> Result<(), BoxError> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let machine = report::machine();
    println!("portcullis end-to-end benchmark");
    println!("machine: {machine}; load average: {}", report::loadavg());
    println!(
        "per round and path: QoS0 {} x 64 B publishes, QoS1 {} (window {}), {} QoS1 round trips; {} rounds, medians reported",
        s.qos0_n, s.qos1_n, measure::QOS1_WINDOW, s.latency_n, s.rounds
    );
    println!(
        "gateway: release binary in its own process, policy stage on with limits above the offered load, \
         /tunnel = a `tcp` route to the same broker; mosquitto {}: set_tcp_nodelay, no queue limit",
        procs::mosquitto_version()
    );
    println!(
        "agent: `portcullis agent` (release) in its own process, plain ws:// to the gateway's \
         /tunnel/mqtt-raw on loopback (no TLS)"
    );

    let (mut summaries, bulk, scale) = {
        let sink = bulk::Sink::spawn().await?;
        let broker = Broker::spawn(dir.path()).await?;
        let gateway = GatewayProc::spawn(dir.path(), broker.tcp, sink.addr).await?;
        let websockify = procs::websockify(dir.path(), sink.addr).await?;
        if websockify.is_none() {
            println!("note: websockify is not installed (apt-get install websockify): no peer rows for bulk");
        }
        let mut urls = vec![
            format!("ws://{}/tunnel/mqtt-raw", gateway.addr),
            format!("ws://{}/tunnel/bulk", gateway.addr),
        ];
        if let Some((_, addr)) = &websockify {
            urls.push(format!("ws://{addr}/tunnel/bulk")); // websockify ignores the path
        }
        let (agent, local) = AgentProc::spawn_tunnels(dir.path(), &urls).await?;
        let ep = Endpoints {
            broker_tcp: broker.tcp,
            broker_ws: broker.ws,
            gateway: gateway.addr,
            agent: Some(local[0]),
            tls: None,
        };
        let meter = cpu::Meter::new(broker.proc.pid(), gateway.proc.pid(), agent.pid());
        let summaries = throughput(&s, &ep, &meter).await?;
        let bulk = if s.bulk_bytes > 0 {
            let ep = bulk::BulkEndpoints {
                sink: sink.addr,
                gateway: gateway.addr,
                websockify: websockify.as_ref().map(|(_, a)| *a),
                agent_gateway: local[1],
                agent_websockify: local.get(2).copied(),
            };
            let meter = bulk::BulkMeter {
                gateway: gateway.proc.pid(),
                agent: agent.pid(),
                websockify: websockify.as_ref().map(|(p, _)| p.pid()),
            };
            let hwm0 = procs::peak_rss_kib(gateway.proc.pid()).unwrap_or(0);
            let results = bulk::run(&ep, &sink, &meter, s.rounds, s.bulk_bytes).await?;
            let hwm1 = procs::peak_rss_kib(gateway.proc.pid()).unwrap_or(0);
            Some((results, hwm0, hwm1))
        } else {
            None
        };
        let mut scale = scale_curves(&s, &ep, &meter).await?;
        if s.conn_rate_secs > 0.0 {
            let pids = (broker.proc.pid(), agent.pid());
            scale
                .1
                .extend(tls_connection_rates(&s, dir.path(), &ep, pids).await?);
        }
        (summaries, bulk, scale)
    };
    report::cpu(&summaries);
    let summaries: Vec<_> = summaries.iter_mut().map(PathResult::summary).collect();
    report::throughput(&summaries);
    if let Some((results, hwm0, hwm1)) = &bulk {
        report::bulk(results, *hwm0, *hwm1);
    }
    report::scale(&scale.0, &scale.1);

    println!();
    let memory = idle_memory(&s, dir.path()).await?;
    let agent = if s.agent_conns > 0 {
        let t = Instant::now();
        let r = idle::agent(dir.path(), s.agent_conns).await?;
        println!(
            "{}  [{:.1} s]",
            report::agent_memory_line(&r),
            t.elapsed().as_secs_f64()
        );
        Some(r)
    } else {
        None
    };
    report::markdown(&summaries, &memory, agent.as_ref(), &machine);
    if let Some((results, hwm0, hwm1)) = &bulk {
        report::bulk_markdown(results, *hwm0, *hwm1);
    }
    report::scale_markdown(&scale.0, &scale.1);
    println!(
        "\ntotal time: {:.0} s; load average at the end: {}",
        started.elapsed().as_secs_f64(),
        report::loadavg()
    );
    Ok(())
}

/// Every path, every metric, round after round (interleaved, so drift on a shared machine
/// spreads over all paths rather than landing on one).
async fn throughput(
    s: &Settings,
    ep: &Endpoints,
    meter: &cpu::Meter,
) -> Result<Vec<PathResult>, BoxError> {
    let mut paths = Vec::new();
    for &path in &s.paths {
        // Warm-up, and the check that the path works at all.
        match measure::latency(path, ep, 200, &format!("warm-{}", path.tag())).await {
            Ok(_) => paths.push(PathResult::new(path)),
            Err(e) if path == Path::PeerMosquittoWs => {
                println!("note: dropping the peer row, mosquitto's WebSocket listener failed: {e}")
            }
            Err(e) => return Err(format!("{path}: {e}").into()),
        }
    }
    for round in 0..s.rounds {
        for r in &mut paths {
            let run = format!("{}-r{round}", r.path.tag());
            let t = Instant::now();
            let cpu0 = meter.read();
            let q0 = measure::qos0(r.path, ep, s.qos0_n, &format!("{run}-q0")).await?;
            let cpu1 = meter.read();
            let q1 = measure::qos1(r.path, ep, s.qos1_n, &format!("{run}-q1")).await?;
            let cpu2 = meter.read();
            r.cpu_qos0.0 += cpu1 - cpu0;
            r.cpu_qos0.1 += q0.delivered;
            r.cpu_qos1.0 += cpu2 - cpu1;
            r.cpu_qos1.1 += s.qos1_n;
            let mut lat = measure::latency(r.path, ep, s.latency_n, &format!("{run}-lat")).await?;
            println!(
                "round {round} {:<27} QoS0 {:>8.0}/s ({} lost)  QoS1 {:>7.0}/s  p50 {:>5.0} µs  [{:.1} s]",
                r.path.to_string(),
                q0.rate,
                q0.sent - q0.delivered,
                q1,
                measure::percentile(&mut lat, 50).as_secs_f64() * 1e6,
                t.elapsed().as_secs_f64()
            );
            r.qos0.push(q0);
            r.qos1.push(q1);
            r.latency.extend(lat);
        }
    }
    Ok(paths)
}

/// Publishing devices at 1 … 10,000 and the connection rate, direct and through `/mqtt`.
async fn scale_curves(
    s: &Settings,
    ep: &Endpoints,
    meter: &cpu::Meter,
) -> Result<(Vec<scale::ScalePoint>, Vec<report::ConnRate>), BoxError> {
    let limit = procs::open_files_limit().unwrap_or(0);
    let mut points = Vec::new();
    for &wanted in &s.scale {
        // The gateway holds two sockets per device; the bench holds one per device.
        let n = wanted.min((limit.saturating_sub(FD_SLACK) / 2) as usize);
        if n < wanted {
            println!("note: {wanted} publishing devices need ~{} open files in the gateway, the limit is {limit}: measuring {n}", 2 * wanted as u64 + FD_SLACK);
        }
        if n == 0 {
            continue;
        }
        for path in [Path::Direct, Path::GatewayMqtt] {
            let t = Instant::now();
            let run = format!("scale-{}-{n}", path.tag());
            let p = scale::publishing(path, ep, meter, n, s.scale_rate, s.scale_secs, &run)
                .await
                .map_err(|e| format!("scale {path} with {n} devices: {e}"))?;
            println!(
                "{}  [{:.1} s]",
                report::scale_line(&p),
                t.elapsed().as_secs_f64()
            );
            points.push(p);
        }
    }
    let mut rates = Vec::new();
    if s.conn_rate_secs > 0.0 {
        let paths = [Path::Direct, Path::GatewayMqtt, Path::GatewayTunnel];
        rates = connection_rates(s, ep, meter, &paths, false).await?;
    }
    Ok((points, rates))
}

/// New connections per second on each of `paths`, printed as they come.
async fn connection_rates(
    s: &Settings,
    ep: &Endpoints,
    meter: &cpu::Meter,
    paths: &[Path],
    tls: bool,
) -> Result<Vec<report::ConnRate>, BoxError> {
    let mut rates = Vec::new();
    for &path in paths {
        let run = format!("conn-{}{}", if tls { "tls-" } else { "" }, path.tag());
        let (per_sec, cpu, n) =
            scale::connection_rate(path, ep, meter, s.conn_rate_secs, &run).await?;
        let r = report::ConnRate {
            path,
            tls,
            per_sec,
            cpu,
            n,
        };
        println!("{}", report::conn_rate_line(&r));
        rates.push(r);
    }
    Ok(rates)
}

/// New connections per second with TLS ended by the gateway: a second gateway whose listener
/// has a certificate, the same broker, every connection a full handshake.
async fn tls_connection_rates(
    s: &Settings,
    dir: &std::path::Path,
    ep: &Endpoints,
    (broker_pid, agent_pid): (u32, u32),
) -> Result<Vec<report::ConnRate>, BoxError> {
    let (listener, client) = procs::tls_for_localhost(dir)?;
    let broker = ep.broker_tcp;
    let config = |port| {
        procs::gateway_config(port, broker, broker).replacen(
            "[[listener]]\n",
            &format!("[[listener]]\n{listener}\n"),
            1,
        )
    };
    let gateway = GatewayProc::spawn_tls(dir, config, Some(client)).await?;
    let ep = Endpoints {
        gateway: gateway.addr,
        tls: Some(client),
        ..*ep
    };
    let meter = cpu::Meter::new(broker_pid, gateway.proc.pid(), agent_pid);
    let paths = [Path::GatewayMqtt, Path::GatewayTunnel];
    connection_rates(s, &ep, &meter, &paths, true).await
}

async fn idle_memory(
    s: &Settings,
    dir: &std::path::Path,
) -> Result<Vec<idle::IdleResult>, BoxError> {
    let limit = procs::open_files_limit().unwrap_or(0);
    let mut out = Vec::new();
    // Plain WebSocket (TLS ended in front of the gateway), then TLS ended by the gateway.
    let cases = [
        (Path::GatewayMqtt, false),
        (Path::GatewayTunnel, false),
        (Path::GatewayMqtt, true),
        (Path::GatewayTunnel, true),
    ];
    for (path, tls) in cases {
        for &wanted in &s.idle {
            // The gateway holds two sockets per device (device + upstream). Without the right
            // to raise the limit (CAP_SYS_RESOURCE), measure as many as fit rather than none.
            let fit = (limit.saturating_sub(FD_SLACK) / 2) as usize;
            let n = wanted.min(fit);
            if n < wanted {
                println!(
                    "note: {wanted} idle devices need ~{} open files in the gateway, the limit is {limit}: measuring {n}",
                    2 * wanted as u64 + FD_SLACK
                );
            }
            if n == 0 {
                continue;
            }
            let t = Instant::now();
            let r = idle::measure(dir, path, n, tls).await?;
            println!(
                "{}  [{:.1} s]",
                report::memory_line(&r),
                t.elapsed().as_secs_f64()
            );
            out.push(r);
        }
    }
    Ok(out)
}
