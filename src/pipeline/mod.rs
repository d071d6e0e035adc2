//! The story of one connection, top to bottom:
//!
//! ```text
//! listener ──► handshake ──► identify ──► policy ──────► forward
//! conn cap,    HTTP/1.1 →    client IP    IP at accept,   pool → upstream,
//! IP bans,     WebSocket     (trusted     then CONNECT    relay until one
//! PROXY, TLS                 proxies)     and each        side ends
//!                                         PUBLISH (MQTT)
//! ```
//!
//! Each stage is a folder with one entry point; this file only strings them together and says
//! how every connection ends, in one log line with its id, client IP and route. On MQTT routes
//! the policy judges packets inside the relay (`forward::mqtt`), since that is where they are.
//! HTTP push devices never upgrade: their story, one request each, is in [`upload`].

mod tunnel;
pub mod upload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::{field, Instrument};

use crate::config::ListenerKind;
use crate::error::{Error, Kind};
use crate::forward::resume::lot::{Attach, Resumption};
use crate::forward::{self, mqtt, Ending};
use crate::gateway::clients::{Arrival, Registration, Transport};
use crate::gateway::timings::Handshake;
use crate::gateway::Shared;
use crate::handshake::{self, DeviceUpgrade, Session};
use crate::listener::{self, Conn, ListenerCtx};

/// Serve one accepted TCP connection to its end.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    listener: Arc<ListenerCtx>,
    shared: Arc<Shared>,
) {
    let span = tracing::info_span!(
        "conn",
        id = field::Empty,
        listener = %listener.name,
        peer = %peer,
        client_ip = field::Empty,
        route = field::Empty,
        client_id = field::Empty,
    );
    story(tcp, peer, slot, listener, shared)
        .instrument(span)
        .await
}

async fn story(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    listener: Arc<ListenerCtx>,
    shared: Arc<Shared>,
) {
    let span = tracing::Span::current();

    // 1. listener: PROXY header (where required) and TLS, within the handshake timeout.
    let admit = |ip| shared.admit_ip(ip);
    // Each phase is boxed, here and below: a future is as large as its largest state and this
    // one lives as long as the connection, so an idle tunnel must not carry the size of the
    // handshake, of the MQTT relay, or of the other relay (measured with -Zprint-type-sizes:
    // the MQTT relay is ~4.5 KB, the opaque one ~2.7 KB; unboxed, every connection held 5.4 KB).
    let conn = match Box::pin(listener::establish(tcp, peer, slot, listener, admit)).await {
        Ok(conn) => conn,
        Err(e) => {
            shared.timings.handshake(Handshake::Refused);
            return log_refused(&e);
        }
    };
    span.record("id", conn.id);
    if conn.listener.kind == ListenerKind::Mqtt {
        return Box::pin(raw_mqtt(conn, &shared)).await;
    }
    let (id, listener_name) = (conn.id, Arc::<str>::from(conn.listener.name.as_str()));
    let transport = match conn.listener.is_tls() {
        true => Transport::Wss,
        false => Transport::Ws,
    };

    // 2. the router: HTTP/1.1 until a WebSocket upgrade; health checks and HTTP push
    // requests are answered in there (push: see `upload`).
    let negotiated = tokio::select! {
        n = Box::pin(handshake::negotiate(conn, router_inputs(&shared))) => n,
        () = shared.drain.started() => return,
    };
    let session = match negotiated {
        Ok(Session::WebSocket(session)) => session,
        Ok(Session::Finished) => return shared.timings.handshake(Handshake::Answered),
        Err(e) => {
            shared.timings.handshake(Handshake::Refused);
            return log_refused(&e);
        }
    };
    shared.timings.handshake(Handshake::Upgraded);

    // 3. identify: the client IP (believed from headers only behind trusted proxies).
    let handshake::WsSession {
        ws,
        target,
        client_ip,
        ip_source,
        probe,
        device,
        resume,
    } = *session;
    span.record("client_ip", field::display(client_ip));
    span.record("route", target.route());
    tracing::debug!(?ip_source, device = ?device.as_ref().map(|d| &d.identity), "websocket accepted");
    if let Some(ticket) = probe {
        let end = Box::pin(async {
            forward::probe::echo(ws.into_tungstenite().await, ticket, &shared.drain).await
        })
        .await;
        return tracing::info!(?end, "probe session ended");
    }

    // A resume: its WebSocket goes to the tunnel's own task, which holds the upstream.
    let resume = match resume {
        Some(Resumption::Resume {
            inbox,
            peer_received,
        }) => {
            let (rx, tx) = tunnel::halves(ws);
            let attach = Attach {
                rx,
                tx,
                peer_received,
                ip: client_ip,
            };
            return tunnel::hand_over(&inbox, attach).await;
        }
        Some(Resumption::Fresh { lease, peer_window }) => Some((lease, peer_window)),
        None => None,
    };

    // Listed among the live connections (the admin API's clients, the index bans kick through).
    let registration = shared.clients.register(Arrival {
        id,
        listener: listener_name,
        route: target.route().into(),
        transport,
        ip: client_ip,
        serial: None,
    });

    // 4 and 5. forward, with the policy judging MQTT routes packet by packet.
    let Some(pool) = shared.pool(target.route()) else {
        let e = Error::upstream(Kind::NoUpstream, "route removed by a reload");
        return Box::pin(close_early(ws, &e)).await;
    };
    let settings = forward::RelaySettings::from(&*shared.websocket());
    let traffic = &registration.client().traffic;
    if pool.mqtt {
        let mut ctx = mqtt_ctx(&shared, &pool, &settings, client_ip, &registration);
        ctx.proof = mqtt::Proof::of(device);
        if let Some(tunnel) = tunnel::resumable(&shared, resume, &settings, &registration) {
            let (rx, tx) = tunnel::halves(ws);
            let ending = Box::pin(tunnel::resumable_mqtt(tunnel, rx, tx, ctx)).await;
            return log_ending(&ending);
        }
        let (rx, tx) =
            forward::relay::device_halves(ws.io, forward::relay::frame_limits(&ws.config));
        let ending = Box::pin(forward::mqtt::relay(rx, tx, ctx)).await;
        return log_ending(&ending);
    }
    // An opaque tunnel: the affinity key is the client IP.
    let key = client_ip.to_string();
    let (upstream, upstream_addr) = match pool.connect(key.as_bytes()).await {
        Ok(pair) => pair,
        // A resumable tunnel's lease goes with `resume`: its token is forgotten.
        Err(e) => return Box::pin(close_early(ws, &e)).await,
    };
    tracing::debug!(upstream = %upstream_addr, "relaying");
    let kick = kicked(&shared, &registration, client_ip);
    if let Some(tunnel) = tunnel::resumable(&shared, resume, &settings, &registration) {
        let (rx, tx) = tunnel::halves(ws);
        let ending = Box::pin(tunnel.run(rx, tx, upstream, kick)).await;
        return log_ending(&ending);
    }
    let (rx, tx) = forward::relay::device_halves(ws.io, forward::relay::frame_limits(&ws.config));
    let drain = &shared.drain;
    let relay = forward::relay_opaque(rx, tx, upstream, &settings, drain, kick, traffic);
    let ending = Box::pin(relay).await;
    log_ending(&ending);
}

/// What the router gets: snapshots and functions, not the gateway's state.
fn router_inputs(shared: &Arc<Shared>) -> handshake::Inputs {
    let admit = {
        let shared = shared.clone();
        Arc::new(move |ip| shared.admit_ip(ip))
    };
    let devices: Option<handshake::DeviceHttp> = shared.push.clone().map(|push| {
        let shared = shared.clone();
        Arc::new(move |req, caller| {
            Box::pin(upload::serve(shared.clone(), push.clone(), req, caller)) as handshake::Reply
        }) as handshake::DeviceHttp
    });
    handshake::Inputs {
        routes: shared.routes(),
        admit,
        websocket: shared.websocket(),
        probe: shared.probe.clone(),
        devices,
        auth: auth_gate(shared),
        resume: shared.resume.clone(),
    }
}

/// Authentication as the router sees it: the keys, revocations (bans on the identity) and
/// what a refusal means to the policy (a strike against the address, for failures).
fn auth_gate(shared: &Arc<Shared>) -> Option<handshake::AuthGate> {
    let authenticator = shared.auth()?;
    let strikes = authenticator.strike_failures;
    let (s1, s2) = (shared.clone(), shared.clone());
    Some(handshake::AuthGate {
        authenticator,
        revoked: Arc::new(move |identity: &str| s1.revoked(identity)),
        refused: Arc::new(move |ip, refusal: &crate::auth::Refusal| {
            s2.auth_refused(ip, refusal, strikes)
        }),
    })
}

/// Resolves when a ban comes to cover this raw tunnel (it names no client ID: an IP or CIDR
/// ban, from any source) or an admin kicks it. Closed with 1008.
async fn kicked(shared: &Shared, registration: &Registration, ip: std::net::IpAddr) -> Error {
    // A ban issued between the handshake's check and the registration found nothing to kick.
    if let Some(why) = ip_ban(shared, ip) {
        return Error::device(Kind::Kicked, why);
    }
    Error::device(Kind::Kicked, registration.client().kicked().await)
}

/// Why a connection at `ip` is to be kicked, if a ban covers the address now.
fn ip_ban(shared: &Shared, ip: std::net::IpAddr) -> Option<String> {
    use crate::policy::{BanList, Subject};
    let ban = shared
        .bans
        .get(&Subject::Ip(ip), std::time::SystemTime::now())?;
    Some(format!("banned while connected: {}", ban.reason))
}

fn mqtt_ctx<'a>(
    shared: &'a Shared,
    pool: &'a forward::Pool,
    relay: &'a forward::RelaySettings,
    client_ip: std::net::IpAddr,
    client: &'a Registration,
) -> mqtt::MqttCtx<'a> {
    mqtt::MqttCtx {
        policy: &shared.policy,
        policy_config: &shared.policy_config,
        pool,
        settings: &shared.mqtt,
        relay,
        client,
        traffic: &client.client().traffic,
        decision_time: &shared.timings.decision,
        drain: &shared.drain,
        client_ip,
        proof: mqtt::Proof::NotAsked,
    }
}

/// A raw MQTT listener has no HTTP: its device proves itself with the certificate of our
/// TLS handshake or not at all.
fn raw_proof(shared: &Shared, conn: &Conn) -> mqtt::Proof {
    let Some(auth) = shared.auth() else {
        return mqtt::Proof::NotAsked;
    };
    let mode = auth.mode(conn.listener.auth(), &conn.listener.mqtt_route);
    let headers = http::HeaderMap::new();
    let presented = crate::auth::Presented {
        headers: &headers,
        tls_cert: conn.client_cert.as_ref(),
        peer: conn.source.ip(),
    };
    let revoked = |id: &str| shared.revoked(id);
    let now = crate::auth::now_secs();
    match auth.authenticate(mode, &conn.listener.mqtt_route, &presented, now, revoked) {
        Ok(device) => mqtt::Proof::of(device),
        Err(refusal) => {
            shared.auth_refused(Some(conn.source.ip()), &refusal, auth.strike_failures);
            mqtt::Proof::Refused(refusal.to_string())
        }
    }
}

/// Raw MQTT over TCP: no HTTP, no WebSocket; the same MQTT relay and policy.
async fn raw_mqtt(conn: Conn, shared: &Shared) {
    let span = tracing::Span::current();
    let client_ip = conn.source.ip();
    span.record("client_ip", field::display(client_ip));
    span.record("route", conn.listener.mqtt_route.as_str());
    let Some(pool) = shared.pool(&conn.listener.mqtt_route) else {
        return log_refused(&Error::upstream(
            Kind::NoUpstream,
            "route removed by a reload",
        ));
    };
    let settings = forward::RelaySettings::from(&*shared.websocket());
    let registration = shared.clients.register(Arrival {
        id: conn.id,
        listener: conn.listener.name.as_str().into(),
        route: conn.listener.mqtt_route.as_str().into(),
        transport: Transport::Tcp,
        ip: client_ip,
        serial: None,
    });
    let proof = raw_proof(shared, &conn);
    let (rx, tx) = tokio::io::split(conn.stream);
    let mut ctx = mqtt_ctx(shared, &pool, &settings, client_ip, &registration);
    ctx.proof = proof;
    let ending = forward::mqtt::relay(mqtt::RawRx(rx), mqtt::RawTx(tx), ctx).await;
    log_ending(&ending);
}

/// Close a WebSocket we could not connect anywhere, with the code that tells the device why.
async fn close_early(ws: DeviceUpgrade, e: &Error) {
    let mut ws = ws.into_tungstenite().await;
    let frame = CloseFrame {
        code: e.close_code(),
        reason: "upstream unavailable, try again later".into(),
    };
    let _ =
        tokio::time::timeout(Duration::from_secs(5), ws.send(Message::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    tracing::warn!(close = u16::from(e.close_code()), side = %e.side(), "tunnel not opened: {e}");
}

fn log_refused(e: &Error) {
    if e.is_device() {
        tracing::info!(side = %e.side(), "connection refused: {e}");
    } else {
        tracing::warn!(side = %e.side(), "connection refused: {e}");
    }
}

fn log_ending(ending: &Ending) {
    let code = u16::from(ending.code);
    // Policy refusals and kicks (1008) are the gateway doing its job, at a rate a flapping
    // fleet controls: info, not warn. Warnings are for what an operator should look at.
    let routine = matches!(
        ending.code,
        CloseCode::Normal
            | CloseCode::Away
            | CloseCode::Status
            | CloseCode::Abnormal
            | CloseCode::Policy
    );
    if routine {
        tracing::info!(close = code, by = %ending.by, up = ending.bytes_up, down = ending.bytes_down, "tunnel ended: {}", ending.reason);
    } else {
        tracing::warn!(close = code, by = %ending.by, up = ending.bytes_up, down = ending.bytes_down, "tunnel ended: {}", ending.reason);
    }
}
