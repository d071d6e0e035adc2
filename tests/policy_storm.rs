//! A broker restart makes the whole fleet reconnect at once, all from one address (a NAT, here
//! 127.0.0.1). The per-IP connect limit is set so that this burst breaks it: with storm
//! damping the fleet is refused for a moment and comes back without a single ban; with
//! damping effectively off (`min_devices` above the fleet) the very same restart bans the
//! address, which proves the first test does not pass for want of pressure.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis::mqtt::wire::{self, Version};
use portcullis::policy::Subject;
use support::{eventually, policy_gw, Broker, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const DEVICES: usize = 200;
/// Initial connects go in batches this far apart, under the per-IP rate (~83/s < 100/s), so
/// that only the restart, never the test's own start, could look like a flood.
const BATCH: usize = 25;
const BATCH_GAP: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Fleet {
    connected: AtomicUsize,
    /// Set just before the broker is killed.
    restarted: AtomicBool,
    /// Devices that established a session after the restart.
    reconnected: AtomicUsize,
}

/// A cheap device: raw MQTT 3.1.1 over TCP. Reconnects 100–500 ms (random) after any refusal or
/// loss, like a real device's backoff with jitter.
async fn device(id: String, addr: SocketAddr, start: Duration, fleet: Arc<Fleet>) {
    tokio::time::sleep(start).await;
    // Keep-alive 0: nothing but the restart ends a session during the test.
    let connect = wire::connect(&id, 0, Version::V311);
    let mut counted = false;
    loop {
        if let Some(mut s) = session(addr, &connect).await {
            fleet.connected.fetch_add(1, SeqCst);
            if fleet.restarted.load(SeqCst) && !counted {
                counted = true;
                fleet.reconnected.fetch_add(1, SeqCst);
            }
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            fleet.connected.fetch_sub(1, SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(rand::random_range(100..=500))).await;
    }
}

/// A connection that got CONNACK 0, or `None` (closed at accept, refused, or broker down).
async fn session(addr: SocketAddr, connect: &[u8]) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(connect).await.ok()?;
    let mut connack = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut connack));
    read.await.ok()?.ok()?;
    (connack == [0x20, 2, 0, 0]).then_some(s)
}

struct Setup {
    broker: Broker,
    gw: TestGateway,
    fleet: Arc<Fleet>,
    devices: Vec<JoinHandle<()>>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for d in &self.devices {
            d.abort();
        }
    }
}

/// 200 devices connected through the raw MQTT listener, no ban, no storm in progress.
async fn connected_fleet(storm_min_devices: u32) -> Setup {
    let broker = Broker::spawn().await;
    // A burst of 50 per address and 3 strikes: a fleet reconnecting at once breaks it.
    let policy = format!(
        r#"
[policy.connects]
per_ip_per_sec = 100
per_ip_burst = 50
per_client_per_minute = 120

[policy.strikes]
threshold = 3

[policy.storm]
min_devices = {storm_min_devices}
window_secs = 10
hold_secs = 3
"#
    );
    let gw = TestGateway::start(&policy_gw::config(broker.addr, &policy)).await;
    let fleet = Arc::new(Fleet::default());
    let devices = (0..DEVICES)
        .map(|i| {
            let start = BATCH_GAP * (i / BATCH) as u32;
            let id = format!("fleet-{i:03}");
            tokio::spawn(device(id, gw.addrs[1], start, fleet.clone()))
        })
        .collect();
    let setup = Setup {
        broker,
        gw,
        fleet,
        devices,
    };
    let all = eventually(Duration::from_secs(60), || {
        setup.fleet.connected.load(SeqCst) == DEVICES
    })
    .await;
    let s = setup.gw.gw().policy().stats().snapshot();
    assert!(
        all,
        "only {} devices connected: {s:?}",
        setup.fleet.connected.load(SeqCst)
    );
    assert_eq!(s.bans_issued, 0, "the initial connects were paced: {s:?}");
    // Connecting 200 devices was a storm of its own; let it end so the restart has to be
    // recognised afresh.
    let policy = setup.gw.gw().policy();
    assert!(eventually(Duration::from_secs(30), || !policy.storm_active()).await);
    setup
}

async fn restart_broker(setup: &mut Setup) {
    setup.fleet.restarted.store(true, SeqCst);
    setup.broker.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_storm_reconnects_the_whole_fleet_without_a_ban() {
    let mut setup = connected_fleet(20).await;
    let before = setup.gw.gw().policy().stats().snapshot();
    restart_broker(&mut setup).await;

    let fleet = &setup.fleet;
    let back = eventually(Duration::from_secs(60), || {
        fleet.reconnected.load(SeqCst) == DEVICES && fleet.connected.load(SeqCst) == DEVICES
    })
    .await;
    let after = setup.gw.gw().policy().stats().snapshot();
    let n = fleet.reconnected.load(SeqCst);
    assert!(back, "{n} of {DEVICES} devices reconnected: {after:?}");
    assert_eq!(after.bans_issued, 0, "{after:?}");
    assert!(
        after.storms > before.storms,
        "the restart was seen as a storm: {after:?}"
    );
    // The limit did bite: each of these would have been a strike without damping.
    assert!(
        after.accept_rate_limited > before.accept_rate_limited + 3,
        "{before:?} → {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_storm_damping_the_same_restart_bans_the_address() {
    let mut setup = connected_fleet(1000).await;
    restart_broker(&mut setup).await;
    let policy = setup.gw.gw().policy();
    let banned = eventually(Duration::from_secs(30), || {
        policy.stats().snapshot().bans_issued > 0
    })
    .await;
    assert!(banned, "{:?}", policy.stats().snapshot());
    let localhost = Subject::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let bans = policy.bans().list(SystemTime::now());
    let ban = bans.iter().find(|b| b.subject == localhost);
    let ban = ban.unwrap_or_else(|| panic!("no ban on 127.0.0.1: {bans:?}"));
    assert!(ban.reason.contains("connect flood"), "{}", ban.reason);
}
