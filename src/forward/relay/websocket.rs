//! The gateway's device WebSocket as the relay sees it: [`FrameRx`] and [`FrameTx`] over the
//! upgraded connection, speaking the frames of [`super::frames`].
//!
//! On plain TCP (TLS ended by a load balancer in front: the usual deployment) both halves
//! share the socket through readiness, as the upstream side does: no lock between them, and
//! no read buffer at all while the device is idle. Over TLS ended here, they are the two
//! halves of tokio's split, and the read buffer shrinks to [`MIN_READ`] when traffic is light.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::device::{DeviceRx, DeviceTx, RxEvent};
use super::frames::{self, Event, FrameError, Limits, Opcode, Reader};
use super::{text_frame, truncate_reason};
use crate::error::{Error, Kind};
use crate::stream::{DeviceStream, MaybeTls};

/// Reads start this small and grow while each one fills its buffer...
const MIN_READ: usize = 2 * 1024;
/// ...up to this: a bulk transfer costs one read per 64 KiB.
const MAX_READ: usize = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}
type BoxedIo = Pin<Box<dyn Io>>;

enum Source {
    Tcp(Arc<TcpStream>),
    Io(ReadHalf<BoxedIo>),
}

enum Sink {
    Tcp(Arc<TcpStream>),
    Io(WriteHalf<BoxedIo>),
}

/// The relay's two halves of an upgraded device connection, with the bytes hyper read past
/// the upgrade request (a device may send its first frame without waiting for the 101).
pub fn device_halves(upgraded: Upgraded, limits: Limits) -> (FrameRx, FrameTx) {
    let (source, sink, early) = match upgraded.downcast::<TokioIo<DeviceStream>>() {
        Ok(parts) => {
            let early = BytesMut::from(&parts.read_buf[..]);
            match parts.io.into_inner() {
                MaybeTls::Plain(tcp) => {
                    let tcp = Arc::new(tcp);
                    (Source::Tcp(tcp.clone()), Sink::Tcp(tcp), early)
                }
                MaybeTls::Tls(tls) => {
                    let (r, w) = tokio::io::split(Box::pin(*tls) as BoxedIo);
                    (Source::Io(r), Sink::Io(w), early)
                }
            }
        }
        // Not our listener's stream (cannot happen today): any I/O will do, through split.
        Err(upgraded) => {
            let (r, w) = tokio::io::split(Box::pin(TokioIo::new(upgraded)) as BoxedIo);
            (Source::Io(r), Sink::Io(w), BytesMut::new())
        }
    };
    let rx = FrameRx {
        source,
        buf: early,
        reader: Reader::new(limits),
        chunk: MIN_READ,
    };
    let tx = FrameTx {
        sink,
        closed: false,
    };
    (rx, tx)
}

pub struct FrameRx {
    source: Source,
    buf: BytesMut,
    reader: Reader,
    /// How much the next read asks for.
    chunk: usize,
}

impl FrameRx {
    /// One read into `buf`; `Ok(0)` at end of stream.
    async fn read(&mut self) -> io::Result<usize> {
        match &mut self.source {
            Source::Tcp(tcp) => loop {
                tcp.readable().await?;
                // Reserved only now that there is something to read.
                self.buf.reserve(self.chunk);
                match tcp.try_read_buf(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.buf.is_empty() {
                            self.buf = BytesMut::new();
                        }
                    }
                    done => return done,
                }
            },
            Source::Io(r) => {
                self.buf.reserve(self.chunk);
                r.read_buf(&mut self.buf).await
            }
        }
    }
}

impl DeviceRx for FrameRx {
    async fn recv(&mut self) -> RxEvent {
        loop {
            match self.reader.next(&mut self.buf) {
                Ok(Some(event)) => return rx_event(event),
                Ok(None) => {}
                Err(e) => return RxEvent::Failed(frame_error(e)),
            }
            if self.buf.is_empty() {
                // Nothing held between reads: an idle device costs no buffer.
                self.buf = BytesMut::new();
            }
            match self.read().await {
                Ok(0) | Err(_) => return RxEvent::Gone,
                Ok(n) => {
                    self.chunk = match n >= self.chunk {
                        true => (self.chunk * 4).min(MAX_READ),
                        false => n.next_power_of_two().clamp(MIN_READ, MAX_READ),
                    };
                }
            }
        }
    }
}

fn rx_event(event: Event) -> RxEvent {
    match event {
        Event::Data(b) => RxEvent::Data(b),
        Event::Ping(p) => RxEvent::Ping(p),
        Event::Pong => RxEvent::Pong,
        Event::Close(c) => RxEvent::Closed(c.map(|(code, reason)| (CloseCode::from(code), reason))),
    }
}

fn frame_error(e: FrameError) -> Error {
    match e {
        FrameError::Text => text_frame(),
        FrameError::TooBig(n) => {
            Error::device(Kind::TooBig, format!("device frame too big: {n} bytes"))
        }
        other => Error::device(Kind::Protocol, format!("WebSocket protocol error: {other}")),
    }
}

pub struct FrameTx {
    sink: Sink,
    closed: bool,
}

impl FrameTx {
    async fn frame(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        let (header, n) = frames::header(opcode, payload.len());
        let mut parts = [&header[..n], payload];
        match &mut self.sink {
            Sink::Tcp(tcp) => {
                while !parts.iter().all(|p| p.is_empty()) {
                    tcp.writable().await?;
                    let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1])];
                    match tcp.try_write_vectored(&slices) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(written) => advance(&mut parts, written),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Sink::Io(w) => {
                while !parts.iter().all(|p| p.is_empty()) {
                    let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1])];
                    match w.write_vectored(&slices).await? {
                        0 => return Err(io::ErrorKind::WriteZero.into()),
                        written => advance(&mut parts, written),
                    }
                }
                w.flush().await
            }
        }
    }
}

/// Drop `n` written bytes from the front of the two parts.
fn advance(parts: &mut [&[u8]; 2], mut n: usize) {
    for p in parts.iter_mut() {
        let k = n.min(p.len());
        *p = &p[k..];
        n -= k;
    }
}

impl DeviceTx for FrameTx {
    async fn send(&mut self, data: Bytes) -> Result<(), ()> {
        self.frame(Opcode::Binary, &data).await.map_err(|_| ())
    }

    fn has_pings(&self) -> bool {
        true
    }

    async fn ping(&mut self) -> Result<(), ()> {
        self.frame(Opcode::Ping, &[]).await.map_err(|_| ())
    }

    async fn pong(&mut self, payload: Bytes) -> Result<(), ()> {
        self.frame(Opcode::Pong, &payload).await.map_err(|_| ())
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        // 1005, 1006 and 1015 only describe a close; on the wire they become no code at all.
        let code = u16::from(code);
        let mut payload = Vec::new();
        if !matches!(code, 1005 | 1006 | 1015) {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(truncate_reason(reason).as_bytes());
        }
        let _ = self.frame(Opcode::Close, &payload).await;
    }
}
