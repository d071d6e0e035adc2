//! `Broker::restart()`: kill mosquitto and start it again on the same port, as a broker
//! upgrade or crash looks to the gateway and its fleet.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use super::{require_binary, Broker};

impl Broker {
    /// Kill mosquitto and start a fresh one with the same config (same port, no persistence,
    /// so every session is gone). Returns once it accepts connections.
    pub async fn restart(&mut self) {
        self.stop();
        let bin = require_binary("mosquitto");
        let conf = self._dir.path().join("mosquitto.conf");
        // mosquitto binds with SO_REUSEADDR, so the old connections' TIME_WAIT does not block the
        // port; a few attempts still cover the rare case where it exits at once.
        for _ in 0..5 {
            self.child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("respawn mosquitto");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(self.addr).await.is_ok() {
                    return;
                }
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "mosquitto did not come back on {}",
                    self.addr
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosquitto could not be restarted on {}", self.addr);
    }
}
