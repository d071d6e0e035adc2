//! Graceful shutdown: stop accepting, then close devices spread over a window.
//!
//! Every device gets its Close 1001 at a random moment inside the drain window, so that a fleet
//! behind a load balancer reconnects to the other gateways as a trickle, not a spike.

use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Drain {
    rx: watch::Receiver<bool>,
    window: Duration,
}

pub struct DrainTrigger {
    tx: watch::Sender<bool>,
}

pub fn channel(window: Duration) -> (DrainTrigger, Drain) {
    let (tx, rx) = watch::channel(false);
    (DrainTrigger { tx }, Drain { rx, window })
}

impl DrainTrigger {
    pub fn start(&self) {
        let _ = self.tx.send(true);
    }
}

impl Drain {
    /// Resolves once shutdown has begun.
    pub async fn started(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger is gone, which only happens when the gateway is dropped.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Resolves at this connection's moment to close: shutdown plus a random share of the window.
    pub async fn my_turn(&self) {
        self.started().await;
        let jitter = if self.window.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..self.window)
        };
        tokio::time::sleep(jitter).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}
