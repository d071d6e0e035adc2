//! Hand-made MQTT clients for the policy tests: exact bytes out, exact bytes in, over raw TCP
//! (a `kind = "mqtt"` listener, or mosquitto itself) or WebSocket (`/mqtt`).
//!
//! rumqttc cannot express some cases (a v5 publish that names only a topic alias, a client that
//! never pings) and turns the reason codes these tests assert on into errors, so the tests that
//! need exact packets use this. Encoders come from `portcullis::mqtt::wire` where it has them;
//! the few it lacks (a Will, a topic alias, PUBREL) are here.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use portcullis::mqtt::wire::{self, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// How long any single expectation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
const MAX_PACKET: usize = 1 << 20;

enum Link {
    Tcp(TcpStream),
    Ws(Box<Ws>),
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// TCP FIN or reset; for WebSocket, the stream ended without a close frame.
    Eof,
    /// A WebSocket close frame with this code.
    WsClose(u16),
}

#[derive(Debug)]
pub enum Recv {
    Packet(Vec<u8>),
    Ended(End),
}

pub struct RawClient {
    link: Link,
    buf: BytesMut,
    pub version: Version,
}

impl RawClient {
    pub async fn tcp(addr: SocketAddr, version: Version) -> RawClient {
        let s = TcpStream::connect(addr).await.expect("TCP connect");
        let _ = s.set_nodelay(true);
        RawClient {
            link: Link::Tcp(s),
            buf: BytesMut::new(),
            version,
        }
    }

    /// A WebSocket client offering the `mqtt` subprotocol, as real MQTT-over-WS clients do.
    pub async fn ws(url: &str, version: Version) -> RawClient {
        Self::ws_with(url, version, None).await
    }

    /// As [`RawClient::ws`], with `Authorization: Bearer {token}`.
    pub async fn ws_with(url: &str, version: Version, token: Option<&str>) -> RawClient {
        let mut req = url.into_client_request().expect("ws request");
        req.headers_mut()
            .insert("sec-websocket-protocol", "mqtt".parse().expect("header"));
        if let Some(t) = token {
            let value = format!("Bearer {t}").parse().expect("header");
            req.headers_mut().insert("authorization", value);
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("upgrade in time")
            .expect("upgrade");
        RawClient {
            link: Link::Ws(Box::new(ws)),
            buf: BytesMut::new(),
            version,
        }
    }

    /// Write bytes (one WebSocket binary frame). Err once the peer is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.link {
            Link::Tcp(s) => s.write_all(bytes).await.map_err(|e| e.to_string()),
            Link::Ws(ws) => ws
                .send(Message::binary(bytes.to_vec()))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn send_ok(&mut self, bytes: &[u8]) {
        self.send(bytes).await.expect("send to the gateway");
    }

    pub async fn send_text(&mut self, text: &str) {
        match &mut self.link {
            Link::Ws(ws) => ws.send(Message::text(text)).await.expect("send text"),
            Link::Tcp(_) => panic!("text frames need a WebSocket"),
        }
    }

    /// The next whole packet, or how the connection ended; `None` if neither within `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Option<Recv> {
        // Cancel-safe: every await below keeps its progress in `self.buf` or the socket.
        tokio::time::timeout(within, self.recv_inner()).await.ok()
    }

    pub async fn recv(&mut self) -> Recv {
        self.recv_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("nothing from the gateway within {WAIT:?}"))
    }

    /// The next packet; panics if the connection ends first.
    pub async fn packet(&mut self) -> Vec<u8> {
        match self.recv().await {
            Recv::Packet(p) => p,
            Recv::Ended(e) => panic!("connection ended ({e:?}) while a packet was expected"),
        }
    }

    /// Every packet until the connection ends, and how it ended.
    pub async fn until_end(&mut self) -> (Vec<Vec<u8>>, End) {
        let mut got = Vec::new();
        loop {
            match self.recv().await {
                Recv::Packet(p) => got.push(p),
                Recv::Ended(e) => return (got, e),
            }
        }
    }

    /// Send `connect` and return the CONNACK's return / reason code.
    pub async fn connect(&mut self, connect: &[u8]) -> u8 {
        self.send_ok(connect).await;
        let p = self.packet().await;
        assert_eq!(p[0], 0x20, "CONNACK expected, got {p:02x?}");
        p[3]
    }

    /// A PINGREQ answered by a PINGRESP: the connection is alive end to end.
    pub async fn ping(&mut self) {
        self.send_ok(&wire::pingreq()).await;
        let p = self.packet().await;
        assert_eq!(p, [0xd0, 0], "PINGRESP expected");
    }

    async fn recv_inner(&mut self) -> Recv {
        loop {
            match wire::packet_len(&self.buf, MAX_PACKET) {
                Ok(Some(n)) => return Recv::Packet(self.buf.split_to(n).to_vec()),
                Ok(None) => {}
                Err(e) => panic!("malformed packet from the gateway: {e}"),
            }
            match &mut self.link {
                Link::Tcp(s) => {
                    self.buf.reserve(4096);
                    match s.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => return Recv::Ended(End::Eof),
                        Ok(_) => {}
                    }
                }
                Link::Ws(ws) => match ws.next().await {
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Close(f))) => {
                        return Recv::Ended(End::WsClose(f.map_or(1005, |f| u16::from(f.code))))
                    }
                    Some(Ok(Message::Text(t))) => panic!("text frame from the gateway: {t}"),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return Recv::Ended(End::Eof),
                },
            }
        }
    }
}

// === packets the wire module has no encoder for ===

/// A packet of type byte `first` around `body`, with its remaining length.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let digit = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { digit | 0x80 } else { digit });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT, clean session, with a QoS 0 Will on `will_topic`.
pub fn connect_with_will(
    client_id: &str,
    keep_alive: u16,
    version: Version,
    will_topic: &str,
    will_payload: &[u8],
) -> Vec<u8> {
    let v5 = version == Version::V5;
    let mut b = Vec::new();
    put_str(&mut b, "MQTT");
    b.push(if v5 { 5 } else { 4 });
    b.push(0x02 | 0x04); // clean start, will flag (will QoS 0, not retained)
    b.extend_from_slice(&keep_alive.to_be_bytes());
    if v5 {
        b.push(0); // CONNECT properties
    }
    put_str(&mut b, client_id);
    if v5 {
        b.push(0); // Will properties
    }
    put_str(&mut b, will_topic);
    b.extend_from_slice(&(will_payload.len() as u16).to_be_bytes());
    b.extend_from_slice(will_payload);
    packet(0x10, &b)
}

/// MQTT 5 PUBLISH carrying a Topic Alias property; `topic` may be empty to use the alias alone.
pub fn publish_with_alias(topic: &str, qos: u8, id: u16, alias: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, topic);
    if qos > 0 {
        b.extend_from_slice(&id.to_be_bytes());
    }
    b.push(3); // property length
    b.push(0x23); // Topic Alias
    b.extend_from_slice(&alias.to_be_bytes());
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &b)
}

pub fn pubrel(id: u16) -> Vec<u8> {
    let [hi, lo] = id.to_be_bytes();
    vec![0x62, 2, hi, lo]
}

// === decoding what the gateway sends ===

/// Packet type (the high nibble of the first byte): 4 PUBACK, 5 PUBREC, 7 PUBCOMP, 13 PINGRESP,
/// 14 DISCONNECT...
pub fn kind(p: &[u8]) -> u8 {
    p[0] >> 4
}

/// `(packet id, reason code)` of a PUBACK / PUBREC / PUBCOMP; an omitted v5 reason is 0x00, and
/// 3.1.1 acks have none (0x00 too).
pub fn ack(p: &[u8]) -> (u16, u8) {
    assert!(
        matches!(kind(p), 4 | 5 | 7),
        "an ack was expected, got {p:02x?}"
    );
    // Acks are short: the remaining length is one byte.
    let id = u16::from_be_bytes([p[2], p[3]]);
    (id, p.get(4).copied().unwrap_or(0))
}

/// The reason code of a v5 DISCONNECT, or `None` if `p` is not one.
pub fn disconnect_reason(p: &[u8]) -> Option<u8> {
    (kind(p) == 14).then(|| p.get(2).copied().unwrap_or(0))
}
