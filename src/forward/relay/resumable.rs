//! The relay of a resumable tunnel, one WebSocket at a time (a *leg*): the same two halves as
//! [`super::relay`], plus the [`Session`] of `forward::resume` that numbers every byte.
//!
//! Both ends run this, symmetrically: the gateway with the device's WebSocket and the upstream
//! socket, the agent with the gateway's WebSocket and the legacy device's socket. What the TCP
//! side sends is kept until the peer acknowledges it, and read only while the replay buffer
//! has room (so the bound is flow control, never a reason to drop a byte). What the peer sends
//! is counted, acknowledged now and then in a text frame, and written to the TCP side.
//!
//! A WebSocket that ends without a Close (reset, timeout, pongs missed, a peer that stopped
//! reading) ends the leg, not the tunnel: [`Leg::Dropped`] leaves the TCP side open and the
//! [`Carry`] intact for the next leg. A Close from the peer, a broken peer, an error on the
//! TCP side, a kick or a shutdown end the tunnel for good ([`Leg::Ended`]).

use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use futures_util::FutureExt;

use super::{
    ending_code, upstream_write_failed, write_all_vectored, Counters, DeviceRx, DeviceTx, Ending,
    ReadSize, Run, RxEvent, CLOSE_WAIT, COALESCE_BYTES, COALESCE_FRAMES,
};
use crate::error::{Error, Kind, Side};
use crate::forward::resume::session::{Session, SessionError};
use crate::forward::resume::Control;

/// The byte-stream side of a resumable tunnel: the upstream or the device's local connection
/// (TCP), or, for an MQTT route, the legs' end of the in-memory pipe whose other end the MQTT
/// relay reads (`super::pipe`). Readiness-based, so both halves share it without a lock.
pub trait ByteStream: Send + Sync {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    /// Reads at most `max` bytes onto the end of `buf` (no zeroed buffer first).
    fn try_read_buf(&self, buf: &mut BytesMut, max: usize) -> io::Result<usize>;
    /// Frames that arrived together go out in one write.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Our FIN: the peer's source ended.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Both ways at once: the stream is cut short.
    fn shut_both(&self) -> io::Result<()>;
}

impl ByteStream for TcpStream {
    async fn readable(&self) -> io::Result<()> {
        TcpStream::readable(self).await
    }
    async fn writable(&self) -> io::Result<()> {
        TcpStream::writable(self).await
    }
    fn try_read_buf(&self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        TcpStream::try_read_buf(self, &mut bytes::BufMut::limit(buf, max))
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        super::shutdown(self, std::net::Shutdown::Write)
    }
    fn shut_both(&self) -> io::Result<()> {
        super::shutdown(self, std::net::Shutdown::Both)
    }
}

/// What one end of a resumable tunnel carries from one leg to the next.
pub struct Carry {
    session: Mutex<Session>,
    /// Received from the peer (and counted) but not yet written to the TCP side: a leg cut
    /// off mid-write leaves the rest here, and the next leg writes it first.
    pending: Vec<Bytes>,
    /// The TCP side's reads ended (our `fin` is sent, or owed after a resume).
    read_done: bool,
    /// The peer's source ended and we passed its FIN on to the TCP side.
    write_shut: bool,
}

impl Carry {
    pub fn new(window: usize, peer_window: usize) -> Carry {
        Carry {
            session: Mutex::new(Session::new(window, peer_window)),
            pending: Vec::new(),
            read_done: false,
            write_shut: false,
        }
    }

    pub fn session(&self) -> MutexGuard<'_, Session> {
        lock(&self.session)
    }

    /// At the end of a parked tunnel: write what was received (and so acknowledged) but not
    /// yet written, within `within`, then the FIN. What cannot be written in time is lost
    /// with the tunnel (logged), and the socket is shut both ways.
    pub async fn finish<S: ByteStream>(&mut self, tcp: &S, within: Duration) {
        let flushed =
            tokio::time::timeout(within, write_all_vectored(tcp, &mut self.pending)).await;
        if matches!(flushed, Ok(Ok(()))) {
            self.pending.clear();
            let _ = tcp.shutdown_write();
        } else {
            let lost: usize = self.pending.iter().map(Bytes::len).sum();
            tracing::warn!(
                lost,
                "the tunnel ended with received bytes its TCP side would not take"
            );
            let _ = tcp.shut_both();
        }
    }
}

/// What a leg opens with: after a resume, the replay (and our `fin` again).
pub enum Out {
    Data(Bytes),
    Control(Control),
}

/// How a leg ended.
pub enum Leg {
    /// The tunnel is over: the peer was told why (where it could hear), the TCP side got EOF.
    Ended(Ending),
    /// The WebSocket was lost (why): the TCP side is still open, waiting for the next leg.
    Dropped(String),
}

/// Why a half stopped.
enum Stop {
    /// Both sources ended and everything is acknowledged.
    Done,
    /// The WebSocket is gone without a Close: resumable.
    Lost(String),
    /// The peer closed the WebSocket: the end.
    Closed(Option<(CloseCode, String)>),
    /// Something that ends the tunnel, the peer to be told.
    Failed(Error),
}

fn lock(s: &Mutex<Session>) -> MutexGuard<'_, Session> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn broken(e: SessionError) -> Error {
    Error::device(Kind::Protocol, format!("resumable tunnel: {e}"))
}

/// One leg: relay `rx`/`tx` and `tcp` under `carry` until the tunnel ends, the WebSocket is
/// lost, or `replaced` resolves (a resume arrived on another WebSocket while this one still
/// looked alive). `first` goes out before anything else.
pub async fn relay_resumable<R: DeviceRx, T: DeviceTx, S: ByteStream>(
    rx: &mut R,
    tx: &mut T,
    tcp: &S,
    carry: &mut Carry,
    first: Vec<Out>,
    run: Run<'_>,
    replaced: impl std::future::Future<Output = ()> + Send,
) -> Leg {
    let counters = Counters::new(run.traffic);
    let poke = Notify::new();
    let Carry {
        session,
        pending,
        read_done,
        write_shut,
    } = carry;
    let stop = {
        let inbound = inbound(rx, tcp, session, pending, write_shut, &counters, &poke);
        let outbound = outbound(
            tx,
            tcp,
            session,
            read_done,
            first,
            &counters,
            run.settings,
            &poke,
        );
        let mut kick = run.kick;
        tokio::select! {
            s = inbound => s,
            s = outbound => s,
            () = run.drain.my_turn() => Stop::Failed(Error::new(Kind::Shutdown, Side::Internal, "shutting down")),
            e = &mut kick => Stop::Failed(e),
            () = replaced => Stop::Lost("replaced by a resume on a new WebSocket".into()),
        }
    };
    let (code, by, reason) = match stop {
        Stop::Lost(why) => {
            // Parked, nothing is read: hold no spare buffers.
            lock(session).drop_spares();
            return Leg::Dropped(why);
        }
        Stop::Done => {
            let _ = tokio::time::timeout(CLOSE_WAIT, tx.close(CloseCode::Normal, "")).await;
            // Finished by whichever source ended first: the TCP side's (the agent's local
            // client, the gateway's upstream) or the peer's.
            let by = match lock(session).ours_ended_first() {
                Some(true) => Side::Upstream,
                _ => Side::Device,
            };
            (CloseCode::Normal, by, "tunnel finished".to_string())
        }
        Stop::Closed(frame) => {
            let _ = tokio::time::timeout(CLOSE_WAIT, tx.close(CloseCode::Normal, "")).await;
            let (code, reason) = frame.unwrap_or((CloseCode::Status, String::new()));
            (
                code,
                Side::Device,
                format!("peer closed the tunnel: {reason}"),
            )
        }
        Stop::Failed(e) => {
            let reason = e.to_string();
            let _ = tokio::time::timeout(CLOSE_WAIT, tx.close(e.close_code(), &reason)).await;
            (ending_code(&e), e.side(), reason)
        }
    };
    let _ = tcp.shutdown_write();
    Leg::Ended(Ending {
        code,
        by,
        reason,
        bytes_up: run.traffic.up(),
        bytes_down: run.traffic.down(),
    })
}

/// WebSocket → TCP: data counted and written (what is left of a cut-off write stays in
/// `pending`), control frames to the session, the peer's FIN passed on. Data frames already
/// decoded go out together in one write, as in the relay core.
async fn inbound<R: DeviceRx, S: ByteStream>(
    rx: &mut R,
    tcp: &S,
    session: &Mutex<Session>,
    pending: &mut Vec<Bytes>,
    write_shut: &mut bool,
    counters: &Counters<'_>,
    poke: &Notify,
) -> Stop {
    // An event that came behind data frames, handled once they are written. Lost if the leg
    // ends first: it came on a WebSocket that is finished with (data is never held here).
    let mut held = None;
    loop {
        if !pending.is_empty() {
            if let Err(e) = write_all_vectored(tcp, pending).await {
                return Stop::Failed(upstream_write_failed(e));
            }
            pending.clear();
        }
        if !*write_shut && lock(session).peer_finished() {
            let _ = tcp.shutdown_write();
            *write_shut = true;
        }
        let event = match held.take() {
            Some(event) => event,
            None => rx.recv().await,
        };
        match event {
            RxEvent::Data(b) => {
                let mut bytes = 0;
                let mut next = Some(RxEvent::Data(b));
                let mut look = false;
                let now = std::time::Instant::now();
                while let Some(event) = next.take() {
                    let RxEvent::Data(b) = event else {
                        held = Some(event);
                        break;
                    };
                    match lock(session).received(b.len(), now) {
                        Ok(wake) => look |= wake,
                        Err(e) => return Stop::Failed(broken(e)),
                    }
                    counters.bytes.add_up(b.len());
                    bytes += b.len();
                    pending.push(b);
                    if bytes < COALESCE_BYTES && pending.len() < COALESCE_FRAMES {
                        next = rx.recv().now_or_never();
                    }
                }
                // An acknowledgement's timer starts, or one is due: the other half sends it.
                if look {
                    poke.notify_one();
                }
            }
            RxEvent::Text(text) => {
                let mut s = lock(session);
                if let Err(e) = s.on_control(&text) {
                    return Stop::Failed(broken(e));
                }
                if s.done() {
                    return Stop::Done;
                }
                drop(s);
                poke.notify_one();
            }
            RxEvent::Pong => counters.missed_pongs.store(0, Relaxed),
            RxEvent::Ping(payload) => counters.owe_pong(payload),
            RxEvent::Control => {}
            RxEvent::Closed(frame) => return Stop::Closed(frame),
            RxEvent::Gone => return Stop::Lost("the WebSocket went away".into()),
            RxEvent::Failed(e) => return Stop::Failed(e),
        }
    }
}

/// TCP → WebSocket: reads while the replay buffer has room, each kept and sent; our `fin` at
/// EOF; acknowledgements when due; pings, and pongs owed.
#[allow(clippy::too_many_arguments)] // the two halves' shared state, spelled out
async fn outbound<T: DeviceTx, S: ByteStream>(
    tx: &mut T,
    tcp: &S,
    session: &Mutex<Session>,
    read_done: &mut bool,
    first: Vec<Out>,
    counters: &Counters<'_>,
    settings: &super::RelaySettings,
    poke: &Notify,
) -> Stop {
    // A peer that stops reading blocks our sends: after as long as the missed pongs would
    // have taken, the WebSocket counts as lost (and the tunnel as resumable).
    let stall = settings.ping_interval * (settings.max_missed_pongs + 1);
    let lost = |what: &str| Stop::Lost(what.to_string());
    for out in first {
        if let Err(why) = send(tx, out, stall, counters).await {
            return lost(why);
        }
    }
    let start = Instant::now() + settings.ping_interval;
    let mut ping = tokio::time::interval_at(start, settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut size = ReadSize::new();
    // One timer for the acknowledgement, moved only when its deadline does (not per frame).
    let mut ack_timer = pin!(tokio::time::sleep(Duration::ZERO));
    let mut armed = None;
    loop {
        // One look at the session per turn: an acknowledgement due goes first (and may be what
        // finishes the tunnel, so `done` is asked once none is due).
        let (room, ack_at, due) = {
            let mut s = lock(session);
            let due = s.control_due(std::time::Instant::now());
            if due.is_none() && s.done() {
                return Stop::Done;
            }
            (s.room(), s.next_control_at().map(Instant::from_std), due)
        };
        if let Some(ack) = due {
            if let Err(why) = send(tx, Out::Control(ack), stall, counters).await {
                return lost(why);
            }
            continue;
        }
        if ack_at != armed {
            if let Some(at) = ack_at {
                ack_timer.as_mut().reset(at);
            }
            armed = ack_at;
        }
        let out = tokio::select! {
            ready = tcp.readable(), if room > 0 && !*read_done => {
                if let Err(e) = ready {
                    return Stop::Failed(Error::upstream(Kind::UpstreamIo, e));
                }
                // Never more than the replay buffer can keep.
                let want = size.get().min(room);
                // One lock for the read and its keeping (the other half shares this task, so
                // it never waits on it).
                let mut s = lock(session);
                let mut buf = s.read_buffer(want);
                match tcp.try_read_buf(&mut buf, want) {
                    Ok(0) => {
                        *read_done = true;
                        Some(Out::Control(s.finish()))
                    }
                    Ok(n) => {
                        size.after(n);
                        // Kept until acknowledged: a short read gets its own exact allocation,
                        // so the replay buffer's bound counts memory, not just bytes.
                        let data = if n < want / 2 {
                            let data = Bytes::copy_from_slice(&buf);
                            s.give_back(buf);
                            data
                        } else {
                            buf.freeze()
                        };
                        if let Err(e) = s.send(data.clone()) {
                            return Stop::Failed(Error::new(Kind::Protocol, Side::Internal, e.to_string()));
                        }
                        Some(Out::Data(data))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        s.give_back(buf);
                        None
                    }
                    Err(e) => return Stop::Failed(Error::upstream(Kind::UpstreamIo, format!("reading: {e}"))),
                }
            }
            () = poke.notified() => None,
            () = &mut ack_timer, if armed.is_some() => {
                armed = None;
                None
            }
            () = counters.pong_due.notified() => {
                if let Some(payload) = counters.take_pong() {
                    match tokio::time::timeout(stall, tx.pong(payload)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(())) => return lost("the WebSocket went away"),
                        Err(_) => return lost("the peer stopped reading"),
                    }
                }
                None
            }
            _ = ping.tick() => {
                // Spare read buffers live at most a ping interval past the bulk that used them.
                lock(session).drop_spares();
                let missed = counters.missed_pongs.fetch_add(1, Relaxed);
                if missed >= settings.max_missed_pongs {
                    return Stop::Lost(format!("{missed} pongs missed"));
                }
                match tokio::time::timeout(stall, tx.ping()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(())) => return lost("the WebSocket went away"),
                    Err(_) => return lost("the peer stopped reading"),
                }
            }
        };
        if let Some(out) = out {
            if let Err(why) = send(tx, out, stall, counters).await {
                return lost(why);
            }
        }
    }
}

async fn send<T: DeviceTx>(
    tx: &mut T,
    out: Out,
    stall: Duration,
    counters: &Counters<'_>,
) -> Result<(), &'static str> {
    let sent = match out {
        Out::Data(data) => {
            let n = data.len();
            let r = tokio::time::timeout(stall, tx.send(data)).await;
            if matches!(r, Ok(Ok(()))) {
                counters.bytes.add_down(n);
            }
            r
        }
        Out::Control(c) => tokio::time::timeout(stall, tx.send_text(c.to_text())).await,
    };
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(())) => Err("the WebSocket went away"),
        Err(_) => Err("the peer stopped reading"),
    }
}
