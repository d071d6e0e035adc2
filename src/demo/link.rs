//! A simulated device's connection: one WebSocket to the gateway, MQTT 3.1.1 inside. Shared by
//! the well-behaved devices and the abusers, which speak exactly the same protocol.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::MAX_PACKET;
use crate::mqtt::wire::{self, Incoming, Version};

const V: Version = Version::V311;
const KEEP_ALIVE_SECS: u16 = 30;
/// CONNACK and every PUBACK must come within this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a link stopped carrying packets.
#[derive(Debug)]
pub enum LinkError {
    /// The gateway closed the WebSocket, with this close code and reason. On MQTT 3.1.1 that is
    /// how a device learns it was kicked: the protocol has no server DISCONNECT.
    Closed {
        code: u16,
        reason: String,
    },
    Failed(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Closed { code, reason } => write!(f, "the gateway closed ({code} {reason})"),
            LinkError::Failed(e) => f.write_str(e),
        }
    }
}

impl From<LinkError> for String {
    fn from(e: LinkError) -> String {
        e.to_string()
    }
}

/// MQTT packets over a client WebSocket. A packet may span frames, or a frame hold several:
/// the gateway does not promise one packet per frame, so bytes are buffered and delimited.
pub struct Link {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
}

impl Link {
    /// Open a WebSocket on `path` and CONNECT as `client_id`. Returns the CONNACK's code (0 is
    /// accepted); after a refusal the gateway closes, so the link is only good for dropping.
    pub async fn connect(
        gateway: SocketAddr,
        path: &str,
        client_id: &str,
    ) -> Result<(Link, u8), String> {
        let mut link = Link::open(gateway, path).await?;
        link.send(wire::connect(client_id, KEEP_ALIVE_SECS, V))
            .await?;
        let connack = link.recv().await?;
        match wire::parse(&connack, V) {
            Ok(Incoming::ConnAck { code }) => Ok((link, code)),
            other => Err(format!("expected a CONNACK, got {other:?}")),
        }
    }

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

    /// Publish one QoS 1 reading and wait for its PUBACK, whoever sends it: the broker, or the
    /// gateway when it discarded the reading (on MQTT 3.1.1 the two look the same).
    pub async fn publish(
        &mut self,
        topic: &str,
        packet_id: u16,
        payload: &str,
    ) -> Result<(), LinkError> {
        self.send(wire::publish(topic, 1, packet_id, payload.as_bytes(), V))
            .await?;
        // Nothing but this PUBACK is expected on a publish-only session; skip anything else.
        loop {
            let packet = self.recv().await?;
            if wire::parse(&packet, V) == Ok(Incoming::PubAck { packet_id }) {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, packet: Vec<u8>) -> Result<(), LinkError> {
        self.ws
            .send(Message::Binary(packet.into()))
            .await
            .map_err(|e| LinkError::Failed(format!("send failed: {e}")))
    }

    /// The next MQTT packet from the broker, within the reply timeout.
    async fn recv(&mut self) -> Result<BytesMut, LinkError> {
        tokio::time::timeout(REPLY_TIMEOUT, self.next_packet())
            .await
            .map_err(|_| {
                LinkError::Failed(format!("no reply from the broker within {REPLY_TIMEOUT:?}"))
            })?
    }

    /// The next MQTT packet, however long it takes. Cancel-safe: a partial packet stays
    /// buffered, so this can wait in a `select!` next to a timer.
    pub async fn next_packet(&mut self) -> Result<BytesMut, LinkError> {
        loop {
            let len = wire::packet_len(&self.buf, MAX_PACKET)
                .map_err(|e| LinkError::Failed(e.to_string()))?;
            if let Some(n) = len {
                return Ok(self.buf.split_to(n));
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(bytes))) => self.buf.extend_from_slice(&bytes),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or_default();
                    return Err(LinkError::Closed { code, reason });
                }
                None => return Err(LinkError::Failed("the gateway went away".into())),
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(LinkError::Failed(format!("receive failed: {e}"))),
            }
        }
    }

    /// MQTT DISCONNECT, then a WebSocket close. Best effort: the device is leaving anyway.
    pub async fn close(mut self) {
        let _ = self.send(wire::disconnect(V)).await;
        let _ = self.ws.close(None).await;
        // Wait (briefly) for the gateway to end the connection: by then it has released this
        // client ID's connection slot, so a reconnect right after is not "one too many".
        let ended = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
    }
}
