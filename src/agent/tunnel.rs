//! One local TCP connection ↔ one WebSocket to the gateway.
//!
//! A fresh WebSocket per local connection, so that load balancers spread them and a stalled
//! stream never blocks another. The relay itself is the gateway's own bounded relay
//! ([`crate::forward::relay_websocket`]), which is symmetric in what it needs: a WebSocket on
//! one side (here the gateway, as a client: tungstenite masks our frames, RFC 6455 §5.1), a
//! TCP socket on the other (here the legacy client). So the agent gets the same properties:
//! bounded buffers with backpressure, half-close (a local FIN becomes Close 1000, a gateway
//! Close becomes a FIN), a ping every interval with the tunnel declared dead after
//! `max_missed_pongs` unanswered ones, and Close 1001 when the agent shuts down.
//!
//! The local client is never left hanging: when no tunnel can be had within
//! `open_timeout_secs`, or when the tunnel dies, the local socket is closed at once. Unless
//! the gateway granted resumption at the upgrade: then a dropped WebSocket is resumed
//! ([`super::resume`]) and the local connection stays open through it.

use http::header::{HeaderName, HeaderValue};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::WebSocketStream;

use super::backoff::{Gate, Outcome};
use super::config::ResumeSettings;
use super::dial::{Connector, GatewayStream, Trace, UpgradeResponse};
use super::status::Status;
use super::target::Target;
use crate::error::Side;
use crate::forward::{relay_websocket, RelaySettings};
use crate::shutdown::Drain;

/// What every tunnel of one `[[tunnel]]` entry shares.
pub struct TunnelCtx {
    pub name: String,
    pub target: Target,
    pub gate: Arc<Gate>,
    pub open_timeout: Duration,
}

/// What every tunnel of the agent shares.
pub struct AgentCtx {
    pub connector: Connector,
    pub status: Arc<Status>,
    pub relay: RelaySettings,
    pub drain: Drain,
    pub resume: ResumeSettings,
}

/// Carry one accepted local connection until either side ends it.
pub async fn carry(
    local: TcpStream,
    peer: SocketAddr,
    tunnel: Arc<TunnelCtx>,
    agent: Arc<AgentCtx>,
) {
    let _ = local.set_nodelay(true);
    let offer = match agent.resume.enabled {
        true => super::resume::offer(agent.resume.window_bytes),
        false => Vec::new(),
    };
    let deadline = Instant::now() + tunnel.open_timeout;
    let ws = tokio::select! {
        ws = open(&tunnel, &agent, &offer, deadline) => ws,
        () = agent.drain.started() => return,
    };
    let Some((ws, response, outcome)) = ws else {
        agent.status.refused_local();
        tracing::info!(tunnel = %tunnel.name, %peer, "no tunnel: local connection closed");
        return; // dropping `local` closes it
    };
    agent.status.opened(outcome == Outcome::Recovered);
    if outcome == Outcome::Recovered {
        tracing::info!(tunnel = %tunnel.name, "gateway reachable again");
    }
    tracing::debug!(tunnel = %tunnel.name, %peer, "tunnel open");

    let started = Instant::now();
    // Nothing bans a local client: only the gateway and the drain end a tunnel.
    let traffic = crate::forward::Traffic::default();
    let grant = match agent.resume.enabled {
        true => super::resume::Grant::from(&response),
        false => None,
    };
    let relay = async {
        match grant {
            Some(grant) => {
                let ending =
                    super::resume::carry(ws, &local, grant, &tunnel, &agent, &traffic).await;
                drop(local);
                ending
            }
            None => {
                let relay = relay_websocket(
                    ws,
                    local,
                    &agent.relay,
                    &agent.drain,
                    std::future::pending(),
                    &traffic,
                );
                relay.await
            }
        }
    };
    tokio::pin!(relay);
    let ending = tokio::select! {
        ending = &mut relay => ending,
        () = tokio::time::sleep(tunnel.gate.stable_after()) => {
            tunnel.gate.stable();
            relay.await
        }
    };
    // The relay has shut our write side; `local` is dropped with it, so the client sees its
    // FIN (or RST, if it had sent more than we read) right now, not at some later timeout.
    let lived = started.elapsed();
    // The relay's `Device` side is the WebSocket peer: for the agent, the gateway.
    let by_gateway = ending.by == Side::Device && !agent.drain.is_draining();
    tunnel.gate.ended(lived, by_gateway);
    agent.status.closed(ending.bytes_down, ending.bytes_up);
    let by = match ending.by {
        Side::Device => "gateway",
        Side::Upstream => "local client",
        Side::Internal => "agent",
    };
    let code = u16::from(ending.code);
    // The relay words a ping timeout from the gateway's point of view ("device missed N
    // pongs"), and a gateway that timed *us* out sends the same words in its Close: either
    // way, pongs stopped crossing the path.
    let reason = if ending.code == CloseCode::Policy && ending.reason.contains("missed") {
        "keep-alive failed (pongs missed): dead path".to_string()
    } else {
        ending.reason.clone()
    };
    if matches!(ending.code, CloseCode::Normal | CloseCode::Away) {
        tracing::info!(tunnel = %tunnel.name, %peer, close = code, by, to_gateway = ending.bytes_down, from_gateway = ending.bytes_up, secs = lived.as_secs(), "tunnel ended: {reason}");
    } else {
        agent
            .status
            .error(&format!("tunnel ended by {by}: {reason}"));
        tracing::warn!(tunnel = %tunnel.name, %peer, close = code, by, to_gateway = ending.bytes_down, from_gateway = ending.bytes_up, secs = lived.as_secs(), "tunnel ended: {reason}");
    }
}

/// Dial with `extra` headers until it works, the deadline passes, or a failure no retry will
/// cure; paced by the shared gate.
pub(super) async fn open(
    tunnel: &TunnelCtx,
    agent: &AgentCtx,
    extra: &[(HeaderName, HeaderValue)],
    deadline: Instant,
) -> Option<(WebSocketStream<GatewayStream>, UpgradeResponse, Outcome)> {
    loop {
        let attempt = tunnel.gate.admit(deadline).await?;
        let mut trace = Trace::default();
        let dial = agent.connector.dial_with(&tunnel.target, &mut trace, extra);
        // A dial cannot outlive the deadline: the local client must not wait longer.
        match tokio::time::timeout_at(deadline, dial).await {
            Ok(Ok((ws, response))) => return Some((ws, response, attempt.succeeded())),
            Ok(Err(e)) => {
                let retry = attempt.failed();
                agent.status.dial_failed(&e.to_string());
                tracing::warn!(tunnel = %tunnel.name, url = %tunnel.target.url, retry_in_ms = retry.as_millis() as u64, "cannot open tunnel: {e}");
                if e.is_lasting() {
                    return None;
                }
            }
            Err(_) => {
                attempt.failed();
                agent.status.dial_failed(&format!(
                    "no tunnel within open_timeout_secs ({} s): the attempt was still under way",
                    tunnel.open_timeout.as_secs()
                ));
                return None;
            }
        }
    }
}
