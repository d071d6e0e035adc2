//! The dashboard's own cost (a measurement, not a test), with 1,000 connected devices (each
//! with one early publish, so 1,000 offenders) and 10,000 bans in force:
//!
//! - the time to serve each page, script and API call the dashboard makes (p50 / p99 over
//!   `BENCH_DASH_N` requests, default 200, on one keep-alive connection with the session
//!   cookie, as a browser sends them), and the answer's size;
//! - the gateway's CPU while a dashboard page is open in headless chromium (it refreshes every
//!   5 s), against the same window with no dashboard.
//!
//! The monitor samples every second here, so that an hour's worth of samples at the default
//! 10 s (360) exists after six minutes: `/api/v1/monitor` is measured, and the Overview is
//! opened, once 360 samples exist. The idle window therefore includes the monitor's own cost at
//! ten times its default rate.
//!
//! Run with `bash benches/dashboard.sh` (it installs mosquitto, chromium, chromium-driver and
//! selenium where missing). `BENCH_SCREENSHOTS=DIR` saves each page as the benchmark saw it.

#[allow(dead_code)]
#[path = "e2e/cpu.rs"]
mod cpu;
#[allow(dead_code)]
#[path = "e2e/procs.rs"]
mod procs;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use portcullis::mqtt::wire::{self, Version};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use procs::{free_port, Broker, GatewayProc};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const TOKEN: &str = "bench-token-0123456789abcdef";
const DEVICES: usize = 1_000;
const BANS: usize = 10_000;
/// An hour of samples at the default interval.
const HOUR_OF_SAMPLES: usize = 360;

fn config(port: u16, mqtt_port: u16, admin_port: u16, broker: SocketAddr, tokens: &Path) -> String {
    format!(
        r#"[[listener]]
bind = "127.0.0.1:{port}"

[[listener]]
name = "lan"
bind = "127.0.0.1:{mqtt_port}"
kind = "mqtt"

[routes.mqtt]
upstreams = ["{broker}"]

[admin]
bind = "127.0.0.1:{admin_port}"
tokens_file = "{}"
monitor_interval_secs = 1

[policy]
default_class = "meters"

[policy.classes.meters]
push_interval_secs = 3600.0
tolerance_secs = 60.0

{connects}
[shutdown]
drain_window_secs = 1
drain_timeout_secs = 2
"#,
        tokens.display(),
        connects = procs::CONNECTS_FOR_BENCH,
    )
}

/// One keep-alive connection to the admin listener, with the session's cookie: every call the
/// benchmark makes, as the dashboard's pages make them.
struct Admin {
    addr: SocketAddr,
    send: SendRequest<Full<Bytes>>,
    cookie: String,
    /// The session's CSRF token, sent with every call (changes need it).
    csrf: String,
}

async fn open(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send)
}

impl Admin {
    /// Log in as the dashboard does: the token in a form, a cookie back, then the session's
    /// CSRF token.
    async fn login(addr: SocketAddr) -> Result<Admin, BoxError> {
        let mut send = open(addr).await?;
        let req = http::Request::post("/login")
            .header("host", "admin")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!("token={TOKEN}"))))?;
        let r = send.send_request(req).await?;
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or("no session cookie")?
            .to_owned();
        // The response body must be read before the connection takes the next request.
        r.into_body().collect().await?;
        let mut admin = Admin {
            addr,
            send,
            cookie,
            csrf: String::new(),
        };
        let (_, session) = admin.get("/dashboard/session").await?;
        let session: serde_json::Value = serde_json::from_slice(&session)?;
        admin.csrf = session["csrf"].as_str().ok_or("no CSRF token")?.to_owned();
        Ok(admin)
    }

    /// A request; the status and the body. A connection the server closed (its 120 s
    /// lifetime) is opened again.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, Bytes), BoxError> {
        if self.send.ready().await.is_err() {
            self.send = open(self.addr).await?;
        }
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "admin")
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))?;
        let r = self.send.send_request(req).await?;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn get(&mut self, path: &str) -> Result<(u16, Bytes), BoxError> {
        self.call("GET", path, "").await
    }
}

/// `path` asked `n` times on the session's connection: p50, p99 and the answer's size.
async fn timed(
    admin: &mut Admin,
    path: &str,
    n: usize,
) -> Result<(Duration, Duration, usize), BoxError> {
    let mut times = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = admin.get(path).await?;
        times.push(t.elapsed());
        if !(200..300).contains(&status) {
            return Err(format!("{path}: {status}").into());
        }
        size = body.len();
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Ok((at(0.50), at(0.99), size))
}

/// 1,000 devices on the raw MQTT listener, each with two publishes: the second is early.
async fn devices(mqtt: SocketAddr) -> Result<Vec<TcpStream>, BoxError> {
    let mut all = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        let mut tcp = TcpStream::connect(mqtt).await?;
        let id = format!("meter-{i:04}");
        let user = format!("site-{}", i % 50);
        tcp.write_all(&wire::connect_with_username(&id, &user, 900, Version::V311))
            .await?;
        let mut connack = [0u8; 4];
        tcp.read_exact(&mut connack).await?;
        if connack[3] != 0 {
            return Err(format!("{id}: CONNACK {}", connack[3]).into());
        }
        let topic = format!("meters/{id}");
        for n in 0..2 {
            tcp.write_all(&wire::publish(
                &topic,
                0,
                0,
                format!("{n}").as_bytes(),
                Version::V311,
            ))
            .await?;
        }
        all.push(tcp);
    }
    Ok(all)
}

fn python() -> String {
    std::env::var("PORTCULLIS_BROWSER_PYTHON")
        .unwrap_or_else(|_| "target/browser-venv/bin/python".into())
}

/// A page open in chromium for `secs`; the gateway's CPU seconds meanwhile.
async fn browser(admin: SocketAddr, page: &str, secs: u64, gateway: u32) -> Result<f64, BoxError> {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg("benches/dashboard/open.py")
        .arg(format!("http://{admin}"))
        .arg(TOKEN)
        .arg(page)
        .arg(secs.to_string());
    if let Ok(dir) = std::env::var("BENCH_SCREENSHOTS") {
        cmd.arg(format!("{dir}/{page}.png"));
    }
    let mut child = cmd
        .env("SE_OFFLINE", "true")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut cpu0 = None;
    while let Some(line) = lines.next_line().await? {
        match line.as_str() {
            "OPEN" => cpu0 = cpu::cpu_secs_with_children(gateway),
            "DONE" => break,
            _ => {}
        }
    }
    let cpu1 = cpu::cpu_secs_with_children(gateway);
    let status = child.wait().await?;
    if !status.success() {
        return Err(format!("the browser for {page} failed: {status}").into());
    }
    Ok(cpu1.zip(cpu0).map_or(f64::NAN, |(b, a)| b - a))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn run() -> Result<(), BoxError> {
    let n: usize = std::env::var("BENCH_DASH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let window: u64 = std::env::var("BENCH_DASH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("bench:{TOKEN}\n"))?;
    let broker = Broker::spawn(dir.path()).await?;
    let (mqtt_port, admin_port) = (free_port(), free_port());
    let gw = GatewayProc::spawn_with(dir.path(), |port| {
        config(port, mqtt_port, admin_port, broker.tcp, &tokens)
    })
    .await?;
    let started = Instant::now();
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let mqtt: SocketAddr = ([127, 0, 0, 1], mqtt_port).into();
    let _devices = devices(mqtt).await?;
    let mut admin = Admin::login(admin_addr).await?;
    for i in 0..BANS {
        let body = match i % 10 {
            0 => format!(
                r#"{{"as":"peerhost","who":"10.{}.{}.{}","reason":"bench"}}"#,
                i >> 16 & 255,
                i >> 8 & 255,
                i & 255
            ),
            1 => format!(r#"{{"as":"username","who":"abuser-{i}","reason":"bench"}}"#),
            _ => format!(r#"{{"as":"clientid","who":"banned-{i:05}","reason":"bench"}}"#),
        };
        let (status, answer) = admin.call("POST", "/api/v1/banned", &body).await?;
        if status != 201 {
            return Err(format!("ban {i}: {status} {}", String::from_utf8_lossy(&answer)).into());
        }
    }
    // Every device's early publish counted as an offence (the monitor's tick does it).
    loop {
        let (_, body) = admin.get("/api/v1/offenders?limit=1000").await?;
        let list: serde_json::Value = serde_json::from_slice(&body)?;
        if list.as_array().map_or(0, Vec::len) >= DEVICES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "dashboard benchmark: {DEVICES} devices connected, {BANS} bans, 1,000 offenders; {n} requests per call (set up in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!("| call | p50 | p99 | answer |\n|---|---|---|---|");
    let calls = [
        "/",
        "/assets/app.js",
        "/assets/vendor/uPlot.iife.min.js",
        "/dashboard/session",
        "/api/v1/stats",
        "/api/v1/clients?page=1&limit=50",
        "/api/v1/clients?like_clientid=meter-09&page=1&limit=50",
        "/api/v1/banned?page=1&limit=50",
        "/api/v1/banned?by=admin%3A&page=200&limit=50",
        "/api/v1/banned?like_who=banned-0999&page=1&limit=50",
        "/api/v1/classes",
        "/api/v1/overrides?page=1&limit=50",
        "/api/v1/devices/meter-0001",
        "/api/v1/offenders?limit=50",
    ];
    for path in calls {
        let (p50, p99, size) = timed(&mut admin, path, n).await?;
        println!(
            "| `{path}` | {} | {} | {:.1} KiB |",
            us(p50),
            us(p99),
            size as f64 / 1024.0
        );
    }

    let pid = gw.proc.pid();
    let idle = {
        let a = cpu::cpu_secs_with_children(pid).unwrap_or(f64::NAN);
        tokio::time::sleep(Duration::from_secs(window)).await;
        cpu::cpu_secs_with_children(pid).unwrap_or(f64::NAN) - a
    };
    let clients = browser(admin_addr, "clients", window, pid).await?;
    let banned = browser(admin_addr, "banned", window, pid).await?;

    // An hour of samples at the default interval, then the monitor and the Overview.
    loop {
        let (_, body) = admin.get("/api/v1/monitor?latest=3600").await?;
        let samples: serde_json::Value = serde_json::from_slice(&body)?;
        if samples.as_array().map_or(0, Vec::len) >= HOUR_OF_SAMPLES {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (p50, p99, size) = timed(&mut admin, "/api/v1/monitor?latest=360", n).await?;
    println!(
        "| `/api/v1/monitor?latest=360` (360 samples: an hour at the default 10 s) | {} | {} | {:.1} KiB |",
        us(p50),
        us(p99),
        size as f64 / 1024.0
    );
    let overview = browser(admin_addr, "overview", window, pid).await?;
    let offenders = browser(admin_addr, "offenders", window, pid).await?;
    let pct = |cpu: f64| format!("{:.2} % of a core", cpu / window as f64 * 100.0);
    println!("\nThe gateway's CPU over {window} s (1,000 idle devices, monitor every 1 s):");
    println!("| window | gateway CPU | of which the dashboard |\n|---|---|---|");
    println!("| no dashboard open | {} | – |", pct(idle));
    for (page, cpu) in [
        ("Overview", overview),
        ("Clients", clients),
        ("Banned", banned),
        ("Top offenders", offenders),
    ] {
        println!("| {page} open | {} | {} |", pct(cpu), pct(cpu - idle));
    }
    Ok(())
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dashboard benchmark: {e}");
            ExitCode::FAILURE
        }
    }
}
