//! The one relay core: a device (WebSocket or raw TCP/TLS) ↔ an upstream TCP connection, both
//! directions in one task, for the opaque tunnel and the MQTT-aware relay alike.
//!
//! The core owns what every relay needs: the read loops, backpressure (nothing is read from
//! one side while the other is not accepting), coalescing (device data already decoded goes
//! up in one `writev`; one upstream read becomes one frame), pings and missed pongs, byte
//! counters, the kick, the drain, and the close. What differs is in two rule sets, one per
//! direction ([`UpRules`], [`DownRules`]): the opaque tunnel passes bytes through
//! ([`Opaque`]), the MQTT relay frames and judges them (`forward::mqtt`).
//!
//! The two directions are separable halves ([`up_half`], [`down_half`]) that meet only through
//! the rules (the MQTT relay hands local acks from its up half to its down half) and the
//! counters, so a later change can park the upstream half while a device reconnects.
//!
//! Memory per connection is bounded and mostly zero while idle: the upstream read buffer is
//! allocated only once the socket is readable, and device frames are forwarded as the `Bytes`
//! they were decoded into. Half-close is carried as far as WebSocket can carry it: a device
//! Close ends our writes to the upstream (FIN), an upstream FIN becomes Close 1000 while the
//! device's remaining frames still flow up until it answers (opaque tunnels).

mod device;
#[cfg(feature = "gateway")]
pub mod frames;
#[cfg(feature = "gateway")]
pub mod pipe;
pub mod resumable;
#[cfg(feature = "gateway")]
mod websocket;

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

pub use device::{DeviceRx, DeviceTx, RxEvent, WsRx, WsTx};
#[cfg(feature = "gateway")]
pub use device::{RawRx, RawTx};
use resumable::ByteStream;
#[cfg(feature = "gateway")]
pub use websocket::{device_halves, FrameRx, FrameTx};

use crate::error::{Error, Kind, Side};
use crate::shutdown::Drain;

/// How much the next read asks for, on either side: small while traffic is light (a PUBACK
/// needs no 64 KiB allocation), growing while each read fills what it asked for, so a bulk
/// transfer costs one read (and one frame) per 64 KiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadSize(usize);

impl ReadSize {
    pub(crate) const MIN: usize = 2 * 1024;
    pub(crate) const MAX: usize = 64 * 1024;

    pub(crate) fn new() -> ReadSize {
        ReadSize(Self::MIN)
    }

    pub(crate) fn get(self) -> usize {
        self.0
    }

    /// After a read of `n` bytes.
    pub(crate) fn after(&mut self, n: usize) {
        self.0 = match n >= self.0 {
            true => (self.0 * 4).min(Self::MAX),
            false => n.next_power_of_two().clamp(Self::MIN, Self::MAX),
        };
    }
}
/// Device data already decoded is written upstream together, up to this many bytes...
const COALESCE_BYTES: usize = 64 * 1024;
/// ...and this many pieces (one `writev`).
const COALESCE_FRAMES: usize = 16;
/// How long we wait for the device to answer our Close before dropping the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long the last packets owed to a device (local acks, an MQTT 5 DISCONNECT) may take.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// How a relay ended, for the log line and metrics.
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

/// What the device → upstream half does with the device's bytes.
pub trait UpRules: Send {
    /// Bytes from the device: what goes on to the upstream is pushed onto `out`. An error ends
    /// the relay (after `out` is written: an MQTT DISCONNECT still reaches the broker).
    fn on_device_data(&mut self, data: Bytes, out: &mut Vec<Bytes>) -> Result<(), Error>;

    /// How often [`UpRules::tick`] runs; `None`: never.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Periodically, with how long the device has been silent and whether anything went up
    /// since the last tick: bytes to send upstream (the MQTT relay's PINGREQ), or an error.
    fn tick(&mut self, _silent: Duration, _sent_up: bool) -> Result<Option<Bytes>, Error> {
        Ok(None)
    }

    /// Whether, after the upstream closed, the device's frames in flight still go up until
    /// it answers our Close (a byte stream's half-close). Not for MQTT: a broker that closed
    /// has ended the session.
    fn half_close(&self) -> bool {
        false
    }
}

/// What the upstream → device half does with the upstream's bytes.
pub trait DownRules: Send {
    /// One read from the upstream: what goes to the device now (`None`: nothing yet).
    fn on_upstream_data(&mut self, data: BytesMut) -> Result<Option<Bytes>, Error>;

    /// What the up half queued for the device and may go now (asked when [`Run::wakeup`]
    /// is signalled).
    fn due(&mut self) -> Option<Bytes> {
        None
    }

    /// What the device is still owed when the relay ends for `why`: queued packets, and for
    /// MQTT 5 a DISCONNECT saying why.
    fn last_words(&mut self, _why: &Error) -> Vec<Bytes> {
        Vec::new()
    }
}

/// The opaque tunnel's rules: bytes pass through unchanged, both ways.
pub struct Opaque;

impl UpRules for Opaque {
    fn on_device_data(&mut self, data: Bytes, out: &mut Vec<Bytes>) -> Result<(), Error> {
        if !data.is_empty() {
            out.push(data);
        }
        Ok(())
    }
    fn half_close(&self) -> bool {
        true
    }
}

impl DownRules for Opaque {
    fn on_upstream_data(&mut self, data: BytesMut) -> Result<Option<Bytes>, Error> {
        Ok(Some(data.freeze()))
    }
}

/// What the halves share: byte counters, pong liveness, and a device's ping to answer.
pub struct Counters<'a> {
    pub bytes: &'a Traffic,
    missed_pongs: AtomicU32,
    /// The pong owed for the device's latest ping (an older one unanswered is superseded,
    /// as RFC 6455 §5.5.3 allows), and the signal that wakes the down half to send it.
    pong: std::sync::Mutex<Option<Bytes>>,
    pong_due: Notify,
}

impl<'a> Counters<'a> {
    pub fn new(bytes: &'a Traffic) -> Self {
        Counters {
            bytes,
            missed_pongs: AtomicU32::new(0),
            pong: std::sync::Mutex::new(None),
            pong_due: Notify::new(),
        }
    }

    fn owe_pong(&self, payload: Bytes) {
        *self.pong.lock().unwrap_or_else(|p| p.into_inner()) = Some(payload);
        self.pong_due.notify_one();
    }

    fn take_pong(&self) -> Option<Bytes> {
        self.pong.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A future that says why a connection must go.
pub type Kick<'a> = Pin<&'a mut (dyn Future<Output = Error> + Send + 'a)>;

/// Everything one relay runs with besides its two sides and its rules.
pub struct Run<'a> {
    pub settings: &'a RelaySettings,
    pub drain: &'a Drain,
    /// Resolves when the connection must go (a ban covering it, an admin's kick, a takeover):
    /// its error says why.
    pub kick: Kick<'a>,
    pub traffic: &'a Traffic,
    /// How the up half tells the down half that [`DownRules::due`] has something: the one
    /// hand-over between the halves (the MQTT relay's local acks).
    pub wakeup: Option<&'a Notify>,
}

/// Relay a device WebSocket to an upstream TCP connection, bytes unchanged (the opaque tunnel
/// and the agent), until either ends, the drain reaches it, or `kick` resolves.
pub async fn relay_websocket<S>(
    ws: WebSocketStream<S>,
    upstream: TcpStream,
    settings: &RelaySettings,
    drain: &Drain,
    kick: impl Future<Output = Error> + Send,
    traffic: &Traffic,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (tx, rx) = ws.split();
    relay_opaque(WsRx(rx), WsTx(tx), upstream, settings, drain, kick, traffic).await
}

/// Relay a device to an upstream TCP connection, bytes unchanged.
///
/// Not an `async fn`: its arguments are used where they were captured rather than copied
/// into locals, which keeps this future (held for as long as the tunnel lives) smaller.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn relay_opaque<'a, R: DeviceRx + 'a, T: DeviceTx + 'a>(
    mut rx: R,
    mut tx: T,
    upstream: TcpStream,
    settings: &'a RelaySettings,
    drain: &'a Drain,
    kick: impl Future<Output = Error> + Send + 'a,
    traffic: &'a Traffic,
) -> impl Future<Output = Ending> + 'a {
    async move {
        let kick = pin!(kick);
        let run = Run {
            settings,
            drain,
            kick,
            traffic,
            wakeup: None,
        };
        relay(&mut rx, &mut tx, &upstream, &mut Opaque, &mut Opaque, run).await
    }
}

/// The frame limits of a device WebSocket, from the settings its route got at the upgrade.
#[cfg(feature = "gateway")]
pub fn frame_limits(
    config: &tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
) -> frames::Limits {
    frames::Limits {
        max_frame: config.max_frame_size.unwrap_or(usize::MAX),
        max_message: config.max_message_size.unwrap_or(usize::MAX),
        require_mask: !config.accept_unmasked_frames,
        text_control: false,
    }
}

/// Relay `device` to `up` under `up_rules` and `down_rules` until one side ends; then close
/// both as the reason warrants and say how it ended.
pub async fn relay<R, T, U, D>(
    rx: &mut R,
    tx: &mut T,
    up: &TcpStream,
    up_rules: &mut U,
    down_rules: &mut D,
    run: Run<'_>,
) -> Ending
where
    R: DeviceRx,
    T: DeviceTx,
    U: UpRules,
    D: DownRules,
{
    let counters = Counters::new(run.traffic);
    let half_close = up_rules.half_close();
    let mut device_close = None;
    let why = {
        let up_half = up_half(rx, up, up_rules, &counters, &mut device_close);
        let mut up_half = pin!(up_half);
        let (why, up_done) = {
            let down = down_half(tx, up, down_rules, &counters, run.settings, run.wakeup);
            let mut down = pin!(down);
            let mut turn = pin!(run.drain.my_turn());
            let mut kick = run.kick;
            tokio::select! {
                e = &mut up_half => (e, true),
                e = &mut down => (e, false),
                () = &mut turn => (Error::new(Kind::Shutdown, Side::Internal, "gateway shutting down"), false),
                e = &mut kick => (e, false),
            }
        };
        for words in down_rules.last_words(&why) {
            if tokio::time::timeout(LAST_WORDS, tx.send(words))
                .await
                .is_err()
            {
                break;
            }
        }
        match why.kind() {
            // Nothing to say to a device that vanished.
            Kind::Gone => {}
            // The device closed: answer its Close (the agent's tungstenite flushes the reply it
            // queued; our own frames send a Close 1000).
            Kind::DeviceClosed => {
                let _ = tokio::time::timeout(CLOSE_WAIT, tx.close(CloseCode::Normal, "")).await;
            }
            kind => {
                let reason = why.to_string();
                let _ = tokio::time::timeout(CLOSE_WAIT, tx.close(why.close_code(), &reason)).await;
                // After our Close the device may still send what it had in flight: on a byte
                // stream that still goes up (an upstream FIN is only half a close) until it
                // answers. After an error we "fail the connection" (RFC 6455 §7.1.7): Close
                // sent, socket dropped.
                let clean = matches!(kind, Kind::UpstreamClosed | Kind::Shutdown);
                if clean && half_close && !up_done {
                    let _ = tokio::time::timeout(CLOSE_WAIT, &mut up_half).await;
                }
            }
        }
        why
    };
    // Whatever happened, the upstream hears EOF from us.
    let _ = shutdown_write(up);
    let (code, reason) = match (why.kind(), device_close) {
        (Kind::DeviceClosed, Some(Some((code, reason)))) => (code, reason),
        (Kind::DeviceClosed, Some(None)) => (CloseCode::Status, String::new()),
        _ => (ending_code(&why), why.to_string()),
    };
    Ending {
        code,
        by: why.side(),
        reason,
        bytes_up: run.traffic.up(),
        bytes_down: run.traffic.down(),
    }
}

/// The close code an ending reports when the device sent none of its own.
pub(crate) fn ending_code(e: &Error) -> CloseCode {
    match e.kind() {
        Kind::DeviceClosed => CloseCode::Normal,
        Kind::Gone => CloseCode::Abnormal,
        _ => e.close_code(),
    }
}

/// Device → upstream: wait for the device, take whatever else it already sent without waiting
/// (a burst of small publishes becomes one `writev`), let the rules decide what goes up.
/// Returns why it stopped; a device Close is passed on as a FIN (half-close).
pub async fn up_half<R: DeviceRx, U: UpRules>(
    rx: &mut R,
    up: &TcpStream,
    rules: &mut U,
    counters: &Counters<'_>,
    device_close: &mut Option<Option<(CloseCode, String)>>,
) -> Error {
    let mut out: Vec<Bytes> = Vec::new();
    let mut tick = rules.tick_every().map(|every| {
        let mut t = tokio::time::interval_at(Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut last_from_device = Instant::now();
    let mut sent_up = false;
    loop {
        let first = tokio::select! {
            ev = rx.recv() => ev,
            _ = tick_of(&mut tick) => {
                let extra = match rules.tick(last_from_device.elapsed(), sent_up) {
                    Ok(extra) => extra,
                    Err(e) => return e,
                };
                if let Some(b) = extra {
                    if let Err(e) = write_all_vectored(up, &mut [b]).await {
                        return upstream_write_failed(e);
                    }
                }
                sent_up = false;
                continue;
            }
        };
        let mut next = Some(first);
        let mut total = 0;
        let mut stop = None;
        while let Some(ev) = next.take() {
            match ev {
                RxEvent::Data(b) => {
                    last_from_device = Instant::now();
                    total += b.len();
                    if let Err(e) = rules.on_device_data(b, &mut out) {
                        stop = Some(e);
                        break;
                    }
                }
                RxEvent::Pong => counters.missed_pongs.store(0, Relaxed),
                RxEvent::Ping(payload) => counters.owe_pong(payload),
                RxEvent::Control => {}
                RxEvent::Text(_) => {
                    stop = Some(text_frame());
                    break;
                }
                RxEvent::Closed(frame) => {
                    *device_close = Some(frame);
                    let e = Error::new(Kind::DeviceClosed, Side::Device, "device closed");
                    stop = Some(e);
                    break;
                }
                RxEvent::Gone => {
                    let e =
                        Error::new(Kind::Gone, Side::Device, "device went away without a close");
                    stop = Some(e);
                    break;
                }
                RxEvent::Failed(e) => {
                    stop = Some(e);
                    break;
                }
            }
            if total < COALESCE_BYTES && out.len() < COALESCE_FRAMES {
                next = rx.recv().now_or_never();
            }
        }
        if !out.is_empty() {
            let n: usize = out.iter().map(Bytes::len).sum();
            if let Err(e) = write_all_vectored(up, &mut out).await {
                return upstream_write_failed(e);
            }
            counters.bytes.add_up(n);
            out.clear();
            sent_up = true;
        }
        if let Some(e) = stop {
            if e.kind() == Kind::DeviceClosed {
                // The upstream sees EOF now (whatever it still sends is not relayed: the device
                // has closed its side of the WebSocket).
                let _ = shutdown_write(up);
            }
            return e;
        }
    }
}

async fn tick_of(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn upstream_write_failed(e: io::Error) -> Error {
    Error::upstream(Kind::UpstreamIo, format!("writing to upstream: {e}"))
}

/// Upstream → device: one read becomes what the rules make of it (one frame), sent within the
/// time the missed pongs would have taken; pings on the interval; whatever the up half hands
/// over, sent when the rules say it may go.
pub async fn down_half<T: DeviceTx, D: DownRules>(
    tx: &mut T,
    up: &TcpStream,
    rules: &mut D,
    counters: &Counters<'_>,
    settings: &RelaySettings,
    wakeup: Option<&Notify>,
) -> Error {
    // A device that stops reading blocks our sends; pings cannot tell while we are blocked, so
    // the send itself gives up after as long as the missed pongs would have taken.
    let stall = settings.ping_interval * (settings.max_missed_pongs + 1);
    let start = Instant::now() + settings.ping_interval;
    let mut ping = tokio::time::interval_at(start, settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pings = tx.has_pings();
    let mut size = ReadSize::new();
    loop {
        let out = tokio::select! {
            ready = up.readable() => {
                if let Err(e) = ready {
                    return Error::upstream(Kind::UpstreamIo, e);
                }
                // Allocated only when there is something to read: an idle relay holds no buffer.
                let mut buf = BytesMut::with_capacity(size.get());
                match up.try_read_buf(&mut buf) {
                    Ok(0) => return Error::new(Kind::UpstreamClosed, Side::Upstream, "upstream closed the connection"),
                    Ok(n) => size.after(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Error::upstream(Kind::UpstreamIo, format!("reading from upstream: {e}")),
                }
                match rules.on_upstream_data(buf) {
                    Ok(out) => out,
                    Err(e) => return e,
                }
            }
            () = woken(wakeup) => rules.due(),
            () = counters.pong_due.notified() => {
                if let Some(payload) = counters.take_pong() {
                    match tokio::time::timeout(stall, tx.pong(payload)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(())) => return Error::new(Kind::Gone, Side::Device, "device went away"),
                        Err(_) => return Error::device(Kind::Timeout, "device stopped reading"),
                    }
                }
                None
            }
            _ = ping.tick(), if pings => {
                let missed = counters.missed_pongs.fetch_add(1, Relaxed);
                if missed >= settings.max_missed_pongs {
                    return Error::device(Kind::Timeout, format!("device missed {missed} pongs"));
                }
                match tokio::time::timeout(stall, tx.ping()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(())) => return Error::new(Kind::Gone, Side::Device, "device went away"),
                    Err(_) => return Error::device(Kind::Timeout, "device stopped reading"),
                }
            }
        };
        let Some(out) = out.filter(|o| !o.is_empty()) else {
            continue;
        };
        let n = out.len();
        match tokio::time::timeout(stall, tx.send(out)).await {
            Ok(Ok(())) => counters.bytes.add_down(n),
            Ok(Err(())) => return Error::new(Kind::Gone, Side::Device, "device went away"),
            Err(_) => return Error::device(Kind::Timeout, "device stopped reading"),
        }
    }
}

async fn woken(wakeup: Option<&Notify>) {
    match wakeup {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
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
        // The connection ended without a Close (tungstenite words a TCP EOF so): gone.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
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

/// `writev` all of `bufs`, waiting for the socket to accept them (backpressure), emptying each
/// as it is written: cut off at any await, `bufs` holds exactly what is still to write (a
/// resumable tunnel keeps that for its next leg).
pub(crate) async fn write_all_vectored<S: ByteStream>(
    up: &S,
    bufs: &mut [Bytes],
) -> io::Result<()> {
    let mut first = 0;
    loop {
        while bufs.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        if first == bufs.len() {
            return Ok(());
        }
        up.writable().await?;
        let mut slices = [IoSlice::new(&[]); COALESCE_FRAMES];
        let n = (bufs.len() - first).min(COALESCE_FRAMES);
        for (slot, b) in slices.iter_mut().zip(&bufs[first..first + n]) {
            *slot = IoSlice::new(b);
        }
        match up.try_write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut written) => {
                for b in &mut bufs[first..] {
                    let k = written.min(b.len());
                    let _ = b.split_to(k);
                    written -= k;
                    if written == 0 {
                        break;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// `shutdown(SHUT_WR)`: the upstream sees our FIN.
pub(crate) fn shutdown_write(up: &TcpStream) -> io::Result<()> {
    shutdown(up, std::net::Shutdown::Write)
}

/// `shutdown(2)` through std: tokio's `&TcpStream` has no shutdown of its own. The duplicated
/// descriptor shares the socket, so the FIN (or both ways) goes out on the real connection.
pub(crate) fn shutdown(tcp: &TcpStream, how: std::net::Shutdown) -> io::Result<()> {
    use std::os::fd::AsFd;
    let fd = tcp.as_fd().try_clone_to_owned()?;
    std::net::TcpStream::from(fd).shutdown(how)
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
