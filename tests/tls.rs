//! TLS termination in the gateway: real rustls clients, certificates from a test CA, SNI
//! selection, certificate reload under live tunnels, and non-TLS clients on a TLS port.

mod support;

use portcullis::Config;
use support::certs::{Ca, Leaf};
use support::mqtt_wss;
use support::tls_client::{self, TLS12, TLS13};
use support::ws::{self, assert_echo, read_until_closed, toml_path, upgrade};
use support::{echo_server, Broker, TestGateway};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::rustls::ProtocolVersion;

const GW: &str = "gw.example.test";

/// A TLS 1.2-framed alert record: type 21, version 3.3, length 2, level fatal, decode_error.
const FATAL_DECODE_ERROR_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 50];

/// Listener lines for TLS with `leaves` (the first is the default). The handshake timeout is
/// long so that a connection closing within a test's 10 s read was refused, not timed out.
fn tls_listener(leaves: &[&Leaf]) -> String {
    let certs: Vec<String> = leaves
        .iter()
        .map(|l| {
            format!(
                "{{ cert = {}, key = {} }}",
                toml_path(&l.cert),
                toml_path(&l.key)
            )
        })
        .collect();
    format!(
        "handshake_timeout_secs = 30\ntls = {{ certificates = [{}] }}",
        certs.join(", ")
    )
}

fn parse(text: &str) -> Config {
    Config::parse(text, None).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

#[tokio::test]
async fn tunnel_over_tls_negotiates_http11_with_tls12_and_tls13_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "gw", &[GW]);
    let echo = echo_server().await;
    let gw = TestGateway::start(&ws::config(&tls_listener(&[&leaf]), &[("echo", echo)])).await;

    for (versions, want) in [
        (&[&TLS12][..], ProtocolVersion::TLSv1_2),
        (&[&TLS13][..], ProtocolVersion::TLSv1_3),
    ] {
        let client = tls_client::client_config(&ca.pem, versions, &[b"http/1.1"]);
        let tls = tls_client::connect(gw.addr(), client, GW).await;
        let (_, session) = tls.get_ref();
        assert_eq!(session.protocol_version(), Some(want));
        assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(tls_client::peer_leaf(&tls), tls_client::der(&leaf.pem));
        let mut ws = upgrade(tls, "wss://gw.example.test/tunnel/echo", &[]).await;
        assert_echo(&mut ws, format!("over {want:?}").as_bytes()).await;
        assert_echo(&mut ws, &[0, 1, 2, 255]).await;
    }

    // A client that offers no ALPN at all is served too (no protocol is chosen for it).
    let client = tls_client::client_config(&ca.pem, &[&TLS13, &TLS12], &[]);
    let tls = tls_client::connect(gw.addr(), client, GW).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let mut ws = upgrade(tls, "wss://gw.example.test/tunnel/echo", &[]).await;
    assert_echo(&mut ws, b"no alpn").await;
}

#[tokio::test]
async fn sni_picks_the_matching_certificate_and_unknown_names_get_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let a = ca.leaf(dir.path(), "a", &["a.example.test"]);
    let b = ca.leaf(dir.path(), "b", &["b.example.test"]);
    let echo = echo_server().await;
    let gw = TestGateway::start(&ws::config(&tls_listener(&[&a, &b]), &[("echo", echo)])).await;

    for (sni, leaf) in [("b.example.test", &b), ("a.example.test", &a)] {
        let tls = tls_client::connect(gw.addr(), tls_client::default_client(&ca.pem), sni).await;
        assert_eq!(
            tls_client::peer_leaf(&tls),
            tls_client::der(&leaf.pem),
            "SNI {sni}"
        );
        let mut ws = upgrade(tls, &format!("wss://{sni}/tunnel/echo"), &[]).await;
        assert_echo(&mut ws, sni.as_bytes()).await;
    }

    // Neither certificate names this host: the first (the default) is presented.
    let client = tls_client::any_name_client(&ca.pem);
    let tls = tls_client::connect(gw.addr(), client, "unknown.example.test").await;
    assert_eq!(tls_client::peer_leaf(&tls), tls_client::der(&a.pem));
}

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_connections_and_keeps_live_tunnels() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let old = ca.leaf(dir.path(), "old", &[GW]);
    let new = ca.leaf(dir.path(), "new", &[GW]);
    assert_ne!(tls_client::der(&old.pem), tls_client::der(&new.pem));
    let echo = echo_server().await;
    let gw = TestGateway::start(&ws::config(&tls_listener(&[&old]), &[("echo", echo)])).await;

    let tls = tls_client::connect(gw.addr(), tls_client::default_client(&ca.pem), GW).await;
    assert_eq!(tls_client::peer_leaf(&tls), tls_client::der(&old.pem));
    let mut live = upgrade(tls, "wss://gw.example.test/tunnel/echo", &[]).await;
    assert_echo(&mut live, b"before reload").await;

    let reloaded = parse(&ws::config(&tls_listener(&[&new]), &[("echo", echo)]));
    gw.gw().reload(&reloaded).expect("reload");

    assert_echo(&mut live, b"after reload, same tunnel").await;
    let tls = tls_client::connect(gw.addr(), tls_client::default_client(&ca.pem), GW).await;
    assert_eq!(tls_client::peer_leaf(&tls), tls_client::der(&new.pem));
    let mut fresh = upgrade(tls, "wss://gw.example.test/tunnel/echo", &[]).await;
    assert_echo(&mut fresh, b"new connection").await;
    assert_echo(&mut live, b"old tunnel still going").await;
}

#[tokio::test]
async fn failed_reload_keeps_the_running_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let good = ca.leaf(dir.path(), "good", &[GW]);
    let other = ca.leaf(dir.path(), "other", &[GW]);
    let echo = echo_server().await;
    let gw = TestGateway::start(&ws::config(&tls_listener(&[&good]), &[("echo", echo)])).await;

    // Both files exist (so the config validates) but the key is not the certificate's.
    let mismatched = Leaf {
        cert: other.cert.clone(),
        key: good.key.clone(),
        pem: other.pem.clone(),
    };
    let bad = parse(&ws::config(
        &tls_listener(&[&mismatched]),
        &[("echo", echo)],
    ));
    let err = gw.gw().reload(&bad).expect_err("mismatched key refused");
    assert!(err.contains("does not match"), "{err}");

    let tls = tls_client::connect(gw.addr(), tls_client::default_client(&ca.pem), GW).await;
    assert_eq!(tls_client::peer_leaf(&tls), tls_client::der(&good.pem));
    let mut ws = upgrade(tls, "wss://gw.example.test/tunnel/echo", &[]).await;
    assert_echo(&mut ws, b"still the old certificate").await;
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_closed_without_an_http_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "gw", &[GW]);
    let echo = echo_server().await;
    let gw = TestGateway::start(&ws::config(&tls_listener(&[&leaf]), &[("echo", echo)])).await;

    let mut plain = TcpStream::connect(gw.addr()).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw.example.test\r\n\r\n")
        .await
        .unwrap();
    // rustls answers a record that is not TLS with a fatal decode_error alert, then closes.
    let answer = read_until_closed(&mut plain).await;
    assert_eq!(answer, FATAL_DECODE_ERROR_ALERT);

    let tls = tls_client::connect(gw.addr(), tls_client::default_client(&ca.pem), GW).await;
    let mut ws = upgrade(tls, "wss://gw.example.test/tunnel/echo", &[]).await;
    assert_echo(&mut ws, b"good client after a bad one").await;
}

#[tokio::test]
async fn mqtt_client_over_wss_reaches_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    // rumqttc connects to the URL's host and verifies the certificate against the same name.
    let leaf = ca.leaf(dir.path(), "gw", &[GW, "localhost"]);
    let broker = Broker::spawn().await;
    let listener = tls_listener(&[&leaf]);
    let gw = TestGateway::start(&ws::config(&listener, &[("mqtt", broker.addr)])).await;
    let port = gw.addr().port();
    mqtt_wss::qos1_round_trip("localhost", port, &ca.pem, "wss-device", "wss/echo").await;
}

/// Two listeners; the new config is good for the first and bad for the second. The error says
/// the running config is kept, so the first listener must still present its old certificate.
#[tokio::test]
async fn reload_failing_on_one_listener_changes_no_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let old0 = ca.leaf(dir.path(), "old0", &[GW]);
    let old1 = ca.leaf(dir.path(), "old1", &[GW]);
    let new0 = ca.leaf(dir.path(), "new0", &[GW]);
    let echo = echo_server().await;
    let two = |first: &Leaf, second: &Leaf| {
        let one = ws::config(&tls_listener(&[first]), &[("echo", echo)]);
        let second = tls_listener(&[second]);
        format!("{one}\n[[listener]]\nbind = \"127.0.0.1:0\"\n{second}\n")
    };
    let gw = TestGateway::start(&two(&old0, &old1)).await;
    let mismatched = Leaf {
        cert: old1.cert.clone(),
        key: new0.key.clone(),
        pem: old1.pem.clone(),
    };
    let err = gw.gw().reload(&parse(&two(&new0, &mismatched)));
    assert!(err.expect_err("bad key refused").contains("does not match"));

    let tls = tls_client::connect(gw.addrs[0], tls_client::default_client(&ca.pem), GW).await;
    assert_eq!(tls_client::peer_leaf(&tls), tls_client::der(&old0.pem));
}
