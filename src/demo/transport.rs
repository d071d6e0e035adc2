//! How a simulated device's bytes travel: in WebSocket frames straight to the gateway, or as a
//! plain TCP stream, the way a legacy device talks to the local agent. Only bytes: the link
//! above delimits MQTT packets, the same way over both, since neither promises a packet per read.

use std::fmt;
use std::net::SocketAddr;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::link::LinkError;

/// Where a device connects.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    /// The gateway's WebSocket listener, on this path.
    Gateway(SocketAddr, &'static str),
    /// A plain MQTT listener: the local agent's.
    Plain(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Gateway(addr, path) => write!(f, "ws://{addr}{path}"),
            Endpoint::Plain(addr) => write!(f, "mqtt://{addr}"),
        }
    }
}

pub enum Transport {
    // Boxed: a WebSocket stream is eight times a TcpStream (clippy::large_enum_variant).
    WebSocket(Box<WebSocketStream<TcpStream>>),
    Tcp(TcpStream),
}

impl Transport {
    pub async fn open(to: Endpoint) -> Result<Transport, String> {
        let (Endpoint::Gateway(addr, _) | Endpoint::Plain(addr)) = to;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot reach {to}: {e}"))?;
        match to {
            Endpoint::Plain(_) => {
                // A reading is one small write, then a wait for its PUBACK: Nagle only delays.
                let _ = tcp.set_nodelay(true);
                Ok(Transport::Tcp(tcp))
            }
            Endpoint::Gateway(_, path) => upgrade(tcp, to, path)
                .await
                .map(|ws| Transport::WebSocket(Box::new(ws))),
        }
    }

    pub async fn send(&mut self, bytes: Vec<u8>) -> Result<(), LinkError> {
        let sent = match self {
            Transport::WebSocket(ws) => ws
                .send(Message::Binary(bytes.into()))
                .await
                .map_err(|e| e.to_string()),
            Transport::Tcp(tcp) => tcp.write_all(&bytes).await.map_err(|e| e.to_string()),
        };
        sent.map_err(|e| LinkError::Failed(format!("send failed: {e}")))
    }

    /// Append the next bytes that arrive to `buf`. Cancel-safe: what was read stays in `buf`.
    pub async fn receive(&mut self, buf: &mut BytesMut) -> Result<(), LinkError> {
        let ws = match self {
            Transport::WebSocket(ws) => ws,
            Transport::Tcp(tcp) => {
                return match tcp.read_buf(buf).await {
                    Ok(0) => Err(LinkError::Failed("the connection was closed".into())),
                    Ok(_) => Ok(()),
                    Err(e) => Err(LinkError::Failed(format!("receive failed: {e}"))),
                };
            }
        };
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    buf.extend_from_slice(&bytes);
                    return Ok(());
                }
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

    /// End our side, then wait for the other end to end its own: by then the gateway has
    /// released the connection (through the agent, for a legacy device). Unbounded: the
    /// caller bounds it.
    pub async fn close(&mut self) {
        match self {
            Transport::WebSocket(ws) => {
                // The stream's own close, not `SinkExt::close` on the Box.
                let _ = ws.as_mut().close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            }
            Transport::Tcp(tcp) => {
                let _ = tcp.shutdown().await;
                let mut rest = [0; 512];
                while let Ok(1..) = tcp.read(&mut rest).await {}
            }
        }
    }
}

async fn upgrade(
    tcp: TcpStream,
    url: Endpoint,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, String> {
    let mut request = url
        .to_string()
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
    Ok(ws)
}
