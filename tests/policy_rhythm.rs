//! The reporting rhythm through the real relay: in-rhythm data reaches the platform, early data
//! is acknowledged and discarded (per QoS, per MQTT version), and the traps of answering for
//! the broker: keep-alive starvation, topic aliases defined by discarded publishes, ack order.
//!
//! T = 1 s and E = 0.4 s where the rhythm must be hit; "early" is always back to back, and
//! "every publish after the first is early" uses T = 60 s, so a loaded machine cannot flip an
//! outcome. Subscribers connect straight to mosquitto: they see exactly what was forwarded.

mod support;

use std::time::Duration;

use portcullis::mqtt::wire::{self, Version};
use rumqttc::{Packet, QoS};
use support::policy_gw::{self, next_matching, Msg, Subscriber};
use support::raw_mqtt::{self, RawClient, Recv};
use support::{Broker, TestGateway};

/// `meter-*`: T = 1 s ± 0.4 s on `tele/#`. `slow-*`: T = 60 s, so all but the first `tele/#`
/// publish of a connection are early. Strikes never ban here (bans are tested elsewhere).
const POLICY: &str = r#"
[policy.classes.default]

[policy.classes.meter]
push_interval_secs = 1.0
tolerance_secs = 0.4
rhythm_topics = ["tele/#"]

[policy.classes.slow]
push_interval_secs = 60.0
tolerance_secs = 1.0
rhythm_topics = ["tele/#"]

[[policy.device_prefixes]]
prefix = "meter-"
class = "meter"

[[policy.device_prefixes]]
prefix = "slow-"
class = "slow"

[policy.strikes]
threshold = 1000
"#;

const T: Duration = Duration::from_secs(1);

async fn start(extra: &str) -> (Broker, TestGateway) {
    let broker = Broker::spawn().await;
    let toml = policy_gw::config(broker.addr, &format!("{extra}\n{POLICY}"));
    let gw = TestGateway::start(&toml).await;
    (broker, gw)
}

#[tokio::test]
async fn in_rhythm_qos1_publishes_all_reach_the_platform() {
    let (broker, gw) = start("").await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["tele/#"]).await;
    let (dev, mut events) = policy_gw::ws_device(gw.ws_url("/mqtt"), gw.addr().port(), "meter-1");
    next_matching(&mut events, "CONNACK", |p| matches!(p, Packet::ConnAck(_))).await;

    let t0 = tokio::time::Instant::now();
    for k in 0..4u32 {
        tokio::time::sleep_until(t0 + T * k).await;
        dev.publish(
            "tele/meter-1",
            QoS::AtLeastOnce,
            false,
            format!("reading {k}"),
        )
        .await
        .unwrap();
        next_matching(&mut events, "PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
    }
    for k in 0..4 {
        assert_eq!(
            sub.next().await,
            Msg::new("tele/meter-1", &format!("reading {k}"))
        );
    }
    let stats = gw.gw().policy().stats().snapshot();
    assert_eq!(
        (stats.forwarded, stats.discarded_early, stats.strikes),
        (4, 0, 0)
    );
}

#[tokio::test]
async fn early_publishes_are_acknowledged_and_discarded_at_every_qos() {
    let (broker, gw) = start("").await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["tele/#", "mark/#"]).await;
    let (dev, mut events) = policy_gw::ws_device(gw.ws_url("/mqtt"), gw.addr().port(), "meter-2");
    next_matching(&mut events, "CONNACK", |p| matches!(p, Packet::ConnAck(_))).await;

    // Back to back: the first arms the clock and is forwarded, the rest are early.
    let t = "tele/meter-2";
    dev.publish(t, QoS::AtLeastOnce, false, "first")
        .await
        .unwrap();
    dev.publish(t, QoS::AtLeastOnce, false, "early q1 a")
        .await
        .unwrap();
    dev.publish(t, QoS::AtLeastOnce, false, "early q1 b")
        .await
        .unwrap();
    dev.publish(t, QoS::ExactlyOnce, false, "early q2")
        .await
        .unwrap();
    dev.publish(t, QoS::AtMostOnce, false, "early q0")
        .await
        .unwrap();
    // Not a rhythm topic: forwarded, after everything above on the same connection.
    dev.publish("mark/meter-2", QoS::AtLeastOnce, false, "end")
        .await
        .unwrap();

    // The device gets every ack it is owed: 4 PUBACKs (3 data + marker), PUBREC then PUBCOMP.
    let (mut pubacks, mut pubrec, mut pubcomp) = (0, false, false);
    while pubacks < 4 || !pubcomp {
        match next_matching(&mut events, "acks", |_| true).await {
            Packet::PubAck(_) => pubacks += 1,
            Packet::PubRec(_) => pubrec = true,
            Packet::PubComp(_) => {
                assert!(pubrec, "PUBCOMP before PUBREC");
                pubcomp = true;
            }
            _ => {}
        }
    }
    assert_eq!(
        sub.until("mark/meter-2").await,
        [Msg::new(t, "first"), Msg::new("mark/meter-2", "end")],
        "only the arming publish and the marker were forwarded"
    );
    let stats = gw.gw().policy().stats().snapshot();
    assert_eq!(stats.discarded_early, 4, "{stats:?}");
    assert_eq!(gw.gw().policy().stats().device("meter-2").unwrap().early, 4);
}

#[tokio::test]
async fn mqtt5_early_publish_gets_the_configured_reason_0x10() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, PubRecReason};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let (broker, gw) = start("[policy]\ndiscard_reason = \"no-matching-subscribers\"").await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["tele/#", "mark/#"]).await;
    let mut opts = MqttOptions::new("meter-5", gw.ws_url("/mqtt"), gw.addr().port());
    opts.set_transport(rumqttc::Transport::Ws);
    let (dev, mut eventloop) = AsyncClient::new(opts, 100);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(p) = ev {
                let _ = tx.send(p);
            }
        }
    });
    let t = "tele/meter-5";
    dev.publish(t, Q5::AtLeastOnce, false, "first")
        .await
        .unwrap();
    dev.publish(t, Q5::AtLeastOnce, false, "early")
        .await
        .unwrap();
    dev.publish(t, Q5::ExactlyOnce, false, "early q2")
        .await
        .unwrap();
    dev.publish("mark/meter-5", Q5::AtLeastOnce, false, "end")
        .await
        .unwrap();

    let mut puback_reasons = Vec::new();
    let mut pubrec_reason = None;
    let mut pubcomp = false;
    while puback_reasons.len() < 3 || !pubcomp {
        match next_matching(&mut events, "acks", |_| true).await {
            P5::PubAck(a) => puback_reasons.push(a.reason),
            P5::PubRec(r) => pubrec_reason = Some(r.reason),
            P5::PubComp(_) => pubcomp = true,
            P5::Disconnect(d) => panic!("disconnected: {d:?}"),
            _ => {}
        }
    }
    // The broker's own acks say success (there is a subscriber); the gateway's say 0x10.
    assert_eq!(
        puback_reasons,
        [
            PubAckReason::Success,
            PubAckReason::NoMatchingSubscribers,
            PubAckReason::Success
        ]
    );
    assert_eq!(pubrec_reason, Some(PubRecReason::NoMatchingSubscribers));
    assert_eq!(
        sub.until("mark/meter-5").await,
        [Msg::new(t, "first"), Msg::new("mark/meter-5", "end")]
    );
}

/// A busy device whose data is all discarded sends the broker nothing; without the gateway's
/// PINGREQs mosquitto would drop it after 1.5 × keep-alive and publish its Will.
#[tokio::test]
async fn discarded_device_is_kept_alive_at_the_broker_and_its_will_still_fires_on_death() {
    let (broker, gw) = start("").await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["will/#", "alive/#"]).await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V311).await;
    let connect = raw_mqtt::connect_with_will("slow-ka", 2, Version::V311, "will/slow-ka", b"gone");
    assert_eq!(dev.connect(&connect).await, 0);

    // ~6 s = 2 × the broker's 1.5 × keep-alive, a publish every 300 ms and no PINGREQ.
    let t0 = tokio::time::Instant::now();
    let mut id = 0u16;
    while t0.elapsed() < Duration::from_secs(6) {
        id += 1;
        dev.send_ok(&wire::publish("tele/slow-ka", 1, id, b"x", Version::V311))
            .await;
        // Only its PUBACK: the PINGRESPs answering the gateway's own PINGREQs are swallowed.
        let p = dev.packet().await;
        assert_eq!(
            raw_mqtt::ack(&p),
            (id, 0),
            "PUBACK {id} expected, got {p:02x?}"
        );
        assert_eq!(raw_mqtt::kind(&p), 4);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(id >= 10, "the loop ran");
    let stats = gw.gw().policy().stats().snapshot();
    assert_eq!(stats.discarded_early, u64::from(id) - 1, "{stats:?}");
    assert_eq!(sub.drain_now(), [], "no Will while the device is alive");

    // The broker still holds this very session: a forwarded publish gets through.
    id += 1;
    dev.send_ok(&wire::publish(
        "alive/slow-ka",
        1,
        id,
        b"still here",
        Version::V311,
    ))
    .await;
    assert_eq!(raw_mqtt::ack(&dev.packet().await), (id, 0));
    assert_eq!(sub.next().await, Msg::new("alive/slow-ka", "still here"));

    // Now the device dies without DISCONNECT: the Will must fire (the test can fail).
    drop(dev);
    assert_eq!(sub.next().await, Msg::new("will/slow-ka", "gone"));
}

/// Publish 2 defines alias 1 and is discarded, so the broker never learns it; publish 3 uses
/// the alias alone and is in rhythm: the gateway must send the full topic.
#[tokio::test]
async fn alias_defined_by_a_discarded_publish_is_re_expanded_for_the_broker() {
    let (broker, gw) = start("").await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["tele/#", "mark/#"]).await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        dev.connect(&wire::connect("meter-alias", 30, Version::V5))
            .await,
        0
    );

    let t0 = tokio::time::Instant::now();
    dev.send_ok(&wire::publish("tele/arm", 1, 1, b"arm", Version::V5))
        .await;
    dev.send_ok(&raw_mqtt::publish_with_alias(
        "tele/aliased",
        1,
        2,
        1,
        b"early",
    ))
    .await;
    tokio::time::sleep_until(t0 + T).await;
    dev.send_ok(&raw_mqtt::publish_with_alias("", 1, 3, 1, b"via alias"))
        .await;
    tokio::time::sleep_until(t0 + T * 2).await;
    // The broker knows alias 1 now: this one goes as it is.
    dev.send_ok(&raw_mqtt::publish_with_alias("", 1, 4, 1, b"again"))
        .await;
    dev.send_ok(&wire::publish("mark/alias", 1, 5, b"end", Version::V5))
        .await;

    for id in 1..=5 {
        let p = dev.packet().await;
        assert_eq!(
            raw_mqtt::disconnect_reason(&p),
            None,
            "disconnected: {p:02x?}"
        );
        assert_eq!(raw_mqtt::ack(&p), (id, 0), "{p:02x?}");
    }
    assert_eq!(
        sub.until("mark/alias").await,
        [
            Msg::new("tele/arm", "arm"),
            Msg::new("tele/aliased", "via alias"),
            Msg::new("tele/aliased", "again"),
            Msg::new("mark/alias", "end"),
        ]
    );
    let stats = gw.gw().policy().stats().snapshot();
    assert_eq!(
        (stats.discarded_early, stats.forwarded),
        (1, 4),
        "{stats:?}"
    );
    dev.ping().await;
}

/// Forwarded and discarded QoS 1 publishes interleaved, back to back: the broker's PUBACKs come
/// a round trip later than the gateway's own, yet the device gets them all in its order.
#[tokio::test]
async fn local_acks_never_overtake_broker_acks() {
    let (broker, gw) = start("").await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["tele/#", "free/#"]).await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        dev.connect(&wire::connect("slow-order", 30, Version::V311))
            .await,
        0
    );

    // Odd ids on the rhythm topic (1 arms and is forwarded, the others are early), even ids
    // elsewhere (forwarded). One write, so the gateway reads them as one burst.
    let mut burst = Vec::new();
    for id in 1..=20u16 {
        let topic = if id % 2 == 1 { "tele/x" } else { "free/x" };
        burst.extend(wire::publish(
            topic,
            1,
            id,
            &id.to_be_bytes(),
            Version::V311,
        ));
    }
    dev.send_ok(&burst).await;
    let mut order = Vec::new();
    while order.len() < 20 {
        match dev.recv().await {
            Recv::Packet(p) => order.push(raw_mqtt::ack(&p).0),
            Recv::Ended(e) => panic!("connection ended: {e:?}"),
        }
    }
    assert_eq!(order, (1..=20).collect::<Vec<u16>>());
    let stats = gw.gw().policy().stats().snapshot();
    assert_eq!(
        (stats.forwarded, stats.discarded_early),
        (11, 9),
        "{stats:?}"
    );
    // And the platform got exactly the forwarded ones, in order.
    let mut expected = vec![1u16];
    expected.extend((2..=20).step_by(2));
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let m = sub.next().await;
        got.push(u16::from_be_bytes([m.payload[0], m.payload[1]]));
    }
    assert_eq!(got, expected);
}

/// DUP=1 on a packet id still awaiting its ack is the same message again: forwarded like the
/// original, not a rhythm sample, not a strike.
#[tokio::test]
async fn retransmission_of_a_forwarded_publish_is_not_a_new_sample() {
    let (broker, gw) = start("").await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["tele/#", "mark/#"]).await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        dev.connect(&wire::connect("slow-dup", 30, Version::V311))
            .await,
        0
    );
    let first = wire::publish("tele/dup", 1, 1, b"once", Version::V311);
    let mut again = first.clone();
    again[0] |= 0x08; // DUP
                      // One write: the retransmission arrives before the broker's PUBACK. The original's ack
                      // answers it; it is neither judged nor forwarded a second time.
    dev.send_ok(&[first, again].concat()).await;
    assert_eq!(raw_mqtt::ack(&dev.packet().await), (1, 0));
    dev.send_ok(&wire::publish("mark/dup", 1, 2, b"end", Version::V311))
        .await;
    assert_eq!(
        raw_mqtt::ack(&dev.packet().await),
        (2, 0),
        "no second PUBACK for id 1"
    );
    assert_eq!(sub.next().await, Msg::new("tele/dup", "once"));
    assert_eq!(
        sub.next().await,
        Msg::new("mark/dup", "end"),
        "delivered once"
    );
    let s = gw.gw().policy().stats().snapshot();
    assert_eq!((s.discarded_early, s.strikes), (0, 0), "{s:?}");
}

/// DUP=1 is only a retransmission for an id the gateway has seen and not acknowledged; on a
/// fresh id it must be judged like any publish, or every device could skip the policy by
/// setting one bit.
#[tokio::test]
async fn dup_flag_on_a_fresh_packet_id_is_no_free_pass() {
    let (broker, gw) = start("").await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["tele/#", "mark/#"]).await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        dev.connect(&wire::connect("slow-cheat", 30, Version::V311))
            .await,
        0
    );
    dev.send_ok(&wire::publish("tele/cheat", 1, 1, b"arm", Version::V311))
        .await;
    assert_eq!(raw_mqtt::ack(&dev.packet().await), (1, 0));
    // Early, with DUP=1 on an id never used on this connection.
    let mut cheat = wire::publish("tele/cheat", 1, 2, b"early", Version::V311);
    cheat[0] |= 0x08;
    dev.send_ok(&cheat).await;
    assert_eq!(raw_mqtt::ack(&dev.packet().await), (2, 0));
    dev.send_ok(&wire::publish("mark/cheat", 1, 3, b"end", Version::V311))
        .await;
    assert_eq!(raw_mqtt::ack(&dev.packet().await), (3, 0));
    assert_eq!(
        sub.until("mark/cheat").await,
        [Msg::new("tele/cheat", "arm"), Msg::new("mark/cheat", "end")]
    );
    assert_eq!(gw.gw().policy().stats().snapshot().discarded_early, 1);
}
