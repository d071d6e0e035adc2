//! The agent's side of a resumable tunnel (the protocol is in `forward::resume`): legs of the
//! relay, and after a drop, redials with the token and our count while the device's local
//! connection stays open. The gateway's first frame on the new WebSocket is its own count;
//! each side replays what the other lacks, and the device notices nothing.

use std::pin::pin;

use futures_util::StreamExt;
use http::header::{HeaderName, HeaderValue};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::dial::{GatewayStream, UpgradeResponse};
use super::tunnel::{open, AgentCtx, TunnelCtx};
use crate::error::Side;
use crate::forward::relay::resumable::{relay_resumable, Carry, Leg, Out};
use crate::forward::relay::{Run, WsRx, WsTx};
use crate::forward::resume::{Control, DEFAULT_WINDOW, NODE, OFFER, RECEIVED, TOKEN, WINDOW};
use crate::forward::{Ending, Traffic};

/// What the gateway granted at the upgrade.
pub(super) struct Grant {
    token: String,
    node: String,
    /// The gateway's replay buffer (we acknowledge every quarter of it).
    window: usize,
}

impl Grant {
    /// The grant in a 101, if the gateway made one.
    pub(super) fn from(response: &UpgradeResponse) -> Option<Grant> {
        let h = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        let token = h(TOKEN).filter(|t| (22..=128).contains(&t.len()))?;
        Some(Grant {
            token: token.to_owned(),
            node: h(NODE).unwrap_or("?").chars().take(64).collect(),
            window: h(WINDOW)
                .and_then(|w| w.parse().ok())
                .filter(|w| (4096..=64 << 20).contains(w))
                .unwrap_or(DEFAULT_WINDOW),
        })
    }
}

/// The headers of an upgrade that offers resumption.
pub(super) fn offer(window: usize) -> Vec<(HeaderName, HeaderValue)> {
    vec![
        (
            HeaderName::from_static(OFFER),
            HeaderValue::from_static("1"),
        ),
        (HeaderName::from_static(WINDOW), HeaderValue::from(window)),
    ]
}

/// Carry a resumable tunnel until it ends for good, resuming after each drop.
pub(super) async fn carry(
    mut ws: WebSocketStream<GatewayStream>,
    local: &TcpStream,
    mut grant: Grant,
    tunnel: &TunnelCtx,
    agent: &AgentCtx,
    traffic: &Traffic,
) -> Ending {
    let settings = &agent.resume;
    let mut carry = Carry::new(settings.window_bytes, grant.window);
    let mut first = Vec::new();
    loop {
        let (tx, rx) = ws.split();
        let (mut rx, mut tx) = (WsRx(rx), WsTx(tx));
        // Nothing kicks a local client: only the gateway and the drain end a tunnel.
        let kick = pin!(std::future::pending());
        let run = Run {
            settings: &agent.relay,
            drain: &agent.drain,
            kick,
            traffic,
            wakeup: None,
        };
        let leg = relay_resumable(
            &mut rx,
            &mut tx,
            local,
            &mut carry,
            first,
            run,
            std::future::pending(),
        )
        .await;
        let why = match leg {
            Leg::Ended(ending) => return ending,
            Leg::Dropped(why) => why,
        };
        drop((rx, tx));
        agent.status.dropped();
        let held = carry.session().held();
        tracing::warn!(tunnel = %tunnel.name, node = %grant.node, held, "tunnel dropped ({why}): resuming");
        let dropped = Instant::now();
        let deadline = dropped + std::time::Duration::from_secs(settings.grace_secs);
        let resumed = tokio::select! {
            r = resume(&mut carry, &grant, tunnel, agent, deadline) => r,
            () = agent.drain.started() => Err("the agent is shutting down".into()),
        };
        match resumed {
            Ok((next_ws, token, replay)) => {
                let replayed: usize = replay
                    .iter()
                    .map(|o| match o {
                        Out::Data(d) => d.len(),
                        Out::Control(_) => 0,
                    })
                    .sum();
                agent.status.resumed();
                tracing::info!(tunnel = %tunnel.name, node = %grant.node, replayed, after_ms = dropped.elapsed().as_millis() as u64, "tunnel resumed");
                (ws, grant.token, first) = (next_ws, token, replay);
            }
            Err(why) => {
                agent.status.resume_failed();
                carry.finish(local, std::time::Duration::from_secs(2)).await;
                return Ending {
                    code: CloseCode::Abnormal,
                    by: Side::Device,
                    reason: format!("tunnel dropped ({why}) and not resumed"),
                    bytes_up: traffic.up(),
                    bytes_down: traffic.down(),
                };
            }
        }
    }
}

type Resumed = (WebSocketStream<GatewayStream>, String, Vec<Out>);

/// Dial again with the token and our count, until the deadline; then learn the gateway's
/// count and what to replay.
async fn resume(
    carry: &mut Carry,
    grant: &Grant,
    tunnel: &TunnelCtx,
    agent: &AgentCtx,
    deadline: Instant,
) -> Result<Resumed, String> {
    let received = carry.session().received_total();
    let mut token = grant.token.clone();
    loop {
        let value = HeaderValue::from_str(&token).map_err(|_| "a token that is no header")?;
        let mut headers = vec![
            (HeaderName::from_static(TOKEN), value),
            (
                HeaderName::from_static(RECEIVED),
                HeaderValue::from(received),
            ),
        ];
        // The node that holds the tunnel, for a load balancer that routes resumes by header.
        if let Ok(node) = HeaderValue::from_str(&grant.node) {
            headers.push((HeaderName::from_static(NODE), node));
        }
        let Some((mut ws, response, _)) = open(tunnel, agent, &headers, deadline).await else {
            return Err("the gateway refused the resume or could not be reached in time".into());
        };
        let Some(next) = Grant::from(&response) else {
            return Err("the gateway answered the resume without a new token".into());
        };
        let step = agent.connector.step_timeout();
        let why = match tokio::time::timeout(step, their_count(&mut ws)).await {
            Ok(Ok(theirs)) => {
                let (again, fin) = carry.session().resume(theirs).map_err(|e| e.to_string())?;
                let replay = again
                    .into_iter()
                    .map(Out::Data)
                    .chain(fin.map(Out::Control))
                    .collect();
                return Ok((ws, next.token, replay));
            }
            Ok(Err(why)) => why,
            Err(_) => "the gateway did not say its count in time".to_string(),
        };
        // The old token is spent, but the 101 gave a new one: the tunnel is still resumable
        // with it (the path broke again right after the upgrade).
        tracing::warn!(tunnel = %tunnel.name, "resume broke after the upgrade ({why}): again, with the new token");
        token = next.token;
        if Instant::now() >= deadline {
            return Err(why);
        }
    }
}

/// The gateway's first frame on a resumed WebSocket: `resume N`.
async fn their_count(ws: &mut WebSocketStream<GatewayStream>) -> Result<u64, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return match Control::parse(t.as_str()) {
                    Ok(Control::Resume(n)) => Ok(n),
                    _ => Err(format!(
                        "the gateway's first frame was not its count: {t:?}"
                    )),
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(_)) => return Err("the gateway's first frame was not its count".into()),
            Some(Err(e)) => return Err(format!("the resumed WebSocket failed: {e}")),
            None => return Err("the resumed WebSocket closed at once".into()),
        }
    }
}
