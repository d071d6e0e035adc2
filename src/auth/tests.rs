//! The authenticator: which mode applies, what each mode accepts, and certificates (ours and
//! forwarded).

use http::{HeaderMap, HeaderValue};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls_pki_types::pem::PemObject;
use serde_json::json;

use super::*;
use crate::auth::issue::Signer;
use crate::config::CertField;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("ca");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A client certificate for CN `cn`, with a URI and a DNS SAN.
fn client(ca: &Ca, cn: &str) -> (CertificateDer<'static>, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = vec![
        SanType::URI(format!("urn:dev:{cn}").try_into().expect("uri")),
        SanType::DnsName(format!("{cn}.devices.example").try_into().expect("dns")),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    (cert.der().clone(), cert.pem())
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn authenticator(extra: &str, dir: &std::path::Path) -> Authenticator {
    let text = format!(
        r#"
[[listener]]
name = "open"
bind = "127.0.0.1:0"
[[listener]]
name = "locked"
bind = "127.0.0.1:0"
auth = "token"
[routes.mqtt]
upstreams = ["127.0.0.1:1883"]
[routes.meters]
upstreams = ["127.0.0.1:502"]
auth = "token_or_mtls"
[routes.public]
upstreams = ["127.0.0.1:80"]
auth = "none"
[auth]
forwarded_cert_header = "x-client-cert"
forwarded_cert_ca = "ca.pem"
forwarded_cert_from = ["10.0.0.5/32"]
[[auth.key]]
alg = "HS256"
secret = "{SECRET}"
{extra}
"#
    );
    let config = Config::parse(&text, Some(dir)).expect("config");
    Authenticator::from_config(&config, Default::default())
        .expect("authenticator")
        .expect("auth is asked for")
}

fn bearer_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    h
}

const PROXY: &str = "10.0.0.5";
const ELSEWHERE: &str = "198.51.100.9";

fn peer(ip: &str) -> std::net::IpAddr {
    ip.parse().expect("ip")
}

fn presented(headers: &HeaderMap) -> Presented<'_> {
    Presented {
        headers,
        tls_cert: None,
        peer: peer(ELSEWHERE),
    }
}

fn setup() -> (tempfile::TempDir, Ca, Authenticator) {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ca("device CA");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).expect("write ca");
    let a = authenticator("", dir.path());
    (dir, ca, a)
}

#[test]
fn the_route_overrides_the_listener() {
    let (_d, _ca, a) = setup();
    assert_eq!(a.mode(AuthMode::None, "mqtt"), AuthMode::None);
    assert_eq!(a.mode(AuthMode::Token, "mqtt"), AuthMode::Token);
    assert_eq!(a.mode(AuthMode::None, "meters"), AuthMode::TokenOrMtls);
    assert_eq!(a.mode(AuthMode::Token, "public"), AuthMode::None);
}

#[test]
fn a_token_names_the_device_and_is_counted() {
    let (_d, _ca, a) = setup();
    let t = Signer::hs256(SECRET.as_bytes()).device_token(None, "dev-7", 60);
    let h = bearer_headers(&t);
    let got = a.authenticate(AuthMode::Token, "mqtt", &presented(&h), now_secs(), |_| {
        None
    });
    assert_eq!(
        got,
        Ok(Some(Authenticated {
            identity: "dev-7".into(),
            method: Method::Token,
            binding: Binding::Equal,
        }))
    );
    assert_eq!(a.stats.accepted[0].load(Relaxed), 1);
    // Lower-case scheme is the same scheme (RFC 6750 §2.1 refers to RFC 9110's case rule).
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("bearer {t}")).expect("header"),
    );
    assert!(a
        .authenticate(AuthMode::Token, "mqtt", &presented(&h), now_secs(), |_| {
            None
        })
        .is_ok());
}

#[test]
fn each_refusal_is_named_and_counted() {
    let (_d, _ca, a) = setup();
    let now = now_secs();
    let none = HeaderMap::new();
    assert_eq!(
        a.authenticate(AuthMode::Token, "mqtt", &presented(&none), now, |_| None),
        Err(Refusal::Missing {
            mode: AuthMode::Token
        })
    );
    let mut basic = HeaderMap::new();
    basic.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic ZGV2OnB3"),
    );
    assert!(matches!(
        a.authenticate(AuthMode::Token, "mqtt", &presented(&basic), now, |_| None),
        Err(Refusal::Missing { .. })
    ));
    let signer = Signer::hs256(SECRET.as_bytes());
    let expired = signer
        .sign(None, &json!({"sub": "d", "exp": now - 3600}))
        .expect("sign");
    assert_eq!(
        a.authenticate(
            AuthMode::Token,
            "mqtt",
            &presented(&bearer_headers(&expired)),
            now,
            |_| None
        ),
        Err(Refusal::Expired)
    );
    let bad = Signer::hs256(b"a different secret of 32+ bytes!!!").device_token(None, "d", 60);
    assert!(matches!(
        a.authenticate(
            AuthMode::Token,
            "mqtt",
            &presented(&bearer_headers(&bad)),
            now,
            |_| None
        ),
        Err(Refusal::InvalidToken(TokenError::BadSignature))
    ));
    let scoped = signer
        .sign(
            None,
            &json!({"sub": "d", "exp": now + 60, "routes": ["meters"]}),
        )
        .expect("sign");
    assert_eq!(
        a.authenticate(
            AuthMode::Token,
            "mqtt",
            &presented(&bearer_headers(&scoped)),
            now,
            |_| None
        ),
        Err(Refusal::NotForRoute)
    );
    assert!(a
        .authenticate(
            AuthMode::TokenOrMtls,
            "meters",
            &presented(&bearer_headers(&scoped)),
            now,
            |_| None
        )
        .is_ok());
    let counted: Vec<u64> = a.stats.refused.iter().map(|c| c.load(Relaxed)).collect();
    assert_eq!(counted, [2, 1, 1, 1, 0]);
    assert!(Refusal::Expired.is_failure());
    assert!(!Refusal::NotForRoute.is_failure());
    // A valid token for a banned identity: revoked, with the ban's reason.
    let good = signer.device_token(None, "stolen-1", 60);
    assert_eq!(
        a.authenticate(
            AuthMode::Token,
            "mqtt",
            &presented(&bearer_headers(&good)),
            now,
            |id| (id == "stolen-1").then(|| "key leaked".to_string())
        ),
        Err(Refusal::Revoked("key leaked".into()))
    );
    assert_eq!(a.stats.refused[4].load(Relaxed), 1);
    // Nothing is asked on a route without auth, whatever was sent.
    assert_eq!(
        a.authenticate(
            AuthMode::None,
            "public",
            &presented(&bearer_headers(&bad)),
            now,
            |_| None
        ),
        Ok(None)
    );
}

#[test]
fn certificate_identity_by_the_configured_field() {
    let ca = ca("device CA");
    let (der, _) = client(&ca, "meter-9");
    for (field, want) in [
        (CertField::Cn, "meter-9"),
        (CertField::SanUri, "urn:dev:meter-9"),
        (CertField::SanDns, "meter-9.devices.example"),
    ] {
        assert_eq!(cert::identity_of(&der, field).as_deref(), Ok(want));
    }
    assert_eq!(
        cert::identity_of(b"not a certificate", CertField::Cn),
        Err(CertError::Unparsable)
    );
    // The CA's own certificate has a CN but no SAN.
    let ca_der = CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("pem");
    assert!(matches!(
        cert::identity_of(&ca_der, CertField::SanUri),
        Err(CertError::NoIdentity(_))
    ));
}

#[test]
fn a_certificate_from_our_tls_wins_over_a_token() {
    let (_d, ca, a) = setup();
    let (der, _) = client(&ca, "meter-9");
    let t = Signer::hs256(SECRET.as_bytes()).device_token(None, "someone-else", 60);
    let h = bearer_headers(&t);
    let p = Presented {
        headers: &h,
        tls_cert: Some(&der),
        peer: peer(ELSEWHERE),
    };
    let got = a.authenticate(AuthMode::TokenOrMtls, "meters", &p, now_secs(), |_| None);
    assert_eq!(
        got.map(|a| a.map(|a| a.identity)),
        Ok(Some("meter-9".into()))
    );
    // A certificate does not satisfy a token-only route.
    let none = HeaderMap::new();
    let p = Presented {
        headers: &none,
        tls_cert: Some(&der),
        peer: peer(ELSEWHERE),
    };
    assert!(matches!(
        a.authenticate(AuthMode::Token, "mqtt", &p, now_secs(), |_| None),
        Err(Refusal::Missing { .. })
    ));
}

fn forwarded(pem: &str) -> HeaderMap {
    let escaped: String =
        percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut h = HeaderMap::new();
    h.insert(
        "x-client-cert",
        HeaderValue::from_str(&escaped).expect("header"),
    );
    h
}

#[test]
fn a_forwarded_certificate_counts_only_from_a_trusted_proxy_and_our_ca() {
    let (_d, ca, a) = setup();
    let (_, pem) = client(&ca, "meter-9");
    let h = forwarded(&pem);
    let from = |ip| Presented {
        headers: &h,
        tls_cert: None,
        peer: peer(ip),
    };
    let got = a.authenticate(AuthMode::Mtls, "meters", &from(PROXY), now_secs(), |_| None);
    assert_eq!(
        got,
        Ok(Some(Authenticated {
            identity: "meter-9".into(),
            method: Method::Certificate,
            binding: Binding::Equal,
        }))
    );
    // The same header from anyone else is not looked at.
    assert!(matches!(
        a.authenticate(
            AuthMode::Mtls,
            "meters",
            &from(ELSEWHERE),
            now_secs(),
            |_| None
        ),
        Err(Refusal::Missing { .. })
    ));
    // Issued by another CA: refused even from the trusted proxy.
    let (_, rogue) = client(&ca_rogue(), "meter-9");
    let h = forwarded(&rogue);
    let p = Presented {
        headers: &h,
        tls_cert: None,
        peer: peer(PROXY),
    };
    assert!(matches!(
        a.authenticate(AuthMode::Mtls, "meters", &p, now_secs(), |_| None),
        Err(Refusal::InvalidCertificate(CertError::Untrusted(_)))
    ));
    // The header twice (a proxy that appends, after the client's own): refused.
    let (_, good) = client(&ca, "meter-9");
    let mut twice = forwarded(&good);
    let copy = twice.get("x-client-cert").cloned().expect("header");
    twice.append("x-client-cert", copy);
    let p = Presented {
        headers: &twice,
        tls_cert: None,
        peer: peer(PROXY),
    };
    assert!(matches!(
        a.authenticate(AuthMode::Mtls, "meters", &p, now_secs(), |_| None),
        Err(Refusal::InvalidCertificate(CertError::Untrusted(_)))
    ));
    // Garbage and nginx's empty placeholder.
    for junk in ["%ZZ", "-----BEGIN CERTIFICATE-----%0AAAAA", ""] {
        let mut h = HeaderMap::new();
        h.insert(
            "x-client-cert",
            HeaderValue::from_str(junk).expect("header"),
        );
        let p = Presented {
            headers: &h,
            tls_cert: None,
            peer: peer(PROXY),
        };
        assert!(
            a.authenticate(AuthMode::Mtls, "meters", &p, now_secs(), |_| None)
                .is_err(),
            "{junk:?}"
        );
    }
}

fn ca_rogue() -> Ca {
    ca("rogue CA")
}
