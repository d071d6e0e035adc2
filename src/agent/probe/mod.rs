//! `portcullis probe URL`: the doctor for "devices can't connect through our WAF".
//!
//! Run from the device's network, with the agent's proxy and TLS settings, it walks the path to
//! the gateway's `/probe` endpoint and prints one line per check, and for each problem what to
//! change on which hop:
//!
//! ```text
//! route, dns, tcp, proxy, tls ─ the dial, step by step (the agent's dialer)
//! certificate                 ─ who issued what the device sees: the WAF's, or ours
//! gateway view                ─ POST /probe: the request as the gateway got it
//! upgrade, headers, client ip ─ the WebSocket upgrade, what hops added or stripped, whose IP
//! frames, latency, messages   ─ text and binary echo, ping/pong, sizes 1 B … 1 MiB
//! bodies                      ─ the largest POST the path passes (HTTP push)
//! idle                        ─ how long a silent WebSocket lives, against the ping interval
//! ```

mod advice;
mod cert;
mod http1;
mod report;
mod session;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::HeaderMap;

pub use report::{Check, Report, Verdict};

use super::config::AgentConfig;
use super::dial::{Connector, DialError, Failure, Route, Step, Trace};
use super::hop;
use super::target::{GatewayUrl, Target};
use crate::probe::{BodyReceipt, Hello};
use session::Session;

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The gateway, e.g. wss://gw.example.com (https:// is taken as wss://); the probe talks to
    /// its /probe endpoint whatever path is given.
    pub url: String,
    /// An agent config whose [tls], [proxy] and [device] settings to use (pins, CA, proxy,
    /// token), so the probe sees the path as the agent does.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// TLS server name, when it differs from the URL's host.
    #[arg(long)]
    pub sni: Option<String>,
    /// Host header, when it differs from the URL's host.
    #[arg(long)]
    pub host: Option<String>,
    /// Skip the idle check (which takes up to --idle-max-secs).
    #[arg(long)]
    pub quick: bool,
    /// The longest silence the idle check tries.
    #[arg(long, default_value_t = 120)]
    pub idle_max_secs: u64,
    /// The largest WebSocket message tried (the gateway caps it too).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_message: usize,
    /// The largest HTTP body tried, for HTTP push (the gateway caps it too).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Probe, print, and give the exit code: 0 when no check failed, 1 otherwise.
pub async fn run(args: &ProbeArgs) -> u8 {
    let report = probe(args, |k| std::env::var(k).ok()).await;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    u8::from(report.failed())
}

/// Everything the checks share.
struct Probe<'a> {
    args: &'a ProbeArgs,
    connector: Connector,
    target: Target,
    timeout: Duration,
    /// The intermediaries that named themselves in an answer so far.
    hops: Vec<String>,
    report: Report,
}

/// Walk the path; `env` supplies proxy variables (tests pass their own).
pub async fn probe(args: &ProbeArgs, env: impl Fn(&str) -> Option<String>) -> Report {
    let mut report = Report {
        url: args.url.clone(),
        ..Report::default()
    };
    let (config, target) = match setup(args) {
        Ok(x) => x,
        Err(e) => {
            report.fail(
                "setup",
                e,
                "give the gateway's URL, e.g. wss://gw.example.com",
            );
            return report;
        }
    };
    report.url = target.url.to_string();
    let connector = match Connector::new(&config, env) {
        Ok(c) => c,
        Err(e) => {
            report.fail("setup", e, "fix the agent config's [tls] or [proxy]");
            return report;
        }
    };
    let mut p = Probe {
        args,
        connector,
        target,
        timeout: Duration::from_secs(config.reconnect.step_timeout_secs),
        hops: Vec::new(),
        report,
    };
    p.walk().await;
    p.report
}

impl Probe<'_> {
    async fn walk(&mut self) {
        if !self.dns().await {
            return;
        }
        let Some(view) = self.gateway_view().await else {
            return;
        };
        let Some(mut ws) = self.upgrade().await else {
            return;
        };
        self.frames(&mut ws).await;
        self.messages(ws).await;
        self.bodies(&view).await;
        self.idle(&view).await;
    }

    /// Direct or through a proxy, and the name that has to resolve here.
    async fn dns(&mut self) -> bool {
        let (host, port, what) = match self.connector.route(&self.target) {
            Route::Direct { why } => {
                self.report.ok("route", format!("direct ({why})"));
                (
                    self.target.url.host.clone(),
                    self.target.url.port,
                    "gateway",
                )
            }
            Route::Via { proxy, from } => {
                self.report.ok(
                    "route",
                    format!("via proxy {proxy} (from {from}); it resolves the gateway's name"),
                );
                (proxy.host.clone(), proxy.port, "proxy")
            }
        };
        let started = Instant::now();
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let resolved = tokio::time::timeout(self.timeout, lookup).await;
        match resolved {
            Ok(Ok(addrs)) => {
                let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                self.report.ok(
                    "dns",
                    format!(
                        "{what} {host} -> {} in {} ms",
                        addrs.join(", "),
                        ms(started)
                    ),
                );
                true
            }
            Ok(Err(e)) => {
                self.report.fail(
                    "dns",
                    format!("cannot resolve the {what} {host}: {e}"),
                    "check the name, and the DNS server this network gives devices (or reach the gateway through the proxy: HTTPS_PROXY)",
                );
                false
            }
            Err(_) => {
                self.report.fail(
                    "dns",
                    format!("no answer for {host} within {} s", self.timeout.as_secs()),
                    "the DNS server does not answer: check the network's resolver",
                );
                false
            }
        }
    }

    /// The dial up to TLS, the certificate the device sees, and `POST /probe`: what the gateway
    /// received. `None` when the path fails before the gateway.
    async fn gateway_view(&mut self) -> Option<Hello> {
        let mut trace = Trace::default();
        let opened = self.connector.open(&self.target, &mut trace).await;
        self.record_trace(&trace);
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                self.record_dial_error(&e);
                return None;
            }
        };
        self.certificate(&stream);
        let headers = self.device_headers()?;
        let answer = http1::post(&mut stream, crate::probe::PATH, &headers, 16, self.timeout).await;
        match answer {
            Ok(a) if a.status == 200 && a.headers.contains_key(crate::probe::MARKER_HEADER) => {
                self.note_hop(&a.headers);
                match serde_json::from_slice::<BodyReceipt>(&a.body) {
                    Ok(receipt) => {
                        self.report.ok(
                            "gateway",
                            format!(
                                "POST /probe reached the gateway (client IP it believes: {})",
                                receipt.view.client_ip
                            ),
                        );
                        Some(receipt.view)
                    }
                    Err(e) => {
                        self.report.fail(
                            "gateway",
                            format!("the gateway's answer does not parse: {e}"),
                            "is the gateway the same version as this probe?",
                        );
                        None
                    }
                }
            }
            Ok(a) => {
                self.note_hop(&a.headers);
                let by = hop::answered_by(&a.headers);
                let fix = match (a.status, a.headers.contains_key(crate::probe::MARKER_HEADER)) {
                    (404, true) => "the gateway has the probe endpoint off: [probe] enabled = true".to_string(),
                    (429 | 503, true) => "the gateway's probe budget is used up: wait a minute ([probe] sessions_per_minute)".to_string(),
                    (_, false) => format!("{by} does not pass /probe to the gateway: route /probe (like /mqtt, /tunnel/, /push/) to it"),
                    _ => "unexpected answer".to_string(),
                };
                self.report.fail(
                    "gateway",
                    format!("POST /probe answered {} by {by}", a.status),
                    fix,
                );
                None
            }
            Err(e) => {
                self.report.fail(
                    "gateway",
                    format!("POST /probe: {e}"),
                    "something between here and the gateway drops plain HTTP requests",
                );
                None
            }
        }
    }

    /// The WebSocket upgrade on `/probe`, with the MQTT subprotocol offered, and the hello.
    async fn upgrade(&mut self) -> Option<Session> {
        let mut trace = Trace::default();
        let opened = Session::open(&self.connector, &self.target, &mut trace, self.timeout).await;
        let (session, response) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.record_dial_error(&e);
                return None;
            }
        };
        self.note_hop(response.headers());
        let proto = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match proto.as_deref() {
            Some(p) if p.eq_ignore_ascii_case(crate::probe::SUBPROTOCOL) => {
                self.report.ok("upgrade", "101 Switching Protocols, subprotocol mqtt echoed")
            }
            _ => self.report.fail(
                "upgrade",
                "101, but the answer names no subprotocol: the path strips Sec-WebSocket-Protocol, and MQTT clients that require `mqtt` will hang up",
                advice::upgrade(&self.hops),
            ),
        }
        let sent = session.sent_headers.clone();
        self.headers(&sent, &session.hello, response.headers());
        self.client_ip(&session.hello);
        Some(session)
    }

    /// Which request headers the hops added or stripped, and which they added to the answer.
    fn headers(&mut self, sent: &HeaderMap, hello: &Hello, answer: &HeaderMap) {
        let seen: Vec<&str> = hello.headers.iter().map(|(n, _)| n.as_str()).collect();
        let mut added: Vec<&str> = seen
            .iter()
            .copied()
            .filter(|n| !sent.contains_key(*n))
            .collect();
        added.dedup();
        let stripped: Vec<&str> = sent
            .keys()
            .map(|n| n.as_str())
            .filter(|n| !seen.contains(n))
            .collect();
        const OURS: [&str; 7] = [
            "upgrade",
            "connection",
            "sec-websocket-accept",
            "sec-websocket-protocol",
            "date",
            "content-length",
            crate::probe::MARKER_HEADER,
        ];
        let answer_added: Vec<&str> = answer
            .keys()
            .map(|n| n.as_str())
            .filter(|n| !OURS.contains(n))
            .collect();
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let detail = format!(
            "request: added {}; stripped {}; answer: added {}",
            list(&added),
            list(&stripped),
            list(&answer_added)
        );
        let lost: Vec<&str> = stripped
            .iter()
            .copied()
            .filter(|n| {
                matches!(
                    *n,
                    "authorization" | "user-agent" | "sec-websocket-protocol"
                )
            })
            .collect();
        if lost.is_empty() {
            self.report.ok("headers", detail);
        } else {
            self.report.warn(
                "headers",
                detail,
                format!("the path drops {}: devices that rely on them fail (a token in Authorization, Cloudflare's bot rules on User-Agent)", lost.join(", ")),
            );
        }
    }

    /// The client IP the gateway believes, and whether it should believe a header instead.
    fn client_ip(&mut self, hello: &Hello) {
        let forwarded = [
            "x-forwarded-for",
            "x-real-ip",
            "cf-connecting-ip",
            "forwarded",
        ];
        let carried: Vec<&str> = hello
            .headers
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| forwarded.contains(n))
            .collect();
        let ip = &hello.client_ip;
        if hello.ip_source == "peer" && !carried.is_empty() {
            self.report.warn(
                "client ip",
                format!("the gateway believes {ip}, its TCP peer: the proxy in front, not the device (the path adds {})", carried.join(", ")),
                format!("on the gateway's listener: trusted_proxies = [\"{ip}/32\"] (the proxy's address or network) and client_ip_header = \"{}\"", carried[0]),
            );
        } else {
            let how = match hello.ip_source.as_str() {
                "peer" => "the TCP peer; no proxy on the way added a client-IP header".to_string(),
                "proxy-protocol" => {
                    "from the PROXY protocol header of a trusted load balancer".to_string()
                }
                other => format!("from {other}, set by a trusted proxy"),
            };
            self.report
                .ok("client ip", format!("the gateway believes {ip} ({how})"));
        }
    }

    /// Text and binary frames both ways, and a ping answered with its pong.
    async fn frames(&mut self, ws: &mut Session) {
        let text = ws.echo_text("portcullis probe", self.timeout).await;
        let ping = ws.ping(self.timeout).await;
        match (text, ping) {
            (Ok(()), Ok(())) => self.report.ok("frames", "text and binary frames pass both ways; ping answered with pong"),
            (Err(e), _) => self.report.fail("frames", format!("text frame: {e}"), advice::frame(&self.hops)),
            (_, Err(e)) => self.report.fail("frames", format!("ping/pong: {e}"), "a hop on the way swallows WebSocket control frames: the gateway's keep-alive pings cannot work through it"),
        }
    }

    /// Round-trip latency, then echoes of growing size: the largest message the path passes.
    async fn messages(&mut self, mut ws: Session) {
        match ws.latency(10, self.timeout).await {
            Ok((p50, max)) => self.report.ok(
                "latency",
                format!("1-byte echo round trip: median {p50} µs, max {max} µs over 10"),
            ),
            Err(e) => {
                self.report.fail("latency", e, advice::frame(&self.hops));
                return;
            }
        }
        let cap = self.args.max_message.min(ws.hello.max_message_size);
        let sizes = [1usize, 1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];
        let mut largest = 0;
        for size in sizes.into_iter().filter(|s| *s <= cap) {
            match ws.echo_binary(size, self.timeout).await {
                Ok(()) => largest = size,
                Err(e) => {
                    self.report.fail(
                        "messages",
                        format!(
                            "a {} message did not come back ({e}); the largest that did: {}",
                            bytes(size),
                            bytes(largest)
                        ),
                        advice::frame(&self.hops),
                    );
                    return;
                }
            }
        }
        ws.close().await;
        self.report.ok(
            "messages",
            format!(
                "binary echo up to {} passes (the largest tried)",
                bytes(largest)
            ),
        );
    }

    /// `POST /probe` with bodies of growing size: what HTTP push can send through this path.
    async fn bodies(&mut self, view: &Hello) {
        let cap = self.args.max_body.min(view.max_body_size);
        let sizes = [1usize << 10, 64 << 10, 1 << 20, 8 << 20, 16 << 20];
        let mut largest = 0;
        for size in sizes.into_iter().filter(|s| *s <= cap) {
            let mut trace = Trace::default();
            let mut stream = match self.connector.open(&self.target, &mut trace).await {
                Ok(s) => s,
                Err(e) => {
                    return self
                        .report
                        .fail("bodies", format!("cannot reconnect: {e}"), "")
                }
            };
            let Some(headers) = self.device_headers() else {
                return;
            };
            let timeout = self.timeout + Duration::from_secs((size >> 20) as u64 * 2);
            match http1::post(&mut stream, crate::probe::PATH, &headers, size, timeout).await {
                Ok(a) if a.status == 200 && a.headers.contains_key(crate::probe::MARKER_HEADER) => {
                    largest = size
                }
                Ok(a) => {
                    self.note_hop(&a.headers);
                    let by = hop::answered_by(&a.headers);
                    let detail = format!(
                        "a {} body was answered {} by {by}; the largest that passed: {}",
                        bytes(size),
                        a.status,
                        bytes(largest)
                    );
                    // Push batches are rarely above 1 MiB: a narrower path is broken, a wider
                    // one that stops short of the gateway's own cap is worth knowing.
                    if size <= 1 << 20 {
                        self.report.fail("bodies", detail, advice::body(&self.hops));
                    } else {
                        self.report.warn("bodies", detail, advice::body(&self.hops));
                    }
                    return;
                }
                Err(e) => {
                    let detail = format!(
                        "a {} body failed: {e}; the largest that passed: {}",
                        bytes(size),
                        bytes(largest)
                    );
                    if size <= 1 << 20 {
                        self.report.fail("bodies", detail, advice::body(&self.hops));
                    } else {
                        self.report.warn("bodies", detail, advice::body(&self.hops));
                    }
                    return;
                }
            }
        }
        self.report.ok(
            "bodies",
            format!(
                "HTTP bodies up to {} pass (the largest tried)",
                bytes(largest)
            ),
        );
    }

    /// Silent WebSockets held for growing times, all at once: how long the path lets one live,
    /// against the gateway's ping interval.
    async fn idle(&mut self, view: &Hello) {
        if self.args.quick {
            return self.report.skip("idle", "--quick");
        }
        let max = self
            .args
            .idle_max_secs
            .min(view.max_session_secs.saturating_sub(5))
            .max(1);
        let mut steps: Vec<u64> = [2u64, 4, 8, 15, 30, 45, 60, 90, 120, 180, 240]
            .into_iter()
            .filter(|s| *s < max)
            .collect();
        steps.push(max);
        let checks = steps.iter().map(|secs| {
            Session::survives_silence(
                &self.connector,
                &self.target,
                Duration::from_secs(*secs),
                self.timeout,
            )
        });
        let results = futures_util::future::join_all(checks).await;
        let mut survived = 0;
        let mut died: Option<(u64, String)> = None;
        for (secs, r) in steps.iter().zip(results) {
            match r {
                Ok(()) => survived = survived.max(*secs),
                Err(e) => {
                    if died.as_ref().is_none_or(|(d, _)| secs < d) {
                        died = Some((*secs, e));
                    }
                }
            }
        }
        let ping = view.ping_interval_secs;
        match died {
            None if max < ping => self.report.warn(
                "idle",
                format!("a silent WebSocket survived {max} s, the longest tried, which is less than the gateway's {ping} s ping interval"),
                format!("run again with --idle-max-secs above {ping} to know whether quiet devices stay up"),
            ),
            None => self.report.ok("idle", format!("a silent WebSocket survived {max} s (the longest tried); the gateway pings every {ping} s")),
            Some((d, how)) if survived >= ping => self.report.ok(
                "idle",
                format!("the path cuts a silent WebSocket after {survived}–{d} s ({how}); the gateway pings every {ping} s, which keeps devices up"),
            ),
            Some((d, how)) => self.report.fail(
                "idle",
                format!("the path cuts a silent WebSocket after {survived}–{d} s ({how}), but the gateway pings only every {ping} s: quiet devices are cut"),
                format!("{}; or lower the gateway's [websocket] ping_interval_secs below {}", advice::idle(&self.hops), survived.max(1)),
            ),
        }
    }

    fn device_headers(&mut self) -> Option<HeaderMap> {
        match self.connector.device_headers(&self.target) {
            Ok(h) => Some(h),
            Err(e) => {
                self.report
                    .fail("setup", e.message, "fix the [device] settings");
                None
            }
        }
    }

    /// The certificate the device sees: issued by whom, and to whom.
    fn certificate(&mut self, stream: &super::dial::GatewayStream) {
        let super::dial::GatewayStream::Tls(tls) = stream else {
            return;
        };
        let (_, conn) = tls.get_ref();
        let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
            return;
        };
        match cert::names(leaf.as_ref()) {
            Some((issuer, subject)) => self.report.ok(
                "cert",
                format!("the device sees {subject}, issued by {issuer} (a WAF or CDN that terminates TLS shows its own here: pin a key you control, not this leaf)"),
            ),
            None => self.report.warn("cert", "the certificate could not be read", "none needed if tls passed"),
        }
    }

    fn record_trace(&mut self, trace: &Trace) {
        for (step, what) in &trace.0 {
            if let Some(name) = check_name(*step) {
                self.report.ok(name, what.clone());
            }
        }
    }

    fn record_dial_error(&mut self, e: &DialError) {
        let name = check_name(e.step).unwrap_or("upgrade");
        // The gateway itself refusing a plain GET on /probe with 400 means the request reached
        // it without its Upgrade header: the hop in front dropped it.
        let dropped =
            e.failure == Failure::Status { status: 400 } && e.message.contains("from the gateway");
        let fix = match e.step {
            Step::Upgrade if dropped => format!(
                "the gateway received the upgrade request without its Upgrade header: {}",
                advice::upgrade(&self.hops)
            ),
            Step::Upgrade => advice::upgrade(&self.hops),
            // The dialer's message already says what to change.
            _ => String::new(),
        };
        self.report.fail(name, e.message.clone(), fix);
    }

    fn note_hop(&mut self, headers: &HeaderMap) {
        if let Some(h) = hop::intermediary(headers) {
            if !self.hops.contains(&h) {
                self.hops.push(h);
            }
        }
    }
}

fn check_name(step: Step) -> Option<&'static str> {
    match step {
        Step::Route => None, // reported with the DNS check
        Step::Connect => Some("tcp"),
        Step::Proxy => Some("proxy"),
        Step::Tls => Some("tls"),
        Step::Upgrade => Some("upgrade"),
        Step::Ping => Some("ping"),
    }
}

/// The agent config (given, or the defaults: system roots, proxy from the environment) and the
/// `/probe` target on the URL's host.
fn setup(args: &ProbeArgs) -> Result<(AgentConfig, Target), String> {
    let url = args.url.trim();
    let url = if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        url.to_string()
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let probe_url = format!("{scheme}://{authority}{}", crate::probe::PATH);
    let parsed = GatewayUrl::parse(&probe_url)?;
    let config = match &args.config {
        Some(path) => AgentConfig::load(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => AgentConfig::parse(
            &format!("[[tunnel]]\nlisten = \"127.0.0.1:0\"\nurl = \"{probe_url}\"\n"),
            None,
        )
        .map_err(|e| e.to_string())?,
    };
    // A tunnel of the config to the same host lends its SNI and Host overrides.
    let same_host = config
        .tunnels
        .iter()
        .find(|t| GatewayUrl::parse(&t.url).is_ok_and(|u| u.host == parsed.host));
    let target = Target {
        sni: args
            .sni
            .clone()
            .or_else(|| same_host.and_then(|t| t.sni.clone()))
            .unwrap_or_else(|| parsed.host.clone()),
        host: args
            .host
            .clone()
            .or_else(|| same_host.and_then(|t| t.host.clone())),
        url: parsed,
    };
    Ok((config, target))
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}
