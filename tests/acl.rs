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

const SUBSCRIBE_POLICY: &str = r#"
[policy.classes.default]
subscribe_topics = ["cmd/{clientid}/#", "fleet/+/status"]
"#;

/// The return codes of a SUBACK (3.1.1: after the id; 5: after the id and properties, which
/// mosquitto and the gateway send empty).
fn suback_codes(p: &[u8], version: Version) -> (u16, Vec<u8>) {
    assert_eq!(p[0], 0x90, "SUBACK expected, got {p:02x?}");
    let id = u16::from_be_bytes([p[2], p[3]]);
    let skip = if version == Version::V5 { 5 } else { 4 };
    (id, p[skip..].to_vec())
}

#[tokio::test]
async fn subscriptions_outside_the_permissions_are_refused_filter_by_filter() {
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&policy_gw::config(broker.addr, SUBSCRIBE_POLICY)).await;
    for (id, version) in [("s5", Version::V5), ("s3", Version::V311)] {
        let refused = if version == Version::V5 { 0x87 } else { 0x80 };
        let mut dev = RawClient::tcp(gw.addrs[1], version).await;
        assert_eq!(dev.connect(&wire::connect(id, 30, version)).await, 0);
        // Mixed: the broker gets the allowed two, the device a SUBACK for all four.
        let own = format!("cmd/{id}/#");
        let filters = [
            (own.as_str(), 1),
            ("#", 1),
            ("cmd/other/x", 0),
            ("fleet/+/status", 0),
        ];
        dev.send_ok(&wire::subscribe_many(11, &filters, version))
            .await;
        assert_eq!(
            suback_codes(&dev.packet().await, version),
            (11, vec![1, refused, refused, 0]),
            "{id}"
        );
        // None allowed: the gateway answers alone, and the session goes on.
        dev.send_ok(&wire::subscribe_many(12, &[("$SYS/#", 0)], version))
            .await;
        assert_eq!(
            suback_codes(&dev.packet().await, version),
            (12, vec![refused]),
            "{id}"
        );
        // What the broker delivers follows what it was asked: its own commands, not others'.
        let mut platform = RawClient::tcp(broker.addr, Version::V311).await;
        assert_eq!(
            platform
                .connect(&wire::connect(&format!("platform-{id}"), 30, Version::V311))
                .await,
            0
        );
        let mine = format!("cmd/{id}/reboot");
        for topic in ["cmd/other/x", mine.as_str()] {
            platform
                .send_ok(&wire::publish(topic, 0, 0, b"go", Version::V311))
                .await;
        }
        let p = dev.packet().await;
        assert_eq!(raw_mqtt::kind(&p), 3, "a PUBLISH: {p:02x?}");
        assert!(
            p.windows(mine.len()).any(|w| w == mine.as_bytes()),
            "only its own command arrives first: {p:02x?}"
        );
        dev.ping().await;
    }
    assert_eq!(gw.gw().policy().stats().snapshot().subscriptions_refused, 6);
}

#[tokio::test]
async fn a_class_can_close_the_connection_on_a_publish_outside() {
    let broker = Broker::spawn().await;
    let policy = r#"
[policy.classes.default]
publish_topics = ["plant/{clientid}/#"]
on_publish_denied = "disconnect"
"#;
    let gw = TestGateway::start(&policy_gw::config(broker.addr, policy)).await;
    for (id, version) in [("x5", Version::V5), ("x3", Version::V311)] {
        let mut dev = RawClient::tcp(gw.addrs[1], version).await;
        assert_eq!(dev.connect(&wire::connect(id, 30, version)).await, 0);
        let own = format!("plant/{id}/t");
        dev.send_ok(&wire::publish(&own, 1, 1, b"ok", version))
            .await;
        // Forwarded: the broker's own PUBACK (mosquitto says 0x10, no subscribers, on 5).
        let (id, code) = raw_mqtt::ack(&dev.packet().await);
        assert!(id == 1 && code < 0x80, "{id} {code:#x}");
        dev.send_ok(&wire::publish("plant/other/t", 1, 2, b"no", version))
            .await;
        let (packets, _) = dev.until_end().await;
        let reason = packets.last().and_then(|p| raw_mqtt::disconnect_reason(p));
        match version {
            Version::V5 => assert_eq!(reason, Some(0x87), "{packets:?}"),
            Version::V311 => assert!(packets.is_empty(), "3.1.1 is just closed: {packets:?}"),
        }
    }
}
