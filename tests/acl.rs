//! Topic permissions per device class (publish side): a publish outside `publish_topics` is
//! acknowledged (PUBACK 0x87 on MQTT 5, a plain PUBACK on 3.1.1), never reaches the broker, and
//! is a strike. Real mosquitto, the real gateway, raw MQTT clients, a subscriber on mosquitto.

mod support;

use portcullis::mqtt::wire::{self, Version};
use portcullis::policy::Subject;
use support::policy_gw::{self, Msg, Subscriber};
use support::raw_mqtt::{self, RawClient};
use support::{Broker, TestGateway};

const POLICY: &str = r#"
[policy.classes.default]
publish_topics = ["plant/{clientid}/#", "fleet/{username}/status"]

[policy.strikes]
threshold = 3
"#;

#[tokio::test]
async fn publishes_outside_the_permissions_are_refused_struck_and_never_forwarded() {
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&policy_gw::config(broker.addr, POLICY)).await;
    let mut sub =
        Subscriber::direct(broker.addr, "platform", &["plant/#", "fleet/#", "mark/#"]).await;
    for (id, version) in [("m5", Version::V5), ("m3", Version::V311)] {
        let mut dev = RawClient::tcp(gw.addrs[1], version).await;
        let connect = wire::connect_with_username(id, "acme", 30, version);
        assert_eq!(dev.connect(&connect).await, 0);
        let own = format!("plant/{id}/temp");
        let other = "plant/someone-else/temp";
        let packets: Vec<u8> = [
            wire::publish(&own, 1, 1, b"mine", version),
            wire::publish(other, 1, 2, b"not mine", version),
            wire::publish("fleet/acme/status", 1, 3, b"ok", version),
            wire::publish("fleet/other/status", 1, 4, b"not mine", version),
        ]
        .concat();
        dev.send_ok(&packets).await;
        let mut acks = Vec::new();
        for _ in 0..4 {
            acks.push(raw_mqtt::ack(&dev.packet().await));
        }
        let denied = if version == Version::V5 { 0x87 } else { 0 };
        assert_eq!(acks, [(1, 0), (2, denied), (3, 0), (4, denied)], "{id}");
    }
    let mut marker = RawClient::tcp(gw.addrs[1], Version::V311).await;
    let connect = wire::connect("marker", 30, Version::V311);
    assert_eq!(marker.connect(&connect).await, 0);
    marker
        .send_ok(&wire::publish(
            "plant/marker/end",
            1,
            1,
            b"end",
            Version::V311,
        ))
        .await;
    assert_eq!(raw_mqtt::ack(&marker.packet().await), (1, 0));
    assert_eq!(
        sub.until("plant/marker/end").await,
        [
            Msg::new("plant/m5/temp", "mine"),
            Msg::new("fleet/acme/status", "ok"),
            Msg::new("plant/m3/temp", "mine"),
            Msg::new("fleet/acme/status", "ok"),
            Msg::new("plant/marker/end", "end"),
        ]
    );
    assert_eq!(
        gw.gw().policy().stats().snapshot().discarded_not_authorized,
        4
    );
}

#[tokio::test]
async fn three_publishes_outside_ban_the_client_id() {
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&policy_gw::config(broker.addr, POLICY)).await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        dev.connect(&wire::connect("probe-1", 30, Version::V5))
            .await,
        0
    );
    let outside: Vec<u8> = (1..=3u16)
        .flat_map(|n| wire::publish("plant/victim/cmd", 1, n, b"x", Version::V5))
        .collect();
    dev.send_ok(&outside).await;
    let (packets, _) = dev.until_end().await;
    assert_eq!(
        packets.last().and_then(|p| raw_mqtt::disconnect_reason(p)),
        Some(0x98),
        "{packets:?}"
    );
    let bans = gw.gw().policy().bans().list(std::time::SystemTime::now());
    let ban = bans
        .iter()
        .find(|b| b.subject == Subject::ClientId("probe-1".into()))
        .expect("banned");
    assert_eq!(ban.source.by(), "portcullis:acl");
}
