//! Test harness: real mosquitto per test, the real gateway in-process, real clients.
//! Every server binds an ephemeral port; nothing here sleeps to synchronise, it polls.

#![allow(dead_code)]

pub mod admin;
pub mod agent;
pub mod broker_restart;
pub mod certs;
pub mod edge;
pub mod logs;
pub mod mosquitto_clients;
pub mod mqtt_wss;
pub mod nginx;
pub mod policy_gw;
// Real HTTP collectors and clients: hyper is in the tree only with the gateway.
#[cfg(feature = "gateway")]
pub mod push;
pub mod raw_mqtt;
pub mod raw_peers;
pub mod redis;
pub mod squid;
pub mod tls_client;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[cfg(feature = "gateway")]
use portcullis::{Config, Gateway};
use tokio::net::{TcpListener, TcpStream};

pub mod gateway_process;
// The agent-only build has no gateway in the library: its tests run a full build's binary.
#[cfg(not(feature = "gateway"))]
pub use gateway_process::GatewayProcess as TestGateway;

/// Poll `cond` until it is true or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut cond: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr) => {
        assert!(
            $crate::support::eventually(std::time::Duration::from_secs(10), || $cond).await,
            "condition never became true: {}",
            stringify!($cond)
        )
    };
}

/// An admin's ban on `subject`, for `expires_in` (`None`: until lifted).
#[cfg(feature = "gateway")]
pub fn admin_ban(
    subject: portcullis::policy::Subject,
    expires_in: Option<Duration>,
) -> portcullis::policy::Ban {
    let now = std::time::SystemTime::now();
    portcullis::policy::Ban {
        subject,
        reason: "test".into(),
        source: portcullis::policy::BanSource::admin("ops"),
        created: now,
        expires: expires_in.map(|d| now + d),
    }
}

/// A port that was free a moment ago (for servers we cannot ask to bind port 0).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Wait until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listening on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` holds the socket listening on `port`: a connect that succeeds may
/// have reached another test's server that took the port between `free_port` and the child's
/// bind (the child then exits, but maybe not before the connect). Read from /proc: the
/// listening socket's inode in /proc/net/tcp{,6}, among the child's descriptors.
pub fn holds_listener(pid: u32, port: u16) -> bool {
    let hex = format!(":{port:04X}");
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    // local address, state (0A: LISTEN), inode
                    let listening = f.len() > 9 && f[1].ends_with(&hex) && f[3] == "0A";
                    listening.then(|| format!("socket:[{}]", f[9]))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|link| inodes.iter().any(|i| link.to_string_lossy() == *i))
    })
}

pub fn require_binary(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: the test command installs it (see README: `bash .ci/run`), or apt-get install {name}");
}

/// A real mosquitto on an ephemeral port, killed on drop.
pub struct Broker {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub async fn spawn() -> Broker {
        let bin = require_binary("mosquitto");
        let dir = tempfile::tempdir().expect("tempdir");
        // A free port can be taken by someone else before mosquitto binds it: retry a few times.
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nmax_keepalive 65535\n"),
            )
            .expect("write mosquitto.conf");
            let mut child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mosquitto");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                // Ours, not another test's server on a port it took first (a rare flake:
                // the gateway's upstream was then no broker, and CONNECT got 0x88).
                if TcpStream::connect(addr).await.is_ok() && holds_listener(child.id(), port) {
                    return Broker {
                        addr,
                        child,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                if tokio::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("mosquitto did not start");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The gateway, started in-process from TOML text.
#[cfg(feature = "gateway")]
pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub addrs: Vec<SocketAddr>,
}

#[cfg(feature = "gateway")]
impl TestGateway {
    pub async fn start(toml: &str) -> TestGateway {
        // Logs only on request (RUST_LOG=debug cargo test ...): some test binaries capture them.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let config =
            Config::parse(toml, None).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
        let gateway = Gateway::start(config).await.expect("gateway starts");
        let addrs = gateway.local_addrs();
        TestGateway {
            gateway: Some(gateway),
            addrs,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr())
    }

    pub fn gw(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    pub async fn shutdown(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
    }
}

/// The smallest useful config: one plain WebSocket listener and an `mqtt` route to `broker`.
pub fn basic_config(broker: SocketAddr) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
handshake_timeout_secs = 2

[routes.mqtt]
upstreams = ["{broker}"]

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 5
"#
    )
}

/// A TCP echo server (a stand-in collector for `/tunnel` routes).
pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Send raw request bytes, return (status, headers+body text).
pub async fn raw_request(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // Responses here are small and carry Content-Length; read until the body is complete.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, text);
            }
        }
        assert!(n > 0, "connection closed before a full response: {text:?}");
    }
}
