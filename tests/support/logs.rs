//! Log capture: the only place a test can see which client IP the gateway believed.
//!
//! One global subscriber per test binary (tests run on parallel threads of one process, so a
//! per-test subscriber would miss events from gateway tasks on other threads). Lines are found by
//! a key unique to the test (the client's local port, or an IP no other test uses).

use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

type Buffer = Arc<Mutex<Vec<u8>>>;

static CAPTURED: OnceLock<Buffer> = OnceLock::new();

struct Sink(Buffer);

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("log buffer poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Install the capturing subscriber (once; later calls are free).
pub fn capture() {
    CAPTURED.get_or_init(|| {
        let buf = Buffer::default();
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("portcullis=debug"))
            .with_ansi(false)
            .with_writer(move || Sink(writer.clone()))
            .try_init()
            .expect("no other global subscriber in this test binary");
        buf
    });
}

/// Every captured line so far.
pub fn lines() -> Vec<String> {
    let buf = CAPTURED.get().expect("logs::capture() first");
    let bytes = buf.lock().expect("log buffer").clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether a log line has the field `name=value` exactly (not `value` as a prefix of another).
pub fn has_field(line: &str, name: &str, value: &str) -> bool {
    let want = format!("{name}={value}");
    line.split(|c: char| c.is_whitespace() || c == '{' || c == '}')
        .any(|token| token == want)
}

/// The first line with the message `message` and every `(name, value)` field, waiting up to
/// 10 s for it: the gateway logs after it has answered, so the client can be ahead of the log.
pub async fn wait_for_line(message: &str, fields: &[(&str, &str)]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = lines().into_iter().find(|l| {
            l.contains(message) && fields.iter().all(|(name, value)| has_field(l, name, value))
        });
        if let Some(line) = found {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line {message:?} with {fields:?}; captured:\n{}",
            lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The "websocket accepted" line of the connection whose TCP peer is `peer`.
pub async fn accepted_from_peer(peer: std::net::SocketAddr) -> String {
    wait_for_line("websocket accepted", &[("peer", &peer.to_string())]).await
}
