//! The gateway behind a real nginx that terminates TLS and proxies WebSocket upgrades to the
//! gateway's plain listener: MQTT end to end, and which client IP the gateway believes.
//!
//! The client IP is read from the gateway's logs (`client_ip` on the `conn` span). nginx's
//! upstream connection has a port we cannot know, so each test uses a route name no other
//! test in this binary uses, and finds its connection's line by that.

mod support;

use std::net::SocketAddr;

use support::certs::{Ca, Leaf};
use support::nginx::Nginx;
use support::ws::{self, assert_echo, upgrade};
use support::{echo_server, logs, mqtt_wss, tls_client, Broker, TestGateway};
use tokio::net::TcpStream;

const GW: &str = "gw.example.test";

/// A plain listener that believes forwarding headers from `trusted` only.
fn listener(trusted: &str) -> String {
    format!("trusted_proxies = [\"{trusted}\"]")
}

/// The `websocket accepted` line of the one connection on `route`.
async fn accepted_on(route: &str) -> String {
    let quoted = format!("{route:?}");
    logs::wait_for_line("websocket accepted", &[("route", &quoted)]).await
}

/// Upgrade through nginx (TLS, SNI gw.example.test) to `/tunnel/{route}` with extra request
/// headers, and check an echo.
async fn tunnel_through(nginx: &Nginx, ca: &Ca, route: &str, headers: &[(&str, &str)]) {
    let tls = tls_client::connect(nginx.addr, tls_client::default_client(&ca.pem), GW).await;
    let url = format!("wss://{GW}/tunnel/{route}");
    let mut ws = upgrade(tls, &url, headers).await;
    assert_echo(&mut ws, route.as_bytes()).await;
}

struct Stack {
    ca: Ca,
    nginx: Nginx,
    _gw: TestGateway,
    _dir: tempfile::TempDir,
}

/// nginx (TLS for gw.example.test and localhost) in front of a gateway trusting 127.0.0.1,
/// with `routes`.
async fn stack(routes: &[(&str, SocketAddr)]) -> Stack {
    logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf: Leaf = ca.leaf(dir.path(), "nginx", &[GW, "localhost"]);
    let gw = TestGateway::start(&ws::config(&listener("127.0.0.1/32"), routes)).await;
    let nginx = Nginx::spawn(&leaf, gw.addr()).await;
    Stack {
        ca,
        nginx,
        _gw: gw,
        _dir: dir,
    }
}

#[tokio::test]
async fn mqtt_over_wss_through_nginx_round_trips_qos1() {
    let broker = Broker::spawn().await;
    let s = stack(&[("mqtt", broker.addr)]).await;
    let port = s.nginx.addr.port();
    mqtt_wss::qos1_round_trip("localhost", port, &s.ca.pem, "behind-nginx", "nginx/echo").await;
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    logs::capture();
    let echo = echo_server().await;
    let config = ws::config(&listener("10.0.0.0/8"), &[("direct_forged", echo)]);
    let gw = TestGateway::start(&config).await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let forged = [
        ("X-Forwarded-For", "198.51.100.66"),
        ("X-Real-IP", "198.51.100.67"),
        ("CF-Connecting-IP", "198.51.100.68"),
    ];
    let mut ws = upgrade(tcp, &gw.ws_url("/tunnel/direct_forged"), &forged).await;
    assert_echo(&mut ws, b"forged").await;

    let line = logs::accepted_from_peer(local).await;
    assert!(logs::has_field(&line, "client_ip", "127.0.0.1"), "{line}");
    assert!(logs::has_field(&line, "ip_source", "Peer"), "{line}");
}

#[tokio::test]
async fn through_nginx_the_rightmost_untrusted_forwarded_hop_is_the_client() {
    let echo = echo_server().await;
    let s = stack(&[("via_nginx_xff", echo), ("via_nginx_chain", echo)]).await;

    // nginx sends "198.51.100.77, 127.0.0.1"; 127.0.0.1 is nginx itself (trusted).
    let xff = [("X-Forwarded-For", "198.51.100.77")];
    tunnel_through(&s.nginx, &s.ca, "via_nginx_xff", &xff).await;
    let line = accepted_on("via_nginx_xff").await;
    assert!(
        logs::has_field(&line, "client_ip", "198.51.100.77"),
        "{line}"
    );
    assert!(
        logs::has_field(&line, "ip_source", "XForwardedFor"),
        "{line}"
    );
    // ...while the TCP peer is nginx's upstream connection.
    assert!(peer_of(&line).starts_with("127.0.0.1:"), "{line}");

    // Everything left of the rightmost untrusted hop was written by the client: not believed.
    let chain = [("X-Forwarded-For", "198.51.100.78, 198.51.100.79")];
    tunnel_through(&s.nginx, &s.ca, "via_nginx_chain", &chain).await;
    let line = accepted_on("via_nginx_chain").await;
    assert!(
        logs::has_field(&line, "client_ip", "198.51.100.79"),
        "{line}"
    );
}

#[tokio::test]
async fn through_nginx_without_a_client_header_the_client_is_nginx_peer() {
    let echo = echo_server().await;
    let s = stack(&[("via_nginx_plain", echo)]).await;
    // nginx sends "X-Forwarded-For: 127.0.0.1": every hop trusted, the leftmost is the client.
    tunnel_through(&s.nginx, &s.ca, "via_nginx_plain", &[]).await;
    let line = accepted_on("via_nginx_plain").await;
    assert!(logs::has_field(&line, "client_ip", "127.0.0.1"), "{line}");
    assert!(
        logs::has_field(&line, "ip_source", "XForwardedFor"),
        "{line}"
    );
}

/// nginx passes client request headers through unchanged; only Cloudflare sets (and
/// overwrites) CF-Connecting-IP, so behind nginx a device can name any client IP with it.
#[tokio::test]
async fn cf_connecting_ip_sent_by_a_client_through_nginx_is_not_believed() {
    let echo = echo_server().await;
    let s = stack(&[("via_nginx_cf", echo)]).await;
    let forged = [("CF-Connecting-IP", "198.51.100.99")];
    tunnel_through(&s.nginx, &s.ca, "via_nginx_cf", &forged).await;
    let line = accepted_on("via_nginx_cf").await;
    assert!(logs::has_field(&line, "client_ip", "127.0.0.1"), "{line}");
}

/// The `peer=` value of a log line.
fn peer_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix("peer="))
        .unwrap_or_else(|| panic!("no peer in {line:?}"))
        .to_string()
}

/// nginx ends TLS, verifies the device's client certificate and forwards it URL-encoded
/// (`$ssl_client_escaped_cert`); the gateway, trusting nginx, checks it again against the
/// device CA and takes the identity from it. No certificate: nginx forwards an empty header
/// and the gateway answers 401.
#[tokio::test]
async fn a_client_certificate_forwarded_by_nginx_authenticates_the_device() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf: Leaf = ca.leaf(dir.path(), "nginx", &[GW]);
    let device = ca.client(dir.path(), "meter-12");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let config = ws::config(
        &format!("{}\nauth = \"mtls\"", listener("127.0.0.1/32")),
        &[("meters", echo)],
    ) + &format!(
        "\n[auth]\nforwarded_cert_header = \"x-client-cert\"\nforwarded_cert_ca = {}\nforwarded_cert_from = [\"127.0.0.1/32\"]\n",
        ws::toml_path(&ca_file)
    );
    let gw = TestGateway::start(&config).await;
    let nginx = Nginx::spawn_with(
        &leaf,
        gw.addr(),
        &format!(
            "ssl_client_certificate {};\n        ssl_verify_client optional;",
            ca_file.display()
        ),
        "proxy_set_header X-Client-Cert $ssl_client_escaped_cert;",
    )
    .await;

    let config = tls_client::client_with_cert(&ca.pem, &device.cert, &device.key);
    let tls = tls_client::connect(nginx.addr, config, GW).await;
    let mut ws = upgrade(tls, &format!("wss://{GW}/tunnel/meters"), &[]).await;
    assert_echo(&mut ws, b"meter-12 reading").await;

    let tls = tls_client::connect(nginx.addr, tls_client::default_client(&ca.pem), GW).await;
    let (status, text) = raw_over(
        tls,
        "GET /tunnel/meters HTTP/1.1\r\nHost: gw.example.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401, "{text}\n{}", nginx.error_log());
    assert!(text.contains("client certificate is required"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: clientcertificate realm=\"portcullis\""),
        "{text}"
    );
}

/// One request over `stream`; the status and the whole answer as text.
async fn raw_over<S>(mut stream: S, request: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if n == 0 || text.contains("required\n") || text.contains("\r\n0\r\n\r\n") {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
