//! Device tokens: JWS compact serialization (RFC 7515) with JWT claims (RFC 7519), checked
//! with `ring`, the crypto the TLS stack already carries.
//!
//! Why not a JWT crate: `jsonwebtoken` 9 (the last on `ring`) lets a claim of the wrong JSON
//! type skip its check (CVE-2026-25537), and 10 needs aws-lc (a C build) or some thirty
//! RustCrypto crates. What is left to write is small and strict: three algorithms, each key
//! bound to one, `exp` required and numeric, no `crit`, no `none`, a size cap.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use serde::Deserialize;

use crate::config::{TokenAlg, TokenKey};

/// Longer tokens are refused before any decoding (they ride in a header of a 16 KiB head).
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest `sub` accepted: it becomes a client ID or serial.
const MAX_SUB_LEN: usize = 256;
/// 2026-01-01T00:00:00Z. A gateway whose clock reads earlier has not set it (no RTC, no NTP
/// yet): every unexpired-looking token would pass, so none does.
pub const CLOCK_FLOOR: u64 = 1_767_225_600;

/// What the claims must say besides the signature.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    /// Tolerated clock difference for `exp` and `nbf`, seconds.
    pub skew: u64,
    /// `aud` must name this (a string, or an array containing it).
    pub audience: Option<String>,
    /// `iss` must be this.
    pub issuer: Option<String>,
}

/// A key tokens may be signed with.
pub struct Key {
    kid: Option<Arc<str>>,
    alg: TokenAlg,
    check: Check,
}

enum Check {
    Public(UnparsedPublicKey<Vec<u8>>),
    Hmac(ring::hmac::Key),
}

/// Why a token was not accepted. `Expired` and `NotYetValid` are told to the device as such
/// (its clock or its refresh is at fault, not its key); the others only as "invalid".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed(&'static str),
    /// No configured key for the token's `alg` (and `kid`).
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    /// `aud` or `iss` is not what `[auth]` asks for.
    WrongAudience,
    /// The gateway's own clock is not set: no token can be judged.
    ClockUnset,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::UnknownKey => f.write_str("token signed with no key configured here"),
            TokenError::BadSignature => f.write_str("token signature does not verify"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token not valid yet (nbf)"),
            TokenError::WrongAudience => f.write_str("token is for another audience or issuer"),
            TokenError::ClockUnset => {
                f.write_str("the gateway's clock is not set (before 2026): tokens cannot be judged")
            }
        }
    }
}

/// What an accepted token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The device identity.
    pub sub: Arc<str>,
    /// Seconds since the epoch.
    pub exp: u64,
    /// The routes it may reach; `None`: any route that accepts tokens.
    pub routes: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Claim types are strict: `exp` a JSON number (a string fails the parse, it does not skip
/// the check), `sub` a string.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    routes: Option<Vec<String>>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    iss: Option<String>,
}

/// RFC 7519 §4.1.3: one audience or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, want: &str) -> bool {
        match self {
            Audience::One(a) => a == want,
            Audience::Many(all) => all.iter().any(|a| a == want),
        }
    }
}

impl Key {
    /// Build a configured key (public key files are read here, so a reload re-reads them).
    pub fn load(cfg: &TokenKey) -> Result<Key, String> {
        let check = match cfg.alg {
            TokenAlg::HS256 => {
                let secret = cfg.secret.as_ref().ok_or("HS256 needs a secret")?;
                Check::Hmac(ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    secret.expose().as_bytes(),
                ))
            }
            alg @ (TokenAlg::EdDSA | TokenAlg::ES256) => {
                let spki = match (&cfg.public_key, &cfg.public_key_pem) {
                    (Some(path), _) => SubjectPublicKeyInfoDer::from_pem_file(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?,
                    (None, Some(pem)) => SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
                        .map_err(|e| format!("public_key_pem: {e}"))?,
                    (None, None) => return Err("no public key".into()),
                };
                Check::Public(public_key(alg, spki.as_ref())?)
            }
        };
        Ok(Key {
            kid: cfg.kid.as_deref().map(Arc::from),
            alg: cfg.alg,
            check,
        })
    }

    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.check {
            Check::Public(k) => k.verify(message, sig).is_ok(),
            // Constant time.
            Check::Hmac(k) => ring::hmac::verify(k, message, sig).is_ok(),
        }
    }
}

/// The raw key inside a DER SubjectPublicKeyInfo: both algorithms have one fixed encoding
/// (RFC 8410 §4 for Ed25519, RFC 5480 for uncompressed P-256), so a prefix match is exact
/// and anything else (another curve, RSA, a compressed point) is refused by name.
fn public_key(alg: TokenAlg, spki: &[u8]) -> Result<UnparsedPublicKey<Vec<u8>>, String> {
    use crate::device_token::{ED25519_SPKI, P256_SPKI};
    let (prefix, len, ring_alg): (_, _, &'static dyn signature::VerificationAlgorithm) = match alg {
        TokenAlg::EdDSA => (ED25519_SPKI, 32, &signature::ED25519),
        TokenAlg::ES256 => (P256_SPKI, 65, &signature::ECDSA_P256_SHA256_FIXED),
        TokenAlg::HS256 => return Err("HS256 has no public key".into()),
    };
    match spki.strip_prefix(prefix) {
        // P-256: the uncompressed point form (0x04 ‖ x ‖ y), the only one ring takes.
        Some(raw) if raw.len() == len && (alg != TokenAlg::ES256 || raw[0] == 0x04) => {
            Ok(UnparsedPublicKey::new(ring_alg, raw.to_vec()))
        }
        _ => Err(format!(
            "not an {} public key (expected {})",
            alg.name(),
            match alg {
                TokenAlg::EdDSA => "Ed25519",
                _ => "P-256, uncompressed",
            }
        )),
    }
}

/// Check `token` against `keys` and `rules` at `now` (seconds since the epoch).
pub fn verify(
    token: &str,
    keys: &[Key],
    now: u64,
    rules: &ClaimRules,
) -> Result<Claims, TokenError> {
    use TokenError::Malformed;
    if now < CLOCK_FLOOR {
        return Err(TokenError::ClockUnset);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(Malformed("longer than 4096 bytes"));
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed("not three dot-separated parts"));
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(h64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Malformed("header is not base64url JSON"))?;
    // Extensions we would have to understand (RFC 7515 §4.1.11): we understand none, and a
    // `crit` of any value (null included) is refused.
    if header.get("crit").is_some() {
        return Err(Malformed("critical header extensions are not supported"));
    }
    let header: Header =
        serde_json::from_value(header).map_err(|_| Malformed("header has no usable alg"))?;
    let alg = match header.alg.as_str() {
        "EdDSA" => TokenAlg::EdDSA,
        "ES256" => TokenAlg::ES256,
        "HS256" => TokenAlg::HS256,
        _ => return Err(TokenError::UnknownKey),
    };
    let sig = URL_SAFE_NO_PAD
        .decode(s64)
        .map_err(|_| Malformed("signature is not base64url"))?;
    let message = &token.as_bytes()[..h64.len() + 1 + p64.len()];
    let mut candidates = keys.iter().filter(|k| {
        k.alg == alg
            && match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => **have == **want,
                (Some(_), None) => false,
                (None, _) => true,
            }
    });
    let mut any = false;
    if !candidates.any(|k| {
        any = true;
        k.verifies(message, &sig)
    }) {
        return Err(match any {
            true => TokenError::BadSignature,
            false => TokenError::UnknownKey,
        });
    }
    // Only a signed payload is parsed.
    let claims: RawClaims = URL_SAFE_NO_PAD
        .decode(p64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Malformed(
            "claims are not base64url JSON of the expected types",
        ))?;
    let exp = claims.exp.ok_or(Malformed("no exp claim"))?;
    let now_f = now as f64;
    let skew_f = rules.skew as f64;
    // Valid strictly before `exp` (RFC 7519 §4.1.4), give or take the skew.
    if !exp.is_finite() || now_f >= exp + skew_f {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = claims.nbf {
        if !nbf.is_finite() || now_f + skew_f < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(want) = &rules.audience {
        if !claims.aud.as_ref().is_some_and(|a| a.names(want)) {
            return Err(TokenError::WrongAudience);
        }
    }
    if let Some(want) = &rules.issuer {
        if claims.iss.as_deref() != Some(want.as_str()) {
            return Err(TokenError::WrongAudience);
        }
    }
    let sub = claims.sub.ok_or(Malformed("no sub claim"))?;
    if sub.is_empty() || sub.len() > MAX_SUB_LEN || sub.chars().any(char::is_control) {
        return Err(Malformed("sub must be 1 to 256 printable characters"));
    }
    Ok(Claims {
        sub: sub.into(),
        exp: exp as u64,
        routes: claims.routes,
    })
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
