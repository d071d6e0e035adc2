//! What the policy tests share: a gateway with both device transports in front of one broker,
//! and a platform-side subscriber connected straight to mosquitto (so what it sees is exactly
//! what the gateway let through).

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use super::raw_mqtt::WAIT;

/// Listener 0: WebSocket (`/mqtt`); listener 1: raw MQTT over TCP. `policy` is TOML appended
/// as is (`[policy...]` and `[mqtt]` tables). When it defines classes it must define `default`.
pub fn config(broker: SocketAddr, policy: &str) -> String {
    config_with(broker, "", policy)
}

/// As [`config`], with extra TOML lines for the WebSocket listener.
pub fn config_with(broker: SocketAddr, ws_listener: &str, policy: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
{ws_listener}

[[listener]]
bind = "127.0.0.1:0"
kind = "mqtt"

[routes.mqtt]
upstreams = ["{broker}"]
health_check_interval_secs = 1

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 5

{policy}
"#
    )
}

/// A message as the platform receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn new(topic: &str, payload: &str) -> Msg {
        Msg {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
        }
    }
}

/// A rumqttc 3.1.1 subscriber connected directly to mosquitto.
pub struct Subscriber {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Packet>,
}

impl Subscriber {
    /// Connected and subscribed (QoS 2) to every filter, SUBACKs received.
    pub async fn direct(broker: SocketAddr, id: &str, filters: &[&str]) -> Subscriber {
        let mut opts = MqttOptions::new(id, broker.ip().to_string(), broker.port());
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                if let Event::Incoming(p) = ev {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
            }
        });
        let mut sub = Subscriber { client, rx };
        for f in filters {
            sub.client
                .subscribe(*f, QoS::ExactlyOnce)
                .await
                .expect("subscribe");
            sub.expect(|p| matches!(p, Packet::SubAck(_)), "SUBACK")
                .await;
        }
        sub
    }

    async fn expect(&mut self, f: impl Fn(&Packet) -> bool, what: &str) -> Packet {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) if f(&p) => return p,
                Ok(Some(_)) => {}
                Ok(None) => panic!("subscriber ended while waiting for {what}"),
                Err(_) => panic!("subscriber: no {what} within {WAIT:?}"),
            }
        }
    }

    pub async fn next(&mut self) -> Msg {
        match self
            .expect(|p| matches!(p, Packet::Publish(_)), "message")
            .await
        {
            Packet::Publish(p) => Msg {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
            },
            _ => unreachable!(),
        }
    }

    /// Every message up to and including the first one on `marker`. A device publishes the
    /// marker after the messages under test, on the same connection: anything the gateway
    /// forwarded before it has reached the subscriber by then, so "not in this list" means
    /// "never forwarded", without waiting for something not to happen.
    pub async fn until(&mut self, marker: &str) -> Vec<Msg> {
        let mut got = Vec::new();
        loop {
            let m = self.next().await;
            let done = m.topic == marker;
            got.push(m);
            if done {
                return got;
            }
        }
    }

    /// Messages already delivered, without waiting.
    pub fn drain_now(&mut self) -> Vec<Msg> {
        let mut got = Vec::new();
        while let Ok(p) = self.rx.try_recv() {
            if let Packet::Publish(p) = p {
                got.push(Msg {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                });
            }
        }
        got
    }
}

/// A rumqttc 3.1.1 device over `ws://gateway/mqtt`; its incoming packets go to a channel.
pub fn ws_device(
    url: String,
    port: u16,
    id: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    let mut opts = MqttOptions::new(id, url, port);
    opts.set_transport(rumqttc::Transport::Ws);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(p) = ev {
                if tx.send(p).is_err() {
                    return;
                }
            }
        }
    });
    (client, rx)
}

/// The next item of `rx` that `f` accepts, skipping others; panics after [`WAIT`].
pub async fn next_matching<T: std::fmt::Debug>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    what: &str,
    f: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(p)) if f(&p) => return p,
            Ok(Some(_)) => {}
            Ok(None) => panic!("client ended while waiting for {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}
