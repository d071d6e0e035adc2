//! The way to the collectors: hyper's HTTP/1.1 client over a connection from the route's pool
//! (balanced and health checked by pingora-load-balancing), idle connections kept for the next
//! upload. A request goes out once: a connection that turns out dead before the request left
//! is replaced and the request sent again; once its body started, never.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::error::{Error, Kind, Result};
use crate::forward::Pool;
use crate::handshake::Body;

/// Idle connections kept per route and collector address.
const MAX_IDLE_PER_ADDR: usize = 64;
/// Collectors tried (connect failures) before giving up.
const MAX_TRIES: usize = 3;
/// Requests sent again on a connection found dead, before giving up.
const MAX_SENDS: usize = 4;

/// A connection to one collector of one route, ready for one request.
pub struct Conn {
    sender: SendRequest<Body>,
    route: Arc<str>,
    addr: SocketAddr,
}

type IdleKey = (Arc<str>, SocketAddr);

#[derive(Default)]
pub struct Collectors {
    idle: Mutex<HashMap<IdleKey, Vec<SendRequest<Body>>>>,
}

impl Collectors {
    /// Send `req` to a collector of `pool` and wait for the head of its answer. The pool picks
    /// the collector for every request (round robin, or consistently by `key`), healthy ones
    /// only; an idle connection to that collector is reused, else one is made, and a collector
    /// that refuses the connection is passed over.
    pub async fn send(
        &self,
        pool: &Pool,
        key: &[u8],
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Conn)> {
        let route: Arc<str> = pool.name.as_str().into();
        let mut tried = Vec::new();
        let mut failures = Vec::new();
        let mut sends = 0;
        while tried.len() < MAX_TRIES && sends < MAX_SENDS {
            let Some(addr) = pool.select(key, &tried) else {
                break;
            };
            let mut conn = match self.idle_conn(&route, addr).await {
                Some(c) => c,
                None => match self.connect(pool, route.clone(), addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        failures.push(e);
                        tried.push(addr);
                        continue;
                    }
                },
            };
            sends += 1;
            match conn.sender.try_send_request(req).await {
                Ok(response) => return Ok((response, conn)),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection was dead (a collector's keep-alive timeout).
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(Error::upstream(
                            Kind::UpstreamIo,
                            format!("collector {}: {}", conn.addr, e.error()),
                        ))
                    }
                },
            }
        }
        let detail = match failures.is_empty() {
            true => format!("route {}: no healthy collector", pool.name),
            false => format!("route {}: {}", pool.name, failures.join("; ")),
        };
        Err(Error::upstream(Kind::NoUpstream, detail))
    }

    /// Keep `conn` for the next request, once its answer was read whole.
    pub fn give_back(&self, conn: Conn) {
        // Not `is_ready()`: right after an answer was read the connection task may not have
        // marked the connection idle yet; `idle_conn` waits for that.
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry((conn.route, conn.addr)).or_default();
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push(conn.sender);
        }
    }

    /// An idle connection to `addr` for `route` that is still open, once it is ready.
    async fn idle_conn(&self, route: &Arc<str>, addr: SocketAddr) -> Option<Conn> {
        loop {
            let sender = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.get_mut(&(route.clone(), addr))?.pop()?
            };
            let mut conn = Conn {
                sender,
                route: route.clone(),
                addr,
            };
            // At once for an idle connection; an error for one the collector closed. One not
            // ready within a second is given up (dropped).
            let ready = tokio::time::timeout(Duration::from_secs(1), conn.sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                return Some(conn);
            }
        }
    }

    /// Forget idle connections (a reload may have removed their collectors).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    async fn connect(
        &self,
        pool: &Pool,
        route: Arc<str>,
        addr: SocketAddr,
    ) -> std::result::Result<Conn, String> {
        let tcp = pool.connect_to(addr).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, "collector connection ended: {e}");
            }
        });
        Ok(Conn {
            sender,
            route,
            addr,
        })
    }
}

/// Why a device's upload body stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    TooLarge,
    Stalled,
    Broken,
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyFault::TooLarge => "the body crossed push.max_body_size",
            BodyFault::Stalled => "the body stalled for push.body_stall_secs",
            BodyFault::Broken => "the body broke off",
        })
    }
}

impl std::error::Error for BodyFault {}

impl BodyFault {
    /// What the device is answered when its body stopped short this way.
    pub fn refusal(fault: Option<BodyFault>) -> crate::error::PushRefusal {
        match fault {
            Some(BodyFault::TooLarge) => crate::error::PushRefusal::TooLarge,
            _ => crate::error::PushRefusal::BodyBroken,
        }
    }
}

/// What the device's body came to, once read.
#[derive(Debug, Clone)]
pub struct BodyReport {
    pub bytes: u64,
    /// SHA-256, hex; `None` if the body did not arrive whole.
    pub fingerprint: Option<String>,
    pub fault: Option<BodyFault>,
}

/// The device's body on its way to the collector: counted, fingerprinted, cut off past the
/// maximum or after a stall (which aborts the request to the collector). Its report is
/// readable through the shared slot once it ends.
pub struct Metered {
    inner: Incoming,
    hash: Option<ring::digest::Context>,
    bytes: u64,
    max: u64,
    stall: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// `Content-Length`, when known: the body is whole once that many bytes came, whether or
    /// not the reader asks for the end after them (hyper's client does not).
    expected: Option<u64>,
    ended: bool,
    /// When the body last moved: ms since `born` (a watchdog on the collector reads it).
    born: std::time::Instant,
    moved_ms: Arc<std::sync::atomic::AtomicU64>,
    report: Arc<Mutex<Option<BodyReport>>>,
}

impl Metered {
    /// An upload's body under `[push]`'s maximum and stall timeout.
    pub fn upload(
        inner: Incoming,
        settings: &crate::config::PushSettings,
    ) -> (Metered, Arc<Mutex<Option<BodyReport>>>) {
        let stall = Duration::from_secs(settings.body_stall_secs);
        Metered::new(inner, settings.max_body_size, stall)
    }

    pub fn new(
        inner: Incoming,
        max: u64,
        stall: Duration,
    ) -> (Metered, Arc<Mutex<Option<BodyReport>>>) {
        let report = Arc::new(Mutex::new(None));
        let expected = inner.size_hint().exact();
        let body = Metered {
            expected,
            ended: false,
            born: std::time::Instant::now(),
            moved_ms: Arc::default(),
            inner,
            hash: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            bytes: 0,
            max,
            stall,
            timer: Box::pin(tokio::time::sleep(stall)),
            report: report.clone(),
        };
        (body, report)
    }

    /// When the body last moved (its start, a frame read, its end).
    pub fn progress(&self) -> Progress {
        Progress {
            born: self.born,
            moved_ms: self.moved_ms.clone(),
        }
    }

    fn moved(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.moved_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn end(&mut self, fault: Option<BodyFault>) {
        self.ended = true;
        self.moved();
        let fingerprint = match fault {
            None => self.hash.take().map(|h| hex(h.finish().as_ref())),
            Some(_) => None,
        };
        let mut slot = self.report.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(BodyReport {
                bytes: self.bytes,
                fingerprint,
                fault,
            });
        }
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if this.bytes > this.max {
                        this.end(Some(BodyFault::TooLarge));
                        return Poll::Ready(Some(Err(Box::new(BodyFault::TooLarge))));
                    }
                    if let Some(h) = this.hash.as_mut() {
                        h.update(data);
                    }
                    if this.expected == Some(this.bytes) {
                        this.end(None);
                    }
                }
                let deadline = tokio::time::Instant::now() + this.stall;
                this.timer.as_mut().reset(deadline);
                this.moved();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => {
                this.end(Some(BodyFault::Broken));
                Poll::Ready(Some(Err(Box::new(BodyFault::Broken))))
            }
            Poll::Ready(None) => {
                if !this.ended {
                    this.end(None);
                }
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.end(Some(BodyFault::Stalled));
                    Poll::Ready(Some(Err(Box::new(BodyFault::Stalled))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        // Polled to its end even when empty: the end is where the report is made.
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When a body last moved, readable while it is on its way.
pub struct Progress {
    born: std::time::Instant,
    moved_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    /// Resolves once neither the body nor anything else has moved for `quiet`: a collector
    /// that stops reading the body, or stops answering after it, is given up on.
    pub async fn stalled_for(&self, quiet: Duration) {
        loop {
            let moved = self.moved_ms.load(std::sync::atomic::Ordering::Relaxed);
            let due = self.born + Duration::from_millis(moved) + quiet;
            if std::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Read a metered body to its end without sending it anywhere (a refused upload, so the
/// device's socket stays usable).
pub async fn drain(mut body: Metered) {
    use http_body_util::BodyExt;
    while let Some(Ok(_)) = body.frame().await {}
}

/// Read an upload's body to its end, keeping nothing but its SHA-256 (a replay compares it, a
/// discard records it); `None` if it broke off, stalled or crossed the maximum.
pub async fn fingerprint(body: Incoming, settings: &crate::config::PushSettings) -> Option<String> {
    let (metered, report) = Metered::upload(body, settings);
    drain(metered).await;
    let report = report.lock().unwrap_or_else(|e| e.into_inner()).take();
    report.and_then(|r| r.fingerprint)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
