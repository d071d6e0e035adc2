//! A real `redis-server` per test, on an ephemeral port, no persistence; stoppable and
//! restartable on the same port (an outage, then the return).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use super::{free_port, require_binary};

pub struct Redis {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Redis {
    pub async fn spawn() -> Redis {
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = start(port).await {
                return Redis {
                    addr: ([127, 0, 0, 1], port).into(),
                    child: Some(child),
                };
            }
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Kill it (SIGKILL: no goodbye to the clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if let Some(child) = start(self.addr.port()).await {
                self.child = Some(child);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not restart on {}", self.addr);
    }
}

/// `redis-server` on `port`, once it accepts connections; `None` if it exited (port taken).
async fn start(port: u16) -> Option<Child> {
    let bin = require_binary("redis-server");
    let mut child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(addr).await.is_ok() && super::holds_listener(child.id(), port) {
            return Some(child);
        }
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
