//! The gateway as a separate process, for the agent-only build (`--no-default-features
//! --features agent`), whose library has no gateway: the agent's tests run against the binary
//! of a full build, named by `PORTCULLIS_GATEWAY_BIN`. Same interface as the in-process one.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct TestGateway {
    child: Option<Child>,
    pub addrs: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    pub async fn start(toml: &str) -> TestGateway {
        let bin = std::env::var("PORTCULLIS_GATEWAY_BIN").unwrap_or_else(|_| {
            panic!("the agent-only tests run the gateway as a process: set PORTCULLIS_GATEWAY_BIN to a full build's portcullis binary")
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, toml).expect("write gateway.toml");
        let listeners = toml.matches("[[listener]]").count();
        let mut child = Command::new(&bin)
            .args(["serve", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        // The gateway logs one "listening" line per bound listener, with addr=IP:PORT; the
        // rest of its log is drained so that it never blocks on a full pipe.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
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
        TestGateway {
            child: Some(child),
            addrs,
            _dir: dir,
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

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
