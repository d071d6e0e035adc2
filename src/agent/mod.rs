//! The device agent: local TCP listeners whose connections are each carried in their own
//! WebSocket to `wss://gateway/tunnel/{route}`, for legacy devices that speak raw TCP / MQTT.
//!
//! ```text
//! local client ──► listener ──► gate (backoff) ──► dial: TCP → CONNECT → TLS/pin → upgrade
//!                                                   └──► relay (the gateway's own, bounded)
//! ```
//!
//! `run(config, shutdown)` is the whole agent; `check(config)` is `--check`. Tests and benches
//! use [`Agent`] to learn the bound local ports and read the counters.

mod backoff;
mod check;
pub mod config;
mod connect;
pub mod dial;
pub mod hop;
pub mod probe;
pub mod proxy;
mod resume;
mod status;
pub mod target;
pub mod tls;
mod tunnel;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use check::{check, CheckReport, StepOutcome, TunnelCheck};
pub use config::AgentConfig;
pub use dial::{DialError, Failure, Step};
pub use status::StatusSnapshot;

use crate::forward::RelaySettings;
use crate::shutdown::{self, DrainTrigger};
use backoff::Gate;
use dial::Connector;
use status::Status;
use target::Target;
use tunnel::{AgentCtx, TunnelCtx};

/// How long shutdown waits for tunnels to finish their close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Run the agent until `shutdown` resolves. The proxy variables come from the environment.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let agent = Agent::start(config).await?;
    shutdown.await;
    tracing::info!("agent shutting down");
    agent.shutdown().await;
    Ok(())
}

/// A running agent.
pub struct Agent {
    addrs: Vec<SocketAddr>,
    status: Arc<Status>,
    trigger: DrainTrigger,
    stop_accepting: CancellationToken,
    tracker: TaskTracker,
}

impl Agent {
    /// Bind every local listener and start carrying connections.
    pub async fn start(config: AgentConfig) -> Result<Agent, String> {
        let connector = Connector::new(&config, |k| std::env::var(k).ok())?;
        // Close 1001 to the gateway at once on shutdown: no drain window on the device side.
        let (trigger, drain) = shutdown::channel(Duration::ZERO);
        let status = Arc::new(Status::default());
        let agent = Arc::new(AgentCtx {
            connector,
            status: status.clone(),
            relay: RelaySettings {
                ping_interval: config.keepalive.ping_interval(),
                max_missed_pongs: config.keepalive.max_missed_pongs,
            },
            drain,
            resume: config.resume.clone(),
        });
        let stop_accepting = CancellationToken::new();
        let tracker = TaskTracker::new();
        // One gate per gateway (scheme, host, port): tunnels to the same gateway back off together.
        let mut gates: HashMap<(bool, String, u16), Arc<Gate>> = HashMap::new();
        let mut addrs = Vec::new();
        for t in &config.tunnels {
            let target = Target::new(t)?;
            let key = (target.url.tls, target.url.host.clone(), target.url.port);
            let gate = gates
                .entry(key)
                .or_insert_with(|| Arc::new(Gate::new(&config.reconnect)))
                .clone();
            let listener = TcpListener::bind(t.listen)
                .await
                .map_err(|e| format!("tunnel listen {}: {e}", t.listen))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            if !target.url.tls {
                tracing::warn!(url = %target.url, "ws:// sends the device token and data in clear");
            }
            tracing::info!(listen = %local, url = %target.url, "agent tunnel listening");
            addrs.push(local);
            let ctx = Arc::new(TunnelCtx {
                name: local.to_string(),
                target,
                gate,
                open_timeout: Duration::from_secs(config.reconnect.open_timeout_secs),
            });
            let slots = Arc::new(Semaphore::new(t.max_connections));
            tracker.spawn(accept_loop(
                listener,
                ctx,
                agent.clone(),
                slots,
                stop_accepting.clone(),
                tracker.clone(),
            ));
        }
        if config.status_interval_secs > 0 {
            let every = Duration::from_secs(config.status_interval_secs);
            let logger = tokio::spawn(status::log_periodically(status.clone(), every));
            let stop = stop_accepting.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                logger.abort();
            });
        }
        Ok(Agent {
            addrs,
            status,
            trigger,
            stop_accepting,
            tracker,
        })
    }

    /// The local addresses, in `[[tunnel]]` order (the real ports when `listen` used port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn status(&self) -> StatusSnapshot {
        self.status.snapshot()
    }

    /// Stop accepting, send every tunnel's gateway a Close 1001, wait for them briefly.
    pub async fn shutdown(self) {
        self.stop_accepting.cancel();
        self.trigger.start();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tunnels did not close within {SHUTDOWN_GRACE:?}");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tunnel: Arc<TunnelCtx>,
    agent: Arc<AgentCtx>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        let (local, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(tunnel = %tunnel.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            agent.status.refused_local();
            tracing::warn!(tunnel = %tunnel.name, %peer, "max_connections reached: local connection closed");
            continue;
        };
        let (tunnel, agent) = (tunnel.clone(), agent.clone());
        tracker.spawn(async move {
            tunnel::carry(local, peer, tunnel, agent).await;
            drop(slot);
        });
    }
}
