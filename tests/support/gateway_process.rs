//! The gateway as a separate process: for the agent-only build (`--no-default-features
//! --features agent`), whose library has no gateway, so the agent's tests run against the binary
//! of a full build named by `PORTCULLIS_GATEWAY_BIN` (same interface as the in-process one); and
//! for what only a process can show (`kill -9`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct GatewayProcess {
    child: Option<Child>,
    pub addrs: Vec<SocketAddr>,
    /// Everything it logged after it started listening.
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn gateway_bin() -> String {
    if let Ok(bin) = std::env::var("PORTCULLIS_GATEWAY_BIN") {
        return bin;
    }
    #[cfg(feature = "gateway")]
    return env!("CARGO_BIN_EXE_portcullis").to_string();
    #[cfg(not(feature = "gateway"))]
    panic!("the agent-only tests run the gateway as a process: set PORTCULLIS_GATEWAY_BIN to a full build's portcullis binary")
}

impl GatewayProcess {
    pub async fn start(toml: &str) -> GatewayProcess {
        Self::start_logging(toml, "info").await
    }

    /// With `RUST_LOG=<filter>`, for tests that wait for a log line.
    pub async fn start_logging(toml: &str, filter: &str) -> GatewayProcess {
        let bin = gateway_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, toml).expect("write gateway.toml");
        let listeners = toml.matches("[[listener]]").count();
        let mut child = Command::new(&bin)
            .args(["serve", "--config"])
            .arg(&file)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        // The gateway logs one "listening" line per bound listener, with addr=IP:PORT; the
        // rest of its log is drained so that it never blocks on a full pipe.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut kept) = kept.lock() {
                    kept.push(line.clone());
                }
                if line.contains("listening") {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                    {
                        let _ = tx.send(Ok(addr));
                    }
                } else {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let mut addrs = Vec::new();
        let mut said = Vec::new();
        while addrs.len() < listeners {
            match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                Ok(Some(Ok(addr))) => addrs.push(addr),
                Ok(Some(Err(line))) => said.push(line),
                _ => panic!(
                    "the gateway never said it was listening; it said:\n{}\nconfig:\n{toml}",
                    said.join("\n")
                ),
            }
        }
        GatewayProcess {
            child: Some(child),
            addrs,
            log,
            _dir: dir,
        }
    }

    /// Poll its log until a line contains every one of `parts`.
    pub async fn wait_for_log(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let found = self.log.lock().ok().and_then(|lines| {
                lines
                    .iter()
                    .find(|l| parts.iter().all(|p| l.contains(p)))
                    .cloned()
            });
            if let Some(line) = found {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never logged {parts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no drain, no flush, no chance to write anything more.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr())
    }

    /// SIGTERM, as an operator would: the gateway drains and exits.
    pub async fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while tokio::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
