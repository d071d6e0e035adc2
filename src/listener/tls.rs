//! TLS termination with rustls: several certificates chosen by SNI, swappable on reload.

use std::fmt;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::{ClientAuth, TlsConfig};

/// Build the acceptor for a listener. Reads the PEM files now, so errors surface at start/reload.
pub fn acceptor(tls: &TlsConfig, alpn_http1: bool) -> Result<tokio_rustls::TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs = Vec::with_capacity(tls.certificates.len());
    for c in &tls.certificates {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
            .and_then(|it| it.collect())
            .map_err(|e| format!("{}: {e}", c.cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate in the file", c.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&c.key)
            .map_err(|e| format!("{}: {e}", c.key.display()))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("{}: {e}", c.key.display()))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            format!(
                "{} does not match {}: {e}",
                c.key.display(),
                c.cert.display()
            )
        })?;
        certs.push(Arc::new(certified));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            builder.with_client_cert_verifier(client_verifier(ca, tls.client_auth, provider)?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    if alpn_http1 {
        // WebSocket needs HTTP/1.1 on every hop: offering h2 would strand clients that have no
        // RFC 8441 (see waf-lb.md §7.5).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Client certificates checked against `ca` during the handshake (chain, validity, client-auth
/// usage): a device whose certificate fails never gets an HTTP request through.
fn client_verifier(
    ca: &std::path::Path,
    mode: ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate in the file", ca.display()));
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match mode {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map_err(|e| format!("client_ca {}: {e}", ca.display()))
}

/// Picks the first certificate valid for the requested SNI name, else the first one.
struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SniResolver({} certificates)", self.certs.len())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello.server_name().and_then(|sni| {
            let name = ServerName::try_from(sni).ok()?;
            self.certs.iter().find(|ck| valid_for(ck, &name))
        });
        by_name.or_else(|| self.certs.first()).cloned()
    }
}

fn valid_for(ck: &CertifiedKey, name: &ServerName<'_>) -> bool {
    ck.cert.first().is_some_and(|leaf| {
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
    })
}
