//! One dial: TCP (to the proxy or the gateway) → HTTP CONNECT → TLS → WebSocket upgrade.
//!
//! Each step has its own timeout and its own error, so that a tunnel failure in the log and a
//! line of `--check` both say which hop broke and what to do about it. Nothing is written to
//! the gateway before TLS has verified it: the upgrade request (with the device token) is the
//! first application byte.

mod failure;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub use super::proxy::Route;
pub use crate::stream::GatewayStream;

/// The gateway's 101 answer (headers, subprotocol).
pub type UpgradeResponse = tokio_tungstenite::tungstenite::handshake::client::Response;
pub use failure::{DialError, Failure, Step};

use super::config::{AgentConfig, DeviceSettings};
use super::connect;
use super::proxy::ProxyPlan;
use super::target::Target;
use super::tls::{self, Verifier};
use failure::{fail, TlsFacts};

/// The successful steps of a dial, in words (`--check` prints them).
#[derive(Debug, Default)]
pub struct Trace(pub Vec<(Step, String)>);

impl Trace {
    fn ok(&mut self, step: Step, what: impl Into<String>) {
        self.0.push((step, what.into()));
    }
}

/// Everything a dial needs, built once.
pub struct Connector {
    tls: Arc<ClientConfig>,
    verifier: Arc<Verifier>,
    trust: String,
    has_client_cert: bool,
    proxies: ProxyPlan,
    device: DeviceSettings,
    step_timeout: Duration,
    /// `TCP_USER_TIMEOUT`: unacknowledged data this old kills the socket, so a dead path is
    /// found even while a write is stuck (pings cannot be sent then).
    user_timeout: Duration,
}

impl Connector {
    pub fn new(
        config: &AgentConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Connector, String> {
        let (tls, verifier) = tls::client_config(&config.tls).map_err(|e| format!("tls: {e}"))?;
        let k = &config.keepalive;
        Ok(Connector {
            tls,
            verifier,
            trust: tls::trust_words(&config.tls),
            has_client_cert: config.tls.client_cert.is_some(),
            proxies: ProxyPlan::resolve(&config.proxy, env)?,
            device: config.device.clone(),
            step_timeout: Duration::from_secs(config.reconnect.step_timeout_secs),
            user_timeout: k.ping_interval() * (k.max_missed_pongs + 1),
        })
    }

    /// Open one tunnel to `target`, recording the steps that worked in `trace`.
    pub async fn dial(
        &self,
        target: &Target,
        trace: &mut Trace,
    ) -> Result<WebSocketStream<GatewayStream>, DialError> {
        let stream = self.open(target, trace).await?;
        let (ws, _) = self
            .upgrade(stream, target, trace, &[], ws_config())
            .await?;
        Ok(ws)
    }

    /// How long each step of a dial may take.
    pub fn step_timeout(&self) -> Duration {
        self.step_timeout
    }

    /// Open one tunnel with `extra` request headers (resumption's), keeping the 101's headers.
    pub async fn dial_with(
        &self,
        target: &Target,
        trace: &mut Trace,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<(WebSocketStream<GatewayStream>, UpgradeResponse), DialError> {
        let stream = self.open(target, trace).await?;
        self.upgrade(stream, target, trace, extra, ws_config())
            .await
    }

    /// Direct, or the proxy to go through, for `target` (`probe` reports it before dialing).
    pub fn route(&self, target: &Target) -> Route {
        let url = &target.url;
        self.proxies.route(&url.host, url.port, url.tls)
    }

    /// TCP (to the proxy or the gateway), CONNECT through the proxy, TLS: a stream on which
    /// the gateway is verified and nothing has been sent yet.
    pub async fn open(
        &self,
        target: &Target,
        trace: &mut Trace,
    ) -> Result<GatewayStream, DialError> {
        let url = &target.url;
        let route = self.proxies.route(&url.host, url.port, url.tls);
        let (host, port, what) = match &route {
            Route::Direct { why } => {
                trace.ok(Step::Route, format!("direct ({why})"));
                (url.host.as_str(), url.port, "the gateway")
            }
            Route::Via { proxy, from } => {
                trace.ok(Step::Route, format!("via proxy {proxy} (from {from})"));
                (proxy.host.as_str(), proxy.port, "the proxy")
            }
        };

        let started = Instant::now();
        let mut tcp = self
            .step(Step::Connect, tcp_connect(host, port, what))
            .await?;
        let _ = tcp.set_nodelay(true);
        self.set_user_timeout(&tcp);
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        trace.ok(
            Step::Connect,
            format!("TCP to {what} {host}:{port} ({peer}) in {} ms", ms(started)),
        );

        if let Route::Via { proxy, .. } = &route {
            let ua = &self.device.user_agent;
            self.step(Step::Proxy, async {
                connect::connect(&mut tcp, proxy, &url.host, url.port, ua)
                    .await
                    .map_err(failure::proxy_error)
            })
            .await?;
            trace.ok(
                Step::Proxy,
                format!("CONNECT {}:{} accepted", url.host, url.port),
            );
        }

        let stream = if url.tls {
            let tls = self
                .step(Step::Tls, self.tls_handshake(tcp, target))
                .await?;
            let (_, session) = tls.get_ref();
            let version = session
                .protocol_version()
                .and_then(|v| v.as_str())
                .map_or("TLS".to_string(), |v| v.replace("TLSv1_", "TLS 1."));
            let seen = self
                .verifier
                .seen
                .get(&target.sni)
                .map_or(String::new(), |p| format!(", key {p}"));
            trace.ok(
                Step::Tls,
                format!(
                    "{version} with {}, trusted by {}{seen}",
                    target.sni, self.trust
                ),
            );
            GatewayStream::Tls(Box::new(tls))
        } else {
            trace.ok(Step::Tls, "none: ws:// URL, traffic in clear");
            GatewayStream::Plain(tcp)
        };
        Ok(stream)
    }

    /// The WebSocket upgrade on an opened stream, with `extra` request headers.
    pub async fn upgrade(
        &self,
        stream: GatewayStream,
        target: &Target,
        trace: &mut Trace,
        extra: &[(HeaderName, HeaderValue)],
        config: WebSocketConfig,
    ) -> Result<(WebSocketStream<GatewayStream>, UpgradeResponse), DialError> {
        let mut request = self.request(target)?;
        for (name, value) in extra {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let (ws, response) = self
            .step(Step::Upgrade, async {
                tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                    .await
                    .map_err(|e| failure::upgrade_error(e, self.has_client_cert))
            })
            .await?;
        trace.ok(
            Step::Upgrade,
            format!(
                "{} on {} (route accepted)",
                response.status(),
                target.url.uri.path()
            ),
        );
        Ok((ws, response))
    }

    /// The headers every request to the gateway carries (Host, User-Agent, the device token,
    /// custom headers), without the WebSocket handshake's own.
    pub fn device_headers(&self, target: &Target) -> Result<http::HeaderMap, DialError> {
        let mut headers = self.request(target)?.headers().clone();
        let handshake: Vec<_> = headers
            .keys()
            .filter(|n| {
                let n = n.as_str();
                n == "connection" || n == "upgrade" || n.starts_with("sec-websocket-")
            })
            .cloned()
            .collect();
        for name in handshake {
            headers.remove(name);
        }
        Ok(headers)
    }

    async fn step<T>(
        &self,
        step: Step,
        work: impl Future<Output = Result<T, DialError>>,
    ) -> Result<T, DialError> {
        match tokio::time::timeout(self.step_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(fail(
                step,
                Failure::Timeout,
                format!(
                    "no answer within {} s{}",
                    self.step_timeout.as_secs(),
                    match step {
                        Step::Connect => ": a firewall dropping the packets, or the wrong address",
                        Step::Proxy => ": the proxy did not answer CONNECT",
                        Step::Tls => ": the server does not speak TLS here, or something on the way swallows it",
                        _ => "",
                    }
                ),
            )),
        }
    }

    async fn tls_handshake(
        &self,
        tcp: TcpStream,
        target: &Target,
    ) -> Result<TlsStream<TcpStream>, DialError> {
        let name = ServerName::try_from(target.sni.clone()).map_err(|_| {
            fail(
                Step::Tls,
                Failure::TlsFailed,
                format!("{:?} is not a valid TLS server name", target.sni),
            )
        })?;
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                failure::tls_error(
                    &e,
                    &TlsFacts {
                        trust: &self.trust,
                        has_client_cert: self.has_client_cert,
                        sni: &target.sni,
                        seen: self.verifier.seen.get(&target.sni),
                    },
                )
            })
    }

    fn request(&self, target: &Target) -> Result<http::Request<()>, DialError> {
        let bad = |m: String| fail(Step::Upgrade, Failure::Protocol, m);
        let mut req = (&target.url.uri)
            .into_client_request()
            .map_err(|e| bad(format!("cannot build the upgrade request: {e}")))?;
        let h = req.headers_mut();
        let value = |v: &str| HeaderValue::from_str(v).map_err(|e| bad(e.to_string()));
        if let Some(host) = &target.host {
            h.insert(http::header::HOST, value(host)?);
        }
        h.insert(http::header::USER_AGENT, value(&self.device.user_agent)?);
        if let Some(token) = &self.device.token {
            let name = HeaderName::from_bytes(self.device.token_header.as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            let v = if name == http::header::AUTHORIZATION {
                format!("Bearer {}", token.expose())
            } else {
                token.expose().to_string()
            };
            let mut v = value(&v)?;
            v.set_sensitive(true);
            h.insert(name, v);
        }
        for (name, v) in &self.device.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
            h.append(name, value(v)?);
        }
        Ok(req)
    }

    #[cfg(target_os = "linux")]
    fn set_user_timeout(&self, tcp: &TcpStream) {
        let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(self.user_timeout));
    }

    #[cfg(not(target_os = "linux"))]
    fn set_user_timeout(&self, _tcp: &TcpStream) {}
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

/// Frames from the gateway are at most 16 KiB (its read chunk); buffers stay small so a device
/// with many local connections stays within a few MiB.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(128 * 1024)
        .max_frame_size(Some(1 << 20))
        .max_message_size(Some(1 << 20))
}

async fn tcp_connect(host: &str, port: u16, what: &str) -> Result<TcpStream, DialError> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| {
            fail(
                Step::Connect,
                Failure::Unreachable,
                format!("cannot resolve {what} {host}: {e}"),
            )
        })?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some((addr, e)),
        }
    }
    let detail = match last {
        Some((addr, e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            format!("{what} {host}:{port} ({addr}) refused the connection: nothing listens there")
        }
        Some((addr, e)) => format!("cannot reach {what} {host}:{port} ({addr}): {e}"),
        None => format!("{host} resolves to no address"),
    };
    Err(fail(Step::Connect, Failure::Unreachable, detail))
}
