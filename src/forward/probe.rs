//! `/probe`: the gateway's end of `portcullis probe`. A WebSocket that first says what the
//! gateway sees of this connection ([`crate::probe::Hello`]), then echoes every message with its
//! type, answers pings, and never pings itself (the probe measures how long the path lets a
//! silent WebSocket live). `POST /probe` counts a body, to find the largest one the path passes.
//!
//! It is an echo service on the open internet, so it is capped: sessions per minute for the
//! whole gateway, sessions at once, message and body sizes, and a session's lifetime.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::config::ProbeSettings;
use crate::probe::Hello;
use crate::shutdown::Drain;

/// Admission to `/probe`.
pub struct ProbeGate {
    pub settings: ProbeSettings,
    rate: DefaultDirectRateLimiter,
    sessions: Arc<Semaphore>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeRefusal {
    /// Over `sessions_per_minute`: 429.
    RateLimited,
    /// `max_sessions` are open: 503.
    Busy,
}

/// An admitted probe session: its slot, and what the gateway tells the probe first.
pub struct ProbeTicket {
    pub slot: OwnedSemaphorePermit,
    pub hello: Hello,
}

impl ProbeGate {
    /// `None` when `[probe] enabled = false`: `/probe` is then an unknown path (404).
    pub fn new(settings: &ProbeSettings) -> Option<ProbeGate> {
        if !settings.enabled {
            return None;
        }
        // Validation keeps it at least 1; the fallback is never used.
        let per_minute = NonZeroU32::new(settings.sessions_per_minute).unwrap_or(NonZeroU32::MIN);
        Some(ProbeGate {
            settings: settings.clone(),
            // The whole budget may be used at once: one probe run opens about a dozen sessions.
            rate: RateLimiter::direct(Quota::per_minute(per_minute).allow_burst(per_minute)),
            sessions: Arc::new(Semaphore::new(settings.max_sessions)),
        })
    }

    /// A session slot, or why not. A body count (`POST`) takes a slot and the rate as well.
    /// The slot is tried first, so that a refusal for being busy costs no rate budget.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ProbeRefusal> {
        let slot = self
            .sessions
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProbeRefusal::Busy)?;
        self.rate.check().map_err(|_| ProbeRefusal::RateLimited)?;
        Ok(slot)
    }
}

/// How a probe session ended, for the connection's log line.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeEnd {
    ClientClosed,
    Gone(String),
    Expired,
    Draining,
}

/// Serve one probe session to its end.
pub async fn echo<S>(mut ws: WebSocketStream<S>, ticket: ProbeTicket, drain: &Drain) -> ProbeEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _slot = ticket.slot;
    let lifetime = Duration::from_secs(ticket.hello.max_session_secs);
    let hello = match serde_json::to_string(&ticket.hello) {
        Ok(h) => h,
        Err(e) => return ProbeEnd::Gone(format!("hello not encoded: {e}")),
    };
    if let Err(e) = ws.send(Message::text(hello)).await {
        return ProbeEnd::Gone(e.to_string());
    }
    let work = async {
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                () = drain.started() => return ProbeEnd::Draining,
            };
            let reply = match msg {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => m,
                // tungstenite queued the pong; flush it now rather than on the next read.
                Some(Ok(Message::Ping(_))) => match ws.flush().await {
                    Ok(()) => continue,
                    Err(e) => return ProbeEnd::Gone(e.to_string()),
                },
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => return ProbeEnd::ClientClosed,
                Some(Err(e)) => {
                    // Too big (1009) or a protocol error (1002): say so, as on the tunnels.
                    let Some(error) = crate::forward::relay::device_ws_failure(e) else {
                        return ProbeEnd::Gone("connection lost".into());
                    };
                    let code = error.close_code();
                    let reason = if code == CloseCode::Size {
                        "probe: message over [probe] max_message_size"
                    } else {
                        "probe: WebSocket protocol error"
                    };
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
                    return ProbeEnd::Gone(error.to_string());
                }
            };
            if let Err(e) = ws.send(reply).await {
                return ProbeEnd::Gone(e.to_string());
            }
        }
    };
    let end = tokio::time::timeout(lifetime, work)
        .await
        .unwrap_or(ProbeEnd::Expired);
    if matches!(end, ProbeEnd::Expired | ProbeEnd::Draining) {
        let code = if end == ProbeEnd::Draining {
            CloseCode::Away
        } else {
            CloseCode::Normal
        };
        let frame = CloseFrame {
            code,
            reason: "probe session over".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
    }
    end
}
