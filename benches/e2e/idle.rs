//! Memory per idle device: a fresh broker and gateway (and agent) for each count (freed memory
//! is not always returned to the OS, so runs must not share a process), N devices that
//! connect, send CONNECT, get CONNACK and then sit reading (answering the gateway's pings).
//! The gateway's cost per device, and the agent's whole RSS with its local connections.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Endpoints, MqttConn, Path};
use crate::measure::KEEP_ALIVE_SECS;
use crate::procs::{rss_kib, AgentProc, Broker, GatewayProc};
use crate::BoxError;

/// Devices handshaking at once.
const CONCURRENCY: usize = 200;
/// Connections opened (and kept) before the baseline, so one-time costs (allocator arenas,
/// first-use statics, hyper's and tungstenite's lazy setup) are not charged to the N.
const WARM_UP: usize = 16;
/// A device that has no CONNACK by then counts as failed (rather than hanging the bench).
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the gateway to settle (health checks, freed buffers) before RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

pub struct IdleResult {
    pub path: Path,
    /// TLS ended by the gateway itself (`wss://`).
    pub tls: bool,
    pub n: usize,
    pub before_kib: u64,
    pub after_kib: u64,
    pub failed: usize,
}

impl IdleResult {
    pub fn per_conn_kib(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.n as f64
    }
}

pub async fn measure(
    dir: &FsPath,
    path: Path,
    n: usize,
    tls: bool,
) -> Result<IdleResult, BoxError> {
    let broker = Broker::spawn(dir).await?;
    let (gateway, client_tls) = match tls {
        false => (GatewayProc::spawn(dir, broker.tcp, broker.tcp).await?, None),
        true => {
            let (listener, client) = crate::procs::tls_for_localhost(dir)?;
            let b = broker.tcp;
            let config = |port| {
                crate::procs::gateway_config(port, b, b).replacen(
                    "[[listener]]\n",
                    &format!("[[listener]]\n{listener}\n"),
                    1,
                )
            };
            let gw = GatewayProc::spawn_tls(dir, config, Some(client)).await?;
            (gw, Some(client))
        }
    };
    let ep = Endpoints {
        broker_tcp: broker.tcp,
        broker_ws: broker.ws,
        gateway: gateway.addr,
        agent: None,
        tls: client_tls,
    };
    let pid = gateway.proc.pid();
    let mut devices = JoinSet::new();
    let warm = open(&mut devices, path, &ep, "warm", WARM_UP).await;
    if warm > 0 {
        return Err(format!("{path}: {warm} warm-up connections failed").into());
    }
    tokio::time::sleep(SETTLE).await;
    let before_kib = rss_kib(pid).ok_or("gateway RSS unreadable")?;
    let failed = open(&mut devices, path, &ep, "idle", n).await;
    tokio::time::sleep(SETTLE).await;
    let after_kib = rss_kib(pid).ok_or("gateway RSS unreadable (did it die?)")?;
    // Devices go first, then the gateway and the broker (guards, in reverse order).
    devices.shutdown().await;
    Ok(IdleResult {
        path,
        tls,
        n,
        before_kib,
        after_kib,
        failed,
    })
}

/// The agent process before and after `n` local connections, each carried end to end (the
/// CONNACK comes back from mosquitto through the gateway).
pub struct AgentRss {
    pub n: usize,
    pub before_kib: u64,
    pub after_kib: u64,
    pub failed: usize,
}

impl AgentRss {
    pub fn per_conn_kib(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.n.max(1) as f64
    }
}

/// A fresh agent: its RSS once started (its readiness probe has carried one connection), then
/// with `n` MQTT clients connected through it.
pub async fn agent(dir: &FsPath, n: usize) -> Result<AgentRss, BoxError> {
    let broker = Broker::spawn(dir).await?;
    let gateway = GatewayProc::spawn(dir, broker.tcp, broker.tcp).await?;
    let agent = AgentProc::spawn(dir, gateway.addr).await?;
    let ep = Endpoints {
        broker_tcp: broker.tcp,
        broker_ws: broker.ws,
        gateway: gateway.addr,
        agent: Some(agent.addr),
        tls: None,
    };
    let pid = agent.proc.pid();
    tokio::time::sleep(SETTLE).await;
    let before_kib = rss_kib(pid).ok_or("agent RSS unreadable")?;
    let mut devices = JoinSet::new();
    let failed = open(&mut devices, Path::Agent, &ep, "rss", n).await;
    tokio::time::sleep(SETTLE).await;
    let after_kib = rss_kib(pid).ok_or("agent RSS unreadable (did it die?)")?;
    devices.shutdown().await;
    Ok(AgentRss {
        n,
        before_kib,
        after_kib,
        failed,
    })
}

/// Open `n` idle devices, `CONCURRENCY` at a time; returns how many failed.
async fn open(
    devices: &mut JoinSet<()>,
    path: Path,
    ep: &Endpoints,
    prefix: &str,
    n: usize,
) -> usize {
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let (done, mut results) = mpsc::unbounded_channel();
    for i in 0..n {
        let (gate, done, ep) = (gate.clone(), done.clone(), *ep);
        let id = format!("{prefix}-{}-{i}", path.tag());
        devices.spawn(async move {
            let permit = gate.acquire_owned().await;
            let conn = tokio::time::timeout(
                DEVICE_TIMEOUT,
                MqttConn::connect(path, &ep, &id, KEEP_ALIVE_SECS),
            )
            .await
            .unwrap_or_else(|_| Err("no CONNACK within the timeout".into()));
            drop(permit);
            let _ = done.send(conn.as_ref().err().map(|e| e.to_string()));
            drop(done);
            if let Ok(conn) = conn {
                conn.idle().await;
            }
        });
    }
    drop(done);
    // One outcome per device. Tasks keep no sender while idle, so the channel ends early only
    // if some died before reporting: those count as failed too.
    let (mut received, mut failed) = (0, 0);
    while received < n {
        let Some(outcome) = results.recv().await else {
            break;
        };
        received += 1;
        if let Some(e) = outcome {
            if failed == 0 {
                eprintln!("  first failed device: {e}");
            }
            failed += 1;
        }
    }
    failed + (n - received)
}
