//! How a dial fails, in words an admin can act on: the step that broke, a kind callers can
//! branch on, and a sentence naming what to change (`--check` prints it; the log carries it).

use std::fmt;
use std::io;

use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::agent::connect::ConnectError;
use crate::agent::tls::Pin;

/// The hops of one dial, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Direct or through which proxy (and why).
    Route,
    /// TCP to the proxy, or to the gateway when direct.
    Connect,
    /// HTTP CONNECT through the proxy.
    Proxy,
    /// TLS handshake and the gateway's certificate or key.
    Tls,
    /// The WebSocket upgrade and the route on the gateway.
    Upgrade,
    /// A ping answered over the new tunnel (`--check` only).
    Ping,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Route,
        Step::Connect,
        Step::Proxy,
        Step::Tls,
        Step::Upgrade,
        Step::Ping,
    ];
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Route => "route",
            Step::Connect => "connect",
            Step::Proxy => "proxy",
            Step::Tls => "tls",
            Step::Upgrade => "upgrade",
            Step::Ping => "ping",
        })
    }
}

/// What kind of failure, for callers that branch (tests, `--check` hints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Unreachable,
    Timeout,
    /// 407 (or 401 from a CONNECT); `sent`: credentials were offered.
    ProxyAuth {
        status: u16,
        sent: bool,
    },
    ProxyRefused {
        status: u16,
    },
    /// The gateway's key matches no pin; `seen` is the key it presented.
    PinMismatch {
        seen: Option<Pin>,
    },
    /// The certificate chain or name did not verify.
    Untrusted,
    TlsFailed,
    /// The gateway (or something in front) answered this instead of 101.
    Status {
        status: u16,
    },
    Protocol,
}

/// A failed dial: the step, what kind of failure, and a sentence for an admin.
#[derive(Debug, Clone)]
pub struct DialError {
    pub step: Step,
    pub failure: Failure,
    pub message: String,
    /// When the failure is an HTTP answer the gateway itself gave (its marker header is on
    /// it): the body, which says why. `None` for everything else, a hop's answers included.
    pub gateway_answer: Option<String>,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

impl std::error::Error for DialError {}

impl DialError {
    /// A failure that retrying within seconds will not cure (credentials, pins, trust, a
    /// route that does not exist): a waiting local client is closed at once instead of being
    /// kept until the open timeout. Outages (unreachable, timeouts, 5xx) are worth the wait.
    pub fn is_lasting(&self) -> bool {
        match &self.failure {
            Failure::ProxyAuth { .. }
            | Failure::PinMismatch { .. }
            | Failure::Untrusted
            | Failure::TlsFailed => true,
            Failure::ProxyRefused { status } => *status == 403,
            Failure::Status { status } => {
                (400..500).contains(status) && ![408, 429].contains(status)
            }
            Failure::Unreachable | Failure::Timeout | Failure::Protocol => false,
        }
    }
}

pub(super) fn fail(step: Step, failure: Failure, message: impl Into<String>) -> DialError {
    DialError {
        step,
        failure,
        message: message.into(),
        gateway_answer: None,
    }
}

/// What the TLS failure words need to know about this agent and this handshake.
pub(super) struct TlsFacts<'a> {
    /// How the certificate is judged (`tls::trust_words`).
    pub trust: &'a str,
    pub has_client_cert: bool,
    pub sni: &'a str,
    /// The key the server presented, if the verifier got that far.
    pub seen: Option<Pin>,
}

pub(super) fn tls_error(e: &io::Error, facts: &TlsFacts<'_>) -> DialError {
    use rustls::CertificateError as C;
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let (failure, message) = match inner {
        Some(rustls::Error::InvalidCertificate(C::ApplicationVerificationFailure)) => {
            let seen = facts.seen;
            let shown = seen.map_or("an unreadable key".to_string(), |p| p.to_string());
            (
                Failure::PinMismatch { seen },
                format!(
                    "the server's key {shown} matches none of tls.pins; nothing was sent. \
                     If this is your gateway's new key, add it to tls.pins. Behind a WAF \
                     (Cloudflare, F5) this is the WAF's key: pin a key or CA you control instead"
                ),
            )
        }
        Some(rustls::Error::InvalidCertificate(c)) => {
            let why = match c {
                C::UnknownIssuer => format!(
                    "not signed by a CA trusted here ({}): set tls.ca_file to your CA, or pin the key",
                    facts.trust
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                    "not valid for {:?}: set the tunnel's sni to a name on the certificate",
                    facts.sni
                ),
                C::BadSignature => format!(
                    "its signature does not verify against {}: issued by another CA with the same name? Set tls.ca_file to the CA that issued it",
                    facts.trust
                ),
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                    "expired or not yet valid (check the device's clock)".to_string()
                }
                C::Other(e) if format!("{e:?}").contains("CaUsedAsEndEntity") => {
                    "the server presents a CA certificate as its own (a self-signed one?): pin its key with tls.pins, or give the server a leaf signed by that CA".to_string()
                }
                other => format!("{other:?}"),
            };
            let seen = facts.seen
                .map_or(String::new(), |p| format!(" (its key: {p})"));
            (Failure::Untrusted, format!("certificate refused: {why}{seen}"))
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            (Failure::TlsFailed, alert_words(*alert, facts.has_client_cert))
        }
        Some(rustls::Error::InvalidMessage(_)) | Some(rustls::Error::InappropriateMessage { .. }) => (
            Failure::TlsFailed,
            "the server did not answer in TLS: plain HTTP on this port? (use ws:// or the TLS port)".to_string(),
        ),
        Some(other) => (Failure::TlsFailed, format!("handshake failed: {other}")),
        None if e.kind() == io::ErrorKind::UnexpectedEof => (
            Failure::TlsFailed,
            "the connection closed during the handshake: not a TLS port, or a filter on the way".to_string(),
        ),
        None => (Failure::TlsFailed, format!("handshake failed: {e}")),
    };
    fail(Step::Tls, failure, message)
}

/// A fatal alert from the server. With TLS 1.3 a refused client certificate arrives after
/// our side of the handshake is done, on the first read: [`upgrade_error`] lands here too.
fn alert_words(alert: rustls::AlertDescription, has_client_cert: bool) -> String {
    use rustls::AlertDescription as A;
    match (alert, has_client_cert) {
        (A::CertificateRequired | A::HandshakeFailure, false) => format!(
            "the server refused the handshake ({alert:?}): it requires a client certificate (set tls.client_cert and tls.client_key)"
        ),
        (_, true) => format!(
            "the server refused the handshake ({alert:?}): is this device's client certificate issued by a CA the gateway trusts, and still valid?"
        ),
        (_, false) => format!(
            "the server refused the handshake ({alert:?}): does it require a client certificate (tls.client_cert)?"
        ),
    }
}

/// The upgrade failed: a status from the gateway (or a hop in front), or a late TLS alert.
pub(super) fn upgrade_error(e: WsError, has_client_cert: bool) -> DialError {
    if let WsError::Io(io) = &e {
        let inner = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::AlertReceived(alert)) = inner {
            return fail(
                Step::Tls,
                Failure::TlsFailed,
                alert_words(*alert, has_client_cert),
            );
        }
    }
    status_error(e)
}

pub(super) fn proxy_error(e: ConnectError) -> DialError {
    let failure = match &e {
        ConnectError::AuthRequired {
            status,
            sent_credentials,
        } => Failure::ProxyAuth {
            status: *status,
            sent: *sent_credentials,
        },
        ConnectError::Refused { status, .. } => Failure::ProxyRefused { status: *status },
        ConnectError::Io(_) => Failure::Unreachable,
        ConnectError::Malformed(_) => Failure::Protocol,
    };
    let hint = match &e {
        ConnectError::Refused { status: 403, .. } => {
            ": the proxy's rules forbid this destination or port (ask for CONNECT to the gateway's port)"
        }
        ConnectError::Refused { status: 502..=504, .. } => {
            ": the proxy cannot reach the gateway (DNS, firewall, or the gateway is down)"
        }
        _ => "",
    };
    fail(Step::Proxy, failure, format!("{e}{hint}"))
}

/// A non-101 answer (or a broken exchange) in words.
fn status_error(e: WsError) -> DialError {
    let WsError::Http(resp) = e else {
        let failure = match &e {
            WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed => {
                Failure::Unreachable
            }
            _ => Failure::Protocol,
        };
        return fail(
            Step::Upgrade,
            failure,
            format!("the WebSocket upgrade failed: {e}"),
        );
    };
    let status = resp.status().as_u16();
    let body = resp
        .body()
        .as_deref()
        .map(|b| {
            String::from_utf8_lossy(b)
                .trim()
                .chars()
                .take(160)
                .collect::<String>()
        })
        .filter(|b| !b.is_empty())
        .map_or(String::new(), |b| format!(" ({b:?})"));
    let by = crate::agent::hop::answered_by(resp.headers());
    let challenged = resp.headers().contains_key("cf-mitigated");
    let hint = match status {
        _ if challenged => "Cloudflare challenged the device: exempt the gateway hostname from bot checks and Browser Integrity Check",
        404 => "no such route: check the /tunnel/{route} in the URL against the gateway's [routes]",
        401 | 403 => "refused: check device.token / the client certificate, or a WAF rule in front",
        400 => "something on the way dropped the Upgrade or Connection header (nginx: proxy_http_version 1.1 and both headers)",
        426 => "WebSocket version refused",
        200 => "answered as plain HTTP: something on the way does not pass WebSocket upgrades",
        300..=399 => "redirected: the agent does not follow redirects; fix the URL",
        502..=504 => "a proxy or load balancer in front cannot reach the gateway",
        _ => "unexpected answer",
    };
    let mut e = fail(
        Step::Upgrade,
        Failure::Status { status },
        format!("HTTP {status} from {by}{body}: {hint}"),
    );
    if resp.headers().contains_key(crate::probe::MARKER_HEADER) {
        let said = resp.body().as_deref().map(String::from_utf8_lossy);
        e.gateway_answer = Some(said.unwrap_or_default().chars().take(200).collect());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_retried_configuration_problems_are_not() {
        let e = |failure| fail(Step::Tls, failure, "");
        for lasting in [
            Failure::ProxyAuth {
                status: 407,
                sent: true,
            },
            Failure::ProxyRefused { status: 403 },
            Failure::PinMismatch { seen: None },
            Failure::Untrusted,
            Failure::Status { status: 404 },
        ] {
            assert!(e(lasting.clone()).is_lasting(), "{lasting:?}");
        }
        for passing in [
            Failure::Unreachable,
            Failure::Timeout,
            Failure::ProxyRefused { status: 503 },
            Failure::Status { status: 502 },
            Failure::Status { status: 429 },
        ] {
            assert!(!e(passing.clone()).is_lasting(), "{passing:?}");
        }
    }
}
