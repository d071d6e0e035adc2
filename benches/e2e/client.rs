//! One MQTT client over either transport: plain TCP (to mosquitto, or to the agent's local
//! port), or WebSocket (client frames masked, as RFC 6455 requires, one MQTT packet per binary
//! frame as MQTT-over-WebSocket clients send).

use std::fmt;
use std::net::SocketAddr;

use bytes::BytesMut;
use futures_util::{FutureExt, SinkExt, StreamExt};
use portcullis::mqtt::wire::{self, Incoming, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use portcullis::stream::{GatewayStream, MaybeTls};

use crate::BoxError;

/// Every packet we expect is small; anything bigger is a broken stream.
const MAX_PACKET: usize = 1 << 20;
const V: Version = Version::V311;

/// The ways a device can reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// client → mosquitto TCP: the baseline.
    Direct,
    /// client → gateway `/mqtt` (WebSocket) → mosquitto TCP.
    GatewayMqtt,
    /// client → gateway `/tunnel/mqtt-raw` (WebSocket, opaque bytes: a `tcp` route) → mosquitto.
    GatewayTunnel,
    /// client → mosquitto's own WebSocket listener: another WebSocket→MQTT bridge.
    PeerMosquittoWs,
    /// client (plain MQTT over TCP) → the device agent (its own process) → one masked
    /// WebSocket per connection to the gateway's `/tunnel/mqtt-raw` → mosquitto.
    Agent,
}

impl Path {
    pub const ALL: [Path; 5] = [
        Path::Direct,
        Path::GatewayMqtt,
        Path::GatewayTunnel,
        Path::PeerMosquittoWs,
        Path::Agent,
    ];

    /// Short tag for client ids and topics.
    pub fn tag(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::GatewayMqtt => "gw-mqtt",
            Path::GatewayTunnel => "gw-tunnel",
            Path::PeerMosquittoWs => "peer-ws",
            Path::Agent => "agent",
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct (mosquitto TCP)",
            Path::GatewayMqtt => "gateway /mqtt",
            Path::GatewayTunnel => "gateway /tunnel (raw tcp)",
            Path::PeerMosquittoWs => "peer: mosquitto WebSocket",
            Path::Agent => "agent → gateway /tunnel",
        })
    }
}

/// Where each path starts.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub broker_tcp: SocketAddr,
    pub broker_ws: SocketAddr,
    pub gateway: SocketAddr,
    /// The agent's local port, where one is running.
    pub agent: Option<SocketAddr>,
    /// Where the gateway's listener ends TLS itself: the client's config for it (the gateway
    /// paths then speak `wss://`).
    pub tls: Option<&'static tokio_rustls::rustls::ClientConfig>,
}

enum Io {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<GatewayStream>>),
}

pub struct MqttConn {
    io: Io,
    /// Bytes received and not yet returned as packets (a frame or read may hold several).
    inbuf: BytesMut,
    /// TCP only: packets queued since the last flush.
    out: Vec<u8>,
}

impl MqttConn {
    /// Open the transport for `path` (TCP connect, plus the WebSocket upgrade where there is one).
    pub async fn open(path: Path, ep: &Endpoints) -> Result<MqttConn, BoxError> {
        let (addr, ws_path, subprotocol) = match path {
            Path::Direct => (ep.broker_tcp, None, false),
            Path::GatewayMqtt => (ep.gateway, Some("/mqtt"), true),
            Path::GatewayTunnel => (ep.gateway, Some("/tunnel/mqtt-raw"), false),
            Path::PeerMosquittoWs => (ep.broker_ws, Some("/mqtt"), true),
            Path::Agent => (ep.agent.ok_or("no agent is running")?, None, false),
        };
        let tcp = TcpStream::connect(addr).await?;
        // Same for every path: latency is not to include Nagle's delay.
        tcp.set_nodelay(true)?;
        let io = match ws_path {
            None => Io::Tcp(tcp),
            Some(p) => {
                let tcp = match (ep.tls, addr == ep.gateway) {
                    (Some(config), true) => {
                        let connector =
                            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config.clone()));
                        let name =
                            tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")?;
                        MaybeTls::Tls(Box::new(connector.connect(name, tcp).await?))
                    }
                    _ => MaybeTls::Plain(tcp),
                };
                let mut req = format!("ws://{addr}{p}").into_client_request()?;
                if subprotocol {
                    req.headers_mut()
                        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
                }
                let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
                Io::Ws(Box::new(ws))
            }
        };
        Ok(MqttConn {
            io,
            inbuf: BytesMut::with_capacity(4096),
            out: Vec::new(),
        })
    }

    /// `open` then MQTT CONNECT (3.1.1, clean session) and a successful CONNACK.
    pub async fn connect(
        path: Path,
        ep: &Endpoints,
        client_id: &str,
        keep_alive_secs: u16,
    ) -> Result<MqttConn, BoxError> {
        let mut c = MqttConn::open(path, ep).await?;
        c.send(wire::connect(client_id, keep_alive_secs, V)).await?;
        let packet = c.next_packet().await?;
        match wire::parse(&packet, V)? {
            Incoming::ConnAck { code: 0 } => Ok(c),
            Incoming::ConnAck { code } => Err(format!("CONNACK refused: {code}").into()),
            _ => Err(format!("{path}: expected CONNACK").into()),
        }
    }

    /// Queue one packet (one WebSocket frame); it goes out at the latest on `flush`.
    pub async fn feed(&mut self, packet: Vec<u8>) -> Result<(), BoxError> {
        match &mut self.io {
            Io::Tcp(_) => self.out.extend_from_slice(&packet),
            Io::Ws(ws) => ws.feed(Message::Binary(packet.into())).await?,
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), BoxError> {
        match &mut self.io {
            Io::Tcp(tcp) => {
                tcp.write_all(&self.out).await?;
                self.out.clear();
            }
            Io::Ws(ws) => ws.flush().await?,
        }
        Ok(())
    }

    pub async fn send(&mut self, packet: Vec<u8>) -> Result<(), BoxError> {
        self.feed(packet).await?;
        self.flush().await
    }

    /// The next whole MQTT packet, whatever framing it arrived in. Cancel-safe: bytes read
    /// stay in `inbuf`, so `try_next_packet` may give up half-way.
    pub async fn next_packet(&mut self) -> Result<BytesMut, BoxError> {
        loop {
            if let Some(n) = wire::packet_len(&self.inbuf, MAX_PACKET)? {
                return Ok(self.inbuf.split_to(n));
            }
            match &mut self.io {
                Io::Tcp(tcp) => {
                    if tcp.read_buf(&mut self.inbuf).await? == 0 {
                        return Err("connection closed".into());
                    }
                }
                Io::Ws(ws) => match ws.next().await {
                    Some(Ok(Message::Binary(b))) => self.inbuf.extend_from_slice(&b),
                    // tungstenite answers pings itself on the next read or write.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(m)) => return Err(format!("unexpected WebSocket message {m:?}").into()),
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err("WebSocket closed".into()),
                },
            }
        }
    }

    /// A packet if one is available without waiting.
    pub fn try_next_packet(&mut self) -> Option<Result<BytesMut, BoxError>> {
        self.next_packet().now_or_never()
    }

    /// Read until the peer goes away, answering WebSocket pings: what an idle device does.
    pub async fn idle(mut self) {
        while self.next_packet().await.is_ok() {}
    }

    /// MQTT DISCONNECT, then the WebSocket close handshake where there is one. Best effort.
    pub async fn close(mut self) {
        let _ = self.send(wire::disconnect(V)).await;
        match self.io {
            Io::Tcp(mut tcp) => {
                let _ = tcp.shutdown().await;
            }
            Io::Ws(mut ws) => {
                let _ = WebSocketStream::close(&mut ws, None).await;
            }
        }
    }
}
