//! Stage 2, the HTTP router: `Conn` → `Session`. HTTP/1.1 (hyper) with async handlers and
//! streamed bodies, until a WebSocket upgrade or the client leaves.
//!
//! Routes: `/healthz`, `/readyz`; WebSocket upgrades on `/mqtt` and `/tunnel/{route}` (strict
//! RFC 6455, because HAProxy ≥ 2.4 and F5 refuse sloppy ones); `/probe`; and `/push/{serial}`,
//! `/checkin/{serial}` for HTTP devices, whose handler the pipeline supplies. The router sees
//! only narrow inputs ([`Inputs`]): the route table, an admission function, a settings snapshot,
//! never the gateway's whole state.

mod probe_body;
mod reply;
mod resume;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::config::WebSocketSettings;
use crate::error::{Error, Kind, Result};
use crate::forward::probe::{ProbeGate, ProbeTicket};
use crate::forward::Routes;
use crate::identify::{IpSource, Origin};
use crate::listener::{Conn, ListenerCtx};
pub use reply::{full, marked, text, Body};
pub use upgrade::Target;

pub type DeviceWebSocket = WebSocketStream<TokioIo<Upgraded>>;

/// An upgraded device connection and the WebSocket settings its route gets: the relay reads
/// and writes its frames itself; the probe and early refusals go through tungstenite.
pub struct DeviceUpgrade {
    pub io: Upgraded,
    pub config: WebSocketConfig,
}

impl DeviceUpgrade {
    pub async fn into_tungstenite(self) -> DeviceWebSocket {
        WebSocketStream::from_raw_socket(TokioIo::new(self.io), Role::Server, Some(self.config))
            .await
    }
}

/// Judges a client IP the router learned from a trusted proxy's header (bans, connect rate).
pub type Admit = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The answer to an HTTP device's request, produced by the pipeline's story of an upload.
pub type Reply = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// `/push/{serial}` and `/checkin/{serial}`: given the request and who sent it.
pub type DeviceHttp = Arc<dyn Fn(Request<Incoming>, Caller) -> Reply + Send + Sync>;

/// Who sent a request, as far as the router can tell.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub ip: IpAddr,
    pub ip_source: IpSource,
    /// Whether the request reached us over TLS (ours, not a proxy's).
    pub tls: bool,
}

/// The reason of a ban on a proven identity (a revocation), if any.
pub type Revoked = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Told of each refused authentication, with the client IP to strike (`None` when all we
/// know is a trusted proxy's own address, which is never struck).
pub type AuthRefused = Arc<dyn Fn(Option<IpAddr>, &crate::auth::Refusal) + Send + Sync>;

/// Device authentication at the upgrade, where a listener or route asks for it.
pub struct AuthGate {
    pub authenticator: Arc<crate::auth::Authenticator>,
    pub revoked: Revoked,
    /// Failures from one address are strikes.
    pub refused: AuthRefused,
}

/// What the router needs, snapshotted at accept: a reload in between does not tear a request.
pub struct Inputs {
    pub routes: Arc<Routes>,
    pub admit: Admit,
    pub websocket: Arc<WebSocketSettings>,
    pub probe: Option<Arc<ProbeGate>>,
    /// HTTP push and check-ins, when `[push]` is configured.
    pub devices: Option<DeviceHttp>,
    /// `None`: no listener or route asks devices to authenticate.
    pub auth: Option<AuthGate>,
    /// Resumable tunnels, unless `[resume] enabled = false`.
    pub resume: Option<Arc<crate::forward::resume::lot::Lot>>,
}

/// What the device asked for and who it is, as far as HTTP can tell.
pub struct WsSession {
    pub ws: DeviceUpgrade,
    pub target: Target,
    pub client_ip: IpAddr,
    pub ip_source: IpSource,
    /// On `/probe`: the admitted session and what to tell the probe first.
    pub probe: Option<ProbeTicket>,
    /// Who the device proved to be, where its route asks.
    pub device: Option<crate::auth::Authenticated>,
    /// On a `/tunnel` that offered or claims resumption.
    pub resume: Option<crate::forward::resume::lot::Resumption>,
}

pub enum Session {
    WebSocket(Box<WsSession>),
    /// Only plain HTTP was served (health checks, uploads, refusals) and the client is gone.
    Finished,
}

/// One connection's router: the inputs, where the connection came from, and the slot an
/// accepted upgrade leaves its socket in once hyper lets go of it.
struct Router {
    inputs: Inputs,
    listener: Arc<ListenerCtx>,
    origin: Origin,
    /// The client certificate our TLS verified, if any.
    client_cert: Option<rustls_pki_types::CertificateDer<'static>>,
    accepted: Mutex<Option<upgrade::Upgrade>>,
}

/// Serve HTTP on the connection until it upgrades to a WebSocket or closes.
pub async fn negotiate(conn: Conn, inputs: Inputs) -> Result<Session> {
    let router = Arc::new(Router {
        inputs,
        listener: conn.listener.clone(),
        origin: Origin {
            addr: conn.source.ip(),
            source: if conn.source == conn.peer {
                IpSource::Peer
            } else {
                IpSource::ProxyProtocol
            },
        },
        client_cert: conn.client_cert,
        accepted: Mutex::new(None),
    });
    let service = {
        let router = router.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            async move { Ok::<_, Infallible>(router.route(req).await) }
        })
    };
    let timeout = conn.listener.handshake_timeout;
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Slowloris guard: each request head must arrive within this time.
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
    let Some(a) = router.accepted.lock().ok().and_then(|mut slot| slot.take()) else {
        return Ok(Session::Finished);
    };
    let upgraded = a
        .on_upgrade
        .await
        .map_err(|e| Error::device(Kind::Protocol, format!("upgrade failed: {e}")))?;
    let config = ws_config(
        &router.inputs,
        &a.target,
        router.listener.accept_unmasked_frames,
    );
    Ok(Session::WebSocket(Box::new(WsSession {
        ws: DeviceUpgrade {
            io: upgraded,
            config,
        },
        target: a.target,
        client_ip: a.client_ip,
        ip_source: a.ip_source,
        probe: a.probe,
        device: a.device,
        resume: a.resume,
    })))
}

impl Router {
    /// One request → one answer: health, a refusal, an accepted upgrade, or a device's upload.
    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let inputs = &self.inputs;
        let path = req.uri().path();
        // `/push/{serial}`, or `/push` with the serial in a configured header (and the same
        // for `/checkin`); the upload's story checks the serial.
        let device_path = ["/push", "/checkin"].iter().any(|p| {
            path.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
        if device_path {
            let Some(devices) = &inputs.devices else {
                return text(
                    http::StatusCode::NOT_FOUND,
                    "HTTP push is not enabled here\n",
                );
            };
            let (caller, believed) = self.caller(&req);
            if believed && !(inputs.admit)(caller.ip) {
                return text(http::StatusCode::FORBIDDEN, upgrade::BANNED);
            }
            return devices(req, caller).await;
        }
        match path {
            "/healthz" => text(http::StatusCode::OK, "ok\n"),
            "/readyz" => match inputs.routes.values().any(|p| p.any_healthy()) {
                true => text(http::StatusCode::OK, "ready\n"),
                false => text(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream\n",
                ),
            },
            crate::probe::PATH if inputs.probe.is_some() && req.method() == http::Method::POST => {
                probe_body::count(req, self).await
            }
            _ => match upgrade::accept(req, self) {
                Ok((response, accepted)) => {
                    if let Ok(mut slot) = self.accepted.lock() {
                        *slot = Some(accepted);
                    }
                    response
                }
                Err(refusal) => refusal,
            },
        }
    }

    /// The client IP, and whether it was believed from a trusted proxy's header (and so was
    /// not judged at accept).
    fn caller<B>(&self, req: &Request<B>) -> (Caller, bool) {
        let (ip, ip_source) = crate::identify::client_ip(
            self.origin,
            req.headers(),
            &self.listener.trusted_proxies(),
            self.listener.client_ip_header,
        );
        let caller = Caller {
            ip,
            ip_source,
            tls: self.listener.is_tls(),
        };
        (caller, ip_source != self.origin.source)
    }
}

fn ws_config(inputs: &Inputs, target: &Target, accept_unmasked: bool) -> WebSocketConfig {
    let s = &inputs.websocket;
    let (max_frame, max_message) = match (target, &inputs.probe) {
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
