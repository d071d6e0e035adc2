//! What device authentication costs per WebSocket upgrade: `Authenticator::authenticate`
//! (header parsing, signature, claims, the revocation lookup's callback) for a device token
//! of each algorithm, and a client certificate's identity (parsing the DER for its CN; the
//! chain was verified by the TLS handshake, whose cost is TLS's).
//!
//! Compared with the per-upgrade work it sits in (an HTTP/1.1 request head, a TCP accept and,
//! usually, a TLS handshake of ~1 ms of CPU), not with the per-publish budget: a token is
//! checked once per connection. Run: `cargo bench --bench auth`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use portcullis::auth::{now_secs, Authenticator, Presented};
use portcullis::config::{AuthMode, Config};
use portcullis::device_token::Signer;
use rustls_pki_types::CertificateDer;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn authenticator(keys: &str) -> Authenticator {
    let text = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nauth = \"token\"\n[routes.mqtt]\nupstreams = [\"127.0.0.1:1883\"]\n{keys}"
    );
    let config = Config::parse(&text, None).expect("config");
    Authenticator::from_config(&config, Default::default())
        .expect("keys load")
        .expect("auth asked for")
}

fn key_toml(signer: &Signer) -> String {
    match signer.public_pem() {
        Some(pem) => format!(
            "[[auth.key]]\nalg = \"{}\"\npublic_key_pem = \"\"\"\n{pem}\"\"\"\n",
            signer.alg()
        ),
        None => format!("[[auth.key]]\nalg = \"HS256\"\nsecret = \"{SECRET}\"\n"),
    }
}

fn bench_tokens(c: &mut Criterion) {
    let mut g = c.benchmark_group("token");
    let signers = [
        Signer::generate_ed25519().expect("ed25519"),
        Signer::generate_es256().expect("p256"),
        Signer::hs256(SECRET.as_bytes()),
    ];
    for signer in &signers {
        let auth = authenticator(&key_toml(signer));
        let token = signer.device_token(None, "meter-000042", 3600);
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        headers.insert(http::header::AUTHORIZATION, value);
        let presented = Presented {
            headers: &headers,
            tls_cert: None,
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
        };
        let now = now_secs();
        assert!(auth
            .authenticate(AuthMode::Token, "mqtt", &presented, now, |_| None)
            .is_ok());
        g.bench_function(signer.alg(), |b| {
            b.iter(|| {
                black_box(auth.authenticate(
                    AuthMode::Token,
                    black_box("mqtt"),
                    &presented,
                    now,
                    |_| None,
                ))
            })
        });
    }
    g.finish();
}

fn bench_certificate(c: &mut Criterion) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meter-000042");
    let cert = params.self_signed(&key).expect("cert");
    let der: CertificateDer<'static> = cert.der().clone();
    let auth = authenticator(
        "[[auth.key]]\nalg = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
    );
    let headers = HeaderMap::new();
    let presented = Presented {
        headers: &headers,
        tls_cert: Some(&der),
        peer: std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let now = now_secs();
    assert!(auth
        .authenticate(AuthMode::Mtls, "mqtt", &presented, now, |_| None)
        .is_ok());
    c.bench_function("certificate/cn", |b| {
        b.iter(|| black_box(auth.authenticate(AuthMode::Mtls, "mqtt", &presented, now, |_| None)))
    });
}

criterion_group!(benches, bench_tokens, bench_certificate);
criterion_main!(benches);
