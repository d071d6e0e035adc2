//! Random secrets and their digests, one way for every place that needs them: dashboard
//! sessions and their CSRF tokens, resume tokens, the demo's admin token, admin token lookup.

use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// 256 random bits from the system, base64url (43 characters); `None` if the system has no
/// randomness to give.
pub fn random_token() -> Option<String> {
    let mut raw = [0u8; 32];
    SystemRandom::new().fill(&mut raw).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// SHA-256: secrets are kept and looked up by digest, so that neither a lookup's timing nor
/// a memory dump gives the secret away.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}
