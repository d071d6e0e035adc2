//! Ban propagation through Redis: a ban made on gateway A, until gateway B enforces it.
//!
//! Starts its own `redis-server` on an ephemeral port and two gateways in this process (each
//! with its own Redis connections, as two hosts would have), bans 1,000 client IDs on A one
//! after another and, for each, measures until B's ban list answers with it. Prints p50, p99
//! and the maximum. `cargo bench --bench cluster` (needs redis-server on PATH).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use portcullis::policy::{Ban, BanSource, Subject};
use portcullis::{Config, Gateway};

const BANS: usize = 1_000;

fn config(redis: u16, node: &str) -> Config {
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[cluster]\nredis = \"redis://127.0.0.1:{redis}/\"\nnode = \"{node}\"\n"
    );
    Config::parse(&toml, None).expect("bench config")
}

fn main() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let a = Gateway::start(config(port, "gw-a"))
            .await
            .expect("gateway A");
        let b = Gateway::start(config(port, "gw-b"))
            .await
            .expect("gateway B");
        let seen_on_b = b.policy().bans().clone();
        let mut took = Vec::with_capacity(BANS);
        for i in 0..BANS {
            let now = SystemTime::now();
            let subject = Subject::ClientId(Arc::from(format!("bench-{i}")));
            let ban = Ban {
                subject: subject.clone(),
                reason: "bench".into(),
                source: BanSource::admin("bench"),
                created: now,
                expires: Some(now + Duration::from_secs(3600)),
            };
            let t0 = Instant::now();
            a.ban(ban).await.expect("ban on A");
            while seen_on_b.get(&subject, SystemTime::now()).is_none() {
                if t0.elapsed() > Duration::from_secs(5) {
                    panic!("ban {i} not on B after 5 s");
                }
                tokio::task::yield_now().await;
            }
            took.push(t0.elapsed());
        }
        a.shutdown().await;
        b.shutdown().await;
        took
    });
    let _ = redis.kill();
    let _ = redis.wait();
    let mut took = result;
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    println!(
        "ban propagation A -> B through Redis, {BANS} bans: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3
    );
}
