//! Resumable tunnels (issue 14): the time from a dropped WebSocket to data flowing again, and
//! what resumption costs in bulk and QoS 1 throughput against plain tunnels, in the same run.
//!
//! In one process, like the tests: the gateway, the agent, an echo server, a byte sink, and a
//! "cutter" between the agent and the gateway (a TCP relay that can drop every connection at
//! once, as a restarting load balancer does). mosquitto is the broker for the QoS 1 rows.
//!
//! `cargo bench --bench resume` (or `bash benches/resume.sh`). Knobs: BENCH_DROPS (100),
//! BENCH_BULK_MIB (256), BENCH_QOS1 (20000), BENCH_ROUNDS (5: bulk and QoS 1 figures are the
//! medians of this many plain/resumable alternations), BENCH_RUNS (3).

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis::agent::{Agent, AgentConfig};
use portcullis::demo::cutter::Cutter;
use portcullis::{Config, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resume bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let drops = knob("BENCH_DROPS", 100);
    let bulk_mib = knob("BENCH_BULK_MIB", 256);
    let qos1_n = knob("BENCH_QOS1", 20_000);
    let runs = knob("BENCH_RUNS", 3);
    let rounds = knob("BENCH_ROUNDS", 5).max(1);
    let broker = Mosquitto::spawn()?;
    let echo = echo_server().await?;
    let sink = sink_server().await?;
    let gateway = Gateway::start(gateway_config(broker.addr, echo, sink)?).await?;
    let gw_addr = gateway.local_addrs()[0];
    let cutter = Cutter::start(gw_addr).await?;
    println!(
        "resume bench: {drops} drops; {bulk_mib} MiB bulk and {qos1_n} QoS 1 publishes, medians of {rounds} rounds; {runs} runs"
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut table = Vec::new();
    for run in 1..=runs {
        // Drop → data flowing again, over `drops` cuts.
        let agent = start_agent(cutter.addr, "echo", true).await?;
        let mut samples = drop_to_flow(&agent, &cutter, drops).await?;
        let s = agent.status();
        if s.resumed as usize != drops || s.resume_failures != 0 || s.tunnels_opened != 1 {
            return Err(format!("not every drop was resumed: {s:?}").into());
        }
        agent.shutdown().await;
        samples.sort();
        let p50 = percentile(&samples, 50);
        let p99 = percentile(&samples, 99);

        // Bulk and QoS 1, plain and resumable, alternating `rounds` times; each figure is the
        // median of its rounds (one agent's tunnel can land badly on the two cores).
        let mut row = vec![format!("{run}"), ms(p50), ms(p99)];
        let mut samples = [
            [(); 2].map(|()| Vec::new()),
            [(); 2].map(|()| Vec::new()),
            [(); 2].map(|()| Vec::new()),
        ];
        for round in 0..rounds {
            for (i, resumable) in [false, true].into_iter().enumerate() {
                let agent = start_agent(cutter.addr, "bulk", resumable).await?;
                samples[0][i].push(bulk_mib_per_sec(&agent, sink_count(), bulk_mib).await?);
                agent.shutdown().await;
                let agent = start_agent(cutter.addr, "mqtt", resumable).await?;
                let id = format!("r{run}{round}{i}");
                samples[1][i].push(qos1_per_sec(&agent, qos1_n, &id).await?);
                agent.shutdown().await;
                let agent = start_agent(cutter.addr, "mqtt-raw", resumable).await?;
                let id = format!("raw{run}{round}{i}");
                samples[2][i].push(qos1_per_sec(&agent, qos1_n, &id).await?);
                agent.shutdown().await;
            }
        }
        let [bulk, qos1, qos1_raw] = samples.map(|pair| pair.map(median));
        for pair in [bulk, qos1, qos1_raw] {
            row.push(format!(
                "{:.0} / {:.0} ({:.2})",
                pair[0],
                pair[1],
                pair[1] / pair[0]
            ));
        }
        println!(
            "run {run}: drop→flow p50 {} ms, p99 {} ms; plain / resumable: bulk MiB/s {}; QoS 1 msg/s on the MQTT route {}, on a tcp route {}",
            row[1], row[2], row[3], row[4], row[5]
        );
        table.push(row);
    }
    if let Some(lot) = gateway.resume() {
        let s = &lot.stats;
        use std::sync::atomic::Ordering::Relaxed;
        println!(
            "gateway: {} resumed, {} bytes replayed, mean wait {:.1} ms",
            s.resumed.load(Relaxed),
            s.bytes_replayed.load(Relaxed),
            s.resume_micros.load(Relaxed) as f64 / s.resumed.load(Relaxed).max(1) as f64 / 1000.0
        );
    }
    println!();
    println!("| run | drop → flow p50 (ms) | p99 (ms) | bulk MiB/s, plain / resumable (ratio) | QoS 1 msg/s, MQTT route | QoS 1 msg/s, tcp route |");
    println!("|---|---|---|---|---|---|");
    for row in &table {
        println!("| {} |", row.join(" | "));
    }
    gateway.shutdown().await;
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let i = ((sorted.len() * p).div_ceil(100)).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn gateway_config(
    broker: SocketAddr,
    echo: SocketAddr,
    sink: SocketAddr,
) -> Result<Config, BoxError> {
    let text = format!(
        r#"[[listener]]
bind = "127.0.0.1:0"

[routes.mqtt]
upstreams = ["{broker}"]

[routes.mqtt-raw]
upstreams = ["{broker}"]
protocol = "tcp"

[routes.echo]
upstreams = ["{echo}"]
protocol = "tcp"

[routes.bulk]
upstreams = ["{sink}"]
protocol = "tcp"

[policy]
default_class = "bench"

[policy.classes.bench]
messages_per_sec = 1000000000
message_burst = 1000000000
bytes_per_sec = 4000000000
byte_burst = 4000000000
max_connections = 1000000

[policy.connects]
per_ip_per_sec = 1000000
per_ip_burst = 1000000
per_client_per_minute = 1000
per_listener_per_sec = 1000000
per_listener_burst = 1000000

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 2
"#
    );
    Ok(Config::parse(&text, None)?)
}

async fn start_agent(cutter: SocketAddr, route: &str, resumable: bool) -> Result<Agent, BoxError> {
    let text = format!(
        "status_interval_secs = 0\n[proxy]\nfrom_env = false\n[[tunnel]]\nlisten = \"127.0.0.1:0\"\nurl = \"ws://{cutter}/tunnel/{route}\"\n[resume]\nenabled = {resumable}\n"
    );
    let config = AgentConfig::parse(&text, None)?;
    Ok(Agent::start(config).await?)
}

/// Each cut: every agent↔gateway connection dropped at once (no WebSocket close), then one
/// byte written to the agent's local connection and timed until its echo comes back.
async fn drop_to_flow(
    agent: &Agent,
    cutter: &Cutter,
    drops: usize,
) -> Result<Vec<Duration>, BoxError> {
    let mut local = TcpStream::connect(agent.local_addrs()[0]).await?;
    local.set_nodelay(true)?;
    let mut byte = [0u8; 1];
    // Warm: the tunnel is up.
    local.write_all(b"w").await?;
    local.read_exact(&mut byte).await?;
    let mut samples = Vec::with_capacity(drops);
    for i in 0..drops {
        cutter.cut();
        let t0 = Instant::now();
        local.write_all(&[i as u8]).await?;
        tokio::time::timeout(Duration::from_secs(30), local.read_exact(&mut byte)).await??;
        samples.push(t0.elapsed());
        if byte[0] != i as u8 {
            return Err(format!("drop {i}: echoed {} instead of {}", byte[0], i as u8).into());
        }
    }
    Ok(samples)
}

/// Upload `mib` MiB through the agent to the sink; MiB/s until the sink has them all.
async fn bulk_mib_per_sec(
    agent: &Agent,
    counter: Arc<Mutex<u64>>,
    mib: usize,
) -> Result<f64, BoxError> {
    let total = (mib as u64) << 20;
    let before = *counter.lock().map_err(|_| "lock")?;
    let mut local = TcpStream::connect(agent.local_addrs()[0]).await?;
    let block = vec![0xA5u8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        local.write_all(&block).await?;
        sent += block.len() as u64;
    }
    loop {
        let now = *counter.lock().map_err(|_| "lock")?;
        if now - before >= total {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            return Err("bulk transfer stalled".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = mib as f64 / start.elapsed().as_secs_f64();
    drop(local);
    Ok(rate)
}

/// QoS 1 publishes (MQTT 3.1.1 by hand) with 16 in flight; PUBACKs per second.
async fn qos1_per_sec(agent: &Agent, n: usize, id: &str) -> Result<f64, BoxError> {
    const WINDOW: usize = 16;
    let mut s = TcpStream::connect(agent.local_addrs()[0]).await?;
    s.set_nodelay(true)?;
    let mut connect = vec![0x10, 0];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60]);
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.extend_from_slice(id.as_bytes());
    connect[1] = (connect.len() - 2) as u8;
    s.write_all(&connect).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut connack)).await??;
    if connack != [0x20, 2, 0, 0] {
        return Err(format!("CONNACK {connack:?}").into());
    }
    let topic = format!("bench/{id}");
    let payload = [0x42u8; 64];
    let publish = |pid: u16| {
        let mut p = vec![0x32, (2 + topic.len() + 2 + payload.len()) as u8];
        p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        p.extend_from_slice(topic.as_bytes());
        p.extend_from_slice(&pid.to_be_bytes());
        p.extend_from_slice(&payload);
        p
    };
    let (mut sent, mut acked) = (0usize, 0usize);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let start = Instant::now();
    while acked < n {
        let mut out = Vec::new();
        while sent - acked < WINDOW && sent < n {
            out.extend(publish((sent % 65_535 + 1) as u16));
            sent += 1;
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
        let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await??;
        if k == 0 {
            return Err(format!("the broker's side closed after {acked} PUBACKs").into());
        }
        buf.extend_from_slice(&chunk[..k]);
        while buf.len() >= 4 {
            if buf[0] != 0x40 || buf[1] != 2 {
                return Err(format!("not a PUBACK: {:?}", &buf[..4]).into());
            }
            buf.drain(..4);
            acked += 1;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    s.write_all(&[0xE0, 0]).await?;
    Ok(rate)
}

async fn echo_server() -> Result<SocketAddr, BoxError> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

static SINK: std::sync::OnceLock<Arc<Mutex<u64>>> = std::sync::OnceLock::new();

fn sink_count() -> Arc<Mutex<u64>> {
    SINK.get_or_init(|| Arc::new(Mutex::new(0))).clone()
}

async fn sink_server() -> Result<SocketAddr, BoxError> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let count = sink_count();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut c) = count.lock() {
                        *c += n as u64;
                    }
                }
            });
        }
    });
    Ok(addr)
}

struct Mosquitto {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn spawn() -> Result<Mosquitto, BoxError> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\nmax_inflight_messages 0\nmax_queued_messages 100000\n"),
        )?;
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or("mosquitto is not installed (apt-get install mosquitto)")?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..500 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(Mosquitto {
                    addr,
                    child,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("mosquitto did not start".into())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
