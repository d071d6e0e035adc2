//! The gateway's device WebSocket as the relay sees it: [`FrameRx`] and [`FrameTx`] over the
//! upgraded connection, speaking the frames of [`super::frames`].
//!
//! On plain TCP (TLS ended by a load balancer in front: the usual deployment) both halves
//! share the socket through readiness, as the upstream side does: no lock between them, and
//! no read buffer at all while the device is idle. Over TLS ended here, they are the two
//! halves of tokio's split, and the read buffer shrinks to [`ReadSize::MIN`] when traffic is light.

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
use super::{text_frame, truncate_reason, ReadSize};
use crate::error::{Error, Kind};
use crate::stream::{DeviceStream, MaybeTls};

/// At most a frame header and a whole control frame (14 + 125 bytes), with room.
const SMALL_LEFTOVER: usize = 256;

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
        size: ReadSize::new(),
    };
    let tx = FrameTx {
        sink,
        closed: false,
        pending: None,
    };
    (rx, tx)
}

pub struct FrameRx {
    source: Source,
    buf: BytesMut,
    reader: Reader,
    /// How much the next read asks for.
    size: ReadSize,
}

impl FrameRx {
    /// One read into `buf`; `Ok(0)` at end of stream.
    async fn read(&mut self) -> io::Result<usize> {
        match &mut self.source {
            Source::Tcp(tcp) => loop {
                tcp.readable().await?;
                // Reserved only now that there is something to read.
                self.buf.reserve(self.size.get());
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
                self.buf.reserve(self.size.get());
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
            } else if self.buf.len() <= SMALL_LEFTOVER && self.buf.capacity() > 2 * ReadSize::MIN {
                // A device that stopped inside a header or a control frame keeps only those
                // bytes, not the large read they came with.
                self.buf = BytesMut::from(&self.buf[..]);
            }
            match self.read().await {
                Ok(0) | Err(_) => return RxEvent::Gone,
                Ok(n) => self.size.after(n),
            }
        }
    }
}

fn rx_event(event: Event) -> RxEvent {
    match event {
        Event::Data(b) => RxEvent::Data(b),
        Event::Ping(p) => RxEvent::Ping(p),
        Event::Pong => RxEvent::Pong,
        Event::Text(t) => RxEvent::Text(t),
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
    /// The frame being written, kept here rather than in the write's future: a write cut off
    /// (its future dropped by a timeout or a `select!`) is finished before the next frame
    /// starts, so no frame ever begins inside another's payload.
    pending: Option<Pending>,
}

struct Pending {
    header: [u8; 10],
    header_len: usize,
    payload: Bytes,
    /// Bytes of header and payload already written.
    written: usize,
}

impl FrameTx {
    async fn frame(&mut self, opcode: Opcode, payload: Bytes) -> io::Result<()> {
        self.finish_pending().await?;
        let (header, header_len) = frames::header(opcode, payload.len());
        self.pending = Some(Pending {
            header,
            header_len,
            payload,
            written: 0,
        });
        self.finish_pending().await
    }

    /// Write the rest of the pending frame. Progress is recorded after every write, so this
    /// may be cancelled at any await and resumed by the next call.
    async fn finish_pending(&mut self) -> io::Result<()> {
        let FrameTx { sink, pending, .. } = self;
        while let Some(p) = pending {
            let mut parts = [&p.header[..p.header_len], &p.payload[..]];
            advance(&mut parts, p.written);
            if parts.iter().all(|part| part.is_empty()) {
                *pending = None;
                if let Sink::Io(w) = sink {
                    w.flush().await?;
                }
                break;
            }
            let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1])];
            let written = match sink {
                Sink::Tcp(tcp) => loop {
                    tcp.writable().await?;
                    match tcp.try_write_vectored(&slices) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        done => break done?,
                    }
                },
                Sink::Io(w) => w.write_vectored(&slices).await?,
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            p.written += written;
        }
        Ok(())
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

impl FrameTx {
    /// Give up on this WebSocket without a Close (a resumable tunnel parks when it is lost):
    /// the socket is shut both ways, so a peer that still thinks it alive learns otherwise
    /// now, not after its own pings time out.
    pub async fn abandon(&mut self) {
        self.closed = true;
        match &mut self.sink {
            Sink::Tcp(tcp) => {
                let _ = super::shutdown(tcp, std::net::Shutdown::Both);
            }
            Sink::Io(w) => {
                let _ = w.shutdown().await;
            }
        }
    }
}

impl DeviceTx for FrameTx {
    async fn send(&mut self, data: Bytes) -> Result<(), ()> {
        self.frame(Opcode::Binary, data).await.map_err(|_| ())
    }

    fn has_pings(&self) -> bool {
        true
    }

    async fn ping(&mut self) -> Result<(), ()> {
        self.frame(Opcode::Ping, Bytes::new()).await.map_err(|_| ())
    }

    async fn pong(&mut self, payload: Bytes) -> Result<(), ()> {
        self.frame(Opcode::Pong, payload).await.map_err(|_| ())
    }

    async fn send_text(&mut self, text: String) -> Result<(), ()> {
        self.frame(Opcode::Text, Bytes::from(text))
            .await
            .map_err(|_| ())
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
        let _ = self.frame(Opcode::Close, Bytes::from(payload)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame whose write is cut off (its future dropped, as a timeout or a `select!` does)
    /// is finished before the next one starts: the Close after it arrives whole, not inside
    /// its payload.
    #[tokio::test]
    async fn a_frame_cut_off_mid_write_is_finished_before_the_next() {
        let (ours, mut device) = tokio::io::duplex(1024);
        let (_r, w) = tokio::io::split(Box::pin(ours) as BoxedIo);
        let mut tx = FrameTx {
            sink: Sink::Io(w),
            closed: false,
            pending: None,
        };
        let big = Bytes::from(vec![7u8; 100_000]);
        let cut = tokio::time::timeout(Duration::from_millis(20), tx.send(big)).await;
        assert!(
            cut.is_err(),
            "the device reads nothing, so the send cannot finish"
        );
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let _ = device.read_to_end(&mut all).await;
            all
        });
        tx.close(CloseCode::Away, "bye").await;
        drop(tx);
        drop(_r);
        let all = reader.await.unwrap();
        // Binary frame: 0x82, 127, 8-byte length, then the payload.
        assert_eq!(&all[..2], &[0x82, 127]);
        assert_eq!(u64::from_be_bytes(all[2..10].try_into().unwrap()), 100_000);
        assert!(all[10..100_010].iter().all(|b| *b == 7));
        // Then the Close, whole: 0x88, length 5, code 1001, "bye".
        assert_eq!(&all[100_010..], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
    }

    use std::time::Duration;
    use tokio::io::AsyncReadExt;
}
