//! The relay: device WebSocket (or raw TCP) ↔ upstream TCP, both directions in one task.
//!
//! Memory per connection is bounded and mostly zero while idle: the upstream read buffer is
//! allocated only once the socket is readable, device frames are forwarded as the `Bytes` that
//! tungstenite parsed them into, and nothing is read from one side while the other is not
//! accepting (backpressure). Half-close is carried as far as WebSocket can carry it: a device
//! Close ends our writes to the upstream (FIN), an upstream FIN becomes Close 1000 while the
//! device's remaining frames still flow up until it answers.

use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::error::{Error, Kind, Side};
use crate::shutdown::Drain;

/// One read from the upstream becomes at most one frame of this size.
const UPSTREAM_CHUNK: usize = 16 * 1024;
/// Device frames already decoded are written upstream together, up to this many bytes...
const COALESCE_BYTES: usize = 64 * 1024;
/// ...and this many frames (one `writev`).
const COALESCE_FRAMES: usize = 16;
/// How long we wait for the device to answer our Close before dropping the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How a tunnel ended, for the log line and (later) metrics.
#[derive(Debug)]
pub struct Ending {
    /// The close code the device was sent or sent us (1006 when there was no close handshake).
    pub code: CloseCode,
    pub by: Side,
    pub reason: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

pub struct RelaySettings {
    pub ping_interval: Duration,
    pub max_missed_pongs: u32,
}

/// Why one direction stopped.
enum Stop {
    DeviceClosed(Option<CloseFrame>),
    DeviceGone,
    UpstreamEof,
    Failed(Error),
    Draining,
}

/// Bytes through a connection, counted by its relay (device → upstream is `up`).
#[derive(Debug, Default)]
pub struct Traffic {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl Traffic {
    pub fn add_up(&self, n: usize) {
        self.up.fetch_add(n as u64, Relaxed);
    }
    pub fn add_down(&self, n: usize) {
        self.down.fetch_add(n as u64, Relaxed);
    }
    pub fn up(&self) -> u64 {
        self.up.load(Relaxed)
    }
    pub fn down(&self) -> u64 {
        self.down.load(Relaxed)
    }
}

struct Counters<'a> {
    bytes: &'a Traffic,
    missed_pongs: AtomicU32,
}

/// Relay a device WebSocket to an upstream TCP connection until either ends, the drain reaches
/// this connection, or `kick` resolves (a ban that covers it: its error says why).
pub async fn relay_websocket<S>(
    ws: WebSocketStream<S>,
    upstream: TcpStream,
    settings: &RelaySettings,
    drain: &Drain,
    kick: impl std::future::Future<Output = Error>,
    traffic: &Traffic,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let counters = Counters {
        bytes: traffic,
        missed_pongs: AtomicU32::new(0),
    };
    let up = &upstream;
    let mut d2u = pin!(device_to_upstream(&mut stream, up, &counters));
    let mut d2u_done = false;

    let first = {
        let mut u2d = pin!(upstream_to_device(&mut sink, up, &counters, settings));
        let mut turn = pin!(drain.my_turn());
        let mut kick = pin!(kick);
        tokio::select! {
            stop = &mut d2u => { d2u_done = true; stop }
            stop = &mut u2d => stop,
            () = &mut turn => Stop::Draining,
            e = &mut kick => Stop::Failed(e),
        }
    };

    // A device that sent Close, or vanished, needs no Close from us.
    let device_can_hear = !matches!(first, Stop::DeviceClosed(_) | Stop::DeviceGone);
    let (code, by, reason, error) = match first {
        Stop::DeviceClosed(frame) => {
            let (code, reason) = frame.map_or((CloseCode::Status, String::new()), |f| {
                (f.code, f.reason.to_string())
            });
            (code, Side::Device, reason, None)
        }
        Stop::DeviceGone => (
            CloseCode::Abnormal,
            Side::Device,
            "device went away without a close".into(),
            None,
        ),
        Stop::UpstreamEof => (
            CloseCode::Normal,
            Side::Upstream,
            "upstream closed the connection".into(),
            None,
        ),
        Stop::Draining => (
            CloseCode::Away,
            Side::Internal,
            "gateway shutting down".into(),
            None,
        ),
        Stop::Failed(e) => (e.close_code(), e.side(), e.to_string(), Some(e)),
    };

    if device_can_hear {
        // Our Close: after it the device may still send what it had in flight, which still goes
        // up (an upstream FIN is only half a close), then answers with its own Close.
        let frame = CloseFrame {
            code,
            reason: truncate_reason(&reason).into(),
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(Some(frame)))).await;
        // After an error we "fail the connection" (RFC 6455 §7.1.7): Close sent, socket dropped.
        if !d2u_done && error.is_none() {
            let _ = tokio::time::timeout(CLOSE_WAIT, &mut d2u).await;
        }
    } else {
        // The device closed: tungstenite queued the Close reply; push it out.
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
    }
    // Whatever happened, the upstream hears EOF from us.
    let _ = shutdown_write(up);

    Ending {
        code,
        by,
        reason,
        bytes_up: traffic.up(),
        bytes_down: traffic.down(),
    }
}

pub(crate) fn truncate_reason(reason: &str) -> String {
    // A close frame's payload is at most 125 bytes, 2 of them the code.
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

async fn device_to_upstream<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    up: &TcpStream,
    counters: &Counters<'_>,
) -> Stop
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let mut stop = None;
        let mut total = 0;
        // Wait for one frame, then take every frame already decoded without waiting, so a burst
        // of small publishes becomes one write to the broker.
        let mut next = Some(stream.next().await);
        while let Some(item) = next.take() {
            match classify(item, counters) {
                Step::Data(b) if b.is_empty() => {}
                Step::Data(b) => {
                    total += b.len();
                    batch.push(b);
                }
                Step::Control => {}
                Step::Stop(s) => {
                    stop = Some(s);
                    break;
                }
            }
            if total < COALESCE_BYTES && batch.len() < COALESCE_FRAMES {
                next = stream.next().now_or_never();
            }
        }
        if !batch.is_empty() {
            if let Err(e) = write_all_vectored(up, &mut batch).await {
                return Stop::Failed(Error::upstream(
                    Kind::UpstreamIo,
                    format!("writing to upstream: {e}"),
                ));
            }
            counters.bytes.add_up(total);
            batch.clear();
        }
        if let Some(stop) = stop {
            if let Stop::DeviceClosed(_) = stop {
                // Half-close: the upstream sees EOF but may still answer.
                let _ = shutdown_write(up);
            }
            return stop;
        }
    }
}

enum Step {
    Data(Bytes),
    Control,
    Stop(Stop),
}

fn classify(item: Option<Result<Message, WsError>>, counters: &Counters<'_>) -> Step {
    match item {
        Some(Ok(Message::Binary(b))) => Step::Data(b),
        Some(Ok(Message::Pong(_))) => {
            counters.missed_pongs.store(0, Ordering::Relaxed);
            Step::Control
        }
        // tungstenite queues the Pong itself and sends it on the next read or write.
        Some(Ok(Message::Ping(_))) | Some(Ok(Message::Frame(_))) => Step::Control,
        Some(Ok(Message::Text(_))) => Step::Stop(Stop::Failed(text_frame())),
        Some(Ok(Message::Close(frame))) => Step::Stop(Stop::DeviceClosed(frame)),
        None => Step::Stop(Stop::DeviceGone),
        Some(Err(e)) => Step::Stop(ws_error(e)),
    }
}

fn ws_error(e: WsError) -> Stop {
    device_ws_failure(e).map_or(Stop::DeviceGone, Stop::Failed)
}

/// A text frame where only binary frames may come (every endpoint here carries bytes).
pub(crate) fn text_frame() -> Error {
    Error::device(
        Kind::Protocol,
        "text frame: this endpoint carries binary frames only",
    )
}

/// What a WebSocket error on the device side means; `None` when the device is simply gone.
/// Shared by the plain relay and the MQTT relay so both close with the same codes.
pub(crate) fn device_ws_failure(e: WsError) -> Option<Error> {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => None,
        WsError::Capacity(c) => Some(Error::device(
            Kind::TooBig,
            format!("device frame too big: {c}"),
        )),
        other => Some(Error::device(
            Kind::Protocol,
            format!("WebSocket protocol error: {other}"),
        )),
    }
}

async fn upstream_to_device<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    up: &TcpStream,
    counters: &Counters<'_>,
    settings: &RelaySettings,
) -> Stop
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = tokio::time::Instant::now() + settings.ping_interval;
    let mut ping = tokio::time::interval_at(start, settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stall = settings.ping_interval * (settings.max_missed_pongs + 1);
    loop {
        tokio::select! {
            ready = up.readable() => {
                if let Err(e) = ready {
                    return Stop::Failed(Error::upstream(Kind::UpstreamIo, e));
                }
                // Allocated only when there is something to read: an idle tunnel holds no buffer.
                let mut buf = BytesMut::with_capacity(UPSTREAM_CHUNK);
                match up.try_read_buf(&mut buf) {
                    Ok(0) => return Stop::UpstreamEof,
                    Ok(n) => {
                        match tokio::time::timeout(stall, sink.send(Message::Binary(buf.freeze()))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return ws_error(e),
                            // Blocked on a device that reads nothing: pings cannot run meanwhile.
                            Err(_) => return Stop::Failed(Error::device(Kind::Timeout, "device stopped reading")),
                        }
                        counters.bytes.add_down(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Stop::Failed(Error::upstream(Kind::UpstreamIo, format!("reading from upstream: {e}"))),
                }
            }
            _ = ping.tick() => {
                let missed = counters.missed_pongs.fetch_add(1, Ordering::Relaxed);
                if missed >= settings.max_missed_pongs {
                    return Stop::Failed(Error::device(Kind::Timeout, format!("device missed {missed} pongs")));
                }
                if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                    return ws_error(e);
                }
            }
        }
    }
}

/// `writev` all of `bufs` to the upstream, waiting for it to accept them (backpressure).
pub(crate) async fn write_all_vectored(up: &TcpStream, bufs: &mut [Bytes]) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        up.writable().await?;
        let mut slices = [IoSlice::new(&[]); COALESCE_FRAMES];
        let n = bufs.len().saturating_sub(first).min(COALESCE_FRAMES);
        for (slot, b) in slices.iter_mut().zip(&bufs[first..first + n]) {
            *slot = IoSlice::new(b);
        }
        match up.try_write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut written) => {
                while written > 0 && first < bufs.len() {
                    let len = bufs[first].len();
                    if written >= len {
                        written -= len;
                        first += 1;
                    } else {
                        let _ = bufs[first].split_to(written);
                        written = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `shutdown(SHUT_WR)` through std: tokio's `&TcpStream` has no shutdown of its own. The
/// duplicated descriptor shares the socket, so the FIN goes out on the real connection.
pub(crate) fn shutdown_write(up: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsFd;
    let fd = up.as_fd().try_clone_to_owned()?;
    let std_stream = std::net::TcpStream::from(fd);
    std_stream.shutdown(std::net::Shutdown::Write)
}

#[cfg(feature = "gateway")]
impl From<&crate::config::WebSocketSettings> for RelaySettings {
    fn from(s: &crate::config::WebSocketSettings) -> Self {
        RelaySettings {
            ping_interval: Duration::from_secs(s.ping_interval_secs),
            max_missed_pongs: s.max_missed_pongs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::truncate_reason;

    #[test]
    fn close_reasons_fit_a_close_frame_in_bytes_at_a_character_boundary() {
        // 60 euro signs are 180 bytes: cut to at most 120 (a frame's 125 minus the code and
        // margin), never inside a character.
        let euros = "€".repeat(60);
        let cut = truncate_reason(&euros);
        assert!(cut.len() <= 120, "{}", cut.len());
        assert_eq!(cut, "€".repeat(40));
        assert_eq!(truncate_reason("short"), "short");
        let mixed = format!("a{}", "é".repeat(100));
        let cut = truncate_reason(&mixed);
        assert!(cut.len() <= 120 && mixed.starts_with(&cut));
    }
}
