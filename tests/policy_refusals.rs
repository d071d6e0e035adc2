//! Every way the policy and the MQTT relay refuse a device, with the exact code it sees:
//! strikes → bans, admin bans that kick, rate limits, flapping, connect floods, protocol errors.
//!
//! "The broker never saw it" is checked with a witness: a client connected straight to
//! mosquitto under the refused device's client ID. Had the gateway passed the CONNECT on,
//! mosquitto would have taken the session over and dropped the witness.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis::mqtt::wire::{self, Version};
use portcullis::policy::{Ban, BanSource, Subject};
use support::policy_gw::{self, Msg, Subscriber};
use support::raw_mqtt::{self, End, RawClient};
use support::{Broker, TestGateway};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DISCONNECT_ADMIN: [u8; 4] = [0xe0, 2, 0x98, 0];

async fn start(policy: &str) -> (Broker, TestGateway) {
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&policy_gw::config(broker.addr, policy)).await;
    (broker, gw)
}

fn ban_on(gw: &TestGateway, subject: &Subject) -> Option<Ban> {
    let bans = gw.gw().policy().bans().list(SystemTime::now());
    bans.into_iter().find(|b| &b.subject == subject)
}

/// A client straight to mosquitto holding `client_id`: proof the broker saw no other CONNECT
/// with that ID as long as it still answers a ping (checked after a grace period).
async fn witness(broker: &Broker, client_id: &str, version: Version) -> RawClient {
    let mut w = RawClient::tcp(broker.addr, version).await;
    assert_eq!(w.connect(&wire::connect(client_id, 30, version)).await, 0);
    w
}

async fn witness_undisturbed(mut w: RawClient) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.ping().await;
}

// === strikes → bans ===

const STRIKES: &str = r#"
[policy.classes.default]

[policy.classes.meter]
push_interval_secs = 60.0
tolerance_secs = 1.0
rhythm_topics = ["tele/#"]

[[policy.device_prefixes]]
prefix = "meter-"
class = "meter"

[policy.strikes]
threshold = 3
"#;

/// One arming publish (acknowledged by the broker), then three early ones: three strikes.
async fn strike_out(dev: &mut RawClient) {
    let v = dev.version;
    dev.send_ok(&wire::publish("tele/x", 1, 1, b"arm", v)).await;
    // (mosquitto answers a v5 publish nobody subscribed to with 0x10.)
    assert_eq!(raw_mqtt::ack(&dev.packet().await).0, 1);
    for id in 2..=4 {
        // The third may find the connection already closing.
        let _ = dev.send(&wire::publish("tele/x", 1, id, b"early", v)).await;
    }
}

/// Local PUBACKs for the early publishes may still arrive before the kick; nothing else.
fn only_local_pubacks(packets: &[Vec<u8>]) {
    let ids: Vec<u16> = packets.iter().map(|p| raw_mqtt::ack(p).0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(ids.iter().all(|id| (2..=4).contains(id)), "{ids:?}");
}

#[tokio::test]
async fn v311_device_struck_out_is_closed_and_its_reconnect_gets_0x05() {
    let (broker, gw) = start(STRIKES).await;
    let mut dev = RawClient::ws(&gw.ws_url("/mqtt"), Version::V311).await;
    assert_eq!(
        dev.connect(&wire::connect("meter-v3", 30, Version::V311))
            .await,
        0
    );
    strike_out(&mut dev).await;
    let (packets, end) = dev.until_end().await;
    only_local_pubacks(&packets);
    assert_eq!(
        end,
        End::WsClose(1008),
        "3.1.1 has no DISCONNECT: policy close"
    );

    let ban = ban_on(&gw, &Subject::ClientId("meter-v3".into())).expect("client ID banned");
    assert_eq!(ban.source, BanSource::Rhythm);
    let w = witness(&broker, "meter-v3", Version::V311).await;
    let mut again = RawClient::ws(&gw.ws_url("/mqtt"), Version::V311).await;
    assert_eq!(
        again
            .connect(&wire::connect("meter-v3", 30, Version::V311))
            .await,
        0x05
    );
    assert_eq!(again.until_end().await, (vec![], End::WsClose(1008)));
    witness_undisturbed(w).await;

    let s = gw.gw().policy().stats().snapshot();
    assert_eq!(
        (s.strikes, s.bans_issued, s.refused_banned),
        (3, 1, 1),
        "{s:?}"
    );
}

#[tokio::test]
async fn v5_device_struck_out_gets_disconnect_0x98_and_its_reconnect_connack_0x8a() {
    let (broker, gw) = start(STRIKES).await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        dev.connect(&wire::connect("meter-v5", 30, Version::V5))
            .await,
        0
    );
    strike_out(&mut dev).await;
    let (mut packets, end) = dev.until_end().await;
    assert_eq!(packets.pop().as_deref(), Some(&DISCONNECT_ADMIN[..]));
    only_local_pubacks(&packets);
    assert_eq!(end, End::Eof);

    assert!(ban_on(&gw, &Subject::ClientId("meter-v5".into())).is_some());
    let w = witness(&broker, "meter-v5", Version::V5).await;
    let mut again = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        again
            .connect(&wire::connect("meter-v5", 30, Version::V5))
            .await,
        0x8A
    );
    assert_eq!(again.until_end().await, (vec![], End::Eof));
    witness_undisturbed(w).await;
    let s = gw.gw().policy().stats().snapshot();
    assert_eq!((s.bans_issued, s.refused_banned), (1, 1), "{s:?}");
}

// === admin bans kick ===

#[tokio::test]
async fn admin_ban_kicks_connected_devices_and_only_them() {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

    let (_broker, gw) = start("").await;
    // A real MQTT 5 client over WebSocket...
    let mut opts = MqttOptions::new("admin-v5", gw.ws_url("/mqtt"), gw.addr().port());
    opts.set_transport(rumqttc::Transport::Ws);
    let (_client, mut eventloop) = AsyncClient::new(opts, 10);
    let (tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let (up_tx, mut up) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(rumqttc::v5::Incoming::ConnAck(_))) => {
                    let _ = up_tx.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(e);
                    return;
                }
            }
        }
    });
    policy_gw::next_matching(&mut up, "CONNACK", |_| true).await;
    // ...a raw 3.1.1 device over TCP, and a bystander.
    let mut v3 = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        v3.connect(&wire::connect("admin-v3", 30, Version::V311))
            .await,
        0
    );
    let mut bystander = RawClient::ws(&gw.ws_url("/mqtt"), Version::V5).await;
    assert_eq!(
        bystander
            .connect(&wire::connect("bystander", 30, Version::V5))
            .await,
        0
    );

    let now = SystemTime::now();
    for id in ["admin-v5", "admin-v3"] {
        gw.gw()
            .ban(Ban {
                subject: Subject::ClientId(Arc::from(id)),
                reason: "stolen credentials".into(),
                source: BanSource::admin("ops"),
                created: now,
                expires: Some(now + Duration::from_secs(3600)),
            })
            .await
            .unwrap();
    }
    let err = policy_gw::next_matching(&mut ended, "the kick", |_| true).await;
    assert!(
        matches!(
            err,
            ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code: DisconnectReasonCode::AdministrativeAction,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(v3.until_end().await, (vec![], End::Eof));
    bystander.ping().await;
    // Kicking alone is useless: the ban holds at the next CONNECT.
    let mut again = RawClient::ws(&gw.ws_url("/mqtt"), Version::V5).await;
    assert_eq!(
        again
            .connect(&wire::connect("admin-v5", 30, Version::V5))
            .await,
        0x8A
    );
}

// === rate limits ===

#[tokio::test]
async fn over_the_message_rate_gets_0x97_on_v5_an_ack_on_v311_and_is_not_forwarded() {
    let policy = r#"
[policy.classes.default]

[policy.classes.burst]
messages_per_sec = 2
message_burst = 2

[[policy.device_prefixes]]
prefix = "rate-"
class = "burst"

[policy.strikes]
threshold = 100
"#;
    let (broker, gw) = start(policy).await;
    let mut sub = Subscriber::direct(broker.addr, "platform", &["rate/#", "mark/#"]).await;
    for (id, version) in [("rate-v5", Version::V5), ("rate-v3", Version::V311)] {
        let mut dev = RawClient::tcp(gw.addrs[1], version).await;
        assert_eq!(dev.connect(&wire::connect(id, 30, version)).await, 0);
        let topic = format!("rate/{id}");
        let burst: Vec<u8> = (1..=5u16)
            .flat_map(|n| wire::publish(&topic, 1, n, format!("m{n}").as_bytes(), version))
            .collect();
        dev.send_ok(&burst).await;
        let mut acks = Vec::new();
        for _ in 0..5 {
            acks.push(raw_mqtt::ack(&dev.packet().await));
        }
        let over = if version == Version::V5 { 0x97 } else { 0 };
        assert_eq!(
            acks,
            [(1, 0), (2, 0), (3, over), (4, over), (5, over)],
            "{id}"
        );
        let device = gw.gw().policy().stats().device(id).unwrap();
        assert_eq!((device.forwarded, device.rate_limited), (2, 3), "{id}");
    }
    // A marker from another device, sent after every ack above was received.
    let mut marker = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        marker
            .connect(&wire::connect("marker", 30, Version::V311))
            .await,
        0
    );
    marker
        .send_ok(&wire::publish("mark/rate", 1, 1, b"end", Version::V311))
        .await;
    assert_eq!(raw_mqtt::ack(&marker.packet().await), (1, 0));
    assert_eq!(
        sub.until("mark/rate").await,
        [
            Msg::new("rate/rate-v5", "m1"),
            Msg::new("rate/rate-v5", "m2"),
            Msg::new("rate/rate-v3", "m1"),
            Msg::new("rate/rate-v3", "m2"),
            Msg::new("mark/rate", "end"),
        ]
    );
    let s = gw.gw().policy().stats().snapshot();
    assert_eq!(
        (s.rate_limited, s.strikes, s.bans_issued),
        (6, 6, 0),
        "{s:?}"
    );
}

// === flapping ===

/// One connect attempt; a successful one ends with DISCONNECT. Returns the CONNACK code.
async fn attempt(gw: &TestGateway, id: &str, version: Version) -> u8 {
    let mut dev = match version {
        Version::V5 => RawClient::ws(&gw.ws_url("/mqtt"), version).await,
        Version::V311 => RawClient::tcp(gw.addrs[1], version).await,
    };
    let code = dev.connect(&wire::connect(id, 30, version)).await;
    if code == 0 {
        dev.send_ok(&wire::disconnect(version)).await;
        dev.until_end().await;
    } else {
        let (packets, end) = dev.until_end().await;
        assert!(packets.is_empty(), "{packets:02x?}");
        let refused = if version == Version::V5 {
            End::WsClose(1008)
        } else {
            End::Eof
        };
        assert_eq!(end, refused);
    }
    code
}

#[tokio::test]
async fn flapping_client_is_refused_then_banned() {
    let policy = r#"
[policy.classes.default]
max_connections = 10

[policy.connects]
per_client_per_minute = 3

[policy.strikes]
threshold = 2
"#;
    let (broker, gw) = start(policy).await;
    for (id, version, codes) in [
        ("flap-v5", Version::V5, [0, 0, 0, 0x9F, 0x9F, 0x8A]),
        ("flap-v3", Version::V311, [0, 0, 0, 0x03, 0x03, 0x05]),
    ] {
        let mut got = Vec::new();
        for _ in 0..codes.len() {
            got.push(attempt(&gw, id, version).await);
        }
        assert_eq!(got, codes, "{id}");
        let ban = ban_on(&gw, &Subject::ClientId(id.into())).expect("banned");
        assert!(
            ban.reason.contains("reconnecting too fast"),
            "{}",
            ban.reason
        );
    }
    let w = witness(&broker, "flap-v5", Version::V5).await;
    assert_eq!(attempt(&gw, "flap-v5", Version::V5).await, 0x8A);
    witness_undisturbed(w).await;
    let s = gw.gw().policy().stats().snapshot();
    assert_eq!((s.refused_connect_rate, s.bans_issued), (4, 2), "{s:?}");
}

// === connect flood before any CONNECT ===

#[tokio::test]
async fn connect_flood_bans_the_ip_before_a_byte_is_read() {
    let broker = Broker::spawn().await;
    let policy = "[policy.connects]\nper_ip_per_sec = 1\nper_ip_burst = 3\n\
                  [policy.strikes]\nthreshold = 3\n";
    // Idle connections that were admitted stay open far longer than this test.
    let toml = policy_gw::config_with(broker.addr, "handshake_timeout_secs = 60", policy);
    let gw = TestGateway::start(&toml).await;
    let stats = || gw.gw().policy().stats().snapshot();

    let mut flood = Vec::new();
    while stats().bans_issued == 0 {
        assert!(flood.len() < 50, "no ban after {} connections", flood.len());
        flood.push(TcpStream::connect(gw.addr()).await.unwrap());
        // Wait until the gateway has judged it (admitted, or refused at accept).
        let n = flood.len();
        assert_eventually!({
            let s = stats();
            gw.gw().open_connections() + (s.accept_rate_limited + s.accept_banned) as usize == n
        });
    }
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let ban = ban_on(&gw, &Subject::Ip(localhost)).expect("IP banned");
    assert!(ban.reason.contains("connect flood"), "{}", ban.reason);
    assert_eq!(stats().accept_banned, 0);

    // Now anything from that address is closed at accept: not one byte, not even HTTP.
    let mut plain = TcpStream::connect(gw.addr()).await.unwrap();
    assert!(support::ws::read_until_closed(&mut plain).await.is_empty());
    let mut upgrade = TcpStream::connect(gw.addr()).await.unwrap();
    let request = "GET /mqtt HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Protocol: mqtt\r\n\r\n";
    let _ = upgrade.write_all(request.as_bytes()).await; // may already be reset
    assert!(support::ws::read_until_closed(&mut upgrade)
        .await
        .is_empty());
    assert_eventually!(stats().accept_banned == 2);
}

// === protocol errors ===

/// Expect exactly `packets` and then `end`.
async fn expect_end(dev: &mut RawClient, packets: &[&[u8]], end: End) {
    let (got, how) = dev.until_end().await;
    let got: Vec<&[u8]> = got.iter().map(Vec::as_slice).collect();
    assert_eq!((got.as_slice(), how), (packets, end));
}

#[tokio::test]
async fn publish_before_connect_and_no_connect_at_all_are_closed() {
    let (_broker, gw) = start("[mqtt]\nconnect_timeout_secs = 1").await;
    let publish = wire::publish("t", 0, 0, b"x", Version::V311);
    let mut tcp = RawClient::tcp(gw.addrs[1], Version::V311).await;
    tcp.send_ok(&publish).await;
    expect_end(&mut tcp, &[], End::Eof).await;
    let mut ws = RawClient::ws(&gw.ws_url("/mqtt"), Version::V311).await;
    ws.send_ok(&publish).await;
    expect_end(&mut ws, &[], End::WsClose(1002)).await;

    // Silent after connecting: closed at the connect timeout (1 s, not the 10 s default).
    let mut tcp = RawClient::tcp(gw.addrs[1], Version::V311).await;
    let mut ws = RawClient::ws(&gw.ws_url("/mqtt"), Version::V311).await;
    expect_end(&mut tcp, &[], End::Eof).await;
    expect_end(&mut ws, &[], End::WsClose(1008)).await;
}

#[tokio::test]
async fn malformed_packet_after_v5_connect_gets_disconnect_0x81() {
    let (_broker, gw) = start("").await;
    // QoS 3 does not exist.
    let qos3 = [0x36, 6, 0, 1, b't', 0, 1, 0];
    let mut tcp = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        tcp.connect(&wire::connect("bad-tcp", 30, Version::V5))
            .await,
        0
    );
    tcp.send_ok(&qos3).await;
    expect_end(&mut tcp, &[&[0xe0, 2, 0x81, 0]], End::Eof).await;
    let mut ws = RawClient::ws(&gw.ws_url("/mqtt"), Version::V5).await;
    assert_eq!(
        ws.connect(&wire::connect("bad-ws", 30, Version::V5)).await,
        0
    );
    ws.send_ok(&qos3).await;
    expect_end(&mut ws, &[&[0xe0, 2, 0x81, 0]], End::WsClose(1002)).await;
    // 3.1.1 has no DISCONNECT from the server: just the close.
    let mut v3 = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        v3.connect(&wire::connect("bad-v3", 30, Version::V311))
            .await,
        0
    );
    v3.send_ok(&qos3).await;
    expect_end(&mut v3, &[], End::Eof).await;
}

#[tokio::test]
async fn packet_over_max_packet_size_gets_disconnect_0x95_or_a_close() {
    let (_broker, gw) = start("[mqtt]\nmax_packet_size = 1024").await;
    let too_big = |v| wire::publish("big", 1, 1, &[7u8; 2000], v);
    let cases = [
        (Version::V5, true, &[&[0xe0, 2, 0x95, 0][..]][..], End::Eof),
        (
            Version::V5,
            false,
            &[&[0xe0, 2, 0x95, 0][..]][..],
            End::WsClose(1009),
        ),
        (Version::V311, true, &[][..], End::Eof),
        (Version::V311, false, &[][..], End::WsClose(1009)),
    ];
    for (i, (version, tcp, packets, end)) in cases.into_iter().enumerate() {
        let mut dev = if tcp {
            RawClient::tcp(gw.addrs[1], version).await
        } else {
            RawClient::ws(&gw.ws_url("/mqtt"), version).await
        };
        assert_eq!(
            dev.connect(&wire::connect(&format!("big-{i}"), 30, version))
                .await,
            0
        );
        // Just under the limit passes.
        dev.send_ok(&wire::publish("ok", 1, 2, &[7u8; 900], version))
            .await;
        assert_eq!(raw_mqtt::ack(&dev.packet().await).0, 2);
        dev.send_ok(&too_big(version)).await;
        expect_end(&mut dev, packets, end).await;
    }
}

#[tokio::test]
async fn websocket_text_frame_after_connect_is_closed_1002() {
    let (_broker, gw) = start("").await;
    let mut v5 = RawClient::ws(&gw.ws_url("/mqtt"), Version::V5).await;
    assert_eq!(
        v5.connect(&wire::connect("text-v5", 30, Version::V5)).await,
        0
    );
    v5.send_text("hello").await;
    expect_end(&mut v5, &[&[0xe0, 2, 0x82, 0]], End::WsClose(1002)).await;
    let mut v3 = RawClient::ws(&gw.ws_url("/mqtt"), Version::V311).await;
    assert_eq!(
        v3.connect(&wire::connect("text-v3", 30, Version::V311))
            .await,
        0
    );
    v3.send_text("hello").await;
    expect_end(&mut v3, &[], End::WsClose(1002)).await;
}

// === bans issued outside the publish path kick too ===

/// Two devices sharing one client ID: the live one keeps its session (max_connections = 1),
/// the twin flaps until the ID is banned. The ban covers the live session: it must be kicked.
#[tokio::test]
async fn flapping_ban_kicks_the_live_session_of_that_client_id() {
    // Duplicates refused (not taken over), so that the twin flaps against the live one.
    let policy = "[policy.classes.default]\non_duplicate = \"refuse\"\n\
                  [policy.connects]\nper_client_per_minute = 3\n[policy.strikes]\nthreshold = 2\n";
    let (_broker, gw) = start(policy).await;
    let mut live = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        live.connect(&wire::connect("twin", 30, Version::V5)).await,
        0
    );
    let mut codes = Vec::new();
    for _ in 0..4 {
        let mut twin = RawClient::ws(&gw.ws_url("/mqtt"), Version::V5).await;
        codes.push(twin.connect(&wire::connect("twin", 30, Version::V5)).await);
    }
    // Two over max_connections (0x97), then two over the connect rate: the second is the ban.
    assert_eq!(codes, [0x97, 0x97, 0x9F, 0x9F]);
    assert!(ban_on(&gw, &Subject::ClientId("twin".into())).is_some());
    let (packets, _) = live.until_end().await;
    assert_eq!(
        packets.last().map(Vec::as_slice),
        Some(&DISCONNECT_ADMIN[..])
    );
}

/// A connect flood bans the address; a device already connected from it is covered too.
#[tokio::test]
async fn connect_flood_ban_kicks_devices_connected_from_that_address() {
    let broker = Broker::spawn().await;
    let policy = "[policy.connects]\nper_ip_per_sec = 1\nper_ip_burst = 3\n\
                  [policy.strikes]\nthreshold = 3\n";
    let toml = policy_gw::config_with(broker.addr, "handshake_timeout_secs = 60", policy);
    let gw = TestGateway::start(&toml).await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        dev.connect(&wire::connect("innocent", 30, Version::V5))
            .await,
        0
    );
    let mut flood = Vec::new();
    while gw.gw().policy().stats().snapshot().bans_issued == 0 {
        assert!(flood.len() < 50, "no ban after {} connections", flood.len());
        flood.push(TcpStream::connect(gw.addr()).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (packets, _) = dev.until_end().await;
    assert_eq!(
        packets.last().map(Vec::as_slice),
        Some(&DISCONNECT_ADMIN[..])
    );
}
