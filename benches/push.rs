//! HTTP push benchmark (a measurement, not a test): uploads of 4 KiB bodies per second and
//! their latency, straight to a collector and through the gateway (a release build, run as its
//! own process), in one run, rounds interleaved:
//!
//! - `direct`: the client posts to the collector itself (plain HTTP);
//! - `gateway`: through the gateway, plain HTTP on the device side, every upload with its own
//!   transaction id, records in memory;
//! - `gateway-tls`: the same with TLS ended at the gateway;
//! - `gateway-store`: records in the store's file, each durable (fsync) before the answer;
//! - `gateway-nokey`: no transaction id (require_idempotency_key = false): the difference to
//!   `gateway` is what the transaction records cost per upload;
//! - `nginx`: a peer for scale, nginx (one worker, keep-alive to the collector) as a plain
//!   reverse proxy doing none of the gateway's work; skipped when nginx is not installed.
//!
//! Run with `cargo bench --bench push`. BENCH_ROUNDS (3), BENCH_SECS (3 per path and round),
//! BENCH_CONNS (16 concurrent device connections), BENCH_LATENCY_N (2000 sequential uploads).
//! Client, collector and gateway share this machine's cores.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const BODY: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Direct,
    Gateway,
    GatewayTls,
    GatewayStore,
    GatewayNoKey,
    Nginx,
}

const PATHS: [Path; 6] = [
    Path::Direct,
    Path::Gateway,
    Path::GatewayTls,
    Path::GatewayStore,
    Path::GatewayNoKey,
    Path::Nginx,
];

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Gateway => "gateway",
            Path::GatewayTls => "gateway-tls",
            Path::GatewayStore => "gateway-store",
            Path::GatewayNoKey => "gateway-nokey",
            Path::Nginx => "nginx",
        }
    }
}

fn num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The collector: reads each body whole, answers 200 with a short receipt.
async fn collector() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let _ = tcp.set_nodelay(true);
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let n = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().len())
                    .unwrap_or(0);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("ok {n}")))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// The gateway process, with `[push]` to `collector`; returns it and its two listeners
/// (plain, TLS).
struct Gateway {
    _child: Reaped,
    pid: u32,
    plain: SocketAddr,
    tls: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A child process killed with its owner.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

async fn gateway(
    collector: SocketAddr,
    store: bool,
    require_key: bool,
    cert_pem: &str,
    key_pem: &str,
) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("gw.pem"), cert_pem).expect("cert");
    std::fs::write(d.join("gw.key"), key_pem).expect("key");
    let (p1, p2) = (free_port(), free_port());
    let store = if store {
        format!("[store]\ndir = \"{}\"\n", d.join("store").display())
    } else {
        String::new()
    };
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:{p1}"
max_connections = 10000

[[listener]]
bind = "127.0.0.1:{p2}"
max_connections = 10000
[[listener.tls.certificates]]
cert = "{cert}"
key = "{key}"

[routes.collectors]
upstreams = ["{collector}"]
protocol = "http"
balance = "round_robin"

[policy]
unknown_devices = "admit"
[policy.classes.default]
messages_per_sec = 1000000
message_burst = 1000000
[policy.connects]
per_ip_per_sec = 100000
per_ip_burst = 100000
per_client_per_minute = 100000
per_listener_per_sec = 100000
per_listener_burst = 100000

{store}
[push]
route = "collectors"
require_idempotency_key = {require_key}
"#,
        cert = d.join("gw.pem").display(),
        key = d.join("gw.key").display(),
    );
    let path = d.join("gw.toml");
    std::fs::write(&path, config).expect("config");
    let log = std::fs::File::create(d.join("gw.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_or_else(|_| Stdio::null(), Stdio::from))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the gateway");
    let pid = child.id();
    let plain: SocketAddr = ([127, 0, 0, 1], p1).into();
    let tls: SocketAddr = ([127, 0, 0, 1], p2).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(tls).await.is_err() || TcpStream::connect(plain).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the gateway did not start: {}",
            d.join("gw.log").display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Gateway {
        _child: Reaped(child),
        pid,
        plain,
        tls,
        _dir: dir,
    }
}

/// nginx as a plain reverse proxy to `collector`: one worker, keep-alive upstream.
struct Nginx {
    _child: Reaped,
    pid: u32,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn nginx(collector: SocketAddr) -> Option<Nginx> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = tempfile::tempdir().ok()?;
    let d = dir.path().display().to_string();
    let port = free_port();
    let conf = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/cb;
    proxy_temp_path {d}/px;
    fastcgi_temp_path {d}/fc;
    uwsgi_temp_path {d}/uw;
    scgi_temp_path {d}/sc;
    upstream collectors {{ server {collector}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://collectors;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"#
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).ok()?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(Nginx {
        pid: child.id(),
        _child: Reaped(child),
        addr,
        _dir: dir,
    })
}

/// One keep-alive device connection.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(
    addr: SocketAddr,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
) -> Result<Sender, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let sender = match tls {
        None => {
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(c);
            s
        }
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(c);
            s
        }
    };
    Ok(sender)
}

static NEXT_TX: AtomicU64 = AtomicU64::new(1);

async fn upload(
    sender: &mut Sender,
    serial: &str,
    with_key: bool,
    body: &Bytes,
) -> Result<(), BoxError> {
    sender.ready().await?;
    let mut req = Request::post(format!("/push/{serial}")).header("host", "gw");
    if with_key {
        req = req.header(
            "idempotency-key",
            format!("tx-{}", NEXT_TX.fetch_add(1, Ordering::Relaxed)),
        );
    }
    let response = sender
        .send_request(req.body(Full::new(body.clone()))?)
        .await?;
    let status = response.status();
    response.into_body().collect().await?;
    if !status.is_success() {
        return Err(format!("status {status}").into());
    }
    Ok(())
}

struct Target {
    addr: SocketAddr,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    with_key: bool,
    pid: Option<u32>,
}

/// Uploads per second with `conns` connections for `secs`, and the gateway's CPU µs per upload.
async fn throughput(t: &Target, conns: usize, secs: u64) -> (f64, Option<f64>) {
    let body = Bytes::from(vec![b'r'; BODY]);
    let done = Arc::new(AtomicU64::new(0));
    let cpu0 = t.pid.map(cpu_ticks);
    let start = Instant::now();
    let stop = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (addr, tls, with_key, body, done) = (
            t.addr,
            t.tls.clone(),
            t.with_key,
            body.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = connect(addr, tls.clone()).await.expect("connect");
            let serial = format!("BENCH-{i}");
            while Instant::now() < stop {
                // A proxy may close a keep-alive connection after so many requests (nginx:
                // keepalive_requests 1000): a device reconnects.
                if upload(&mut s, &serial, with_key, &body).await.is_err() {
                    s = connect(addr, tls.clone()).await.expect("reconnect");
                    continue;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let cpu = match (t.pid, cpu0) {
        (Some(pid), Some(before)) => {
            let ticks = cpu_ticks(pid).saturating_sub(before);
            Some(ticks as f64 * 10_000.0 / n.max(1) as f64)
        }
        _ => None,
    };
    (n as f64 / elapsed, cpu)
}

/// Latency of `n` sequential uploads on one connection, µs (p50, p99).
async fn latency(t: &Target, n: usize) -> (f64, f64) {
    let body = Bytes::from(vec![b'r'; BODY]);
    let mut s = connect(t.addr, t.tls.clone()).await.expect("connect");
    let mut samples = Vec::with_capacity(n);
    while samples.len() < n {
        let t0 = Instant::now();
        if upload(&mut s, "LAT-1", t.with_key, &body).await.is_err() {
            // Closed by the proxy after its keep-alive request limit: reconnect, not a sample.
            s = connect(t.addr, t.tls.clone()).await.expect("reconnect");
            continue;
        }
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// utime + stime of `pid`, in clock ticks (10 ms).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let f = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    f(11) + f(12)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let rounds = num("BENCH_ROUNDS", 3);
    let secs = num("BENCH_SECS", 3) as u64;
    let conns = num("BENCH_CONNS", 16);
    let latency_n = num("BENCH_LATENCY_N", 2000);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let tls = Arc::new(
        tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let collector = collector().await;
    let memory = gateway(collector, false, true, &cert_pem, &key_pem).await;
    let stored = gateway(collector, true, true, &cert_pem, &key_pem).await;
    let nokey = gateway(collector, false, false, &cert_pem, &key_pem).await;
    let peer = nginx(collector).await;
    let paths: Vec<Path> = PATHS
        .into_iter()
        .filter(|p| *p != Path::Nginx || peer.is_some())
        .collect();
    if peer.is_none() {
        println!("nginx is not installed: its path is skipped");
    }
    let target = |p: Path| match p {
        Path::Direct => Target {
            addr: collector,
            tls: None,
            with_key: true,
            pid: None,
        },
        Path::Gateway => Target {
            addr: memory.plain,
            tls: None,
            with_key: true,
            pid: Some(memory.pid),
        },
        Path::GatewayTls => Target {
            addr: memory.tls,
            tls: Some(tls.clone()),
            with_key: true,
            pid: Some(memory.pid),
        },
        Path::GatewayStore => Target {
            addr: stored.plain,
            tls: None,
            with_key: true,
            pid: Some(stored.pid),
        },
        Path::GatewayNoKey => Target {
            addr: nokey.plain,
            tls: None,
            with_key: false,
            pid: Some(nokey.pid),
        },
        Path::Nginx => {
            let n = peer.as_ref().expect("the nginx path only when nginx runs");
            Target {
                addr: n.addr,
                tls: None,
                with_key: true,
                pid: Some(n.pid),
            }
        }
    };
    println!("HTTP push: {BODY}-byte uploads, {conns} connections, {secs} s per path, {rounds} rounds interleaved");
    // Warm-up: connections, caches, the store file.
    for p in &paths {
        throughput(&target(*p), conns, 1).await;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        for (i, p) in paths.iter().enumerate() {
            let (rate, cpu) = throughput(&target(*p), conns, secs).await;
            rates[i].push(rate);
            if let Some(c) = cpu {
                cpus[i].push(c);
            }
            line += &format!("  {} {:.0}/s", p.name(), rate);
        }
        println!("{line}");
    }
    let direct = rates[0].clone();
    println!(
        "\n{:<15} {:>10} {:>26} {:>14}",
        "path", "uploads/s", "ratio to direct (per round)", "gateway CPU/upload"
    );
    for (i, p) in PATHS.iter().enumerate() {
        let ratios: Vec<String> = rates[i]
            .iter()
            .zip(&direct)
            .map(|(r, d)| format!("{:.2}", r / d))
            .collect();
        let cpu = if cpus[i].is_empty() {
            "-".to_string()
        } else {
            format!("{:.0} µs", median(&mut cpus[i].clone()))
        };
        println!(
            "{:<15} {:>10.0} {:>26} {:>14}",
            p.name(),
            median(&mut rates[i].clone()),
            ratios.join(" "),
            cpu
        );
    }
    println!("\nlatency, {latency_n} sequential uploads on one connection (µs):");
    let mut direct_lat = None;
    for p in paths.iter().copied() {
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        for _ in 0..rounds {
            let (p50, p99) = latency(&target(p), latency_n).await;
            p50s.push(p50);
            p99s.push(p99);
        }
        let (p50, p99) = (median(&mut p50s), median(&mut p99s));
        let added = match direct_lat {
            None => {
                direct_lat = Some((p50, p99));
                String::new()
            }
            Some((d50, d99)) => format!("  added p50 {:+.0}, p99 {:+.0}", p50 - d50, p99 - d99),
        };
        println!("{:<15} p50 {:>6.0}  p99 {:>6.0}{added}", p.name(), p50, p99);
    }
}
