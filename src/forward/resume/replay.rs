//! One direction of a resumable stream, as its sender and its receiver keep it.
//!
//! The sender numbers every byte it sends (a `u64` stream offset from 0) and keeps what the
//! receiver has not acknowledged in a [`ReplayBuffer`], bounded: when it is full the sender
//! stops reading its source (the device's TCP connection, or the upstream's), so the bound is
//! flow control, never a reason to drop a byte. The receiver counts what it has passed on and
//! acknowledges it cumulatively, now and then ([`Receiver`]), never once per frame.
//!
//! After a drop, each side says how many bytes it received; the other replays from exactly
//! there ([`ReplayBuffer::resume`]). Bytes the receiver already has are never sent again, and
//! a gap (the peer asks for bytes already released) ends the session instead of corrupting it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

/// Why a resumed stream cannot continue byte-exact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the peer acknowledged {acked} bytes, but only {sent} were sent")]
    AckBeyondSent { acked: u64, sent: u64 },
    #[error("the peer has {peer} bytes, but bytes from {kept} on are all that is kept")]
    Gap { peer: u64, kept: u64 },
    #[error("{len} more bytes would overflow the replay buffer ({cap} bytes)")]
    Overflow { len: usize, cap: usize },
}

/// What the sender keeps of one direction.
#[derive(Debug)]
pub struct ReplayBuffer {
    chunks: VecDeque<Bytes>,
    /// The stream offset of the first byte held (everything before it was acknowledged).
    start: u64,
    len: usize,
    cap: usize,
    /// Read buffers whose bytes were acknowledged, for the next reads. Held data outlives its
    /// read by an acknowledgement's round trip, so without these every bulk read got memory
    /// the allocator had just returned to the system and faulted it in again (a third of the
    /// agent's bulk throughput). Held and spare together stay within the window; the relay
    /// lets the spares go when the stream is quiet or parked ([`ReplayBuffer::drop_spares`]).
    spare: Vec<BytesMut>,
}

/// The smallest buffer worth keeping: a bulk read's (the relay's largest read).
pub const SPARE_SIZE: usize = 64 * 1024;

impl ReplayBuffer {
    pub fn new(cap: usize) -> ReplayBuffer {
        ReplayBuffer {
            chunks: VecDeque::new(),
            start: 0,
            len: 0,
            cap,
            spare: Vec::new(),
        }
    }

    /// Bytes sent so far (the offset the next byte gets).
    pub fn sent(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Bytes the receiver has acknowledged.
    pub fn acked(&self) -> u64 {
        self.start
    }

    /// Bytes held for replay.
    pub fn held(&self) -> usize {
        self.len
    }

    /// How much more may be sent before an acknowledgement: the most to read from the source.
    pub fn room(&self) -> usize {
        self.cap - self.len
    }

    /// Keep `data` until it is acknowledged (the caller sends it too). More than
    /// [`ReplayBuffer::room`] is refused: the caller reads at most that much.
    pub fn push(&mut self, data: Bytes) -> Result<(), StreamError> {
        if data.len() > self.room() {
            return Err(StreamError::Overflow {
                len: data.len(),
                cap: self.cap,
            });
        }
        if !data.is_empty() {
            self.len += data.len();
            self.chunks.push_back(data);
        }
        Ok(())
    }

    /// The receiver has everything before `upto`: release it. An older acknowledgement (one
    /// overtaken by a newer one) changes nothing; one beyond what was sent is a broken peer.
    pub fn ack(&mut self, upto: u64) -> Result<usize, StreamError> {
        let sent = self.sent();
        if upto > sent {
            return Err(StreamError::AckBeyondSent { acked: upto, sent });
        }
        let mut release = upto.saturating_sub(self.start) as usize;
        let freed = release;
        // Counted first: what is released may become a spare, within the window.
        self.start += freed as u64;
        self.len -= freed;
        while release > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= release {
                release -= front.len();
                if let Some(done) = self.chunks.pop_front() {
                    // Only if nothing else holds it (its frame was written long ago).
                    if let Ok(buf) = done.try_into_mut() {
                        self.give_back(buf);
                    }
                }
            } else {
                let _ = front.split_to(release);
                release = 0;
            }
        }
        Ok(freed)
    }

    /// A buffer to read up to `want` bytes into: a spare one for a large read. (Not for a
    /// small one: what is held must not pin much more memory than it is, the replay bound
    /// counts memory.)
    pub fn buffer(&mut self, want: usize) -> BytesMut {
        if want < SPARE_SIZE / 2 {
            return BytesMut::with_capacity(want);
        }
        while let Some(b) = self.spare.pop() {
            if b.capacity() >= want {
                return b;
            }
        }
        // Sized to be reused.
        BytesMut::with_capacity(want.max(SPARE_SIZE))
    }

    /// A read buffer not kept (its bytes were copied, or there were none): for the next read.
    pub fn give_back(&mut self, mut buf: BytesMut) {
        buf.clear();
        let cap = buf.capacity();
        if cap >= SPARE_SIZE && self.len + self.spare_bytes() + cap <= self.cap {
            self.spare.push(buf);
        }
    }

    /// Memory the spares hold (a few buffers at most: within the window).
    fn spare_bytes(&self) -> usize {
        self.spare.iter().map(BytesMut::capacity).sum()
    }

    /// Let the spare buffers go (the stream went quiet, or its WebSocket was lost).
    pub fn drop_spares(&mut self) {
        self.spare = Vec::new();
    }

    /// After a drop: the receiver says it has `peer` bytes. That acknowledges them, and the
    /// rest is what to send again, in order (cheap clones of what is held).
    pub fn resume(&mut self, peer: u64) -> Result<Vec<Bytes>, StreamError> {
        if peer < self.start {
            return Err(StreamError::Gap {
                peer,
                kept: self.start,
            });
        }
        self.ack(peer)?;
        Ok(self.chunks.iter().cloned().collect())
    }
}

/// When an acknowledgement is due: after a quarter of the peer's window has arrived (so the
/// sender never waits on a full buffer while acks are in flight), or a little while after
/// data arrived and was not acknowledged (so a quiet stream still releases its buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRule {
    pub every_bytes: u64,
    pub within: Duration,
}

impl AckRule {
    /// For a peer whose replay buffer holds `window` bytes.
    pub fn for_window(window: usize) -> AckRule {
        AckRule {
            every_bytes: (window as u64 / 4).max(1),
            within: Duration::from_millis(200),
        }
    }
}

/// What the receiver keeps of one direction: bytes passed on, and what it acknowledged.
#[derive(Debug)]
pub struct Receiver {
    received: u64,
    acked: u64,
    /// When the oldest unacknowledged byte arrived.
    pending_since: Option<Instant>,
    rule: AckRule,
    /// An acknowledgement is due now, whatever the rule says.
    flush: bool,
}

impl Receiver {
    pub fn new(rule: AckRule) -> Receiver {
        Receiver {
            received: 0,
            acked: 0,
            pending_since: None,
            rule,
            flush: false,
        }
    }

    /// Bytes passed on so far: what to tell the peer at a resume.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// `n` bytes arrived and were passed on.
    /// Whether the acknowledging side should look now: its timer starts, or an ack is due by
    /// bytes. Otherwise it has nothing new to do, and is not woken for every frame.
    pub fn on_data(&mut self, n: usize, now: Instant) -> bool {
        if n == 0 {
            return false;
        }
        self.received += n as u64;
        let started = self.pending_since.is_none();
        self.pending_since.get_or_insert(now);
        started || self.received - self.acked >= self.rule.every_bytes
    }

    /// The cumulative acknowledgement to send now, if one is due (it is then taken as sent).
    pub fn ack_due(&mut self, now: Instant) -> Option<u64> {
        let unacked = self.received - self.acked;
        let waited = self
            .pending_since
            .is_some_and(|t| now.duration_since(t) >= self.rule.within);
        if unacked == 0 || (unacked < self.rule.every_bytes && !waited && !self.flush) {
            return None;
        }
        self.acked = self.received;
        self.pending_since = None;
        self.flush = false;
        Some(self.received)
    }

    /// When [`Receiver::ack_due`] will say yes without more data, if it will.
    pub fn next_ack_at(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + self.rule.within)
    }

    /// Make an acknowledgement of everything received due now (the peer's source ended: its
    /// last bytes must not wait for the timer).
    pub fn flush(&mut self) {
        self.flush = true;
    }

    /// Everything received has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.acked == self.received
    }

    /// A resume is an acknowledgement of everything received.
    pub fn resumed(&mut self) {
        self.acked = self.received;
        self.pending_since = None;
        self.flush = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn joined(chunks: &[Bytes]) -> String {
        chunks
            .iter()
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect()
    }

    #[test]
    fn acks_release_whole_and_partial_chunks_and_old_acks_change_nothing() {
        let mut r = ReplayBuffer::new(16);
        r.push(b("AAAAA")).unwrap();
        r.push(b("BBBBB")).unwrap();
        assert_eq!((r.sent(), r.held(), r.room()), (10, 10, 6));
        assert_eq!(r.ack(7), Ok(7));
        assert_eq!((r.acked(), r.held()), (7, 3));
        assert_eq!(r.ack(3), Ok(0), "overtaken by a newer ack");
        assert_eq!(r.ack(7), Ok(0));
        assert_eq!(
            r.ack(11),
            Err(StreamError::AckBeyondSent {
                acked: 11,
                sent: 10
            })
        );
        assert_eq!(joined(&r.resume(7).unwrap()), "BBB");
    }

    #[test]
    fn the_bound_is_never_exceeded() {
        let mut r = ReplayBuffer::new(8);
        r.push(b("12345")).unwrap();
        assert_eq!(
            r.push(b("6789")),
            Err(StreamError::Overflow { len: 4, cap: 8 })
        );
        assert_eq!(r.held(), 5, "a refused push keeps nothing");
        r.push(b("678")).unwrap();
        assert_eq!(r.room(), 0);
        r.ack(2).unwrap();
        assert_eq!(r.room(), 2);
        r.push(Bytes::new()).unwrap();
        assert_eq!(r.held(), 6);
    }

    /// wstunnel's example: "AAAAABBBBBCCCCDDD" must not arrive as "AAAAABBBBBDDD".
    #[test]
    fn a_resume_replays_exactly_what_the_peer_lacks() {
        let mut r = ReplayBuffer::new(64);
        for part in ["AAAAA", "BBBBB", "CCCC", "DDD"] {
            r.push(b(part)).unwrap();
        }
        r.ack(5).unwrap();
        // The peer got the Bs and two Cs before the drop; its ack never came.
        let again = r.resume(12).unwrap();
        assert_eq!(joined(&again), "CCDDD");
        assert_eq!(r.acked(), 12);
        // It already had everything: nothing to send.
        assert!(r.resume(17).unwrap().is_empty());
    }

    #[test]
    fn a_peer_behind_what_is_kept_or_ahead_of_what_was_sent_ends_the_session() {
        let mut r = ReplayBuffer::new(64);
        r.push(b("0123456789")).unwrap();
        r.ack(6).unwrap();
        assert_eq!(r.resume(4), Err(StreamError::Gap { peer: 4, kept: 6 }));
        assert!(matches!(
            r.resume(11),
            Err(StreamError::AckBeyondSent { .. })
        ));
        assert_eq!(joined(&r.resume(6).unwrap()), "6789", "still usable");
    }

    #[test]
    fn every_split_of_a_stream_replays_to_the_same_bytes() {
        let stream: Vec<u8> = (0..200u8).collect();
        for chunk in 1..=13 {
            for acked in (0..=200).step_by(7) {
                for peer in (acked..=200).step_by(11) {
                    let mut r = ReplayBuffer::new(256);
                    for c in stream.chunks(chunk) {
                        r.push(Bytes::copy_from_slice(c)).unwrap();
                    }
                    r.ack(acked as u64).unwrap();
                    let again: Vec<u8> = r.resume(peer as u64).unwrap().concat();
                    assert_eq!(
                        again,
                        &stream[peer..],
                        "chunk {chunk} acked {acked} peer {peer}"
                    );
                }
            }
        }
    }

    #[test]
    fn acknowledged_read_buffers_are_reused_within_the_window_until_let_go() {
        let mut rb = ReplayBuffer::new(3 * SPARE_SIZE);
        let read = |rb: &mut ReplayBuffer, fill: u8| {
            let mut b = rb.buffer(SPARE_SIZE);
            b.resize(SPARE_SIZE, fill);
            let p = b.as_ptr();
            rb.push(b.freeze()).unwrap();
            p
        };
        let first = read(&mut rb, 1);
        let _second = read(&mut rb, 2);
        let held_elsewhere = rb.chunks[1].clone();
        rb.ack(2 * SPARE_SIZE as u64 - 1).unwrap();
        assert_eq!(
            rb.spare.len(),
            1,
            "the first came back; the second is partly held"
        );
        assert_eq!(
            read(&mut rb, 3),
            first,
            "the next read reuses the first's memory"
        );
        assert_eq!(
            rb.buffer(100).capacity(),
            100,
            "a small read gets its own allocation"
        );
        drop(held_elsewhere);
        let third = read(&mut rb, 4);
        rb.ack(rb.sent()).unwrap();
        assert_eq!(rb.held(), 0);
        // The second, split by a partial acknowledgement, is not whole; the others are.
        assert_eq!(rb.spare.len(), 2);
        assert!(rb.spare.iter().any(|b| b.as_ptr() == third));
        assert!(
            rb.spare_bytes() <= rb.cap,
            "held and spare stay within the window"
        );
        rb.drop_spares();
        assert!(
            rb.spare.is_empty() && rb.spare_bytes() == 0,
            "nothing kept once let go"
        );
    }

    #[test]
    fn acks_are_cumulative_and_periodic_never_one_per_frame() {
        let t0 = Instant::now();
        let mut rx = Receiver::new(AckRule::for_window(1000));
        assert_eq!(rx.ack_due(t0), None, "nothing received");
        assert!(rx.on_data(100, t0), "the timer starts: look");
        assert!(!rx.on_data(100, t0), "nothing new to do: no wake-up");
        assert!(!rx.on_data(0, t0));
        assert_eq!(rx.ack_due(t0), None, "under a quarter, not yet waited");
        assert_eq!(rx.next_ack_at(), Some(t0 + Duration::from_millis(200)));
        assert!(rx.on_data(50, t0), "a quarter: look");
        assert_eq!(rx.ack_due(t0), Some(250), "a quarter of the window");
        assert_eq!(rx.ack_due(t0), None, "taken");
        assert!(
            rx.on_data(1, t0 + Duration::from_millis(10)),
            "the timer starts again"
        );
        assert_eq!(rx.ack_due(t0 + Duration::from_millis(209)), None);
        assert_eq!(rx.ack_due(t0 + Duration::from_millis(210)), Some(251));
        rx.on_data(9, t0);
        rx.resumed();
        assert_eq!(
            (rx.received(), rx.ack_due(t0 + Duration::from_secs(9))),
            (260, None)
        );
    }
}
