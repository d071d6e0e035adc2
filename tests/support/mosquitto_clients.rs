//! `mosquitto_pub` / `mosquitto_sub` (Debian's mosquitto-clients): the legacy devices that speak
//! plain TCP MQTT to the agent's local port. Run as subprocesses; their output is read by a
//! thread so tests can poll it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{eventually, require_binary};

/// A running `mosquitto_sub -d -v` (debug lines show CONNACK / SUBACK / each PUBLISH).
pub struct Sub {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sub {
    /// Subscribe at QoS 1 to `topic` through `addr` as client `id`, with a persistent session
    /// (`-c`), so that QoS 1 messages published while it is away are kept for it.
    pub fn spawn(addr: SocketAddr, id: &str, topic: &str) -> Sub {
        // stdout is a pipe, so mosquitto_sub would buffer it whole: ask for lines (coreutils).
        let mut child = Command::new(require_binary("stdbuf"))
            .arg("-oL")
            .arg(require_binary("mosquitto_sub"))
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args([
                "-i", id, "-t", topic, "-q", "1", "-c", "-d", "-v", "-k", "30",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto_sub");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        Sub { child, lines }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Wait until `needle` appeared `n` times in the output.
    pub async fn wait_for(&self, needle: &str, n: usize, within: Duration) {
        let ok = eventually(within, || self.count(needle) >= n).await;
        assert!(
            ok,
            "mosquitto_sub never printed {needle:?} {n} time(s); output:\n{}",
            self.lines().join("\n")
        );
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_pub -q 1`: returns once the broker's PUBACK came back (exit 0), or panics with
/// the client's own output.
pub async fn publish(addr: SocketAddr, id: &str, topic: &str, message: &str) {
    let out = try_publish(addr, id, topic, message).await;
    assert!(
        out.status.success(),
        "mosquitto_pub failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn try_publish(
    addr: SocketAddr,
    id: &str,
    topic: &str,
    message: &str,
) -> std::process::Output {
    let mut cmd = Command::new(require_binary("mosquitto_pub"));
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-i", id, "-t", topic, "-q", "1", "-m", message, "-d"]);
    tokio::task::spawn_blocking(move || cmd.output().expect("run mosquitto_pub"))
        .await
        .expect("join")
}
