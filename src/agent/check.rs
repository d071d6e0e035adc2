//! `portcullis agent --check`: one dial through the whole path of every tunnel, then a ping,
//! and a report that says which hop worked and which broke, in words an admin can act on.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::config::AgentConfig;
use super::dial::{Connector, DialError, Failure, Step, Trace};
use super::target::Target;

#[derive(Debug)]
pub struct CheckReport {
    /// The agent could not even be set up (TLS roots, a malformed proxy variable).
    pub setup_error: Option<String>,
    pub tunnels: Vec<TunnelCheck>,
}

#[derive(Debug)]
pub struct TunnelCheck {
    pub listen: SocketAddr,
    pub url: String,
    pub steps: Vec<(Step, StepOutcome)>,
}

#[derive(Debug)]
pub enum StepOutcome {
    Ok(String),
    Failed(DialError),
    /// Not needed on this path (no proxy).
    NotUsed,
    /// Not reached: an earlier step failed.
    Skipped,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.setup_error.is_none() && self.tunnels.iter().all(TunnelCheck::ok)
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<&DialError> {
        self.tunnels.iter().find_map(TunnelCheck::failure)
    }
}

impl TunnelCheck {
    pub fn ok(&self) -> bool {
        self.failure().is_none()
    }

    pub fn failure(&self) -> Option<&DialError> {
        self.steps.iter().find_map(|(_, o)| match o {
            StepOutcome::Failed(e) => Some(e),
            _ => None,
        })
    }
}

/// Check every tunnel of `config` (the process environment supplies proxy variables).
pub async fn check(config: &AgentConfig) -> CheckReport {
    let connector = match Connector::new(config, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            return CheckReport {
                setup_error: Some(e),
                tunnels: Vec::new(),
            }
        }
    };
    let ping_timeout = Duration::from_secs(config.reconnect.step_timeout_secs);
    let mut tunnels = Vec::new();
    for t in &config.tunnels {
        let steps = match Target::new(t) {
            Ok(target) => check_one(&connector, &target, ping_timeout).await,
            Err(e) => vec![(
                Step::Route,
                StepOutcome::Failed(DialError {
                    step: Step::Route,
                    failure: Failure::Protocol,
                    message: e,
                    gateway_answer: None,
                }),
            )],
        };
        tunnels.push(TunnelCheck {
            listen: t.listen,
            url: t.url.clone(),
            steps,
        });
    }
    CheckReport {
        setup_error: None,
        tunnels,
    }
}

async fn check_one(
    connector: &Connector,
    target: &Target,
    ping_timeout: Duration,
) -> Vec<(Step, StepOutcome)> {
    let mut trace = Trace::default();
    let dialed = connector.dial(target, &mut trace).await;
    let mut failed = None;
    match dialed {
        Ok(mut ws) => match ping(&mut ws, ping_timeout).await {
            Ok(rtt) => trace.0.push((
                Step::Ping,
                format!("answered in {} ms: frames pass both ways", rtt.as_millis()),
            )),
            Err(e) => failed = Some(e),
        },
        Err(e) => failed = Some(e),
    }
    let direct = trace
        .0
        .iter()
        .any(|(s, what)| *s == Step::Route && what.starts_with("direct"));
    let mut steps = Vec::new();
    for step in Step::ALL {
        // A failure wins over an earlier success of the same step: with TLS 1.3 a refused
        // client certificate is only heard after our side of the handshake has finished.
        let outcome = if let Some(e) = failed.take_if(|e| e.step == step) {
            StepOutcome::Failed(e)
        } else if let Some((_, what)) = trace.0.iter().find(|(s, _)| *s == step) {
            StepOutcome::Ok(what.clone())
        } else if step == Step::Proxy && direct {
            StepOutcome::NotUsed
        } else {
            StepOutcome::Skipped
        };
        steps.push((step, outcome));
    }
    steps
}

async fn ping<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    timeout: Duration,
) -> Result<Duration, DialError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let payload = Bytes::from_static(b"portcullis-check");
    let exchange = async {
        ws.send(Message::Ping(payload.clone())).await?;
        while let Some(msg) = ws.next().await {
            match msg? {
                Message::Pong(p) if p == payload => return Ok(true),
                Message::Close(_) => return Ok(false),
                _ => {}
            }
        }
        Ok::<bool, tokio_tungstenite::tungstenite::Error>(false)
    };
    let result = tokio::time::timeout(timeout, exchange).await;
    let rtt = started.elapsed();
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "portcullis agent --check".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(close))).await;
    let failed = |failure, message: String| DialError {
        step: Step::Ping,
        failure,
        message,
        gateway_answer: None,
    };
    match result {
        Ok(Ok(true)) => Ok(rtt),
        Ok(Ok(false)) => Err(failed(
            Failure::Protocol,
            "the gateway closed the tunnel right after the upgrade: is the route's upstream up? (the gateway log says why)".into(),
        )),
        Ok(Err(e)) => Err(failed(Failure::Unreachable, format!("the tunnel broke: {e}"))),
        Err(_) => Err(failed(
            Failure::Timeout,
            format!(
                "no pong within {} s: the upgrade worked, but something on the way holds WebSocket frames back",
                timeout.as_secs()
            ),
        )),
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.setup_error {
            writeln!(f, "FAIL  setup     {e}")?;
        }
        for t in &self.tunnels {
            writeln!(f, "tunnel {} -> {}", t.listen, t.url)?;
            for (step, outcome) in &t.steps {
                let (tag, text) = match outcome {
                    StepOutcome::Ok(what) => ("ok  ", what.clone()),
                    StepOutcome::Failed(e) => ("FAIL", e.message.clone()),
                    StepOutcome::NotUsed => ("--  ", "not used (direct connection)".into()),
                    StepOutcome::Skipped => ("skip", "not reached".into()),
                };
                writeln!(f, "  {tag}  {:<8}  {text}", step.to_string())?;
            }
            match t.failure() {
                None => writeln!(f, "  => ok: this tunnel works end to end")?,
                Some(e) => writeln!(f, "  => FAILED at {}", e.step)?,
            }
        }
        Ok(())
    }
}
