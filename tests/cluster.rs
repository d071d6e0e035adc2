//! Gateways sharing bans through a real `redis-server`: a ban made on one is enforced on the
//! others within a second, a gateway that starts later enforces them before admitting anyone,
//! and with Redis killed every gateway keeps serving and enforcing, and what was banned
//! meanwhile reaches the others when Redis returns.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis::mqtt::wire::{self, Version};
use serde_json::json;
use support::admin::{self, ops, AdminFiles};
use support::raw_mqtt::{End, RawClient};
use support::redis::Redis;
use support::{policy_gw, Broker, TestGateway};

struct Node {
    gw: TestGateway,
    api: SocketAddr,
    _files: AdminFiles,
}

async fn node(broker: &Broker, redis: &Redis, name: &str) -> Node {
    let files = AdminFiles::new();
    let extra = format!(
        "{}\n[cluster]\nredis = \"{}\"\nnode = \"{name}\"\nresync_secs = 2\n",
        files.toml(),
        redis.url()
    );
    let gw = TestGateway::start(&policy_gw::config(broker.addr, &extra)).await;
    let api = gw.gw().admin_addr().unwrap();
    Node {
        gw,
        api,
        _files: files,
    }
}

async fn device(n: &Node, id: &str) -> RawClient {
    let mut dev = RawClient::tcp(n.gw.addrs[1], Version::V311).await;
    assert_eq!(
        dev.connect(&wire::connect(id, 30, Version::V311)).await,
        0,
        "{id}"
    );
    dev
}

/// A device of `user`'s fleet (one broker behind both gateways: client IDs must differ, or
/// the broker's own session takeover would end one of them).
async fn fleet_device(n: &Node, id: &str, user: &str) -> RawClient {
    let mut dev = RawClient::tcp(n.gw.addrs[1], Version::V311).await;
    let connect = wire::connect_with_username(id, user, 30, Version::V311);
    assert_eq!(dev.connect(&connect).await, 0, "{id}");
    dev
}

async fn connack(n: &Node, id: &str) -> u8 {
    let mut dev = RawClient::tcp(n.gw.addrs[1], Version::V311).await;
    dev.connect(&wire::connect(id, 30, Version::V311)).await
}

async fn ban(n: &Node, id: &str) {
    ban_as(n, "clientid", id).await;
}

async fn ban_as(n: &Node, kind: &str, who: &str) {
    let body = json!({ "as": kind, "who": who, "reason": "cluster test" });
    let a = ops(n.api, "POST", "/api/v1/banned", Some(body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
}

/// The `by` of the ban on `id` as `n` lists it, once there is one (within `within`).
async fn by_on(n: &Node, id: &str, within: Duration) -> Option<String> {
    by_on_as(n, "clientid", id, within).await
}

async fn by_on_as(n: &Node, kind: &str, who: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let a = ops(
            n.api,
            "GET",
            &format!("/api/v1/banned?as={kind}&who={who}"),
            None,
        )
        .await;
        if let Some(by) = a.json["data"][0]["by"].as_str() {
            return Some(by.to_owned());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metric(n: &Node, name: &str) -> String {
    let text = admin::text(n.api, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_ban_made_on_one_gateway_kicks_and_refuses_on_the_others_within_a_second() {
    let broker = Broker::spawn().await;
    let redis = Redis::spawn().await;
    let a = node(&broker, &redis, "gw-a").await;
    let b = node(&broker, &redis, "gw-b").await;
    let mut on_b = device(&b, "meter-1").await;

    let t0 = Instant::now();
    ban(&a, "meter-1").await;
    let (_, end) = tokio::time::timeout(Duration::from_secs(1), on_b.until_end())
        .await
        .expect("kicked on B within a second of the ban on A");
    assert!(matches!(end, End::Eof));
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(connack(&b, "meter-1").await, 0x05, "refused on B");
    assert_eq!(
        by_on(&b, "meter-1", Duration::ZERO).await.as_deref(),
        Some("peer:gw-a")
    );

    // Lifted on B: lifted on A, and the device is welcome on both again.
    let lift = ops(b.api, "DELETE", "/api/v1/banned/clientid/meter-1", None).await;
    assert_eq!(lift.status, 204);
    let deadline = Instant::now() + Duration::from_secs(1);
    while by_on(&a, "meter-1", Duration::ZERO).await.is_some() {
        assert!(Instant::now() < deadline, "lifted on A within a second");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(connack(&a, "meter-1").await, 0);
    assert!(metric(&a, "portcullis_redis_connected")
        .await
        .ends_with(" 1"));
}

#[tokio::test]
async fn a_gateway_that_starts_later_enforces_the_clusters_bans_before_admitting_anyone() {
    let broker = Broker::spawn().await;
    let redis = Redis::spawn().await;
    let a = node(&broker, &redis, "gw-a").await;
    ban(&a, "meter-early").await;
    let c = node(&broker, &redis, "gw-c").await;
    // The very first CONNECT on C: refused.
    assert_eq!(connack(&c, "meter-early").await, 0x05);
}

#[tokio::test]
async fn with_redis_down_every_gateway_serves_and_enforces_and_catches_up_when_it_returns() {
    let broker = Broker::spawn().await;
    let mut redis = Redis::spawn().await;
    let a = node(&broker, &redis, "gw-a").await;
    let b = node(&broker, &redis, "gw-b").await;
    ban(&a, "meter-before").await;
    assert!(by_on(&b, "meter-before", Duration::from_secs(1))
        .await
        .is_some());

    redis.kill();
    // Both keep serving devices, and keep enforcing what they know.
    let mut on_a = fleet_device(&a, "meter-a", "fleet-x").await;
    let mut on_b = fleet_device(&b, "meter-b", "fleet-x").await;
    on_a.ping().await;
    on_b.ping().await;
    assert_eq!(connack(&b, "meter-before").await, 0x05);
    // A ban made meanwhile is confirmed and enforced where it was made.
    ban_as(&a, "username", "fleet-x").await;
    assert!(matches!(on_a.until_end().await.1, End::Eof));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metric(&a, "portcullis_redis_connected")
        .await
        .ends_with(" 0")
    {
        assert!(Instant::now() < deadline, "A notices the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    on_b.ping().await;

    // Redis returns empty; A pushes what it banned, and B enforces it.
    redis.restart().await;
    let by = by_on_as(&b, "username", "fleet-x", Duration::from_secs(20)).await;
    assert_eq!(by.as_deref(), Some("peer:gw-a"));
    assert!(
        matches!(on_b.until_end().await.1, End::Eof),
        "kicked on B too"
    );
    let mut again = RawClient::tcp(b.gw.addrs[1], Version::V311).await;
    let connect = wire::connect_with_username("meter-c", "fleet-x", 30, Version::V311);
    assert_eq!(again.connect(&connect).await, 0x05);
    // The ban from before the outage: B may drop it for a moment (Redis came back empty, so a
    // resync of B's that runs before A re-pushes it finds a peer's ban gone from Redis), and
    // has it back once A's push or B's next resync (every 2 s here) arrives.
    assert!(by_on(&b, "meter-before", Duration::from_secs(5))
        .await
        .is_some());
}

#[tokio::test]
async fn a_ban_that_expired_during_an_outage_does_not_lift_a_newer_ban_made_elsewhere() {
    let broker = Broker::spawn().await;
    let mut redis = Redis::spawn().await;
    let a = node(&broker, &redis, "gw-a").await;
    let b = node(&broker, &redis, "gw-b").await;
    redis.kill();
    // On A, a short ban on meter-x; on B, later, a lasting one on the same device.
    let until = std::time::SystemTime::now() + Duration::from_millis(1500);
    let until = portcullis::admin::rfc3339(until);
    let short = json!({ "as": "clientid", "who": "meter-x", "until": until });
    assert_eq!(
        ops(a.api, "POST", "/api/v1/banned", Some(short))
            .await
            .status,
        201
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    ban(&b, "meter-x").await;
    // A's expires while Redis is away.
    while by_on(&a, "meter-x", Duration::ZERO).await.is_some() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart().await;
    // B's ban reaches A, and nobody lifts it.
    let on_a = by_on(&a, "meter-x", Duration::from_secs(20)).await;
    assert_eq!(on_a.as_deref(), Some("peer:gw-b"));
    assert_eq!(
        by_on(&b, "meter-x", Duration::ZERO).await.as_deref(),
        Some("admin:ops")
    );
    assert_eq!(connack(&a, "meter-x").await, 0x05);
}

#[tokio::test]
async fn a_gateway_starts_at_once_without_redis_and_syncs_when_it_comes() {
    let broker = Broker::spawn().await;
    let mut redis = Redis::spawn().await;
    redis.kill();
    let files = AdminFiles::new();
    // No `node`: the host name stands in (one gateway per host here).
    let extra = format!("{}\n[cluster]\nredis = \"{}\"\n", files.toml(), redis.url());
    let t0 = Instant::now();
    let gw = TestGateway::start(&policy_gw::config(broker.addr, &extra)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "started in {:?}",
        t0.elapsed()
    );
    let n = Node {
        api: gw.gw().admin_addr().unwrap(),
        gw,
        _files: files,
    };
    device(&n, "meter-early-bird").await.ping().await;
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !metric(&n, "portcullis_redis_connected")
        .await
        .ends_with(" 1")
    {
        assert!(Instant::now() < deadline, "connects once Redis is up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
