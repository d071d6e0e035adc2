//! Both directions of one resumable tunnel, as one end keeps them: what it sent (for replay),
//! what it received (for acknowledgements and the resume), and whether either side ended.
//! The agent and the gateway each hold one per tunnel; the relay feeds it and sends what it
//! says. Pure: the tests below run two of them over a link that loses everything in flight,
//! again and again, and check that each side gets the other's bytes exactly once, in order.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::replay::{AckRule, Receiver, ReplayBuffer, StreamError};
use super::Control;

/// What ended a resumable session for good (logged, and the tunnel closed on both sides).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the peer's control frame is broken: {0}")]
    Control(String),
    #[error("the peer ended its side after {said} bytes, but {received} arrived")]
    FinMismatch { said: u64, received: u64 },
    #[error("data after the end of the stream ({0} side)")]
    AfterFin(&'static str),
}

#[derive(Debug)]
pub struct Session {
    out: ReplayBuffer,
    inn: Receiver,
    /// Our source ended after this many bytes (say it again after a resume).
    our_fin: Option<u64>,
    /// The peer's source ended after this many bytes (and all of them arrived).
    peer_fin: Option<u64>,
    /// Whose source ended first: ours (`true`) or the peer's. Who finished a tunnel matters
    /// to the agent's backoff: a local client that hung up is not a gateway dropping tunnels.
    ours_ended_first: Option<bool>,
}

impl Session {
    /// `window`: our replay buffer; `peer_window`: the peer's (we acknowledge every quarter).
    pub fn new(window: usize, peer_window: usize) -> Session {
        Session {
            // A window of 0 could never send a byte.
            out: ReplayBuffer::new(window.max(1)),
            inn: Receiver::new(AckRule::for_window(peer_window)),
            our_fin: None,
            peer_fin: None,
            ours_ended_first: None,
        }
    }

    /// The most our source may give now (reading more would overflow the replay buffer).
    pub fn room(&self) -> usize {
        if self.our_fin.is_some() {
            return 0;
        }
        self.out.room()
    }

    /// Bytes from our source, to send now: kept until the peer acknowledges them.
    pub fn send(&mut self, data: Bytes) -> Result<(), SessionError> {
        if self.our_fin.is_some() && !data.is_empty() {
            return Err(SessionError::AfterFin("our"));
        }
        Ok(self.out.push(data)?)
    }

    /// A buffer for the next read of up to `want` bytes from our source (a reused one when a
    /// busy stream has one spare).
    pub fn read_buffer(&mut self, want: usize) -> BytesMut {
        self.out.buffer(want)
    }

    /// A read buffer whose bytes were copied out (or that read nothing): for the next read.
    pub fn give_back(&mut self, buf: BytesMut) {
        self.out.give_back(buf);
    }

    /// Let spare read buffers go (quiet for a ping interval, or parked).
    pub fn drop_spares(&mut self) {
        self.out.drop_spares();
    }

    /// Our source ended: the control frame to send.
    pub fn finish(&mut self) -> Control {
        let at = *self.our_fin.get_or_insert(self.out.sent());
        self.ours_ended_first.get_or_insert(true);
        Control::Fin(at)
    }

    /// A data frame of `n` bytes from the peer, to pass on to our side (refused after the
    /// peer said its side ended: a broken peer's extra bytes never reach the device). Says
    /// whether an acknowledgement needs attention now (its timer starts, or one is due).
    pub fn received(&mut self, n: usize, now: Instant) -> Result<bool, SessionError> {
        if self.peer_fin.is_some() && n > 0 {
            return Err(SessionError::AfterFin("the peer's"));
        }
        Ok(self.inn.on_data(n, now))
    }

    /// A control frame (text) from the peer.
    pub fn on_control(&mut self, text: &str) -> Result<(), SessionError> {
        match Control::parse(text).map_err(SessionError::Control)? {
            Control::Ack(n) => {
                self.out.ack(n)?;
            }
            // Frames arrive in order on one WebSocket, so everything the peer sent is here.
            Control::Fin(said) if said == self.inn.received() => {
                self.peer_fin = Some(said);
                self.ours_ended_first.get_or_insert(false);
                // Its last bytes are acknowledged at once: the peer may be waiting on that
                // to close.
                self.inn.flush();
            }
            Control::Resume(_) => {
                return Err(SessionError::Control(
                    "a resume in the middle of a stream".into(),
                ))
            }
            Control::Fin(said) => {
                return Err(SessionError::FinMismatch {
                    said,
                    received: self.inn.received(),
                })
            }
        }
        Ok(())
    }

    /// An acknowledgement to send now, if one is due.
    pub fn control_due(&mut self, now: Instant) -> Option<Control> {
        self.inn.ack_due(now).map(Control::Ack)
    }

    /// When [`Session::control_due`] will have something without more data.
    pub fn next_control_at(&self) -> Option<Instant> {
        self.inn.next_ack_at()
    }

    /// What we received: what to tell the peer at a resume.
    pub fn received_total(&self) -> u64 {
        self.inn.received()
    }

    /// On a new WebSocket, the peer says it has `peer_received` of ours: what to send again,
    /// in order, then our `fin` again if our source had ended.
    pub fn resume(
        &mut self,
        peer_received: u64,
    ) -> Result<(Vec<Bytes>, Option<Control>), SessionError> {
        let again = self.out.resume(peer_received)?;
        self.inn.resumed();
        Ok((again, self.our_fin.map(Control::Fin)))
    }

    /// Both sources ended, the peer has everything of ours, and our acknowledgement of all of
    /// its bytes has been sent: the tunnel can close.
    pub fn done(&self) -> bool {
        self.peer_fin.is_some()
            && self.inn.all_acked()
            && self.our_fin.is_some_and(|n| self.out.acked() == n)
    }

    /// Whether our source ended before the peer's (`None` while neither has).
    pub fn ours_ended_first(&self) -> Option<bool> {
        self.ours_ended_first
    }

    /// Whether the peer's source has ended (our side's write half can be shut).
    pub fn peer_finished(&self) -> bool {
        self.peer_fin.is_some()
    }

    /// Bytes held for replay now.
    pub fn held(&self) -> usize {
        self.out.held()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;

    /// What crosses the WebSocket.
    #[derive(Debug, Clone)]
    enum Frame {
        Data(Bytes),
        Control(String),
    }

    /// One end: its session, its source still to send, and what it passed on.
    struct End {
        session: Session,
        source: VecDeque<u8>,
        delivered: Vec<u8>,
        most_held: usize,
    }

    impl End {
        fn new(source: Vec<u8>, window: usize) -> End {
            End {
                session: Session::new(window, window),
                source: source.into(),
                delivered: Vec::new(),
                most_held: 0,
            }
        }

        /// Send what the window allows, in chunks of up to `chunk`.
        fn pump(&mut self, chunk: usize, wire: &mut VecDeque<Frame>) {
            loop {
                let n = self.session.room().min(chunk).min(self.source.len());
                if n == 0 {
                    break;
                }
                let data: Bytes = self.source.drain(..n).collect::<Vec<u8>>().into();
                self.session.send(data.clone()).unwrap();
                wire.push_back(Frame::Data(data));
            }
            self.most_held = self.most_held.max(self.session.held());
            if self.source.is_empty() && self.session.room() > 0 {
                wire.push_back(Frame::Control(self.session.finish().to_text()));
            }
        }

        fn take(&mut self, f: Frame, now: Instant, back: &mut VecDeque<Frame>) {
            match f {
                Frame::Data(d) => {
                    self.delivered.extend_from_slice(&d);
                    self.session.received(d.len(), now).unwrap();
                }
                Frame::Control(t) => self.session.on_control(&t).unwrap(),
            }
            if let Some(c) = self.session.control_due(now) {
                back.push_back(Frame::Control(c.to_text()));
            }
        }

        /// A new WebSocket: replay what the peer lacks.
        fn resume(&mut self, peer_received: u64, wire: &mut VecDeque<Frame>) {
            let (again, fin) = self.session.resume(peer_received).unwrap();
            wire.extend(again.into_iter().map(Frame::Data));
            wire.extend(fin.map(|c| Frame::Control(c.to_text())));
        }
    }

    /// A tiny deterministic generator (no dependency for a test).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, below: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % below
        }
    }

    /// Two ends over a link that, at random moments, loses every frame in flight both ways
    /// (the WebSocket dropped); each time they resume. Whatever the timing, each side gets
    /// the other's bytes exactly once, in order, and no replay buffer exceeds its window.
    #[test]
    fn every_byte_arrives_once_in_order_across_many_drops() {
        for seed in 0..200u64 {
            let mut rng = Lcg(seed);
            let window = 64 + rng.next(512) as usize;
            let a_src: Vec<u8> = (0..3000 + rng.next(3000))
                .map(|i| (i * 7 + seed) as u8)
                .collect();
            let b_src: Vec<u8> = (0..rng.next(4000)).map(|i| (i * 13 + seed) as u8).collect();
            let mut a = End::new(a_src.clone(), window);
            let mut b = End::new(b_src.clone(), window);
            let (mut ab, mut ba) = (VecDeque::new(), VecDeque::new());
            let t0 = Instant::now();
            let mut drops = 0;
            for step in 0..100_000u32 {
                let now = t0 + Duration::from_millis(u64::from(step));
                a.pump(1 + rng.next(200) as usize, &mut ab);
                b.pump(1 + rng.next(200) as usize, &mut ba);
                // Deliver a few frames each way.
                for _ in 0..rng.next(4) {
                    if let Some(f) = ab.pop_front() {
                        b.take(f, now, &mut ba);
                    }
                    if let Some(f) = ba.pop_front() {
                        a.take(f, now, &mut ab);
                    }
                }
                // Quiet moments: the periodic acknowledgement.
                for (end, wire) in [(&mut a, &mut ab), (&mut b, &mut ba)] {
                    if let Some(c) = end.session.control_due(now) {
                        wire.push_back(Frame::Control(c.to_text()));
                    }
                }
                if step == 3 || rng.next(40) == 0 {
                    drops += 1;
                    ab.clear();
                    ba.clear();
                    let (a_has, b_has) = (a.session.received_total(), b.session.received_total());
                    a.resume(b_has, &mut ab);
                    b.resume(a_has, &mut ba);
                }
                // Done means nothing is owed: no acknowledgement left to send.
                for end in [&mut a, &mut b] {
                    if end.session.done() {
                        assert_eq!(end.session.control_due(now), None, "seed {seed}");
                    }
                }
                if a.session.done() && b.session.done() {
                    break;
                }
            }
            assert!(
                a.session.done() && b.session.done(),
                "seed {seed}: finished"
            );
            assert!(drops > 0, "seed {seed}: dropped at least once");
            assert_eq!(
                b.delivered, a_src,
                "seed {seed}: a → b exact ({drops} drops)"
            );
            assert_eq!(a.delivered, b_src, "seed {seed}: b → a exact");
            assert!(
                a.most_held <= window && b.most_held <= window,
                "seed {seed}: bounded"
            );
        }
    }

    #[test]
    fn a_broken_peer_ends_the_session() {
        let t0 = Instant::now();
        let mut s = Session::new(100, 100);
        s.send(Bytes::from_static(b"abc")).unwrap();
        assert!(matches!(
            s.on_control("ack 4"),
            Err(SessionError::Stream(_))
        ));
        assert!(matches!(
            s.on_control("hello"),
            Err(SessionError::Control(_))
        ));
        s.received(5, t0).unwrap();
        assert_eq!(
            s.on_control("fin 4"),
            Err(SessionError::FinMismatch {
                said: 4,
                received: 5
            })
        );
        assert_eq!(s.ours_ended_first(), None);
        assert_eq!(s.on_control("fin 5"), Ok(()));
        assert!(s.peer_finished());
        assert_eq!(
            s.ours_ended_first(),
            Some(false),
            "the peer's source ended first"
        );
        assert_eq!(s.received(1, t0), Err(SessionError::AfterFin("the peer's")));
        assert_eq!(
            s.control_due(t0),
            Some(Control::Ack(5)),
            "its end acknowledged at once"
        );
        assert_eq!(s.finish(), Control::Fin(3));
        assert_eq!(s.ours_ended_first(), Some(false), "still the peer's");
        assert_eq!(s.room(), 0, "nothing more is read once our side ended");
        assert_eq!(
            s.send(Bytes::from_static(b"x")),
            Err(SessionError::AfterFin("our"))
        );
        assert!(!s.done(), "our bytes are not acknowledged yet");
        s.on_control("ack 3").unwrap();
        assert!(s.done());
    }
}
