//! PROXY protocol on a listener, from a raw TCP client: the header's source becomes the client
//! IP; anything else (no header, the wrong version, a peer not allowed to send one) is closed
//! before a byte of HTTP is answered, and the gateway goes on serving.
//!
//! The client IP the gateway believed is read from its logs (`client_ip` on the `conn` span),
//! matched to this test's connection by the `peer` field (our local address).

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use support::logs;
use support::ws::{self, assert_echo, read_until_closed, upgrade};
use support::{echo_server, TestGateway};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Listener lines; `from` is the `proxy_protocol_from` list. The handshake timeout is long so
/// that a close seen within a test's 10 s read is a refusal, not a timeout.
fn listener(mode: &str, from: &str) -> String {
    format!(
        "handshake_timeout_secs = 30\nproxy_protocol = \"{mode}\"\nproxy_protocol_from = [\"{from}\"]"
    )
}

async fn gateway(mode: &str, from: &str) -> TestGateway {
    logs::capture();
    let echo = echo_server().await;
    TestGateway::start(&ws::config(&listener(mode, from), &[("echo", echo)])).await
}

fn v1(src: Ipv4Addr) -> Vec<u8> {
    format!("PROXY TCP4 {src} 192.0.2.10 51000 443\r\n").into_bytes()
}

/// A v2 PROXY (cmd 1) TCP-over-IPv4 header from `src:51000` to 192.0.2.10:443.
fn v2(src: Ipv4Addr) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&[192, 0, 2, 10]);
    h.extend_from_slice(&51000u16.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// A v2 LOCAL header (a health check from the proxy itself): no address block.
fn v2_local() -> Vec<u8> {
    [&V2_SIGNATURE[..], &[0x20, 0x00, 0, 0]].concat()
}

/// Connect, send `header`, upgrade to `/tunnel/echo`, check an echo; returns our local address
/// (the gateway's `peer`).
async fn tunnel_after(gw: &TestGateway, header: &[u8]) -> SocketAddr {
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let local = tcp.local_addr().unwrap();
    tcp.write_all(header).await.unwrap();
    let mut ws = upgrade(tcp, &gw.ws_url("/tunnel/echo"), &[]).await;
    assert_echo(&mut ws, b"through the PROXY header").await;
    local
}

/// The client IP the gateway logged for the connection from `peer`.
async fn believed_ip(peer: SocketAddr) -> String {
    let line = logs::accepted_from_peer(peer).await;
    let field = line
        .split(|c: char| c.is_whitespace() || c == '{' || c == '}')
        .find_map(|t| t.strip_prefix("client_ip="))
        .unwrap_or_else(|| panic!("no client_ip in {line:?}"));
    field.to_string()
}

/// Connect, send `bytes` (which the gateway must refuse), and expect the connection closed
/// with nothing at all sent back; then the refusal reason `why` in the log for this peer.
async fn refused(gw: &TestGateway, bytes: &[u8], why: &str) {
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let local = tcp.local_addr().unwrap();
    // The gateway may close before reading (peer not allowed): the write can then fail.
    let _ = tcp.write_all(bytes).await;
    assert_eq!(read_until_closed(&mut tcp).await, b"");
    let line = logs::wait_for_line(why, &[("peer", &local.to_string())]).await;
    assert!(line.contains("connection refused"), "{line}");
}

fn upgrade_request(gw: &TestGateway) -> Vec<u8> {
    format!(
        "GET /tunnel/echo HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        gw.addr()
    )
    .into_bytes()
}

#[tokio::test]
async fn v1_header_source_is_the_client_ip() {
    let gw = gateway("v1", "127.0.0.0/8").await;
    let peer = tunnel_after(&gw, &v1(Ipv4Addr::new(203, 0, 113, 7))).await;
    assert_eq!(believed_ip(peer).await, "203.0.113.7");
}

#[tokio::test]
async fn v2_header_source_is_the_client_ip() {
    let gw = gateway("v2", "127.0.0.0/8").await;
    let peer = tunnel_after(&gw, &v2(Ipv4Addr::new(203, 0, 113, 8))).await;
    assert_eq!(believed_ip(peer).await, "203.0.113.8");
}

#[tokio::test]
async fn any_mode_accepts_both_versions() {
    let gw = gateway("any", "127.0.0.0/8").await;
    let peer = tunnel_after(&gw, &v1(Ipv4Addr::new(203, 0, 113, 9))).await;
    assert_eq!(believed_ip(peer).await, "203.0.113.9");
    let peer = tunnel_after(&gw, &v2(Ipv4Addr::new(203, 0, 113, 10))).await;
    assert_eq!(believed_ip(peer).await, "203.0.113.10");
}

#[tokio::test]
async fn v2_local_and_v1_unknown_are_served_as_the_peer() {
    let gw = gateway("any", "127.0.0.0/8").await;
    let peer = tunnel_after(&gw, &v2_local()).await;
    assert_eq!(believed_ip(peer).await, "127.0.0.1");
    let peer = tunnel_after(&gw, b"PROXY UNKNOWN\r\n").await;
    assert_eq!(believed_ip(peer).await, "127.0.0.1");
}

#[tokio::test]
async fn missing_header_is_closed_without_a_response_and_the_gateway_goes_on() {
    for mode in ["v1", "v2", "any"] {
        let gw = gateway(mode, "127.0.0.0/8").await;
        // What a client that does not know about the load balancer sends: plain HTTP.
        refused(&gw, &upgrade_request(&gw), "not a PROXY protocol header").await;
        refused(
            &gw,
            b"\x16\x03\x01\x02\x00garbage",
            "not a PROXY protocol header",
        )
        .await;
        let peer = tunnel_after(&gw, &v1_or_v2(mode, Ipv4Addr::new(203, 0, 113, 11))).await;
        assert_eq!(believed_ip(peer).await, "203.0.113.11", "{mode}");
    }
}

fn v1_or_v2(mode: &str, src: Ipv4Addr) -> Vec<u8> {
    match mode {
        "v2" => v2(src),
        _ => v1(src),
    }
}

#[tokio::test]
async fn wrong_version_is_closed() {
    let gw = gateway("v1", "127.0.0.0/8").await;
    let mut bytes = v2(Ipv4Addr::new(203, 0, 113, 12));
    bytes.extend_from_slice(&upgrade_request(&gw));
    refused(
        &gw,
        &bytes,
        "PROXY protocol v2 header, but this listener accepts only v1",
    )
    .await;

    let gw = gateway("v2", "127.0.0.0/8").await;
    let mut bytes = v1(Ipv4Addr::new(203, 0, 113, 13));
    bytes.extend_from_slice(&upgrade_request(&gw));
    refused(
        &gw,
        &bytes,
        "PROXY protocol v1 header, but this listener accepts only v2",
    )
    .await;
    let peer = tunnel_after(&gw, &v2(Ipv4Addr::new(203, 0, 113, 14))).await;
    assert_eq!(believed_ip(peer).await, "203.0.113.14");
}

#[tokio::test]
async fn peer_outside_proxy_protocol_from_is_closed_even_with_a_valid_header() {
    for mode in ["v1", "v2", "any"] {
        let gw = gateway(mode, "10.0.0.0/8").await;
        let mut bytes = v1_or_v2(mode, Ipv4Addr::new(203, 0, 113, 15));
        bytes.extend_from_slice(&upgrade_request(&gw));
        refused(&gw, &bytes, "is not in proxy_protocol_from").await;
    }
}
