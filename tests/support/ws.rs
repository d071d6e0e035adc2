//! WebSocket clients over any byte stream (plain TCP, TLS, after a PROXY header), and the
//! one assertion a refused connection needs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A gateway config: one listener (`listener` holds its extra TOML lines) and routes to
/// `(name, upstream)`.
pub fn config(listener: &str, routes: &[(&str, SocketAddr)]) -> String {
    let mut text = format!("[[listener]]\nbind = \"127.0.0.1:0\"\n{listener}\n");
    for (name, upstream) in routes {
        let _ = write!(text, "\n[routes.{name}]\nupstreams = [\"{upstream}\"]\n");
    }
    text.push_str("\n[shutdown]\ndrain_window_secs = 1\ndrain_timeout_secs = 5\n");
    text
}

/// A TOML string for a path (tempdir paths are plain ASCII, so Debug quoting is TOML quoting).
pub fn toml_path(p: &std::path::Path) -> String {
    format!("{:?}", p.to_str().expect("UTF-8 path"))
}

/// Upgrade `stream` to a WebSocket at `url` (only its host and path are sent), with extra
/// request headers; panics unless the answer is 101.
pub async fn upgrade<S>(stream: S, url: &str, headers: &[(&str, &str)]) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = url.into_client_request().expect("client request");
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = HeaderValue::from_str(value).expect("header value");
        request.headers_mut().append(name, value);
    }
    let handshake = tokio_tungstenite::client_async(request, stream);
    let (ws, response) = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("upgrade answered in time")
        .unwrap_or_else(|e| panic!("upgrade to {url} failed: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// Send `payload` as one binary frame and expect exactly it back (in one or more frames).
pub async fn assert_echo<S>(ws: &mut WebSocketStream<S>, payload: &[u8])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::binary(payload.to_vec()))
        .await
        .expect("send binary frame");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < payload.len() {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("echo in time")
            .expect("tunnel still open")
            .expect("valid frame");
        match msg {
            Message::Binary(b) => got.extend_from_slice(&b),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected binary echo, got {other:?}"),
        }
    }
    assert_eq!(got, payload);
}

/// Read until the peer closes (EOF or reset) and return what arrived before; panics if the
/// connection is still open after 10 s (so configs using this set a longer handshake timeout:
/// the close must be a refusal, not a timeout).
pub async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection still open after 10 s; got {got:?}"));
        match read {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("unexpected read error: {e}"),
        }
    }
}

/// A raw `/tunnel/echo` stream through the gateway at `addr` (its `url`) that says, through
/// X-Forwarded-For, it comes from `xff` (the test trusts 127.0.0.1 as a proxy); echo checked.
pub async fn tunnel_from(
    addr: SocketAddr,
    url: &str,
    xff: &str,
) -> WebSocketStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("gateway reachable");
    let mut ws = upgrade(tcp, url, &[("x-forwarded-for", xff)]).await;
    assert_echo(&mut ws, b"before the ban").await;
    ws
}

/// The next thing the gateway sends: its Close code (within 5 s).
pub async fn close_code<S>(ws: &mut WebSocketStream<S>) -> u16
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(c))))) => return u16::from(c.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a Close from the gateway, got {other:?}"),
        }
    }
}
