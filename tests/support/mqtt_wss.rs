//! A rumqttc client over `wss://`: subscribe, publish QoS 1 to the same topic, get it back.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

use super::tls_client;

/// Connect to `wss://{host}:{port}/mqtt` trusting `ca_pem`, subscribe to `topic`, publish
/// `payload` there at QoS 1, and assert CONNACK, SUBACK, PUBACK and the message itself arrive.
pub async fn qos1_round_trip(host: &str, port: u16, ca_pem: &str, id: &str, topic: &str) {
    tls_client::install_default_provider();
    let url = format!("wss://{host}:{port}/mqtt");
    let mut opts = MqttOptions::new(id, url, port);
    opts.set_transport(Transport::wss(ca_pem.as_bytes().to_vec(), None, None));
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let payload = format!("{id} says hello");
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.clone())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut connack, mut suback, mut puback, mut message) = (false, false, false, None);
    while !(connack && suback && puback && message.is_some()) {
        let Ok(event) = tokio::time::timeout_at(deadline, eventloop.poll()).await else {
            let seen = format!("connack={connack} suback={suback} puback={puback}");
            panic!("MQTT round trip timed out ({seen}, message={message:?})");
        };
        let event = event.expect("MQTT event loop healthy");
        match event {
            Event::Incoming(Packet::ConnAck(c)) => {
                assert_eq!(c.code, rumqttc::ConnectReturnCode::Success);
                connack = true;
            }
            Event::Incoming(Packet::SubAck(s)) => {
                assert_eq!(
                    s.return_codes,
                    [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
                );
                suback = true;
            }
            Event::Incoming(Packet::PubAck(_)) => puback = true,
            Event::Incoming(Packet::Publish(p)) => message = Some(p),
            _ => {}
        }
    }
    let p = message.expect("message");
    assert_eq!(p.topic, topic);
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(&p.payload[..], payload.as_bytes());
    client.disconnect().await.unwrap();
}
