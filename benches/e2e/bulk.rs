//! Bulk bytes: one client writing as fast as it can into one sink, straight over TCP, through
//! the agent and the gateway's `/tunnel`, and through websockify (a WebSocket→TCP bridge a user
//! might pick instead). The same client, the same sink and the same agent on every path; the
//! rounds are interleaved so drift on a shared machine spreads over all of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::cpu;
use crate::BoxError;

/// What the client hands the socket per write (and per WebSocket frame where it frames).
const CHUNK: usize = 64 * 1024;
/// A path that moves nothing for this long has failed.
const STALL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkPath {
    /// client → sink over TCP: the baseline.
    Direct,
    /// TCP client → the agent (masked frames) → the gateway's `/tunnel/bulk` → sink.
    AgentGateway,
    /// TCP client → the same agent → websockify → sink.
    AgentWebsockify,
    /// A WebSocket client (tungstenite, masked 64 KiB frames) → the gateway → sink.
    WsGateway,
    /// The same WebSocket client → websockify → sink.
    WsWebsockify,
}

impl BulkPath {
    pub const ALL: [BulkPath; 5] = [
        BulkPath::Direct,
        BulkPath::AgentGateway,
        BulkPath::AgentWebsockify,
        BulkPath::WsGateway,
        BulkPath::WsWebsockify,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BulkPath::Direct => "direct TCP",
            BulkPath::AgentGateway => "agent → gateway /tunnel",
            BulkPath::AgentWebsockify => "agent → peer: websockify",
            BulkPath::WsGateway => "ws client → gateway /tunnel",
            BulkPath::WsWebsockify => "ws client → peer: websockify",
        }
    }

    /// Whether the row is a peer's (websockify) rather than ours or the baseline.
    pub fn is_peer(self) -> bool {
        matches!(self, BulkPath::AgentWebsockify | BulkPath::WsWebsockify)
    }

    /// The row of ours that the peer row stands beside.
    pub fn ours_beside(self) -> Option<BulkPath> {
        match self {
            BulkPath::AgentWebsockify => Some(BulkPath::AgentGateway),
            BulkPath::WsWebsockify => Some(BulkPath::WsGateway),
            _ => None,
        }
    }
}

/// Where each bulk path starts.
pub struct BulkEndpoints {
    pub sink: SocketAddr,
    pub gateway: SocketAddr,
    pub websockify: Option<SocketAddr>,
    /// The agent's local ports: to the gateway and to websockify.
    pub agent_gateway: SocketAddr,
    pub agent_websockify: Option<SocketAddr>,
}

/// A TCP server that reads and discards, counting every byte it gets on any connection (the
/// gateway's health checks connect and send nothing, so they count zero).
pub struct Sink {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    more: Arc<Notify>,
}

impl Sink {
    pub async fn spawn() -> Result<Sink, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let more = Arc::new(Notify::new());
        let (r, m) = (received.clone(), more.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (r, m) = (r.clone(), m.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        r.fetch_add(n as u64, Relaxed);
                        m.notify_waiters();
                    }
                });
            }
        });
        Ok(Sink {
            addr,
            received,
            more,
        })
    }

    fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    /// Until the sink has `target` bytes in all, failing if nothing arrives for `STALL`.
    async fn wait_for(&self, target: u64) -> Result<(), BoxError> {
        loop {
            let more = self.more.notified();
            let seen = self.received();
            if seen >= target {
                return Ok(());
            }
            if tokio::time::timeout(STALL, more).await.is_err() && self.received() == seen {
                return Err(format!("the sink stalled at {seen} of {target} bytes").into());
            }
        }
    }
}

/// One transfer of `bytes`: Gbit/s from the first write until the sink has every byte.
pub async fn transfer(
    path: BulkPath,
    ep: &BulkEndpoints,
    sink: &Sink,
    bytes: u64,
) -> Result<f64, BoxError> {
    // Not all zeros, so nothing on the way could compress it into a shortcut.
    let chunk = Bytes::from((0..CHUNK).map(|i| (i * 7 + 13) as u8).collect::<Vec<u8>>());
    let chunks = bytes.div_ceil(CHUNK as u64);
    let target = sink.received() + chunks * CHUNK as u64;
    let t0 = Instant::now();
    let chunk = &chunk;
    let tcp_to = |addr: SocketAddr| async move {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        for _ in 0..chunks {
            s.write_all(chunk).await?;
        }
        sink.wait_for(target).await?;
        s.shutdown().await?;
        Ok::<(), BoxError>(())
    };
    let ws_to = |addr: SocketAddr, uri: &'static str| async move {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let req = format!("ws://{addr}{uri}");
        let config = WebSocketConfig::default().write_buffer_size(CHUNK);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await?;
        for _ in 0..chunks {
            ws.feed(Message::Binary(chunk.clone())).await?;
        }
        ws.flush().await?;
        sink.wait_for(target).await?;
        let _ = ws.close(None).await;
        Ok::<(), BoxError>(())
    };
    let peer = || ep.websockify.ok_or("websockify is not running");
    match path {
        BulkPath::Direct => tcp_to(ep.sink).await?,
        BulkPath::AgentGateway => tcp_to(ep.agent_gateway).await?,
        BulkPath::AgentWebsockify => {
            tcp_to(ep.agent_websockify.ok_or("websockify is not running")?).await?
        }
        BulkPath::WsGateway => ws_to(ep.gateway, "/tunnel/bulk").await?,
        BulkPath::WsWebsockify => ws_to(peer()?, "/").await?,
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((chunks * CHUNK as u64) as f64 * 8.0 / secs / 1e9)
}

/// Everything measured on one bulk path, over all rounds.
pub struct BulkResult {
    pub path: BulkPath,
    pub gbits: Vec<f64>,
    /// CPU seconds of the relaying processes (the gateway or websockify, and the agent) and
    /// the bytes moved meanwhile.
    pub relay_cpu: f64,
    pub agent_cpu: f64,
    pub bytes: u64,
}

/// The CPU meters a bulk run reads: the gateway, the agent, and websockify with the children
/// it forks per connection (counted once reaped).
pub struct BulkMeter {
    pub gateway: u32,
    pub agent: u32,
    pub websockify: Option<u32>,
}

impl BulkMeter {
    fn relay(&self, path: BulkPath) -> f64 {
        let pid = match path {
            _ if path.is_peer() => self.websockify,
            BulkPath::Direct => None,
            _ => Some(self.gateway),
        };
        pid.and_then(cpu::cpu_secs_with_children).unwrap_or(0.0)
    }

    fn agent(&self) -> f64 {
        cpu::cpu_secs_with_children(self.agent).unwrap_or(0.0)
    }
}

/// Every bulk path, round after round.
pub async fn run(
    ep: &BulkEndpoints,
    sink: &Sink,
    meter: &BulkMeter,
    rounds: usize,
    bytes: u64,
) -> Result<Vec<BulkResult>, BoxError> {
    let mut results: Vec<BulkResult> = Vec::new();
    for path in BulkPath::ALL {
        if path.is_peer() && ep.websockify.is_none() {
            continue;
        }
        // Warm-up and the check that the path works at all.
        transfer(path, ep, sink, 4 << 20)
            .await
            .map_err(|e| format!("{}: {e}", path.name()))?;
        results.push(BulkResult {
            path,
            gbits: Vec::new(),
            relay_cpu: 0.0,
            agent_cpu: 0.0,
            bytes: 0,
        });
    }
    for round in 0..rounds {
        for r in &mut results {
            let (relay0, agent0) = (meter.relay(r.path), meter.agent());
            let gbits = transfer(r.path, ep, sink, bytes).await?;
            // websockify's per-connection child is counted once it is reaped: give it a moment.
            if r.path.is_peer() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r.relay_cpu += meter.relay(r.path) - relay0;
            r.agent_cpu += meter.agent() - agent0;
            r.bytes += bytes;
            println!(
                "round {round} bulk {:<29} {gbits:>6.2} Gbit/s",
                r.path.name()
            );
            r.gbits.push(gbits);
        }
    }
    Ok(results)
}
