//! One probe WebSocket to `/probe`: open it (reading the gateway's hello), and the exchanges the
//! checks make on it. Every wait has a deadline; a broken path is an `Err` with words.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::agent::dial::{
    Connector, DialError, Failure, GatewayStream, Step, Trace, UpgradeResponse,
};
use crate::agent::target::Target;
use crate::probe::Hello;

/// How one silent session fared.
#[derive(Debug)]
pub enum Silence {
    Survived,
    Cut(String),
    /// It never opened (the gateway's own caps, a dial failure): says nothing about idling.
    NotOpened(String),
}

pub struct Session {
    ws: WebSocketStream<GatewayStream>,
    pub hello: Hello,
    /// Every request header the upgrade carried, to compare with what the gateway saw.
    pub sent_headers: HeaderMap,
}

impl Session {
    pub async fn open(
        connector: &Connector,
        target: &Target,
        trace: &mut Trace,
        timeout: Duration,
    ) -> Result<(Session, UpgradeResponse), DialError> {
        let stream = connector.open(target, trace).await?;
        let extra = [(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(crate::probe::SUBPROTOCOL),
        )];
        // Large enough for whatever the gateway echoes (its cap is at most 16 MiB).
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .max_frame_size(Some(16 << 20))
            .max_message_size(Some(16 << 20));
        let (mut ws, response) = connector
            .upgrade(stream, target, trace, &extra, config)
            .await?;
        let hello = match tokio::time::timeout(timeout, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Hello>(t.as_str()).ok(),
            _ => None,
        };
        let Some(hello) = hello else {
            return Err(DialError {
                step: Step::Upgrade,
                failure: Failure::Protocol,
                message: "upgraded, but the gateway's hello never came: is this a portcullis gateway's /probe?".into(),
                gateway_answer: None,
            });
        };
        let mut sent_headers = connector.device_headers(target)?;
        for name in [
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-protocol",
        ] {
            sent_headers.insert(HeaderName::from_static(name), HeaderValue::from_static("*"));
        }
        Ok((
            Session {
                ws,
                hello,
                sent_headers,
            },
            response,
        ))
    }

    pub async fn echo_text(&mut self, text: &str, timeout: Duration) -> Result<(), String> {
        self.send(Message::text(text)).await?;
        match self.next_data(timeout).await? {
            Message::Text(t) if t.as_str() == text => Ok(()),
            Message::Binary(_) => Err("a text frame came back as binary".into()),
            _ => Err("a text frame came back changed".into()),
        }
    }

    pub async fn ping(&mut self, timeout: Duration) -> Result<(), String> {
        let payload = Bytes::from_static(b"portcullis-probe");
        self.send(Message::Ping(payload.clone())).await?;
        let pong = |m: &Message| matches!(m, Message::Pong(p) if *p == payload);
        self.next_matching(timeout, pong).await.map(|_| ())
    }

    /// `n` (at least 1) one-byte echoes: (median, max) round trip in µs.
    pub async fn latency(&mut self, n: usize, timeout: Duration) -> Result<(u128, u128), String> {
        let mut rtts = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            let started = Instant::now();
            self.echo_binary(1, timeout).await?;
            rtts.push(started.elapsed().as_micros());
        }
        rtts.sort_unstable();
        Ok((rtts[rtts.len() / 2], rtts[rtts.len() - 1]))
    }

    pub async fn echo_binary(&mut self, size: usize, timeout: Duration) -> Result<(), String> {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        self.send(Message::binary(payload)).await?;
        // Large messages need time on slow paths: a second per MiB on top of the deadline.
        let timeout = timeout + Duration::from_secs((size >> 20) as u64);
        match self.next_data(timeout).await? {
            Message::Binary(b) if b.as_ref() == expected.as_slice() => Ok(()),
            Message::Binary(b) => Err(format!("came back as {} different bytes", b.len())),
            _ => Err("a binary frame came back as text".into()),
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// Open a session, stay silent for `silence`, then echo one byte: does the path keep a
    /// silent WebSocket that long?
    pub async fn survives_silence(
        connector: &Connector,
        target: &Target,
        silence: Duration,
        timeout: Duration,
    ) -> Silence {
        let mut trace = Trace::default();
        let mut session = match Session::open(connector, target, &mut trace, timeout).await {
            Ok((s, _)) => s,
            Err(e) => return Silence::NotOpened(e.to_string()),
        };
        // Watch the connection while silent, so a cut is seen when it happens. A hop's own
        // ping (and our pong to it) is not the device talking: it does not end the silence.
        let deadline = tokio::time::Instant::now() + silence;
        loop {
            let cut = match tokio::time::timeout_at(deadline, session.ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(Message::Close(c)))) => closed(c),
                Ok(Some(Ok(_))) => "a message arrived while silent".into(),
                Ok(Some(Err(e))) => format!("connection broken: {e}"),
                Ok(None) => "TCP closed, no Close frame".into(),
            };
            return Silence::Cut(cut);
        }
        match session.echo_binary(1, timeout).await {
            Ok(()) => {
                session.close().await;
                Silence::Survived
            }
            Err(e) => Silence::Cut(format!("silent {} s, then: {e}", silence.as_secs())),
        }
    }

    async fn send(&mut self, m: Message) -> Result<(), String> {
        self.ws
            .send(m)
            .await
            .map_err(|e| format!("send failed: {e}"))
    }

    /// The next text or binary message (pongs skipped), within `timeout`.
    async fn next_data(&mut self, timeout: Duration) -> Result<Message, String> {
        let data = |m: &Message| matches!(m, Message::Text(_) | Message::Binary(_));
        self.next_matching(timeout, data).await
    }

    /// The next message `wanted` accepts, skipping others, within `timeout`; a close is an error.
    async fn next_matching(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Message) -> bool,
    ) -> Result<Message, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(c)))) => return Err(closed(c)),
                Ok(Some(Ok(m))) if wanted(&m) => return Ok(m),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => return Err("the connection closed".into()),
                Err(_) => return Err(format!("no answer within {} s", timeout.as_secs())),
            }
        }
    }
}

/// A Close from the far end, in words.
fn closed(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(c) => format!("closed with {} {:?}", u16::from(c.code), c.reason.as_str()),
        None => "closed with an empty Close frame".into(),
    }
}
