//! Faults under load: devices publishing QoS 1 through the gateway while it is reloaded again
//! and again, while it shuts down, and while one of its two brokers dies. What a device had
//! acknowledged must reach the platform (a subscriber on mosquitto), once; what ends must end
//! with the right code. Real mosquitto, the real gateway, hand-made MQTT clients.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis::config::Config;
use portcullis::mqtt::wire::{self, Version};
use support::policy_gw::Subscriber;
use support::raw_mqtt::{self, End, RawClient, Recv};
use support::{raw_request, Broker, TestGateway};

fn config(upstreams: &[SocketAddr]) -> String {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[routes.mqtt]
upstreams = [{}]
health_check_interval_secs = 1

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 5

# Devices here publish as fast as their acks come back: no rate limit may discard (and so
# lose, by design) any of it.
[policy.classes.default]
messages_per_sec = 1000000
message_burst = 1000000
bytes_per_sec = 1000000000
byte_burst = 1000000000
"#,
        list.join(", ")
    )
}

/// How one publishing device fared: the messages it had acknowledged, and how it ended.
struct Run {
    id: String,
    acked: Vec<u32>,
    end: Option<End>,
}

/// Publish `load/{id}` QoS 1, payload 1, 2, …, each after the previous one's PUBACK, up to
/// `count` (or until the connection ends).
async fn publisher(url: String, id: String, count: u32) -> Run {
    let mut dev = RawClient::ws(&url, Version::V311).await;
    assert_eq!(dev.connect(&wire::connect(&id, 30, Version::V311)).await, 0);
    let topic = format!("load/{id}");
    let mut acked = Vec::new();
    for n in 1..=count {
        let packet_id = (n % 60_000 + 1) as u16;
        let publish = wire::publish(
            &topic,
            1,
            packet_id,
            n.to_string().as_bytes(),
            Version::V311,
        );
        if dev.send(&publish).await.is_err() {
            return Run {
                id,
                acked,
                end: Some(End::Eof),
            };
        }
        match dev.recv().await {
            Recv::Packet(p) => {
                assert_eq!(raw_mqtt::ack(&p), (packet_id, 0), "{id}");
                acked.push(n);
            }
            Recv::Ended(e) => {
                return Run {
                    id,
                    acked,
                    end: Some(e),
                }
            }
        }
    }
    Run {
        id,
        acked,
        end: None,
    }
}

/// Everything the platform got on `load/#` up to `load/marker`, by device: the payloads.
async fn delivered(
    sub: &mut Subscriber,
    broker: SocketAddr,
) -> std::collections::BTreeMap<String, Vec<u32>> {
    // Published after every device's last PUBACK: the broker had queued all of theirs first.
    let mut marker = RawClient::tcp(broker, Version::V311).await;
    assert_eq!(
        marker
            .connect(&wire::connect("marker", 30, Version::V311))
            .await,
        0
    );
    marker
        .send_ok(&wire::publish("load/marker", 1, 1, b"end", Version::V311))
        .await;
    assert_eq!(raw_mqtt::ack(&marker.packet().await).0, 1);
    let mut by_device = std::collections::BTreeMap::<String, Vec<u32>>::new();
    for m in sub.until("load/marker").await {
        if let Some(id) = m.topic.strip_prefix("load/").filter(|id| *id != "marker") {
            let n = String::from_utf8_lossy(&m.payload)
                .parse()
                .expect("payload");
            by_device.entry(id.to_string()).or_default().push(n);
        }
    }
    by_device
}

#[tokio::test]
async fn repeated_reloads_under_load_drop_no_tunnel_and_lose_no_message() {
    let broker = Broker::spawn().await;
    let text = config(&[broker.addr]);
    let gw = TestGateway::start(&text).await;
    let mut sub = Subscriber::direct(broker.addr, "platform-r", &["load/#"]).await;
    let url = gw.ws_url("/mqtt");
    let devices: Vec<_> = (0..10)
        .map(|i| tokio::spawn(publisher(url.clone(), format!("r{i}"), 60)))
        .collect();
    // SIGHUP's work (the same `reload`), ten times while the devices publish.
    for _ in 0..10 {
        let fresh = Config::parse(&text, None).expect("config");
        gw.gw().reload(&fresh).expect("reload");
        tokio::task::yield_now().await;
    }
    let mut runs = Vec::new();
    for d in devices {
        runs.push(d.await.expect("device task"));
    }
    let got = delivered(&mut sub, broker.addr).await;
    for run in &runs {
        assert!(
            run.end.is_none(),
            "{}: its tunnel was dropped ({:?})",
            run.id,
            run.end
        );
        assert_eq!(run.acked.len(), 60, "{}", run.id);
        assert_eq!(
            got.get(&run.id),
            Some(&run.acked),
            "{}: each once, in order",
            run.id
        );
    }
}

#[tokio::test]
async fn shutdown_under_load_closes_every_device_1001_and_loses_nothing_acknowledged() {
    let broker = Broker::spawn().await;
    let mut gw = TestGateway::start(&config(&[broker.addr])).await;
    let mut sub = Subscriber::direct(broker.addr, "platform-s", &["load/#"]).await;
    let url = gw.ws_url("/mqtt");
    let devices: Vec<_> = (0..10)
        .map(|i| tokio::spawn(publisher(url.clone(), format!("s{i}"), 1_000_000)))
        .collect();
    // Let them get going: the first device's first ack is in once a subscriber message is.
    let first = sub.next().await;
    assert!(first.topic.starts_with("load/s"));
    let started = tokio::time::Instant::now();
    gw.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited within drain_timeout_secs"
    );
    let mut runs = Vec::new();
    for d in devices {
        runs.push(d.await.expect("device task"));
    }
    let mut got = delivered(&mut sub, broker.addr).await;
    // The first message, taken above, belongs back with its device.
    if let Some(id) = first.topic.strip_prefix("load/") {
        let n = String::from_utf8_lossy(&first.payload)
            .parse()
            .expect("payload");
        got.entry(id.to_string()).or_default().insert(0, n);
    }
    for run in &runs {
        assert_eq!(run.end, Some(End::WsClose(1001)), "{}", run.id);
        let arrived: BTreeSet<u32> = got.get(&run.id).into_iter().flatten().copied().collect();
        let missing: Vec<&u32> = run.acked.iter().filter(|n| !arrived.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "{}: acknowledged, never delivered: {missing:?}",
            run.id
        );
    }
}

#[tokio::test]
async fn one_of_two_brokers_dies_its_devices_move_and_the_gateway_stays_ready() {
    let mut first = Broker::spawn().await;
    let second = Broker::spawn().await;
    let gw = TestGateway::start(&config(&[first.addr, second.addr])).await;
    let url = gw.ws_url("/mqtt");
    let mut devices = Vec::new();
    for i in 0..12 {
        let id = format!("b{i}");
        let mut dev = RawClient::ws(&url, Version::V311).await;
        assert_eq!(dev.connect(&wire::connect(&id, 30, Version::V311)).await, 0);
        devices.push((id, dev));
    }
    first.stop();
    let mut moved = 0;
    for (id, dev) in &mut devices {
        dev.send_ok(&wire::pingreq()).await;
        match dev.recv().await {
            Recv::Packet(p) => assert_eq!(p, [0xd0, 0], "{id}: PINGRESP"),
            Recv::Ended(_) => {
                // Its broker is gone: a new connection lands on the other one at once (the
                // pool fails over when a connect is refused, before the health check says so).
                let mut again = RawClient::ws(&url, Version::V311).await;
                assert_eq!(
                    again.connect(&wire::connect(id, 30, Version::V311)).await,
                    0,
                    "{id}"
                );
                again.ping().await;
                *dev = again;
                moved += 1;
            }
        }
    }
    assert!(
        moved > 0,
        "consistent hashing put none of 12 devices on the first broker"
    );
    let (status, body) = raw_request(
        gw.addr(),
        "GET /readyz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
