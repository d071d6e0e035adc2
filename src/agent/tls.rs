//! The agent's TLS client: system roots or a private CA, optional SPKI SHA-256 pins, optional
//! client certificate, ALPN `http/1.1` only (an h2 ALPN would break the WebSocket upgrade on
//! hops without RFC 8441).
//!
//! Every handshake records the SHA-256 of the leaf's SubjectPublicKeyInfo, trusted or not, so a
//! refusal can tell the admin exactly which key the device saw (behind Cloudflare or an F5 that
//! is the WAF's key, not the gateway's).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::config::TlsSettings;

/// A SHA-256 of a DER SubjectPublicKeyInfo: curl's `--pinnedpubkey sha256//...` format.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin([u8; 32]);

impl Pin {
    /// `sha256//<base64>` (what `openssl ... | openssl dgst -sha256 -binary | base64` gives,
    /// prefixed), bare base64, or 64 hex digits (colons allowed).
    pub fn parse(s: &str) -> Result<Pin, String> {
        let s = s.trim();
        let body = s.strip_prefix("sha256//").unwrap_or(s);
        let hex: String = body.chars().filter(|c| *c != ':').collect();
        let bytes = if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| format!("{s:?} is not sha256//<base64> or 64 hex digits"))?
        };
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{s:?} is not a SHA-256 (32 bytes)"))?;
        Ok(Pin(arr))
    }

    /// The pin of a certificate's public key.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Pin, String> {
        let ee = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| format!("unparsable certificate: {e:?}"))?;
        Ok(Pin::of_spki(ee.subject_public_key_info().as_ref()))
    }

    pub fn of_spki(spki_der: &[u8]) -> Pin {
        let d = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut arr = [0u8; 32];
        arr.copy_from_slice(d.as_ref());
        Pin(arr)
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sha256//{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// What the verifier saw for each server name (the last handshake wins).
#[derive(Default)]
pub struct Seen(Mutex<HashMap<String, Pin>>);

impl Seen {
    pub fn get(&self, server_name: &str) -> Option<Pin> {
        self.0.lock().ok()?.get(server_name).copied()
    }
    fn put(&self, server_name: &str, pin: Pin) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(server_name.to_string(), pin);
        }
    }
}

/// The verifier: records the leaf's pin, checks the chain (unless pins alone are configured)
/// and the pins, and always checks the handshake signature, so a server that merely replays
/// the pinned certificate without its private key is refused.
pub struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<Pin>,
    provider: Arc<CryptoProvider>,
    pub seen: Seen,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("chain", &self.chain.is_some())
            .field("pins", &self.pins)
            .finish()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = Pin::of_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        self.seen.put(&server_name.to_str(), pin);
        if let Some(chain) = &self.chain {
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        if !self.pins.is_empty() && !self.pins.contains(&pin) {
            // The one error we raise ourselves: the dialer reads it as "pin mismatch".
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How the gateway's certificate is judged, in words for `--check`.
pub fn trust_words(settings: &TlsSettings) -> String {
    let chain = match &settings.ca_file {
        Some(ca) => format!("CA file {}", ca.display()),
        None if settings.pins.is_empty() => "the system's CA roots".into(),
        None => String::new(),
    };
    match (settings.pins.len(), chain.is_empty()) {
        (0, _) => chain,
        (n, true) => format!("{n} key pin(s)"),
        (n, false) => format!("{chain} and {n} key pin(s)"),
    }
}

/// The client config and its verifier (kept to read the fingerprints it saw).
pub fn client_config(settings: &TlsSettings) -> Result<(Arc<ClientConfig>, Arc<Verifier>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pins = settings
        .pins
        .iter()
        .map(|p| Pin::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let roots = match (&settings.ca_file, pins.is_empty()) {
        (Some(ca), _) => Some(read_certs(ca)?),
        (None, true) => Some(system_roots()?),
        (None, false) => None,
    };
    let chain = match roots {
        None => None,
        Some(certs) => {
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err("no usable CA certificate to trust".into());
            }
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| format!("CA roots: {e}"))?,
            )
        }
    };
    let verifier = Arc::new(Verifier {
        chain,
        pins,
        provider: provider.clone(),
        seen: Seen::default(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let mut config = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| format!("client certificate: {e}"))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), verifier))
}

fn system_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found
            .errors
            .first()
            .map_or("none found".to_string(), |e| e.to_string());
        return Err(format!(
            "cannot load the system's CA roots ({why}): set tls.ca_file or tls.pins"
        ));
    }
    Ok(found.certs)
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_in_curl_base64_and_hex() {
        let b64 = "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let p = Pin::parse(b64).unwrap();
        // SHA-256 of the empty string, to check the decoding.
        assert_eq!(p, Pin::of_spki(b""));
        assert_eq!(p.to_string(), b64);
        assert_eq!(Pin::parse(&b64[8..]).unwrap(), p);
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Pin::parse(hex).unwrap(), p);
        let colons: Vec<String> = (0..32)
            .map(|i| hex[2 * i..2 * i + 2].to_uppercase())
            .collect();
        assert_eq!(Pin::parse(&colons.join(":")).unwrap(), p);
        assert!(Pin::parse("sha256//AAAA").unwrap_err().contains("32 bytes"));
        assert!(Pin::parse("not a pin!").is_err());
    }

    #[test]
    fn trust_is_described() {
        let mut s = TlsSettings::default();
        assert_eq!(trust_words(&s), "the system's CA roots");
        s.pins = vec!["x".into()];
        assert_eq!(trust_words(&s), "1 key pin(s)");
        s.ca_file = Some("ca.pem".into());
        assert_eq!(trust_words(&s), "CA file ca.pem and 1 key pin(s)");
    }
}
