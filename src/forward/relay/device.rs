//! The device side of a relay, whether its bytes come in WebSocket binary frames (`/mqtt`,
//! `/tunnel/{route}`, and the agent's side towards the gateway) or straight over TCP/TLS (the
//! raw MQTT listener). The relay core sees only these events and these sends.

use std::future::Future;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{device_ws_failure, truncate_reason};
use crate::error::Error;

pub enum RxEvent {
    Data(Bytes),
    /// A text frame: a resumable tunnel's control frame, an error anywhere else.
    Text(String),
    /// A WebSocket pong (liveness).
    Pong,
    /// A WebSocket ping whose pong is ours to send (tungstenite sends its own: `Control`).
    Ping(Bytes),
    /// A WebSocket ping or other control frame: nothing to do.
    Control,
    /// The device closed (WebSocket Close, with its code and reason if it gave them, or FIN).
    Closed(Option<(CloseCode, String)>),
    /// The connection failed under us.
    Gone,
    Failed(Error),
}

pub trait DeviceRx: Send {
    fn recv(&mut self) -> impl Future<Output = RxEvent> + Send;
}

pub trait DeviceTx: Send {
    fn send(&mut self, data: Bytes) -> impl Future<Output = Result<(), ()>> + Send;
    /// Whether this transport has WebSocket pings to keep the path alive.
    fn has_pings(&self) -> bool;
    fn ping(&mut self) -> impl Future<Output = Result<(), ()>> + Send;
    /// Answer a device's ping (transports that answer their own pings need not).
    fn pong(&mut self, _payload: Bytes) -> impl Future<Output = Result<(), ()>> + Send {
        async { Ok(()) }
    }
    /// A text frame (a resumable tunnel's control frame); transports without frames have none.
    fn send_text(&mut self, _text: String) -> impl Future<Output = Result<(), ()>> + Send {
        async { Err(()) }
    }
    /// End the transport, telling the device why where it can hear it.
    fn close(&mut self, code: CloseCode, reason: &str) -> impl Future<Output = ()> + Send;
}

// === WebSocket ===

pub struct WsRx<S>(pub SplitStream<WebSocketStream<S>>);
pub struct WsTx<S>(pub SplitSink<WebSocketStream<S>, Message>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> DeviceRx for WsRx<S> {
    async fn recv(&mut self) -> RxEvent {
        match self.0.next().await {
            Some(Ok(Message::Binary(b))) => RxEvent::Data(b),
            Some(Ok(Message::Pong(_))) => RxEvent::Pong,
            Some(Ok(Message::Ping(_) | Message::Frame(_))) => RxEvent::Control,
            Some(Ok(Message::Text(t))) => RxEvent::Text(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => {
                RxEvent::Closed(f.map(|f| (f.code, f.reason.as_str().to_owned())))
            }
            None => RxEvent::Gone,
            Some(Err(e)) => device_ws_failure(e).map_or(RxEvent::Gone, RxEvent::Failed),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> DeviceTx for WsTx<S> {
    async fn send(&mut self, data: Bytes) -> Result<(), ()> {
        self.0.send(Message::Binary(data)).await.map_err(|_| ())
    }

    fn has_pings(&self) -> bool {
        true
    }

    async fn ping(&mut self) -> Result<(), ()> {
        self.0
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(|_| ())
    }

    async fn send_text(&mut self, text: String) -> Result<(), ()> {
        self.0.send(Message::text(text)).await.map_err(|_| ())
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: truncate_reason(reason).into(),
        };
        let _ = self.0.send(Message::Close(Some(frame))).await;
        let _ = self.0.close().await;
    }
}

// === raw stream (TCP / TLS): the raw MQTT listener's devices, the gateway only ===

#[cfg(feature = "gateway")]
pub use raw::{RawRx, RawTx};

#[cfg(feature = "gateway")]
mod raw {
    use bytes::{Bytes, BytesMut};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::{DeviceRx, DeviceTx, RxEvent};

    const RAW_CHUNK: usize = 8 * 1024;

    pub struct RawRx<D>(pub ReadHalf<D>);
    pub struct RawTx<D>(pub WriteHalf<D>);

    impl<D: AsyncRead + AsyncWrite + Send> DeviceRx for RawRx<D> {
        async fn recv(&mut self) -> RxEvent {
            // Allocated per read: an idle connection holds no buffer.
            let mut buf = BytesMut::with_capacity(RAW_CHUNK);
            match self.0.read_buf(&mut buf).await {
                Ok(0) => RxEvent::Closed(None),
                Ok(_) => RxEvent::Data(buf.freeze()),
                Err(_) => RxEvent::Gone,
            }
        }
    }

    impl<D: AsyncRead + AsyncWrite + Send> DeviceTx for RawTx<D> {
        async fn send(&mut self, data: Bytes) -> Result<(), ()> {
            self.0.write_all(&data).await.map_err(|_| ())
        }

        fn has_pings(&self) -> bool {
            false
        }

        async fn ping(&mut self) -> Result<(), ()> {
            Ok(())
        }

        async fn close(&mut self, _code: CloseCode, _reason: &str) {
            let _ = self.0.shutdown().await;
        }
    }
}
