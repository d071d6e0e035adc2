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
//! tls end                     ─ whether TLS reaches the gateway or ends at a hop in front
//! frames, latency, messages   ─ text echo, ping/pong, binary sizes 1 B … 1 MiB
//! bodies                      ─ the largest POST the path passes (HTTP push)
//! idle                        ─ how long a silent WebSocket lives, against the ping interval
//! ```

mod advice;
mod cert;
mod exchange;
mod path;
mod report;
mod session;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::HeaderMap;

pub use report::{Check, Report, Verdict};

use super::config::AgentConfig;
use super::dial::{Connector, DialError, Step, Trace};
use super::hop;
use super::target::{GatewayUrl, Target};

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
        // A POST the path blocks does not stop the WebSocket checks: devices mostly use those.
        let Ok(posted) = self.gateway_view().await else {
            return;
        };
        let Some(mut ws) = self.upgrade().await else {
            return;
        };
        let view = ws.hello.clone();
        self.frames(&mut ws).await;
        self.messages(ws).await;
        match posted {
            Some(view) => self.bodies(&view).await,
            None => self
                .report
                .skip("bodies", "POST /probe did not reach the gateway"),
        }
        self.idle(&view).await;
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

    fn record_trace(&mut self, trace: &Trace) {
        for (step, what) in &trace.0 {
            if let Some(name) = check_name(*step) {
                self.report.ok(name, what.clone());
            }
        }
    }

    fn record_dial_error(&mut self, e: &DialError) {
        let name = check_name(e.step).unwrap_or("upgrade");
        // The gateway itself answering a GET on /probe with "send Upgrade: websocket" means the
        // request reached it without that header: the hop in front dropped it.
        let dropped = e
            .gateway_answer
            .as_deref()
            .is_some_and(|said| said.trim() == crate::probe::NO_UPGRADE.trim());
        let fix = match e.step {
            Step::Upgrade if dropped => format!(
                "the gateway received the upgrade request without its Upgrade header: {}",
                advice::upgrade(&self.hops)
            ),
            Step::Upgrade if e.gateway_answer.is_some() => String::new(),
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
