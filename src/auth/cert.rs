//! Client certificates: the identity a certificate names (CN, or the first URI or DNS SAN),
//! and certificates forwarded by a trusted TLS-terminating proxy, which are checked here again
//! against `[auth] forwarded_cert_ca` (the proxy may trust more CAs than we do).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use crate::config::{AuthSettings, CertField};

/// Largest forwarded certificate header accepted (a PEM chain of a few certificates).
const MAX_FORWARDED_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    Unparsable,
    /// The configured field is absent or not a usable name.
    NoIdentity(&'static str),
    /// Forwarded, and not issued by our CA (or expired, or not for client auth).
    Untrusted(String),
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertError::Unparsable => f.write_str("client certificate does not parse"),
            CertError::NoIdentity(field) => write!(f, "client certificate has no {field}"),
            CertError::Untrusted(why) => write!(f, "forwarded client certificate rejected: {why}"),
        }
    }
}

pub(super) struct CertIdentity {
    field: CertField,
    forwarded: Option<Forwarded>,
}

struct Forwarded {
    header: HeaderName,
    anchors: Vec<TrustAnchor<'static>>,
    from: crate::identify::CidrSet,
}

impl CertIdentity {
    pub(super) fn new(settings: &AuthSettings) -> Result<Self, String> {
        let forwarded = match (&settings.forwarded_cert_header, &settings.forwarded_cert_ca) {
            (Some(h), Some(ca)) => {
                let header = HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("auth.forwarded_cert_header: {h:?} is not a header"))?;
                let anchors = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("auth.forwarded_cert_ca: {}: {e}", ca.display()))?
                    .map(|c| {
                        let c = c.map_err(|e| format!("auth.forwarded_cert_ca: {e}"))?;
                        webpki::anchor_from_trusted_cert(&c)
                            .map(|a| a.to_owned())
                            .map_err(|e| format!("auth.forwarded_cert_ca: {e:?}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if anchors.is_empty() {
                    return Err(format!(
                        "auth.forwarded_cert_ca: no certificate in {}",
                        ca.display()
                    ));
                }
                let from =
                    crate::identify::CidrSet::new(settings.forwarded_cert_from.iter().copied());
                Some(Forwarded {
                    header,
                    anchors,
                    from,
                })
            }
            _ => None,
        };
        Ok(CertIdentity {
            field: settings.cert_identity,
            forwarded,
        })
    }

    /// The identity in a certificate already verified (by our TLS handshake).
    pub(super) fn identity(&self, der: &CertificateDer<'_>) -> Result<Arc<str>, CertError> {
        identity_of(der, self.field)
    }

    /// A certificate the proxy at `peer` forwarded, if it is one of `forwarded_cert_from` and
    /// the header is there: verified against our CA for client authentication at `now_secs`,
    /// then its identity. Two copies of the header are refused: the client wrote one.
    pub(super) fn forwarded(
        &self,
        headers: &HeaderMap,
        peer: std::net::IpAddr,
        now_secs: u64,
    ) -> Option<Result<Arc<str>, CertError>> {
        let f = self.forwarded.as_ref()?;
        if !f.from.contains(peer) {
            return None;
        }
        let mut all = headers.get_all(&f.header).iter();
        let raw = all.next()?.as_bytes();
        if all.next().is_some() {
            return Some(Err(CertError::Untrusted(
                "the certificate header came twice".into(),
            )));
        }
        // nginx sends an empty value (or "-" from some configs) when the client sent none.
        if raw.is_empty() || raw == b"-" {
            return None;
        }
        Some(self.check_forwarded(f, raw, now_secs))
    }

    fn check_forwarded(
        &self,
        f: &Forwarded,
        raw: &[u8],
        now_secs: u64,
    ) -> Result<Arc<str>, CertError> {
        if raw.len() > MAX_FORWARDED_LEN {
            return Err(CertError::Untrusted("header longer than 16 KiB".into()));
        }
        // URL-encoded PEM (nginx `$ssl_client_escaped_cert`); HAProxy and F5 may send the PEM
        // with its newlines replaced by spaces or tabs, which the PEM reader does not mind.
        let pem: Vec<u8> = percent_encoding::percent_decode(raw).collect();
        let mut chain = CertificateDer::pem_slice_iter(&pem)
            .take(8)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CertError::Unparsable)?
            .into_iter();
        let leaf = chain.next().ok_or(CertError::Unparsable)?;
        let intermediates: Vec<CertificateDer<'_>> = chain.collect();
        let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|_| CertError::Unparsable)?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &f.anchors,
            &intermediates,
            UnixTime::since_unix_epoch(Duration::from_secs(now_secs)),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| CertError::Untrusted(e.to_string()))?;
        identity_of(&leaf, self.field)
    }
}

/// The configured field of a DER certificate, as text.
pub(crate) fn identity_of(der: &[u8], field: CertField) -> Result<Arc<str>, CertError> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|_| CertError::Unparsable)?;
    let tbs = cert.tbs_certificate();
    let name: Option<String> = match field {
        CertField::Cn => tbs
            .subject()
            .common_name()
            .ok()
            .flatten()
            .map(|cn| cn.value().into_owned()),
        CertField::SanUri | CertField::SanDns => tbs
            .extensions()
            .into_iter()
            .flatten()
            .filter(|e| e.extn_id == x509_cert::ext::pkix::ID_CE_SUBJECT_ALT_NAME)
            .filter_map(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
            .flat_map(|san| san.0)
            .find_map(|n| match (n, field) {
                (GeneralName::UniformResourceIdentifier(s), CertField::SanUri) => {
                    Some(s.to_string())
                }
                (GeneralName::DnsName(s), CertField::SanDns) => Some(s.to_string()),
                _ => None,
            }),
    };
    let what = match field {
        CertField::Cn => "subject CN",
        CertField::SanUri => "URI subject alternative name",
        CertField::SanDns => "DNS subject alternative name",
    };
    match name {
        Some(n) if !n.is_empty() && n.len() <= 256 && !n.chars().any(char::is_control) => {
            Ok(n.into())
        }
        _ => Err(CertError::NoIdentity(what)),
    }
}
