//! HTTP push peers: real collectors (hyper servers that count every body they receive whole)
//! and a real HTTP/1.1 client, over plain TCP or TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// How a collector behaves.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 `stored <n>` for every body.
    Ok,
    /// 503 for the first `n` requests (their bodies read and not counted), then as `Ok`.
    FailFirst(usize),
    /// As `Ok`, answering this long after the body arrived.
    Slow(Duration),
    /// An update service: 200 with this body for every request.
    Update(&'static str),
}

/// One request the collector read whole.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

pub struct Collector {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    requests: Arc<AtomicUsize>,
}

impl Collector {
    pub async fn spawn(mode: Mode) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("addr");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let (r, n) = (received.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (r, n, mode) = (r.clone(), n.clone(), mode.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (r, n, mode) = (r.clone(), n.clone(), mode.clone());
                    async move { Ok::<_, Infallible>(answer(req, &r, &n, &mode).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            received,
            requests,
        }
    }

    /// Every body that arrived whole, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Requests seen, complete or not.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
    received: &Mutex<Vec<Received>>,
    requests: &AtomicUsize,
    mode: &Mode,
) -> Response<Full<Bytes>> {
    let n = requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    // A body that broke off is not received: the collector discards it, as a real one must.
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return reply(400, "broken body");
    };
    if let Mode::FailFirst(k) = mode {
        if n < *k {
            return reply(503, "try later");
        }
    }
    let got = Received {
        path: parts.uri.to_string(),
        headers: parts.headers,
        body: body.to_vec(),
    };
    let stored = {
        let mut all = received.lock().unwrap();
        all.push(got);
        all.len()
    };
    match mode {
        Mode::Slow(d) => tokio::time::sleep(*d).await,
        Mode::Update(text) => return reply(200, text),
        _ => {}
    }
    reply(200, &format!("stored {stored}"))
}

fn reply(status: u16, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    r
}

/// An answer as the device sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
}

/// How the body goes out.
pub enum Send {
    /// With `Content-Length`.
    Whole(Vec<u8>),
    /// Chunked, in these pieces.
    Chunked(Vec<Vec<u8>>),
}

/// One request on a fresh connection over `io`.
pub async fn request_on<S>(
    io: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Send,
) -> Reply
where
    S: AsyncRead + AsyncWrite + Unpin + std::marker::Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let body = match body {
        Send::Whole(b) => Full::new(Bytes::from(b))
            .map_err(|never| match never {})
            .boxed(),
        Send::Chunked(pieces) => {
            let frames = pieces
                .into_iter()
                .map(|p| Ok::<_, Infallible>(Frame::data(Bytes::from(p))));
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
    };
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(body).expect("request"))
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// `POST path` over plain TCP with a whole body.
pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    request_on(tcp, "POST", path, headers, Send::Whole(body.to_vec())).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    request_on(tcp, "GET", path, &[], Send::Whole(Vec::new())).await
}

/// `POST path` over TLS (trusting `ca_pem`, SNI localhost).
pub async fn post_tls(
    addr: SocketAddr,
    ca_pem: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let config = super::tls_client::default_client(ca_pem);
    let tls = super::tls_client::try_connect(addr, config, "localhost")
        .await
        .expect("TLS connect");
    request_on(tls, "POST", path, headers, Send::Whole(body.to_vec())).await
}

/// A gateway config: one plain listener (plus `listener_extra` lines), the collectors as the
/// push route, and `extra` TOML appended (push keys go after the `[push]` header it opens).
pub fn config(collectors: &[SocketAddr], push_keys: &str, extra: &str) -> String {
    let ups: Vec<String> = collectors.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
handshake_timeout_secs = 5

[routes.collectors]
upstreams = [{ups}]
protocol = "http"
balance = "round_robin"
health_check_interval_secs = 1

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 5

{extra}

[push]
route = "collectors"
{push_keys}
"#,
        ups = ups.join(", ")
    )
}
