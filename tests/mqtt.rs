//! MQTT through the gateway with real clients (rumqttc, 3.1.1 and 5) and a real mosquitto.

mod support;

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use support::{basic_config, Broker, TestGateway};
use tokio::sync::mpsc;

/// A rumqttc 3.1.1 client over `ws://gateway/mqtt`; events go to a channel.
fn ws_client(gw: &TestGateway, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    let mut opts = MqttOptions::new(id, gw.ws_url("/mqtt"), gw.addr().port());
    opts.set_transport(Transport::Ws);
    opts.set_keep_alive(Duration::from_secs(30));
    spawn_v4(opts)
}

fn spawn_v4(opts: MqttOptions) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(p)) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (client, rx)
}

async fn expect<F: FnMut(&Packet) -> bool>(
    rx: &mut mpsc::UnboundedReceiver<Packet>,
    what: &str,
    mut f: F,
) -> Packet {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(p)) if f(&p) => return p,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("client ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

#[tokio::test]
async fn publish_qos_0_1_2_and_subscribe_round_trip_over_websocket() {
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&basic_config(broker.addr)).await;

    let (sub, mut sub_rx) = ws_client(&gw, "subscriber");
    expect(&mut sub_rx, "sub CONNACK", |p| {
        matches!(p, Packet::ConnAck(_))
    })
    .await;
    sub.subscribe("plant/#", QoS::ExactlyOnce).await.unwrap();
    expect(&mut sub_rx, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await;

    let (device, mut dev_rx) = ws_client(&gw, "device-1");
    expect(&mut dev_rx, "device CONNACK", |p| {
        matches!(p, Packet::ConnAck(_))
    })
    .await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let topic = format!("plant/line{i}");
        device
            .publish(&topic, qos, false, format!("reading {i}"))
            .await
            .unwrap();
        match qos {
            QoS::AtLeastOnce => {
                expect(&mut dev_rx, "PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
            }
            QoS::ExactlyOnce => {
                expect(&mut dev_rx, "PUBCOMP", |p| matches!(p, Packet::PubComp(_))).await;
            }
            QoS::AtMostOnce => {}
        }
        let got = expect(&mut sub_rx, "the publish", |p| {
            matches!(p, Packet::Publish(_))
        })
        .await;
        let Packet::Publish(p) = got else {
            unreachable!()
        };
        assert_eq!(p.topic, topic);
        assert_eq!(&p.payload[..], format!("reading {i}").as_bytes());
    }
}

#[tokio::test]
async fn mqtt5_client_round_trip_over_websocket() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};

    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&basic_config(broker.addr)).await;
    let mut opts = Options5::new("v5-device", gw.ws_url("/mqtt"), gw.addr().port());
    opts.set_transport(Transport::Ws);
    let (client, mut eventloop) = Client5::new(opts, 10);
    client.subscribe("v5/echo", Q5::AtLeastOnce).await.unwrap();
    client
        .publish("v5/echo", Q5::AtLeastOnce, false, "hello v5")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut saw_connack = false;
    loop {
        let ev = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .expect("v5 round trip in time")
            .expect("v5 event loop healthy");
        match ev {
            Event5::Incoming(P5::ConnAck(_)) => saw_connack = true,
            Event5::Incoming(P5::Publish(p)) => {
                assert_eq!(&p.payload[..], b"hello v5");
                break;
            }
            _ => {}
        }
    }
    assert!(saw_connack);
}

#[tokio::test]
async fn raw_mqtt_listener_goes_through_the_same_gateway() {
    let broker = Broker::spawn().await;
    let config = format!(
        "{}\n[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"mqtt\"\n",
        basic_config(broker.addr)
    );
    let gw = TestGateway::start(&config).await;
    let raw = gw.addrs[1];
    let (c, mut rx) = spawn_v4(MqttOptions::new(
        "raw-device",
        raw.ip().to_string(),
        raw.port(),
    ));
    expect(&mut rx, "CONNACK", |p| matches!(p, Packet::ConnAck(_))).await;
    c.subscribe("raw/t", QoS::AtLeastOnce).await.unwrap();
    expect(&mut rx, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
    c.publish("raw/t", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    expect(&mut rx, "own publish back", |p| {
        matches!(p, Packet::Publish(_))
    })
    .await;
}
