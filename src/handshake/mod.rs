//! Stage 2, handshake: `Conn` → `Session`. HTTP/1.1 (hyper) until a WebSocket upgrade.
//!
//! Health checks and refusals are answered here on the same connection; a valid upgrade on
//! `/mqtt` or `/tunnel/{route}` ends the HTTP phase and hands back the raw WebSocket. The
//! handshake is strict RFC 6455 because HAProxy (≥ 2.4) and F5 refuse sloppy ones.

mod request;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::error::{Error, Kind, Result};
use crate::forward::probe::ProbeTicket;
use crate::gateway::Shared;
use crate::identify::{IpSource, Origin};
use crate::listener::Conn;
pub use request::Target;

pub type DeviceWebSocket = WebSocketStream<TokioIo<Upgraded>>;

/// What the device asked for and who it is, as far as HTTP can tell.
pub struct WsSession {
    pub ws: DeviceWebSocket,
    pub target: Target,
    pub client_ip: IpAddr,
    pub ip_source: IpSource,
    /// On `/probe`: the admitted session and what to tell the probe first.
    pub probe: Option<ProbeTicket>,
}

pub enum Session {
    WebSocket(Box<WsSession>),
    /// Only plain HTTP was served (health checks, refusals) and the client is gone.
    Finished,
}

/// The part of an accepted upgrade that the service hands back once hyper lets go of the socket.
struct Accepted {
    on_upgrade: OnUpgrade,
    target: Target,
    client_ip: IpAddr,
    ip_source: IpSource,
    probe: Option<ProbeTicket>,
}

/// Serve HTTP on the connection until it upgrades to a WebSocket or closes.
pub async fn negotiate(conn: Conn, shared: Arc<Shared>) -> Result<Session> {
    let accepted: Arc<Mutex<Option<Accepted>>> = Arc::default();
    let listener = conn.listener.clone();
    let origin = Origin {
        addr: conn.source.ip(),
        source: if conn.source == conn.peer {
            IpSource::Peer
        } else {
            IpSource::ProxyProtocol
        },
    };
    let service = {
        let accepted = accepted.clone();
        let shared = shared.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let answer = request::answer(req, origin, &listener, &shared);
            let accepted = accepted.clone();
            async move {
                let response = match answer {
                    request::Answer::Upgrade(response, a) => {
                        if let Ok(mut slot) = accepted.lock() {
                            *slot = Some(Accepted {
                                on_upgrade: a.on_upgrade,
                                target: a.target,
                                client_ip: a.client_ip,
                                ip_source: a.ip_source,
                                probe: a.probe,
                            });
                        }
                        response
                    }
                    request::Answer::Plain(response) => response,
                    request::Answer::CountBody(count) => count_body(*count).await,
                };
                Ok::<Response<Full<Bytes>>, Infallible>(response)
            }
        })
    };
    let timeout = conn.listener.handshake_timeout;
    let accept_unmasked = conn.listener.accept_unmasked_frames;
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Slowloris guard: the request head must arrive within this time.
        .header_read_timeout(timeout)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(conn.stream), service)
        .with_upgrades()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                Error::device(
                    Kind::Timeout,
                    "no complete request head within the handshake timeout",
                )
            } else {
                Error::device(Kind::Protocol, format!("HTTP: {e}"))
            }
        })?;
    let Some(a) = accepted.lock().ok().and_then(|mut slot| slot.take()) else {
        return Ok(Session::Finished);
    };
    let upgraded = a
        .on_upgrade
        .await
        .map_err(|e| Error::device(Kind::Protocol, format!("upgrade failed: {e}")))?;
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(ws_config(&shared, &a.target, accept_unmasked)),
    )
    .await;
    Ok(Session::WebSocket(Box::new(WsSession {
        ws,
        target: a.target,
        client_ip: a.client_ip,
        ip_source: a.ip_source,
        probe: a.probe,
    })))
}

/// `POST /probe`: read and count the body, keeping none of it, up to the limit. A body that
/// stalls for 10 s is given up (a total deadline would call a slow link a small limit).
async fn count_body(count: request::BodyCount) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    const STALL: std::time::Duration = std::time::Duration::from_secs(10);
    let request::BodyCount {
        req, limit, view, ..
    } = count;
    let mut body = req.into_body();
    let mut received = 0usize;
    let outcome = loop {
        match tokio::time::timeout(STALL, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                received += frame.data_ref().map_or(0, |d| d.len());
                // Read on a little past the limit, so the client is not reset before it reads
                // the 413 (a close with unread data sends RST), but no further.
                if received > limit.saturating_add(64 * 1024) {
                    break Err(http::StatusCode::PAYLOAD_TOO_LARGE);
                }
            }
            Ok(None) if received > limit => break Err(http::StatusCode::PAYLOAD_TOO_LARGE),
            Ok(None) => break Ok(()),
            Ok(Some(Err(_))) | Err(_) => break Err(http::StatusCode::BAD_REQUEST),
        }
    };
    match outcome {
        Ok(()) => {
            let receipt = crate::probe::BodyReceipt { received, view };
            request::json(&receipt)
        }
        Err(http::StatusCode::PAYLOAD_TOO_LARGE) => request::text(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "probe: body over [probe] max_body_size\n",
        ),
        Err(status) => request::text(status, "probe: the body broke off or stalled for 10 s\n"),
    }
}

fn ws_config(shared: &Shared, target: &Target, accept_unmasked: bool) -> WebSocketConfig {
    let s = shared.websocket();
    let (max_frame, max_message) = match (target, &shared.probe) {
        // The probe steps its messages up to 1 MiB to find what the path passes.
        (Target::Probe, Some(p)) => (p.settings.max_message_size, p.settings.max_message_size),
        _ => (s.max_frame_size, s.max_message_size),
    };
    WebSocketConfig::default()
        // Eagerly allocated per connection: small, so idle devices stay cheap; it grows to
        // the frame being read and no further than max_frame_size.
        .read_buffer_size(4 * 1024)
        // Frames are queued up to this size and flushed when the upstream has nothing more.
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(64 * 1024 + max_frame)
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_message))
        .accept_unmasked_frames(accept_unmasked)
}
