//! Refusals at the door that had no test of their own: who may connect at all, before any
//! publish. Each asserts exactly what the client sees.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use portcullis::mqtt::wire::{self, Version};
use portcullis::policy::{Ban, BanSource, Subject};
use portcullis::Config;
use support::raw_mqtt::RawClient;
use support::ws::close_code;
use support::{policy_gw, Broker, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UPGRADE: &str =
    "GET /mqtt HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn ip_ban(ip: &str) -> Ban {
    let now = SystemTime::now();
    Ban {
        subject: Subject::Ip(ip.parse().unwrap()),
        reason: "test".into(),
        source: BanSource::admin("ops"),
        created: now,
        expires: Some(now + Duration::from_secs(3600)),
    }
}

/// Everything the gateway sends on `s` until it closes; it must close within 5 s.
async fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf));
    let _ = read.await.expect("the gateway closes the connection");
    buf
}

async fn status_of(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn unknown_devices_are_refused_with_not_authorized_when_configured() {
    let broker = Broker::spawn().await;
    let policy =
        "[policy]\nunknown_devices = \"refuse\"\n[policy.devices]\n\"known-1\" = \"default\"\n";
    let gw = TestGateway::start(&policy_gw::config(broker.addr, policy)).await;
    for (version, code) in [(Version::V5, 0x87), (Version::V311, 0x05)] {
        let mut dev = RawClient::tcp(gw.addrs[1], version).await;
        assert_eq!(
            dev.connect(&wire::connect("stranger", 30, version)).await,
            code,
            "{version:?}"
        );
    }
    let mut known = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        known
            .connect(&wire::connect("known-1", 30, Version::V311))
            .await,
        0
    );
}

#[tokio::test]
async fn an_empty_client_id_is_refused() {
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&policy_gw::config(broker.addr, "")).await;
    for (version, code) in [(Version::V5, 0x85), (Version::V311, 0x02)] {
        let mut dev = RawClient::tcp(gw.addrs[1], version).await;
        assert_eq!(
            dev.connect(&wire::connect("", 30, version)).await,
            code,
            "{version:?}"
        );
    }
}

#[tokio::test]
async fn a_banned_ip_behind_a_trusted_proxy_gets_403_on_the_upgrade() {
    let broker = Broker::spawn().await;
    let listener = "trusted_proxies = [\"127.0.0.1/32\"]";
    let gw = TestGateway::start(&policy_gw::config_with(broker.addr, listener, "")).await;
    gw.gw().ban(ip_ban("198.51.100.9")).await.unwrap();
    let banned = format!("{UPGRADE}X-Forwarded-For: 198.51.100.9\r\n\r\n");
    assert_eq!(
        status_of(gw.addr(), &banned).await,
        "HTTP/1.1 403 Forbidden"
    );
    let other = format!("{UPGRADE}X-Forwarded-For: 198.51.100.10\r\n\r\n");
    assert_eq!(
        status_of(gw.addr(), &other).await,
        "HTTP/1.1 101 Switching Protocols"
    );
}

async fn send_proxied(addr: SocketAddr, source: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let header = format!("PROXY TCP4 {source} 127.0.0.1 5000 80\r\n{UPGRADE}\r\n");
    s.write_all(header.as_bytes()).await.unwrap();
    read_all(s).await
}

#[tokio::test]
async fn a_banned_proxy_protocol_source_is_closed_before_tls_without_a_byte() {
    let broker = Broker::spawn().await;
    let listener = "proxy_protocol = \"v1\"\nproxy_protocol_from = [\"127.0.0.0/8\"]";
    let gw = TestGateway::start(&policy_gw::config_with(broker.addr, listener, "")).await;
    gw.gw().ban(ip_ban("203.0.113.50")).await.unwrap();
    let addr = gw.addr();
    assert!(
        send_proxied(addr, "203.0.113.50").await.is_empty(),
        "no byte for a banned source"
    );
    // Another source through the same proxy is served.
    let mut ok = TcpStream::connect(addr).await.unwrap();
    let header = format!("PROXY TCP4 203.0.113.51 127.0.0.1 5000 80\r\n{UPGRADE}\r\n");
    ok.write_all(header.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    ok.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

#[tokio::test]
async fn over_the_listener_connection_cap_is_closed_at_once() {
    let broker = Broker::spawn().await;
    let listener = "max_connections = 1\nhandshake_timeout_secs = 30";
    let gw = TestGateway::start(&policy_gw::config_with(broker.addr, listener, "")).await;
    let _holder = TcpStream::connect(gw.addr()).await.unwrap();
    assert_eventually!(gw.gw().open_connections() == 1);
    let started = tokio::time::Instant::now();
    let refused = TcpStream::connect(gw.addr()).await.unwrap();
    assert!(read_all(refused).await.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not at the timeout"
    );
}

#[tokio::test]
async fn over_the_listener_accept_rate_is_closed_without_a_byte() {
    let broker = Broker::spawn().await;
    let policy = "[policy.connects]\nper_listener_per_sec = 1\nper_listener_burst = 1\n";
    let gw = TestGateway::start(&policy_gw::config(broker.addr, policy)).await;
    let first = format!("{UPGRADE}\r\n");
    assert_eq!(
        status_of(gw.addr(), &first).await,
        "HTTP/1.1 101 Switching Protocols"
    );
    let mut second = TcpStream::connect(gw.addr()).await.unwrap();
    let _ = second.write_all(first.as_bytes()).await;
    assert!(read_all(second).await.is_empty());
    let s = gw.gw().policy().stats().snapshot();
    assert_eq!(s.listener_rate_limited, 1, "{s:?}");
}

#[tokio::test]
async fn a_reload_that_changes_the_listener_set_is_refused_whole() {
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&policy_gw::config(broker.addr, "")).await;
    let more = format!(
        "{}\n[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\n",
        policy_gw::config(broker.addr, "")
    );
    let err = gw
        .gw()
        .reload(&Config::parse(&more, None).unwrap())
        .unwrap_err();
    assert!(err.contains("restart"), "{err}");
    // Still serving as before.
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V311).await;
    assert_eq!(
        dev.connect(&wire::connect("after-reload", 30, Version::V311))
            .await,
        0
    );
}

/// A raw `/tunnel` stream from `xff` (behind the trusted proxy 127.0.0.1), echo checked.
async fn tunnel_from(gw: &TestGateway, xff: &str) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    support::ws::tunnel_from(gw.addr(), &gw.ws_url("/tunnel/echo"), xff).await
}

#[tokio::test]
async fn ip_and_cidr_bans_kick_live_tunnels_and_their_reconnect_gets_403() {
    let echo = support::echo_server().await;
    let listener = "trusted_proxies = [\"127.0.0.1/32\"]";
    let gw = TestGateway::start(&support::ws::config(listener, &[("echo", echo)])).await;
    let mut banned = tunnel_from(&gw, "198.51.100.20").await;
    // A dual-stack proxy may write the address IPv4-mapped: the IPv4 ban covers it.
    let mut mapped = tunnel_from(&gw, "::ffff:198.51.100.20").await;
    let mut in_net = tunnel_from(&gw, "203.0.113.77").await;
    let mut bystander = tunnel_from(&gw, "192.0.2.5").await;

    gw.gw().ban(ip_ban("198.51.100.20")).await.unwrap();
    assert_eq!(close_code(&mut banned).await, 1008);
    assert_eq!(close_code(&mut mapped).await, 1008);
    let mut net = ip_ban("203.0.113.0");
    net.subject = Subject::Cidr("203.0.113.0/24".parse().unwrap());
    gw.gw().ban(net).await.unwrap();
    assert_eq!(close_code(&mut in_net).await, 1008);

    // Nobody else is touched, and the banned come back to a 403.
    support::ws::assert_echo(&mut bystander, b"still here").await;
    let again = "GET /tunnel/echo HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n";
    assert_eq!(status_of(gw.addr(), again).await, "HTTP/1.1 403 Forbidden");
}
