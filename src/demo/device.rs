//! A simulated device: one WebSocket to the gateway, MQTT 3.1.1 inside, a QoS 1 reading every
//! second. On `/mqtt` the gateway knows it carries MQTT; on `/tunnel/telemetry` it is opaque
//! bytes to the gateway, and the device speaks exactly the same MQTT inside.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::{Sensor, MAX_PACKET};
use crate::mqtt::wire::{self, Incoming, Version};

const PERIOD: Duration = Duration::from_secs(1);
/// Connect, CONNACK and every PUBACK must come within this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const V: Version = Version::V311;

/// Run until `stop`, then disconnect cleanly. Returns the readings the broker acknowledged.
///
/// `stop` is only looked at between readings: a publish in flight always gets its PUBACK
/// first, so "acknowledged" is an exact count the platform's tally can be checked against.
pub async fn run(
    sensor: &Sensor,
    gateway: SocketAddr,
    start_after: Duration,
    stop: CancellationToken,
) -> Result<u64, String> {
    tokio::select! {
        () = tokio::time::sleep(start_after) => {}
        () = stop.cancelled() => return Ok(0),
    }
    let mut link = Link::open(gateway, sensor.path).await?;
    link.send(wire::connect(sensor.device, 30, V)).await?;
    let connack = link.recv().await?;
    match wire::parse(&connack, V) {
        Ok(Incoming::ConnAck { code: 0 }) => {}
        other => return Err(format!("broker refused the connection: {other:?}")),
    }
    println!(
        "  {:<9} connected     ws://{gateway}{}",
        sensor.device, sensor.path
    );

    let topic = sensor.topic();
    let mut value = sensor.base;
    let mut acked = 0;
    let mut tick = tokio::time::interval(PERIOD);
    for packet_id in (1..=u16::MAX).cycle() {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        value = drift(value, sensor.base);
        let payload = format!("{value:.1}");
        link.send(wire::publish(&topic, 1, packet_id, payload.as_bytes(), V))
            .await?;
        // Nothing but this PUBACK is expected on a publish-only session; skip anything else.
        loop {
            let packet = link.recv().await?;
            if wire::parse(&packet, V) == Ok(Incoming::PubAck { packet_id }) {
                break;
            }
        }
        acked += 1;
    }
    link.close().await;
    Ok(acked)
}

/// A random walk that stays near `base`, so the readings look like a plant, not noise.
fn drift(value: f64, base: f64) -> f64 {
    let noise: f64 = rand::rng().random_range(-1.0..1.0);
    value + (base - value) * 0.3 + noise * base * 0.02
}

/// MQTT packets over a client WebSocket. A packet may span frames, or a frame hold several:
/// the gateway does not promise one packet per frame, so bytes are buffered and delimited.
struct Link {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
}

impl Link {
    async fn open(gateway: SocketAddr, path: &str) -> Result<Link, String> {
        let tcp = TcpStream::connect(gateway)
            .await
            .map_err(|e| format!("cannot reach the gateway at {gateway}: {e}"))?;
        let mut request = format!("ws://{gateway}{path}")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        if path == "/mqtt" {
            // MQTT over WebSocket (MQTT 3.1.1 §6) names its subprotocol; a tunnel has none.
            request.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static("mqtt"),
            );
        }
        let (ws, _response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .map_err(|e| format!("WebSocket upgrade on {path} refused: {e}"))?;
        Ok(Link {
            ws,
            buf: BytesMut::new(),
        })
    }

    async fn send(&mut self, packet: Vec<u8>) -> Result<(), String> {
        self.ws
            .send(Message::Binary(packet.into()))
            .await
            .map_err(|e| format!("send failed: {e}"))
    }

    /// The next MQTT packet from the broker, within the reply timeout.
    async fn recv(&mut self) -> Result<BytesMut, String> {
        tokio::time::timeout(REPLY_TIMEOUT, self.next_packet())
            .await
            .map_err(|_| format!("no reply from the broker within {REPLY_TIMEOUT:?}"))?
    }

    async fn next_packet(&mut self) -> Result<BytesMut, String> {
        loop {
            if let Some(n) = wire::packet_len(&self.buf, MAX_PACKET).map_err(|e| e.to_string())? {
                return Ok(self.buf.split_to(n));
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(bytes))) => self.buf.extend_from_slice(&bytes),
                Some(Ok(Message::Close(_))) | None => return Err("the gateway closed".into()),
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("receive failed: {e}")),
            }
        }
    }

    /// MQTT DISCONNECT, then a WebSocket close. Best effort: the demo is ending anyway.
    async fn close(mut self) {
        let _ = self.send(wire::disconnect(V)).await;
        let _ = self.ws.close(None).await;
    }
}
