//! Device authentication at the front door, against the real gateway, real mosquitto, real
//! TLS with client certificates and real WebSocket/MQTT clients: tokens (and each way they
//! fail), the client ID bound to the identity, revocation by ban, key rotation by reload,
//! failures from one address as strikes, and mTLS on our own listener.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use portcullis::config::Config;
use portcullis::device_token::Signer;
use portcullis::mqtt::wire::{self, Version};
use portcullis::policy::Subject;
use serde_json::json;
use support::raw_mqtt::RawClient;
use support::{raw_request, Broker, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket listener asking for tokens; `/mqtt` to mosquitto and `/tunnel/meters` to an
/// echo server; one EdDSA key `k1`.
fn config(broker: SocketAddr, echo: SocketAddr, signer: &Signer, extra: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
auth = "token"

[routes.mqtt]
upstreams = ["{broker}"]

[routes.meters]
upstreams = ["{echo}"]

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 5

[auth]
{extra}

[[auth.key]]
kid = "k1"
alg = "EdDSA"
public_key_pem = """
{pem}"""
"#,
        pem = signer.public_pem().expect("public key")
    )
}

fn upgrade(path: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{auth}\r\n"
    )
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `/tunnel/meters` opened with `Authorization: Bearer {token}`, echo checked with `payload`.
async fn tunnel_echo(gw: &TestGateway, token: &str, payload: &[u8]) {
    let tcp = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("tcp");
    let auth = format!("Bearer {token}");
    let mut ws =
        support::ws::upgrade(tcp, "ws://gw/tunnel/meters", &[("authorization", &auth)]).await;
    support::ws::assert_echo(&mut ws, payload).await;
}

async fn setup(extra: &str) -> (Broker, TestGateway, Signer) {
    let broker = Broker::spawn().await;
    let echo = support::echo_server().await;
    let signer = Signer::generate_ed25519().expect("key");
    let gw = TestGateway::start(&config(broker.addr, echo, &signer, extra)).await;
    (broker, gw, signer)
}

#[tokio::test]
async fn each_refusal_has_its_status_and_challenge() {
    let (_broker, gw, signer) = setup("strike_failures = false").await;
    let now = portcullis::auth::now_secs();

    let (status, text) = raw_request(gw.addr(), &upgrade("/tunnel/meters", None)).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        header(&text, "www-authenticate"),
        Some(r#"Bearer realm="portcullis""#)
    );

    let other = Signer::generate_ed25519().expect("key");
    let forged = other.device_token(Some("k1"), "meter-1", 60);
    let (status, text) = raw_request(gw.addr(), &upgrade("/tunnel/meters", Some(&forged))).await;
    assert_eq!(status, 401, "{text}");
    assert!(
        header(&text, "www-authenticate").is_some_and(|v| v.contains(r#"error="invalid_token""#)),
        "{text}"
    );

    let expired = signer
        .sign(Some("k1"), &json!({"sub": "meter-1", "exp": now - 3600}))
        .expect("sign");
    let (status, text) = raw_request(gw.addr(), &upgrade("/tunnel/meters", Some(&expired))).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.ends_with("token expired\n"), "{text}");
    assert!(
        header(&text, "www-authenticate")
            .is_some_and(|v| v.contains(r#"error_description="token expired""#)),
        "{text}"
    );

    // Valid, but only for another route: 403, no challenge (a new token would not help).
    let scoped = signer
        .sign(
            Some("k1"),
            &json!({"sub": "meter-1", "exp": now + 60, "routes": ["mqtt"]}),
        )
        .expect("sign");
    let (status, text) = raw_request(gw.addr(), &upgrade("/tunnel/meters", Some(&scoped))).await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(header(&text, "www-authenticate"), None);

    // Not valid yet (nbf beyond the skew): 401 saying so.
    let early = signer
        .sign(
            Some("k1"),
            &json!({"sub": "meter-1", "exp": now + 7200, "nbf": now + 3600}),
        )
        .expect("sign");
    let (status, text) = raw_request(gw.addr(), &upgrade("/tunnel/meters", Some(&early))).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.ends_with("token not valid yet\n"), "{text}");

    // Two Authorization headers: which one would a proxy in front have checked? 401.
    let good = signer.device_token(Some("k1"), "meter-1", 60);
    let twice = upgrade("/tunnel/meters", Some(&good)).replace(
        "\r\n\r\n",
        &format!("\r\nAuthorization: Bearer {good}\r\n\r\n"),
    );
    let (status, text) = raw_request(gw.addr(), &twice).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        header(&text, "www-authenticate"),
        Some(r#"Bearer realm="portcullis", error="invalid_request""#)
    );

    // A token in the query string is never looked at.
    let path = format!("/tunnel/meters?access_token={good}");
    let (status, _) = raw_request(gw.addr(), &upgrade(&path, None)).await;
    assert_eq!(status, 401);

    // The same device with its own token reaches the tunnel: bytes go through.
    tunnel_echo(&gw, &good, b"reading 42").await;

    let stats = gw.gw().auth_stats();
    let refused: Vec<u64> = stats
        .refused
        .iter()
        .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    // missing ×2 (none, query only), invalid ×2 (forged, two headers), expired ×2 (exp, nbf),
    // forbidden.
    assert_eq!(refused, [2, 2, 2, 1, 0]);
    assert_eq!(
        stats.accepted[0].load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn the_client_id_is_bound_to_the_token() {
    let (_broker, gw, signer) = setup("").await;
    let url = gw.ws_url("/mqtt");
    for version in [Version::V5, Version::V311] {
        let token = signer.device_token(Some("k1"), "plant-7", 60);
        let mut own = RawClient::ws_with(&url, version, Some(&token)).await;
        assert_eq!(own.connect(&wire::connect("plant-7", 30, version)).await, 0);
        own.ping().await;

        let mut impostor = RawClient::ws_with(&url, version, Some(&token)).await;
        let code = impostor
            .connect(&wire::connect("plant-8", 30, version))
            .await;
        let not_authorized = if version == Version::V5 { 0x87 } else { 0x05 };
        assert_eq!(code, not_authorized, "{version:?}");
    }
}

#[tokio::test]
async fn prefix_binding_lets_one_device_run_several_clients() {
    let (_broker, gw, signer) = setup(r#"bind_client_id = "prefix""#).await;
    let url = gw.ws_url("/mqtt");
    let token = signer.device_token(Some("k1"), "plant-7", 60);
    let mut a = RawClient::ws_with(&url, Version::V311, Some(&token)).await;
    let connect = wire::connect("plant-7/pump", 30, Version::V311);
    assert_eq!(a.connect(&connect).await, 0);
    // Not another device whose ID merely starts the same way.
    for other in ["plant-70", "plant-", "plant-7-x"] {
        let mut b = RawClient::ws_with(&url, Version::V311, Some(&token)).await;
        let connect = wire::connect(other, 30, Version::V311);
        assert_eq!(b.connect(&connect).await, 0x05, "{other}");
    }
}

#[tokio::test]
async fn a_ban_on_the_identity_revokes_its_tokens() {
    let (_broker, gw, signer) = setup("").await;
    let token = signer.device_token(Some("k1"), "stolen-3", 3600);
    let ban = support::admin_ban(Subject::ClientId("stolen-3".into()), None);
    gw.gw().ban(ban).await.expect("ban");
    let (status, text) = raw_request(gw.addr(), &upgrade("/tunnel/meters", Some(&token))).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("device revoked"), "{text}");
    // As a serial too (push devices are banned by serial).
    let token = signer.device_token(Some("k1"), "SN-77", 3600);
    let ban = support::admin_ban(Subject::Serial("SN-77".into()), None);
    gw.gw().ban(ban).await.expect("ban");
    let (status, _) = raw_request(gw.addr(), &upgrade("/tunnel/meters", Some(&token))).await;
    assert_eq!(status, 403);
}

/// Does the gateway answer an HTTP request on a new connection at all?
async fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(upgrade("/tunnel/meters", None).as_bytes())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[tokio::test]
async fn repeated_failures_from_one_address_ban_it() {
    let broker = Broker::spawn().await;
    let echo = support::echo_server().await;
    let signer = Signer::generate_ed25519().expect("key");
    let text = config(broker.addr, echo, &signer, "") + "\n[policy.strikes]\nthreshold = 3\n";
    let gw = TestGateway::start(&text).await;
    for _ in 0..3 {
        let (status, _) = raw_request(gw.addr(), &upgrade("/tunnel/meters", Some("x.y.z"))).await;
        assert_eq!(status, 401);
    }
    let ban = gw
        .gw()
        .policy()
        .bans()
        .get(
            &Subject::Ip("127.0.0.1".parse().expect("ip")),
            std::time::SystemTime::now(),
        )
        .expect("the address is banned");
    assert_eq!(ban.source.by(), "portcullis:auth");
    assert!(
        !answers(gw.addr()).await,
        "a banned address is refused at accept"
    );
}

#[tokio::test]
async fn keys_rotate_on_reload() {
    let broker = Broker::spawn().await;
    let echo = support::echo_server().await;
    let old = Signer::generate_ed25519().expect("key");
    let new = Signer::generate_ed25519().expect("key");
    let gw = TestGateway::start(&config(broker.addr, echo, &old, "")).await;
    let old_token = old.device_token(Some("k1"), "meter-1", 600);
    let new_token = new.device_token(Some("k2"), "meter-1", 600);
    let status = |t: String| {
        let addr = gw.addr();
        async move {
            raw_request(addr, &upgrade("/tunnel/meters", Some(&t)))
                .await
                .0
        }
    };
    assert_eq!(status(old_token.clone()).await, 101);
    assert_eq!(status(new_token.clone()).await, 401);

    // Both keys active while devices move over…
    let both = config(broker.addr, echo, &old, "")
        + &format!(
            "\n[[auth.key]]\nkid = \"k2\"\nalg = \"EdDSA\"\npublic_key_pem = \"\"\"\n{}\"\"\"\n",
            new.public_pem().expect("pem")
        );
    gw.gw()
        .reload(&Config::parse(&both, None).expect("config"))
        .expect("reload");
    assert_eq!(status(old_token.clone()).await, 101);
    assert_eq!(status(new_token.clone()).await, 101);

    // …then the old one leaves.
    let only_new = config(broker.addr, echo, &new, "").replace("kid = \"k1\"", "kid = \"k2\"");
    gw.gw()
        .reload(&Config::parse(&only_new, None).expect("config"))
        .expect("reload");
    assert_eq!(status(old_token).await, 401);
    assert_eq!(status(new_token).await, 101);
}

#[tokio::test]
async fn client_certificates_on_our_own_tls() {
    support::tls_client::install_default_provider();
    let dir = tempfile::tempdir().expect("dir");
    let ca = support::certs::Ca::new();
    let server = ca.leaf(dir.path(), "server", &["localhost"]);
    let device = ca.client(dir.path(), "meter-9");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("ca");
    let broker = Broker::spawn().await;
    let path = support::ws::toml_path;
    let text = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
auth = "mtls"
[listener.tls]
client_ca = {ca}
certificates = [{{ cert = {cert}, key = {key} }}]

[routes.mqtt]
upstreams = ["{broker}"]

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 5
"#,
        ca = path(&ca_file),
        cert = path(&server.cert),
        key = path(&server.key),
        broker = broker.addr,
    );
    let gw = TestGateway::start(&text).await;

    // With its certificate, the device is meter-9: that client ID and no other.
    for (client_id, want) in [("meter-9", 0u8), ("meter-1", 0x05)] {
        let config = support::tls_client::client_with_cert(&ca.pem, &device.cert, &device.key);
        let tls = support::tls_client::connect(gw.addr(), config, "localhost").await;
        let mut ws = support::ws::upgrade(
            tls,
            "ws://localhost/mqtt",
            &[("sec-websocket-protocol", "mqtt")],
        )
        .await;
        ws.send(Message::binary(wire::connect(client_id, 30, Version::V311)))
            .await
            .expect("send CONNECT");
        let connack = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => b,
            other => panic!("CONNACK expected, got {other:?}"),
        };
        assert_eq!(connack[0], 0x20);
        assert_eq!(connack[3], want, "{client_id}");
    }

    // Without one, the handshake itself fails (client_auth = "required").
    let config = support::tls_client::default_client(&ca.pem);
    let refused = async {
        let mut tls = support::tls_client::try_connect(gw.addr(), config, "localhost").await?;
        // TLS 1.3: the server's refusal of the certificate arrives after the client finished.
        tls.write_all(upgrade("/mqtt", None).as_bytes()).await?;
        let mut buf = [0u8; 64];
        match tls.read(&mut buf).await? {
            0 => Err(std::io::Error::other("closed")),
            _ => Ok(()),
        }
    };
    assert!(refused.await.is_err(), "no certificate, no session");
    assert_eq!(
        gw.gw().auth_stats().accepted[1].load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

/// A TCP upstream that counts the connections it accepts and echoes what they send.
async fn counting_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn no_upstream_connection_is_opened_for_a_refused_device() {
    use std::sync::atomic::Ordering;
    let broker = Broker::spawn().await;
    let (upstream, accepted) = counting_upstream().await;
    let signer = Signer::generate_ed25519().expect("key");
    // One health check at start, then none for an hour: every later accept is a tunnel.
    let text = config(broker.addr, upstream, &signer, "strike_failures = false").replace(
        &format!("upstreams = [\"{upstream}\"]"),
        &format!("upstreams = [\"{upstream}\"]\nhealth_check_interval_secs = 3600"),
    );
    let gw = TestGateway::start(&text).await;
    let settled = support::eventually(Duration::from_secs(10), || {
        accepted.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(settled, "the start-up health check connects once");
    let now = portcullis::auth::now_secs();
    let expired = signer
        .sign(Some("k1"), &json!({"sub": "m", "exp": now - 3600}))
        .expect("sign");
    let forged = Signer::generate_ed25519()
        .expect("key")
        .device_token(Some("k1"), "m", 60);
    for token in [
        None,
        Some("x.y.z"),
        Some(expired.as_str()),
        Some(forged.as_str()),
    ] {
        let (status, _) = raw_request(gw.addr(), &upgrade("/tunnel/meters", token)).await;
        assert_eq!(status, 401);
    }
    // The one device that proves itself is the one connection the upstream sees.
    let good = signer.device_token(Some("k1"), "m", 60);
    tunnel_echo(&gw, &good, b"counted").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_raw_mqtt_device_without_a_certificate_gets_connack_not_authorized() {
    support::tls_client::install_default_provider();
    let dir = tempfile::tempdir().expect("dir");
    let ca = support::certs::Ca::new();
    let server = ca.leaf(dir.path(), "server", &["localhost"]);
    let device = ca.client(dir.path(), "meter-9");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("ca");
    let broker = Broker::spawn().await;
    let path = support::ws::toml_path;
    // Optional client certificates, so the TLS handshake passes and the refusal is MQTT's.
    let text = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
kind = "mqtt"
auth = "mtls"
[listener.tls]
client_ca = {ca}
client_auth = "optional"
certificates = [{{ cert = {cert}, key = {key} }}]

[routes.mqtt]
upstreams = ["{broker}"]
"#,
        ca = path(&ca_file),
        cert = path(&server.cert),
        key = path(&server.key),
        broker = broker.addr,
    );
    let gw = TestGateway::start(&text).await;
    let cases = [
        (None, Version::V311, "meter-9", 0x05),
        (None, Version::V5, "meter-9", 0x87),
        (Some(&device), Version::V5, "meter-1", 0x87),
        (Some(&device), Version::V311, "meter-9", 0),
    ];
    for (cert, version, client_id, want) in cases {
        let config = match cert {
            Some(d) => support::tls_client::client_with_cert(&ca.pem, &d.cert, &d.key),
            None => support::tls_client::default_client(&ca.pem),
        };
        let mut tls = support::tls_client::connect(gw.addr(), config, "localhost").await;
        tls.write_all(&wire::connect(client_id, 30, version))
            .await
            .expect("CONNECT");
        let mut connack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut connack))
            .await
            .expect("CONNACK in time")
            .expect("CONNACK");
        assert_eq!(connack[0], 0x20);
        assert_eq!(
            connack[3],
            want,
            "{client_id} {version:?} cert={}",
            cert.is_some()
        );
    }
}
