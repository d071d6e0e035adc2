//! The processes under measurement: mosquitto, the gateway and the device agent, each a child
//! killed on drop (also when the bench panics or is interrupted), on ports picked at run time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BoxError;

/// How long a child gets to start listening before we give up on it.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process that dies with its owner.
pub struct ChildGuard {
    child: Child,
    pub log: PathBuf,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The child's log tail, for error messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago, for servers that cannot report the port they bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn spawn_logged(bin: &Path, args: &[&Path], log: PathBuf, env: &[(&str, &str)]) -> ChildGuard {
    let out = std::fs::File::create(&log).ok();
    let err = out.as_ref().and_then(|f| f.try_clone().ok());
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.map_or_else(Stdio::null, Stdio::from))
        .stderr(err.map_or_else(Stdio::null, Stdio::from));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    ChildGuard { child, log }
}

/// Poll until every address accepts TCP, or the child dies (a port taken meanwhile).
async fn wait_listening(child: &mut ChildGuard, addrs: &[SocketAddr]) -> bool {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    for &addr in addrs {
        while TcpStream::connect(addr).await.is_err() {
            if child.exited() || tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    true
}

pub struct Broker {
    pub tcp: SocketAddr,
    /// mosquitto's own WebSocket listener (subprotocol `mqtt`).
    pub ws: SocketAddr,
    /// The broker lives as long as this value.
    pub proc: ChildGuard,
}

impl Broker {
    pub async fn spawn(dir: &Path) -> Result<Broker, BoxError> {
        let bin = Path::new("/usr/sbin/mosquitto");
        if !bin.is_file() {
            return Err("mosquitto is not installed (apt-get install mosquitto)".into());
        }
        // A free port can be taken by someone else before mosquitto binds it: retry.
        for attempt in 0..5 {
            let (tcp, ws) = (free_port(), free_port());
            let conf = dir.join(format!("mosquitto-{tcp}.conf"));
            // max_queued_messages 0: an online subscriber is never dropped QoS 0 messages for
            // falling behind (mosquitto 2.0 treats 0 as "no limit"), so drops are not ours.
            // set_tcp_nodelay: otherwise Nagle holds back mosquitto's PUBACKs (40 ms stalls
            // under a QoS 1 window), on direct clients and gateway upstreams alike.
            std::fs::write(
                &conf,
                format!(
                    "listener {tcp} 127.0.0.1\nmax_connections -1\n\
                     listener {ws} 127.0.0.1\nprotocol websockets\nmax_connections -1\n\
                     allow_anonymous true\npersistence false\nmax_keepalive 65535\n\
                     set_tcp_nodelay true\n\
                     max_queued_messages 0\nmax_inflight_messages 0\n\
                     log_dest stderr\nlog_type error\nlog_type warning\n"
                ),
            )?;
            let log = dir.join(format!("mosquitto-{tcp}.log"));
            let mut proc = spawn_logged(bin, &[Path::new("-c"), &conf], log, &[]);
            let addrs = [([127, 0, 0, 1], tcp).into(), ([127, 0, 0, 1], ws).into()];
            if wait_listening(&mut proc, &addrs).await {
                return Ok(Broker {
                    tcp: addrs[0],
                    ws: addrs[1],
                    proc,
                });
            }
            eprintln!("mosquitto attempt {attempt} failed:\n{}", proc.tail());
        }
        Err("mosquitto did not start".into())
    }
}

/// The release gateway binary as its own process, so it never shares a runtime with the client.
pub struct GatewayProc {
    pub addr: SocketAddr,
    pub proc: ChildGuard,
}

impl GatewayProc {
    /// With a `bulk` tcp route to `sink` (the bulk benchmark's), next to the MQTT routes.
    pub async fn spawn(
        dir: &Path,
        broker: SocketAddr,
        sink: SocketAddr,
    ) -> Result<GatewayProc, BoxError> {
        Self::spawn_with(dir, |port| gateway_config(port, broker, sink)).await
    }

    /// With the config `make` writes for the listener port it is given.
    pub async fn spawn_with(
        dir: &Path,
        make: impl Fn(u16) -> String,
    ) -> Result<GatewayProc, BoxError> {
        Self::spawn_tls(dir, make, None).await
    }

    /// As `spawn_with`, for a listener that ends TLS itself (`tls`: a client config for it).
    pub async fn spawn_tls(
        dir: &Path,
        make: impl Fn(u16) -> String,
        tls: Option<&'static tokio_rustls::rustls::ClientConfig>,
    ) -> Result<GatewayProc, BoxError> {
        // Built by cargo for this bench with the same (release) profile.
        let bin = Path::new(env!("CARGO_BIN_EXE_portcullis"));
        for attempt in 0..5 {
            let port = free_port();
            let conf = dir.join(format!("portcullis-{port}.toml"));
            std::fs::write(&conf, make(port))?;
            let log = dir.join(format!("portcullis-{port}.log"));
            // warn: a log line per tunnel would be part of what we measure.
            let args = [Path::new("serve"), Path::new("--config"), &conf];
            // BENCH_GATEWAY_WORKERS: the gateway's tokio worker threads (default: one per core).
            let workers = std::env::var("BENCH_GATEWAY_WORKERS").unwrap_or_default();
            let mut env = vec![("RUST_LOG", "warn")];
            if !workers.is_empty() {
                env.push(("TOKIO_WORKER_THREADS", workers.as_str()));
            }
            let mut proc = spawn_logged(bin, &args, log, &env);
            let addr = ([127, 0, 0, 1], port).into();
            if wait_listening(&mut proc, &[addr]).await && ready(addr, tls).await {
                return Ok(GatewayProc { addr, proc });
            }
            eprintln!("gateway attempt {attempt} failed:\n{}", proc.tail());
        }
        Err("the gateway did not start".into())
    }
}

/// Connect limits far above any bench's rate: every device comes from 127.0.0.1.
pub const CONNECTS_FOR_BENCH: &str = "[policy.connects]
per_ip_per_sec = 1000000
per_ip_burst = 1000000
per_client_per_minute = 1000
per_listener_per_sec = 1000000
per_listener_burst = 1000000
";

/// The gateway as a deployment would run it, with two bench-specific choices:
/// - `/tunnel/mqtt-raw` is the same broker as a plain `tcp` route (the `mqtt` route is the
///   listener's MQTT route, so `/tunnel/mqtt` would take the MQTT-aware relay as well);
/// - the policy stage runs on every packet, but every limit sits far above the offered load:
///   all devices come from 127.0.0.1 and one publisher sends ~100k msg/s.
pub fn gateway_config(port: u16, broker: SocketAddr, sink: SocketAddr) -> String {
    format!(
        r#"[[listener]]
bind = "127.0.0.1:{port}"

[routes.mqtt]
upstreams = ["{broker}"]

[routes.mqtt-raw]
upstreams = ["{broker}"]
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

{CONNECTS_FOR_BENCH}
[shutdown]
drain_window_secs = 1
drain_timeout_secs = 2
"#
    )
}

/// The release binary's `agent` command as its own process: one local port whose
/// connections each get a WebSocket to the gateway's `/tunnel/mqtt-raw`.
pub struct AgentProc {
    pub addr: SocketAddr,
    pub proc: ChildGuard,
}

impl AgentProc {
    pub async fn spawn(dir: &Path, gateway: SocketAddr) -> Result<AgentProc, BoxError> {
        let (proc, addrs) =
            Self::spawn_tunnels(dir, &[format!("ws://{gateway}/tunnel/mqtt-raw")]).await?;
        Ok(AgentProc {
            addr: addrs[0],
            proc,
        })
    }

    /// One local port per URL, in order.
    pub async fn spawn_tunnels(
        dir: &Path,
        urls: &[String],
    ) -> Result<(ChildGuard, Vec<SocketAddr>), BoxError> {
        let bin = Path::new(env!("CARGO_BIN_EXE_portcullis"));
        for attempt in 0..5 {
            let ports: Vec<u16> = urls.iter().map(|_| free_port()).collect();
            let port = ports[0];
            let conf = dir.join(format!("agent-{port}.toml"));
            std::fs::write(&conf, agent_config(&ports, urls))?;
            let log = dir.join(format!("agent-{port}.log"));
            // warn, as for the gateway: the agent logs every tunnel's end at info.
            let args = [Path::new("agent"), Path::new("--config"), &conf];
            let mut proc = spawn_logged(bin, &args, log, &[("RUST_LOG", "warn")]);
            let addrs: Vec<SocketAddr> =
                ports.iter().map(|&p| ([127, 0, 0, 1], p).into()).collect();
            if wait_listening(&mut proc, &addrs).await {
                return Ok((proc, addrs));
            }
            eprintln!("agent attempt {attempt} failed:\n{}", proc.tail());
        }
        Err("the agent did not start".into())
    }
}

/// Plain `ws://` on loopback (the agent warns about clear text once, at start): TLS would
/// measure rustls, which no other path here pays for. No status line, no proxy from the
/// environment, room for more local connections than the default 256.
fn agent_config(ports: &[u16], urls: &[String]) -> String {
    let mut conf = String::from("status_interval_secs = 0\n\n[proxy]\nfrom_env = false\n");
    // BENCH_AGENT_RESUME=0: plain tunnels, to set against the resumable ones (the default).
    if std::env::var("BENCH_AGENT_RESUME").is_ok_and(|v| v == "0") {
        conf += "\n[resume]\nenabled = false\n";
    }
    for (port, url) in ports.iter().zip(urls) {
        conf += &format!(
            "\n[[tunnel]]\nlisten = \"127.0.0.1:{port}\"\nurl = \"{url}\"\nmax_connections = 100000\n"
        );
    }
    conf
}

/// websockify (Debian's, Python) bridging WebSocket to `target`: the peer a user might pick
/// instead of the gateway for a plain WebSocket→TCP bridge. `None` where it is not installed.
pub async fn websockify(
    dir: &Path,
    target: SocketAddr,
) -> Result<Option<(ChildGuard, SocketAddr)>, BoxError> {
    let bin = Path::new("/usr/bin/websockify");
    if !bin.is_file() {
        return Ok(None);
    }
    for attempt in 0..5 {
        let port = free_port();
        let listen = std::path::PathBuf::from(format!("127.0.0.1:{port}"));
        let to = std::path::PathBuf::from(target.to_string());
        let log = dir.join(format!("websockify-{port}.log"));
        let mut proc = spawn_logged(bin, &[&listen, &to], log, &[]);
        let addr = ([127, 0, 0, 1], port).into();
        if wait_listening(&mut proc, &[addr]).await {
            return Ok(Some((proc, addr)));
        }
        eprintln!("websockify attempt {attempt} failed:\n{}", proc.tail());
    }
    Err("websockify did not start".into())
}

/// Poll `/readyz` until the gateway has seen its upstream healthy (over TLS where the
/// listener ends TLS itself).
async fn ready(addr: SocketAddr, tls: Option<&'static tokio_rustls::rustls::ClientConfig>) -> bool {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(tcp) = TcpStream::connect(addr).await {
            let stream = match tls {
                None => Some(portcullis::stream::MaybeTls::Plain(tcp)),
                Some(config) => {
                    let connector =
                        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config.clone()));
                    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")
                        .expect("a valid name");
                    connector
                        .connect(name, tcp)
                        .await
                        .ok()
                        .map(|t| portcullis::stream::MaybeTls::Tls(Box::new(t)))
                }
            };
            if let Some(mut s) = stream {
                let req = b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
                let mut resp = Vec::new();
                if s.write_all(req).await.is_ok()
                    && s.read_to_end(&mut resp).await.is_ok()
                    && resp.starts_with(b"HTTP/1.1 200")
                {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A self-signed certificate for `localhost`, written into `dir`: the listener's `tls` line,
/// and a client config that trusts it (leaked: the bench holds it to its end).
pub fn tls_for_localhost(
    dir: &Path,
) -> Result<(String, &'static tokio_rustls::rustls::ClientConfig), BoxError> {
    use tokio_rustls::rustls;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    let (cert_path, key_path) = (dir.join("bench-tls.pem"), dir.join("bench-tls.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    let listener = format!(
        "tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
        cert_path.display(),
        key_path.display()
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone())?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((listener, Box::leak(Box::new(config))))
}

/// The most resident memory a process has had (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit on open files of this process (children inherit it).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// "2.0.11", from `mosquitto -h` (which exits non-zero but prints the version first).
pub fn mosquitto_version() -> String {
    Command::new("/usr/sbin/mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().next()?.to_string();
            line.strip_prefix("mosquitto version ").map(str::to_string)
        })
        .unwrap_or_else(|| "(unknown version)".into())
}
