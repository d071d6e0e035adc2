//! Signing device tokens (JWS compact, EdDSA / ES256 / HS256): for the demo, the tests in
//! both builds and a platform that wants a reference. The gateway only verifies (`auth`).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A private key that signs device tokens.
pub enum Signer {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
    Hs256(ring::hmac::Key),
}

/// The DER SubjectPublicKeyInfo prefix of an Ed25519 key (RFC 8410 §4): the 32 key bytes follow.
pub const ED25519_SPKI: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The same for an uncompressed P-256 key (RFC 5480): the 65 point bytes follow.
pub const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl Signer {
    /// A fresh Ed25519 key.
    pub fn generate_ed25519() -> Result<Signer, String> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map(Signer::Ed25519)
            .map_err(|e| e.to_string())
    }

    /// A fresh P-256 key.
    pub fn generate_es256() -> Result<Signer, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| e.to_string())?;
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map(Signer::Es256)
            .map_err(|e| e.to_string())
    }

    pub fn hs256(secret: &[u8]) -> Signer {
        Signer::Hs256(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Signer::Ed25519(_) => "EdDSA",
            Signer::Es256(_) => "ES256",
            Signer::Hs256(_) => "HS256",
        }
    }

    /// The public key as a PEM `PUBLIC KEY` block (what `[[auth.key]] public_key` reads).
    pub fn public_pem(&self) -> Option<String> {
        let (prefix, raw) = match self {
            Signer::Ed25519(k) => (ED25519_SPKI, k.public_key().as_ref()),
            Signer::Es256(k) => (P256_SPKI, k.public_key().as_ref()),
            Signer::Hs256(_) => return None,
        };
        let der = [prefix, raw].concat();
        let b64 = STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        Some(pem)
    }

    /// A compact JWS of `claims` (a JSON object), with `kid` in its header when given.
    pub fn sign(&self, kid: Option<&str>, claims: &serde_json::Value) -> Result<String, String> {
        let mut header = serde_json::json!({ "alg": self.alg(), "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match self {
            Signer::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Es256(k) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .map_err(|e| e.to_string())?
                .as_ref()
                .to_vec(),
            Signer::Hs256(k) => ring::hmac::sign(k, input.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// A token for `sub`, valid from now for `ttl_secs`.
    pub fn device_token(&self, kid: Option<&str>, sub: &str, ttl_secs: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = serde_json::json!({ "sub": sub, "iat": now, "exp": now + ttl_secs });
        self.sign(kid, &claims).unwrap_or_default()
    }
}
