//! Stage 1, listener: a listening socket → `Conn` (stream + peer + real source address).
//!
//! Everything here happens before a byte of HTTP is read: the connection cap, the PROXY header
//! (only where configured, only from trusted peers), and TLS. All of it runs under the listener's
//! handshake timeout, so a client that connects and sends nothing costs one slot for that long.

pub mod proxy_protocol;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{ListenerConfig, ListenerKind, ProxyProtocolMode};
use crate::error::{Error, Kind, Result};
use crate::identify::{read_cidr_file, CidrSet, ClientIpHeader};
pub use crate::stream::DeviceStream;
use proxy_protocol::ProxyVersion;

/// A listener's settings, shared by all its connections. Swappable parts sit behind locks that
/// are never held across an await.
pub struct ListenerCtx {
    pub name: String,
    pub kind: ListenerKind,
    pub local_addr: SocketAddr,
    pub handshake_timeout: Duration,
    pub accept_unmasked_frames: bool,
    pub mqtt_route: String,
    pub client_ip_header: ClientIpHeader,
    proxy_protocol: ProxyProtocolMode,
    proxy_protocol_from: CidrSet,
    trusted_proxies: RwLock<Arc<CidrSet>>,
    tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
    /// What devices must present here unless their route says otherwise.
    auth: RwLock<crate::config::AuthMode>,
    slots: Arc<Semaphore>,
}

/// An accepted, established device connection.
pub struct Conn {
    pub id: u64,
    pub stream: DeviceStream,
    /// The TCP peer: a device, or a load balancer in front of us.
    pub peer: SocketAddr,
    /// The PROXY header's source where one was required, else the peer.
    pub source: SocketAddr,
    pub listener: Arc<ListenerCtx>,
    /// The client certificate our TLS handshake verified (listeners with `client_ca`).
    pub client_cert: Option<rustls_pki_types::CertificateDer<'static>>,
    _slot: OwnedSemaphorePermit,
}

pub struct PreparedReload {
    auth: crate::config::AuthMode,
    tls: Option<tokio_rustls::TlsAcceptor>,
    trusted: Arc<CidrSet>,
}

pub struct Listener {
    pub ctx: Arc<ListenerCtx>,
    tcp: TcpListener,
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh id from the connections' sequence (also for entries that are not one connection,
/// such as a push device in the clients list).
pub fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// Bind a listener and prepare its TLS.
pub async fn bind(cfg: &ListenerConfig) -> std::result::Result<Listener, String> {
    let tcp = TcpListener::bind(cfg.bind).await.map_err(|e| {
        format!(
            "listener {}: cannot bind {}: {e}",
            cfg.display_name(),
            cfg.bind
        )
    })?;
    let local_addr = tcp.local_addr().map_err(|e| e.to_string())?;
    let ctx = ListenerCtx {
        name: cfg.display_name(),
        kind: cfg.kind,
        local_addr,
        handshake_timeout: cfg.handshake_timeout(),
        accept_unmasked_frames: cfg.accept_unmasked_frames,
        mqtt_route: cfg.mqtt_route().to_string(),
        client_ip_header: cfg.client_ip_header,
        proxy_protocol: cfg.proxy_protocol,
        proxy_protocol_from: CidrSet::new(cfg.proxy_protocol_from.iter().copied()),
        trusted_proxies: RwLock::new(Arc::new(trusted_proxies(cfg)?)),
        tls: RwLock::new(tls_acceptor(cfg)?),
        auth: RwLock::new(cfg.auth),
        slots: Arc::new(Semaphore::new(cfg.max_connections)),
    };
    Ok(Listener {
        ctx: Arc::new(ctx),
        tcp,
    })
}

fn trusted_proxies(cfg: &ListenerConfig) -> std::result::Result<CidrSet, String> {
    let mut nets = cfg.trusted_proxies.clone();
    if let Some(file) = &cfg.trusted_proxies_file {
        nets.extend(read_cidr_file(file)?);
    }
    Ok(CidrSet::new(nets))
}

fn tls_acceptor(
    cfg: &ListenerConfig,
) -> std::result::Result<Option<tokio_rustls::TlsAcceptor>, String> {
    cfg.tls
        .as_ref()
        .map(|t| tls::acceptor(t, cfg.kind == ListenerKind::Websocket))
        .transpose()
        .map_err(|e| format!("listener {}: tls: {e}", cfg.display_name()))
}

// === impl Listener ===

impl Listener {
    /// Wait for the next connection that fits under the cap. Over the cap, a connection is
    /// closed at once: better an immediate refusal than a device stuck in the accept backlog.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on a failing accept.
                    tracing::warn!(listener = %self.ctx.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.ctx.slots.clone().try_acquire_owned() {
                Ok(slot) => return (tcp, peer, slot),
                Err(_) => {
                    tracing::warn!(listener = %self.ctx.name, %peer, "connection cap reached; refused")
                }
            }
        }
    }
}

// === impl ListenerCtx ===

impl ListenerCtx {
    pub fn trusted_proxies(&self) -> Arc<CidrSet> {
        self.trusted_proxies
            .read()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// A peer whose own address is not the client's: a trusted proxy or PROXY protocol sender.
    pub fn is_proxy_peer(&self, ip: std::net::IpAddr) -> bool {
        (self.proxy_protocol != ProxyProtocolMode::Off && self.proxy_protocol_from.contains(ip))
            || self.trusted_proxies().contains(ip)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.read().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Read new certificates and trusted proxies; nothing changes until `apply`, so a reload
    /// either applies to every listener or to none.
    pub fn prepare_reload(cfg: &ListenerConfig) -> std::result::Result<PreparedReload, String> {
        Ok(PreparedReload {
            auth: cfg.auth,
            tls: tls_acceptor(cfg)?,
            trusted: Arc::new(trusted_proxies(cfg)?),
        })
    }

    /// Swap in what `prepare_reload` read; live connections keep what they have.
    pub fn apply(&self, prepared: PreparedReload) {
        if let Ok(mut g) = self.tls.write() {
            *g = prepared.tls;
        }
        if let Ok(mut g) = self.trusted_proxies.write() {
            *g = prepared.trusted;
        }
        if let Ok(mut g) = self.auth.write() {
            *g = prepared.auth;
        }
    }

    /// The listener's `auth`. Unreadable (a poisoned lock): tokens, failing closed.
    pub fn auth(&self) -> crate::config::AuthMode {
        self.auth
            .read()
            .map(|g| *g)
            .unwrap_or(crate::config::AuthMode::Token)
    }

    fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.read().ok().and_then(|g| g.clone())
    }
}

/// Read the PROXY header (if this listener requires one) and terminate TLS (if configured),
/// all within the handshake timeout.
/// `admit` judges a client address a PROXY header revealed (bans, connect rate), still
/// before TLS: a banned client behind an NLB must not cost a handshake per attempt.
pub async fn establish(
    mut tcp: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    ctx: Arc<ListenerCtx>,
    admit: impl Fn(std::net::IpAddr) -> bool,
) -> Result<Conn> {
    let _ = tcp.set_nodelay(true);
    let deadline = ctx.handshake_timeout;
    let work = async {
        let source = read_proxy_header(&mut tcp, peer, &ctx).await?;
        if source != peer && !admit(source.ip()) {
            return Err(Error::device(
                Kind::Refused,
                format!("{source} (from the PROXY header) is banned or connecting too often"),
            ));
        }
        let stream = match ctx.acceptor() {
            Some(acceptor) => {
                DeviceStream::Tls(Box::new(acceptor.accept(tcp).await.map_err(|e| {
                    Error::device(Kind::Protocol, format!("TLS handshake failed: {e}"))
                })?))
            }
            None => DeviceStream::Plain(tcp),
        };
        Ok::<_, Error>((stream, source))
    };
    let (stream, source) = tokio::time::timeout(deadline, work).await.map_err(|_| {
        Error::device(
            Kind::Timeout,
            "no PROXY header / TLS handshake within the handshake timeout",
        )
    })??;
    let client_cert = match &stream {
        DeviceStream::Tls(tls) => tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.clone().into_owned()),
        DeviceStream::Plain(_) => None,
    };
    Ok(Conn {
        id: next_conn_id(),
        stream,
        peer,
        source,
        listener: ctx,
        client_cert,
        _slot: slot,
    })
}

async fn read_proxy_header(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    ctx: &ListenerCtx,
) -> Result<SocketAddr> {
    let version = match ctx.proxy_protocol {
        ProxyProtocolMode::Off => return Ok(peer),
        ProxyProtocolMode::V1 => ProxyVersion::V1,
        ProxyProtocolMode::V2 => ProxyVersion::V2,
        ProxyProtocolMode::Any => ProxyVersion::Any,
    };
    if !ctx.proxy_protocol_from.contains(peer.ip()) {
        // Anyone who can reach the port could otherwise claim any source address.
        return Err(Error::device(
            Kind::Protocol,
            format!("{peer} is not in proxy_protocol_from; PROXY header refused"),
        ));
    }
    let header = proxy_protocol::read_header(tcp, version)
        .await
        .map_err(|e| Error::device(Kind::Protocol, e))?;
    // LOCAL (health checks) and UNKNOWN carry no address: the peer is all we know.
    Ok(header.source.unwrap_or(peer))
}
