//! The gateway's resumable tunnels: their tokens, the inbox where a resume delivers the new
//! WebSocket, and the counts the metrics show.
//!
//! A tunnel's own task keeps its upstream socket and [`Carry`](crate::forward::relay::resumable::Carry)
//! across WebSockets; the lot only connects a resume (which arrives on another connection) to
//! that task. The registry's lock is the one place a token changes hands: a claim takes the
//! inbox out under the old token and puts it back under a new one, a tunnel that ends takes
//! its current token out, so a resume and an ending can never both win.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::tokens::{Refusal, Registry};
use crate::forward::relay::frames::Limits;
use crate::forward::relay::{FrameRx, FrameTx};

/// Who a tunnel belongs to: its route, and the identity the device proved (if the route asks
/// for one). The client IP is not part of it: a device that roams changes address.
pub type Identity = (Arc<str>, Option<String>);

/// A resume's new WebSocket, for the tunnel's task.
pub struct Attach {
    pub rx: FrameRx,
    pub tx: FrameTx,
    /// What the agent says it received of ours.
    pub peer_received: u64,
    /// The client IP the resume came from (a roaming device's may have changed).
    pub ip: std::net::IpAddr,
}

/// A new tunnel's place in the lot: however it ends (the upgrade failing, a shutdown before
/// the relay starts, the relay's end, a dropped task), its token is forgotten with it.
pub struct Lease {
    lot: Arc<Lot>,
    inbox: Arc<Inbox>,
}

impl std::ops::Deref for Lease {
    type Target = Inbox;
    fn deref(&self) -> &Inbox {
        &self.inbox
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.lot.close(&self.inbox);
    }
}

/// What an accepted tunnel upgrade says about resumption.
pub enum Resumption {
    /// A new resumable tunnel: its lease, and the agent's replay buffer.
    Fresh { lease: Lease, peer_window: usize },
    /// A resume of a parked (or still live) tunnel: hand it the new WebSocket.
    Resume {
        inbox: Arc<Inbox>,
        peer_received: u64,
    },
}

/// Where a resume hands a tunnel its new WebSocket.
#[derive(Default)]
pub struct Inbox {
    /// The token that reaches this tunnel now (changed only under the registry's lock).
    token: Mutex<String>,
    attach: Mutex<Option<Attach>>,
    arrived: Notify,
    /// The tunnel is over, or must end (its token came with another identity).
    ended: AtomicBool,
}

impl Inbox {
    /// Hand over a resume's WebSocket; given back if the tunnel has ended meanwhile.
    #[allow(clippy::result_large_err)] // given back at once, to be closed: never carried up
    pub fn deliver(&self, attach: Attach) -> Result<(), Attach> {
        if self.ended.load(Relaxed) {
            return Err(attach);
        }
        // A later resume replaces one not yet picked up (its WebSocket is dropped).
        *self.attach.lock().unwrap_or_else(|p| p.into_inner()) = Some(attach);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// Resolves when a resume's WebSocket is waiting to be taken, or the tunnel must end.
    /// Judged by the state, never by a stored wake-up: a signal consumed elsewhere (a
    /// `select!` that took another branch) cannot leave a stale one behind.
    pub async fn arrived(&self) {
        loop {
            let notified = self.arrived.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let waiting = self
                .attach
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if waiting || self.ended.load(Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// The delivered WebSocket, if any (`None` after [`Inbox::arrived`]: the tunnel must end).
    pub fn take(&self) -> Option<Attach> {
        if self.ended.load(Relaxed) {
            return None;
        }
        self.attach.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether the tunnel must end (its token came with another identity) or has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Relaxed)
    }

    fn end(&self) {
        self.ended.store(true, Relaxed);
        self.arrived.notify_waiters();
    }
}

/// Resume failures, by [`Lot::fail`]'s reasons.
pub const FAILURES: [&str; 6] = [
    "unknown",
    "identity",
    "full",
    "no_randomness",
    "grace",
    "replay",
];

#[derive(Default)]
pub struct ResumeStats {
    pub parked: AtomicU64,
    pub resumed: AtomicU64,
    pub bytes_replayed: AtomicU64,
    /// Sum of the times from a drop to the resume, in microseconds (with `resumed`: the mean).
    pub resume_micros: AtomicU64,
    failures: [AtomicU64; FAILURES.len()],
}

impl ResumeStats {
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FAILURES
            .iter()
            .zip(&self.failures)
            .map(|(label, n)| (*label, n.load(Relaxed)))
    }
}

/// What `[resume]` sets, fixed at start.
#[derive(Debug, Clone)]
pub struct LotSettings {
    pub node: String,
    pub window: usize,
    pub grace: Duration,
    pub max_sessions: usize,
}

pub struct Lot {
    pub settings: LotSettings,
    registry: Mutex<Registry<Identity, Arc<Inbox>>>,
    pub stats: ResumeStats,
}

impl Lot {
    pub fn new(settings: LotSettings) -> Lot {
        Lot {
            registry: Mutex::new(Registry::new(settings.max_sessions)),
            settings,
            stats: ResumeStats::default(),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry<Identity, Arc<Inbox>>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new resumable tunnel of `identity`: its first token and its lease.
    pub fn open(self: &Arc<Self>, identity: Identity) -> Result<(String, Lease), Refusal> {
        let inbox = Arc::new(Inbox::default());
        let token = self.registry().register(identity, inbox.clone())?;
        *inbox.token.lock().unwrap_or_else(|p| p.into_inner()) = token.clone();
        let lease = Lease {
            lot: self.clone(),
            inbox,
        };
        Ok((token, lease))
    }

    /// A resume with `token`: the tunnel's inbox, now reached by the new token returned. A
    /// token of another identity ends the tunnel it names.
    pub fn claim(&self, token: &str, identity: Identity) -> Result<(String, Arc<Inbox>), Refusal> {
        let mut registry = self.registry();
        let inbox = match registry.take(token, &identity) {
            Ok(inbox) => inbox,
            Err((refusal, inbox)) => {
                if let Some(inbox) = inbox {
                    tracing::warn!(
                        "resume token presented by another identity: that tunnel is ended"
                    );
                    inbox.end();
                }
                drop(registry);
                self.fail(refusal.label());
                return Err(refusal);
            }
        };
        match registry.register(identity, inbox.clone()) {
            Ok(next) => {
                *inbox.token.lock().unwrap_or_else(|p| p.into_inner()) = next.clone();
                Ok((next, inbox))
            }
            Err(refusal) => {
                // The old token is spent and no new one could be made: the tunnel ends.
                inbox.end();
                drop(registry);
                self.fail(refusal.label());
                Err(refusal)
            }
        }
    }

    /// The tunnel is over: its token is forgotten, and a resume delivered now is given back.
    pub fn close(&self, inbox: &Inbox) {
        let mut registry = self.registry();
        let token = inbox
            .token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        registry.forget(&token);
        inbox.ended.store(true, Relaxed);
    }

    /// Resumable tunnels held now (live or parked).
    pub fn len(&self) -> usize {
        self.registry().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn fail(&self, reason: &str) {
        if let Some(i) = FAILURES.iter().position(|r| *r == reason) {
            self.stats.failures[i].fetch_add(1, Relaxed);
        }
    }
}

/// The frame limits of a resumable tunnel: text control frames allowed.
pub fn resumable_limits(limits: Limits) -> Limits {
    Limits {
        text_control: true,
        ..limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(max: usize) -> Arc<Lot> {
        Arc::new(Lot::new(LotSettings {
            node: "n1".into(),
            window: 1 << 20,
            grace: Duration::from_secs(60),
            max_sessions: max,
        }))
    }

    fn id(route: &str, who: Option<&str>) -> Identity {
        (route.into(), who.map(str::to_owned))
    }

    #[test]
    fn a_claim_rotates_the_token_and_an_ended_tunnel_cannot_be_claimed() {
        let lot = lot(10);
        let (t1, inbox) = lot.open(id("r", Some("dev-1"))).unwrap();
        let (t2, same) = lot.claim(&t1, id("r", Some("dev-1"))).unwrap();
        assert!(std::ptr::eq(&*inbox, &*same));
        assert_ne!(t1, t2);
        assert_eq!(
            lot.claim(&t1, id("r", Some("dev-1"))).err(),
            Some(Refusal::Unknown),
            "a spent token"
        );
        drop(same);
        lot.close(&inbox);
        assert!(lot.is_empty(), "the current token is forgotten");
        assert_eq!(
            lot.claim(&t2, id("r", Some("dev-1"))).err(),
            Some(Refusal::Unknown)
        );
        assert!(inbox.take().is_none());
        let stats: Vec<_> = lot.stats.failures().collect();
        assert_eq!(stats[0], ("unknown", 2));
    }

    #[test]
    fn another_identity_or_route_ends_the_tunnel() {
        let lot = lot(10);
        let (t, inbox) = lot.open(id("r", Some("dev-1"))).unwrap();
        assert_eq!(
            lot.claim(&t, id("r", Some("dev-2"))).err(),
            Some(Refusal::Identity)
        );
        assert!(inbox.ended.load(Relaxed), "the tunnel is told to end");
        let (t, _inbox) = lot.open(id("r", None)).unwrap();
        assert_eq!(
            lot.claim(&t, id("other", None)).err(),
            Some(Refusal::Identity)
        );
        assert!(lot.is_empty());
    }

    #[test]
    fn the_lot_is_bounded() {
        let lot = lot(1);
        let (_t, lease) = lot.open(id("r", None)).unwrap();
        assert_eq!(lot.open(id("r", None)).err(), Some(Refusal::Full));
        // A tunnel whose upgrade never completed: its lease goes, and its token with it.
        drop(lease);
        assert!(lot.is_empty());
        assert!(lot.open(id("r", None)).is_ok());
    }
}
