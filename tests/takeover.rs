//! MQTT session takeover (MQTT 3.1.4): a new CONNECT for a client ID already connected takes
//! over, by default; the old connection gets DISCONNECT 0x8E on MQTT 5, a close on 3.1.1.
//! `on_duplicate = "refuse"` keeps refusing the newcomer (CONNACK 0x97). And the close that
//! ends a refused WebSocket stays a valid frame whatever the client ID. Real mosquitto, the
//! real gateway, raw MQTT clients over WebSocket and TCP.

mod support;

use portcullis::mqtt::wire::{self, Version};
use support::policy_gw;
use support::raw_mqtt::{self, End, RawClient};
use support::{Broker, TestGateway};

async fn start(policy: &str) -> (Broker, TestGateway) {
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&policy_gw::config(broker.addr, policy)).await;
    (broker, gw)
}

#[tokio::test]
async fn a_new_connection_takes_over_and_the_old_one_hears_0x8e_on_mqtt_5() {
    let (_broker, gw) = start("").await;
    let mut old = RawClient::ws(&gw.ws_url("/mqtt"), Version::V5).await;
    assert_eq!(
        old.connect(&wire::connect("meter-t", 30, Version::V5))
            .await,
        0
    );
    // The same device back through another path (its old connection died behind a NAT).
    let mut new = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        new.connect(&wire::connect("meter-t", 30, Version::V5))
            .await,
        0
    );
    let (packets, end) = old.until_end().await;
    let last = packets.last().expect("a DISCONNECT before the close");
    assert_eq!(raw_mqtt::disconnect_reason(last), Some(0x8E), "{packets:?}");
    assert!(matches!(end, End::WsClose(1008) | End::Eof), "{end:?}");
    new.ping().await;
    let taken: Vec<_> = gw
        .gw()
        .policy()
        .stats()
        .device("meter-t")
        .into_iter()
        .collect();
    assert_eq!(taken.len(), 1, "one device entry");
}

#[tokio::test]
async fn on_mqtt_3_1_1_the_old_connection_is_closed() {
    let (_broker, gw) = start("").await;
    let mut old = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        old.connect(&wire::connect("meter-3", 30, Version::V311))
            .await,
        0
    );
    let mut new = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        new.connect(&wire::connect("meter-3", 30, Version::V311))
            .await,
        0
    );
    let (packets, end) = old.until_end().await;
    assert!(
        packets.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {packets:?}"
    );
    assert!(matches!(end, End::Eof), "{end:?}");
    new.ping().await;
}

#[tokio::test]
async fn a_class_that_refuses_duplicates_keeps_the_old_connection() {
    let policy = "[policy.classes.default]\non_duplicate = \"refuse\"\n";
    let (_broker, gw) = start(policy).await;
    let mut old = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        old.connect(&wire::connect("meter-r", 30, Version::V5))
            .await,
        0
    );
    let mut new = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        new.connect(&wire::connect("meter-r", 30, Version::V5))
            .await,
        0x97
    );
    old.ping().await;
}

#[tokio::test]
async fn a_banned_newcomer_takes_nothing_over() {
    use portcullis::policy::Subject;
    let (_broker, gw) = start("").await;
    let mut old = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        old.connect(&wire::connect("meter-b", 30, Version::V5))
            .await,
        0
    );
    let ban = support::admin_ban(Subject::Username("intruder".into()), None);
    gw.gw().ban(ban).await.unwrap();
    let mut new = RawClient::tcp(gw.addrs[1], Version::V5).await;
    let connect = wire::connect_with_username("meter-b", "intruder", 30, Version::V5);
    assert_eq!(new.connect(&connect).await, 0x8A, "banned");
    old.ping().await;
}

#[tokio::test]
async fn a_refusal_naming_a_non_ascii_client_id_is_still_a_valid_close_frame() {
    use portcullis::policy::Subject;
    let (_broker, gw) = start("").await;
    let id = "€".repeat(60);
    let ban = support::admin_ban(Subject::ClientId(id.as_str().into()), None);
    gw.gw().ban(ban).await.unwrap();
    let mut dev = RawClient::ws(&gw.ws_url("/mqtt"), Version::V5).await;
    assert_eq!(
        dev.connect(&wire::connect(&id, 30, Version::V5)).await,
        0x8A
    );
    // A close frame over 125 bytes would be a protocol error to the client (no close code).
    let (_, end) = dev.until_end().await;
    assert!(matches!(end, End::WsClose(1008)), "{end:?}");
}

#[tokio::test]
async fn no_acknowledged_in_rhythm_publish_is_lost_across_a_takeover() {
    use support::policy_gw::{Msg, Subscriber};
    let policy = r#"
[policy.classes.default]
push_interval_secs = 1.0
tolerance_secs = 0.4
"#;
    let (broker, gw) = start(policy).await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["tele/#"]).await;
    let v = Version::V5;
    let mut old = RawClient::ws(&gw.ws_url("/mqtt"), v).await;
    assert_eq!(old.connect(&wire::connect("meter-k", 30, v)).await, 0);
    // Paced at the device's rhythm (T = 1 s): this is the scenario, not synchronisation.
    let tick = std::time::Duration::from_secs(1);
    old.send_ok(&wire::publish("tele/meter-k", 1, 1, b"m1", v))
        .await;
    assert_eq!(raw_mqtt::ack(&old.packet().await), (1, 0));
    tokio::time::sleep(tick).await;
    old.send_ok(&wire::publish("tele/meter-k", 1, 2, b"m2", v))
        .await;
    assert_eq!(raw_mqtt::ack(&old.packet().await), (2, 0));
    // The device comes back on a new connection; the old one is taken over.
    let mut new = RawClient::tcp(gw.addrs[1], v).await;
    assert_eq!(new.connect(&wire::connect("meter-k", 30, v)).await, 0);
    new.send_ok(&wire::publish("tele/meter-k", 1, 1, b"m3", v))
        .await;
    assert_eq!(raw_mqtt::ack(&new.packet().await), (1, 0));
    tokio::time::sleep(tick).await;
    new.send_ok(&wire::publish("tele/meter-k", 1, 2, b"m4", v))
        .await;
    assert_eq!(raw_mqtt::ack(&new.packet().await), (2, 0));
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(sub.next().await);
    }
    assert_eq!(
        seen,
        ["m1", "m2", "m3", "m4"].map(|p| Msg::new("tele/meter-k", p))
    );
    let (packets, _) = old.until_end().await;
    assert_eq!(
        packets.last().and_then(|p| raw_mqtt::disconnect_reason(p)),
        Some(0x8E)
    );
}
