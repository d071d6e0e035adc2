//! Device authentication, at the upgrade: who a device is, from a signed token in
//! `Authorization: Bearer` or from a client certificate (ours, or a trusted proxy's forward),
//! before any upstream connection exists.
//!
//! The router asks [`Authenticator::authenticate`] once per upgrade with what the request
//! carried; the answer is an identity (or none, where the route asks for nothing) or a
//! [`Refusal`], whose HTTP status lives with the other mappings in `error`. A reload builds a
//! new `Authenticator` (key files re-read): the rotation path.

mod cert;
mod token;

pub use crate::device_token as issue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use http::HeaderMap;
use rustls_pki_types::CertificateDer;

use crate::config::{AuthMode, Binding, Config};
pub use cert::CertError;
pub use token::{Claims, TokenError};

/// What an accepted device proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub identity: Arc<str>,
    pub method: Method,
    /// How its MQTT client ID must match the identity (the config in force when it proved it).
    pub binding: Binding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Token,
    Certificate,
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing the route accepts was presented.
    Missing {
        mode: AuthMode,
    },
    /// A token that does not verify (or is malformed, or names no key of ours).
    InvalidToken(TokenError),
    /// A token that did verify but whose time is not now.
    Expired,
    NotYetValid,
    /// A client certificate (forwarded) that does not verify or names nobody.
    InvalidCertificate(CertError),
    /// A valid identity the token does not allow on this route.
    NotForRoute,
    /// A valid identity that is banned (a revocation), with the ban's reason.
    Revoked(String),
    /// More than one `Authorization` header: which one would a proxy have checked?
    Ambiguous,
}

impl Refusal {
    /// For counting: `Refusal::LABELS[r.label()]`.
    pub const LABELS: [&'static str; 5] = ["missing", "invalid", "expired", "forbidden", "revoked"];

    pub fn label(&self) -> usize {
        match self {
            Refusal::Missing { .. } => 0,
            Refusal::InvalidToken(_) | Refusal::InvalidCertificate(_) | Refusal::Ambiguous => 1,
            Refusal::Expired | Refusal::NotYetValid => 2,
            Refusal::NotForRoute => 3,
            Refusal::Revoked(_) => 4,
        }
    }

    /// A failed attempt to prove an identity (as opposed to a proven one not let in): what
    /// repeated from one address is a strike.
    pub fn is_failure(&self) -> bool {
        self.label() <= 2
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing { mode } => f.write_str(match mode {
                AuthMode::Mtls => "a client certificate is required",
                AuthMode::TokenOrMtls => "a device token or a client certificate is required",
                _ => "a device token is required (Authorization: Bearer)",
            }),
            Refusal::InvalidToken(e) => write!(f, "{e}"),
            Refusal::Expired => f.write_str("token expired"),
            Refusal::NotYetValid => f.write_str("token not valid yet"),
            Refusal::InvalidCertificate(e) => write!(f, "{e}"),
            Refusal::NotForRoute => f.write_str("this device may not use this route"),
            Refusal::Revoked(why) => write!(f, "device revoked: {why}"),
            Refusal::Ambiguous => f.write_str("more than one Authorization header"),
        }
    }
}

impl Refusal {
    /// What the device is told: the category only. Which key exists, what webpki said and
    /// an operator's ban reason stay in the log.
    pub fn public(&self) -> &'static str {
        match self {
            Refusal::Missing {
                mode: AuthMode::Mtls,
            } => "a client certificate is required\n",
            Refusal::Missing {
                mode: AuthMode::TokenOrMtls,
            } => "a device token or a client certificate is required\n",
            Refusal::Missing { .. } => "a device token is required (Authorization: Bearer)\n",
            Refusal::InvalidToken(_) | Refusal::Ambiguous => "token rejected\n",
            Refusal::Expired => "token expired\n",
            Refusal::NotYetValid => "token not valid yet\n",
            Refusal::InvalidCertificate(_) => "client certificate rejected\n",
            Refusal::NotForRoute => "this device may not use this route\n",
            Refusal::Revoked(_) => "device revoked\n",
        }
    }
}

/// Counts for metrics, kept across reloads.
#[derive(Debug, Default)]
pub struct AuthStats {
    pub refused: [AtomicU64; 5],
    /// By method: token, certificate.
    pub accepted: [AtomicU64; 2],
}

/// What one upgrade presented.
pub struct Presented<'a> {
    pub headers: &'a HeaderMap,
    /// The client certificate of our own TLS handshake, verified there.
    pub tls_cert: Option<&'a CertificateDer<'static>>,
    /// Who sent the request to us (the PROXY source, else the TCP peer): a forwarded
    /// certificate is believed only from `[auth] forwarded_cert_from`.
    pub peer: std::net::IpAddr,
}

/// The configured keys and modes, as one snapshot.
pub struct Authenticator {
    keys: Vec<token::Key>,
    claims: token::ClaimRules,
    pub binding: Binding,
    pub strike_failures: bool,
    routes: HashMap<String, AuthMode>,
    certs: cert::CertIdentity,
    pub stats: Arc<AuthStats>,
}

impl Authenticator {
    /// `None` when nothing anywhere asks for authentication.
    pub fn from_config(config: &Config, stats: Arc<AuthStats>) -> Result<Option<Self>, String> {
        let routes: HashMap<String, AuthMode> = config
            .routes
            .iter()
            .filter_map(|(n, r)| Some((n.clone(), r.auth?)))
            .collect();
        let listeners = config.listeners.iter().map(|l| l.auth);
        if listeners
            .chain(routes.values().copied())
            .all(|m| m == AuthMode::None)
        {
            return Ok(None);
        }
        // Certificate-only setups need no [auth] table: its defaults apply.
        let settings = config.auth.clone().unwrap_or_default();
        let keys = settings
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| token::Key::load(k).map_err(|e| format!("auth.key[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Authenticator {
            keys,
            claims: token::ClaimRules {
                skew: settings.clock_skew_secs,
                audience: settings.audience.clone(),
                issuer: settings.issuer.clone(),
            },
            binding: settings.bind_client_id,
            strike_failures: settings.strike_failures,
            routes,
            certs: cert::CertIdentity::new(&settings)?,
            stats,
        }))
    }

    /// What a device must present to reach `route` through a listener asking `listener`.
    pub fn mode(&self, listener: AuthMode, route: &str) -> AuthMode {
        self.routes.get(route).copied().unwrap_or(listener)
    }

    /// Who is asking, by what the route accepts: a certificate first (it was checked during
    /// the TLS handshake already), then a token; then whether that identity is `revoked`
    /// (banned: the ban's reason). `Ok(None)`: the route asks for nothing.
    pub fn authenticate(
        &self,
        mode: AuthMode,
        route: &str,
        presented: &Presented<'_>,
        now_secs: u64,
        revoked: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Authenticated>, Refusal> {
        if mode == AuthMode::None {
            return Ok(None);
        }
        let outcome =
            self.prove(mode, route, presented, now_secs)
                .and_then(|a| match revoked(&a.identity) {
                    Some(why) => Err(Refusal::Revoked(why)),
                    None => Ok(a),
                });
        match &outcome {
            Ok(a) => {
                let i = (a.method == Method::Certificate) as usize;
                self.stats.accepted[i].fetch_add(1, Relaxed);
            }
            Err(r) => {
                self.stats.refused[r.label()].fetch_add(1, Relaxed);
            }
        }
        outcome.map(Some)
    }

    fn prove(
        &self,
        mode: AuthMode,
        route: &str,
        p: &Presented<'_>,
        now_secs: u64,
    ) -> Result<Authenticated, Refusal> {
        let token = match mode.accepts_token() {
            true => bearer(p.headers)?,
            false => None,
        };
        if mode.accepts_cert() {
            let cert = match p.tls_cert {
                Some(der) => Some(self.certs.identity(der)),
                None => self.certs.forwarded(p.headers, p.peer, now_secs),
            };
            match cert {
                Some(Ok(identity)) => {
                    return Ok(Authenticated {
                        identity,
                        method: Method::Certificate,
                        binding: self.binding,
                    })
                }
                // An unusable certificate where a token may do instead: the token decides.
                Some(Err(_)) if token.is_some() => {}
                Some(Err(e)) => return Err(Refusal::InvalidCertificate(e)),
                None => {}
            }
        }
        let Some(token) = token else {
            return Err(Refusal::Missing { mode });
        };
        let claims =
            token::verify(token, &self.keys, now_secs, &self.claims).map_err(|e| match e {
                TokenError::Expired => Refusal::Expired,
                TokenError::NotYetValid => Refusal::NotYetValid,
                e => Refusal::InvalidToken(e),
            })?;
        if let Some(routes) = &claims.routes {
            if !routes.iter().any(|r| r == route) {
                return Err(Refusal::NotForRoute);
            }
        }
        Ok(Authenticated {
            identity: claims.sub,
            method: Method::Token,
            binding: self.binding,
        })
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
/// A token in the URL is never looked for: URLs are logged all along the way. Two
/// `Authorization` headers are refused: a proxy in front may have checked the other one.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (all.next(), all.next()) else {
        return match headers.contains_key(http::header::AUTHORIZATION) {
            true => Err(Refusal::Ambiguous),
            false => Ok(None),
        };
    };
    let token = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    });
    Ok(token)
}

/// Seconds since the epoch, for token times.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
