//! `[auth]`: how devices prove who they are, and the `auth` mode listeners and routes ask for.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// What a listener (the default for its routes) or a route (overriding it) asks of a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone who reaches the gateway (the policy still applies).
    #[default]
    None,
    /// A signed device token: `Authorization: Bearer <JWT>`.
    Token,
    /// A client certificate: on our own TLS, or forwarded by a trusted proxy.
    Mtls,
    /// Either of the two.
    TokenOrMtls,
}

impl AuthMode {
    pub fn accepts_token(self) -> bool {
        matches!(self, AuthMode::Token | AuthMode::TokenOrMtls)
    }

    pub fn accepts_cert(self) -> bool {
        matches!(self, AuthMode::Mtls | AuthMode::TokenOrMtls)
    }
}

/// How the MQTT CONNECT's client ID must relate to the authenticated identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// The client ID is the identity.
    #[default]
    Equal,
    /// The client ID starts with the identity (one device, several MQTT clients).
    Prefix,
    /// Any client ID (the identity only opens the door).
    Off,
}

/// Which part of a client certificate names the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertField {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first URI subject alternative name.
    SanUri,
    /// The first DNS subject alternative name.
    SanDns,
}

/// A signature algorithm a device token may use; each key has exactly one, so a token can
/// never pick how its own signature is checked (no `alg` confusion, no `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TokenAlg {
    EdDSA,
    ES256,
    HS256,
}

impl TokenAlg {
    pub fn name(self) -> &'static str {
        match self {
            TokenAlg::EdDSA => "EdDSA",
            TokenAlg::ES256 => "ES256",
            TokenAlg::HS256 => "HS256",
        }
    }
}

/// A secret from the config: never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Redacted(String);

impl Redacted {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One key device tokens may be signed with. Several may be active at once (rotation): a
/// token naming a `kid` is checked with that key only; one without, with every key of its alg.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKey {
    #[serde(default)]
    pub kid: Option<String>,
    pub alg: TokenAlg,
    /// EdDSA (Ed25519) and ES256 (P-256): a PEM `PUBLIC KEY` file, re-read on SIGHUP…
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// …or the same PEM inline.
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// HS256: the shared secret, at least 32 bytes.
    #[serde(default)]
    pub secret: Option<Redacted>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Tolerated clock difference for `exp` and `nbf`: devices' clocks drift.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
    /// On MQTT routes: how the CONNECT's client ID must match the identity.
    #[serde(default)]
    pub bind_client_id: Binding,
    /// Where a client certificate names its device.
    #[serde(default)]
    pub cert_identity: CertField,
    /// The header a trusted TLS-terminating proxy puts the client certificate in, URL-encoded
    /// PEM (nginx `$ssl_client_escaped_cert`, HAProxy, F5). Believed only from a listener's
    /// `trusted_proxies`.
    #[serde(default)]
    pub forwarded_cert_header: Option<String>,
    /// The CA that issued forwarded client certificates (checked again here: the proxy may
    /// trust more than we do). Required with `forwarded_cert_header`.
    #[serde(default)]
    pub forwarded_cert_ca: Option<PathBuf>,
    /// The addresses (a TLS-terminating proxy's) whose `forwarded_cert_header` is believed:
    /// required with it, and kept apart from `trusted_proxies`, which may list CDNs that pass
    /// a client's own headers through. The proxy must overwrite the header, never append.
    #[serde(default)]
    pub forwarded_cert_from: Vec<ipnet::IpNet>,
    /// Tokens must name this in `aud` (a string or an array). Absent: not checked.
    #[serde(default)]
    pub audience: Option<String>,
    /// Tokens must carry this `iss`. Absent: not checked.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Failed authentications from one address count as strikes towards an IP ban.
    #[serde(default = "yes")]
    pub strike_failures: bool,
    #[serde(default, rename = "key")]
    pub keys: Vec<TokenKey>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            clock_skew_secs: default_skew(),
            bind_client_id: Binding::default(),
            cert_identity: CertField::default(),
            forwarded_cert_header: None,
            forwarded_cert_ca: None,
            forwarded_cert_from: Vec::new(),
            audience: None,
            issuer: None,
            strike_failures: true,
            keys: Vec::new(),
        }
    }
}

fn default_skew() -> u64 {
    60
}

fn yes() -> bool {
    true
}

impl AuthSettings {
    /// `(key, message)` naming what is wrong.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.clock_skew_secs > 3600 {
            return Err(("auth.clock_skew_secs".into(), "must be at most 3600".into()));
        }
        for (i, k) in self.keys.iter().enumerate() {
            let key = |f: &str| format!("auth.key[{i}].{f}");
            let public = k.public_key.is_some() as u8 + k.public_key_pem.is_some() as u8;
            match k.alg {
                TokenAlg::HS256 => {
                    if public > 0 {
                        return Err((key("alg"), "HS256 takes a secret, not a public key".into()));
                    }
                    match &k.secret {
                        Some(s) if s.expose().len() >= 32 => {}
                        _ => {
                            return Err((
                                key("secret"),
                                "HS256 needs a secret of at least 32 bytes (RFC 7518 §3.2)".into(),
                            ))
                        }
                    }
                }
                TokenAlg::EdDSA | TokenAlg::ES256 => {
                    if k.secret.is_some() {
                        return Err((
                            key("secret"),
                            format!("{} takes a public key, not a secret", k.alg.name()),
                        ));
                    }
                    if public != 1 {
                        return Err((
                            key("public_key"),
                            "set exactly one of public_key (a PEM file) and public_key_pem".into(),
                        ));
                    }
                }
            }
            if let Some(kid) = &k.kid {
                if kid.is_empty() || kid.len() > 128 {
                    return Err((key("kid"), "1 to 128 characters".into()));
                }
            }
        }
        if let Some(h) = &self.forwarded_cert_header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err((
                    "auth.forwarded_cert_header".into(),
                    format!("{h:?} is not a header name"),
                ));
            }
            if self.forwarded_cert_ca.is_none() {
                return Err((
                    "auth.forwarded_cert_ca".into(),
                    "a forwarded certificate is checked against this CA: set it".into(),
                ));
            }
            if self.forwarded_cert_from.is_empty() {
                return Err((
                    "auth.forwarded_cert_from".into(),
                    "name the proxies whose forwarded certificate is believed (their addresses as the gateway sees them)".into(),
                ));
            }
        }
        Ok(())
    }
}
