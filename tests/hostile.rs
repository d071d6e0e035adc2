//! The hostile-input battery: each attack gets its exact answer, and a bystander device on the
//! same gateway keeps flowing (an echo through `/tunnel/echo` and an MQTT ping through
//! `/mqtt`, after the attack). Real mosquitto, the real gateway, hand-made bytes.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use portcullis::mqtt::wire::{self, Version};
use support::raw_mqtt::{self, End, RawClient};
use support::{echo_server, Broker, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Listener 0: WebSocket, a short handshake timeout, pings every second (so a device that
/// stops reading is found in seconds); listener 1: raw MQTT. `/mqtt` to mosquitto, `/tunnel/echo`
/// to an echo server. `extra`: more TOML (a policy).
async fn gateway(extra: &str) -> (TestGateway, Broker) {
    let broker = Broker::spawn().await;
    let echo = echo_server().await;
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
handshake_timeout_secs = 2

[[listener]]
bind = "127.0.0.1:0"
kind = "mqtt"

# A PROXY-protocol listener (from 127.0.0.1), for the trickled PROXY header.
[[listener]]
bind = "127.0.0.1:0"
handshake_timeout_secs = 2
proxy_protocol = "v1"
proxy_protocol_from = ["127.0.0.1/32"]

[mqtt]
connect_timeout_secs = 2

[routes.mqtt]
upstreams = ["{broker}"]

[routes.echo]
upstreams = ["{echo}"]

[websocket]
ping_interval_secs = 1
max_missed_pongs = 1

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 5
{extra}
"#,
        broker = broker.addr
    );
    (TestGateway::start(&config).await, broker)
}

/// Someone else, right after the attack: an echo through a tunnel and an MQTT round trip.
async fn bystander_flows(gw: &TestGateway) {
    let tcp = TcpStream::connect(gw.addr()).await.expect("tcp");
    let mut ws = support::ws::upgrade(tcp, &gw.ws_url("/tunnel/echo"), &[]).await;
    support::ws::assert_echo(&mut ws, b"still here").await;
    let mut dev = RawClient::ws(&gw.ws_url("/mqtt"), Version::V311).await;
    let connect = wire::connect("bystander", 30, Version::V311);
    assert_eq!(dev.connect(&connect).await, 0);
    dev.ping().await;
}

/// A raw WebSocket on `path`, upgraded by hand: the 101 read, the socket handed back.
async fn raw_ws(addr: SocketAddr, path: &str, protocol: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("tcp");
    let proto = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{proto}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.expect("101"),
            1,
            "closed before 101"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A masked client frame (key 0: masked as RFC 6455 requires, bytes unchanged).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Read server frames until a Close; its code. `None`: the stream ended without one.
async fn close_code(s: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        // Walk whole frames in what we have.
        let mut at = 0;
        while buf.len() >= at + 2 {
            let (op, len7) = (buf[at] & 0x0f, usize::from(buf[at + 1] & 0x7f));
            let (hdr, len) = match len7 {
                126 if buf.len() >= at + 4 => (
                    4,
                    usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])),
                ),
                127 if buf.len() >= at + 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[at + 2..at + 10]);
                    (10, u64::from_be_bytes(b) as usize)
                }
                126 | 127 => break,
                n => (2, n),
            };
            if buf.len() < at + hdr + len {
                break;
            }
            if op == 8 {
                let p = &buf[at + hdr..at + hdr + len];
                return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
            }
            at += hdr + len;
        }
        buf.drain(..at);
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no Close within 15 s"),
        }
    }
}

/// The socket is closed by the gateway within `within` (EOF or reset on read).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Write `bytes` one at a time, 300 ms apart (the attacker's pace, not a synchronisation),
/// until the gateway closes the connection; how long that took. What it sends meanwhile
/// (pings, a Close, a 408) is read and ignored. Panics if it never closes.
async fn trickle_until_cut(s: &mut TcpStream, bytes: &[u8]) -> Duration {
    let started = tokio::time::Instant::now();
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() {
            return started.elapsed();
        }
        let pause = tokio::time::Instant::now() + Duration::from_millis(300);
        let mut probe = [0u8; 256];
        while let Ok(read) = tokio::time::timeout_at(pause, s.read(&mut probe)).await {
            if !matches!(read, Ok(n) if n > 0) {
                return started.elapsed();
            }
        }
    }
    panic!(
        "{} bytes trickled over {:?} and still not cut",
        bytes.len(),
        started.elapsed()
    );
}

#[tokio::test]
async fn slowloris_at_every_stage_is_cut_at_its_deadline() {
    let (gw, _b) = gateway("").await;
    // An HTTP request head: within handshake_timeout_secs (2 s).
    let mut s = TcpStream::connect(gw.addr()).await.expect("tcp");
    let head = b"GET /tunnel/echo HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n";
    assert!(trickle_until_cut(&mut s, head).await < Duration::from_secs(5));
    // A PROXY header: within handshake_timeout_secs (2 s) with TLS and the request head.
    let mut s = TcpStream::connect(gw.addrs[2]).await.expect("tcp");
    let header = b"PROXY TCP4 198.51.100.7 10.0.0.1 51000 443\r\n";
    assert!(trickle_until_cut(&mut s, header).await < Duration::from_secs(5));
    // An MQTT CONNECT on the raw listener: within [mqtt] connect_timeout_secs (2 s).
    let mut s = TcpStream::connect(gw.addrs[1]).await.expect("tcp");
    let connect = wire::connect("slow-connect-device-with-a-long-id", 30, Version::V311);
    assert!(trickle_until_cut(&mut s, &connect).await < Duration::from_secs(5));
    // A WebSocket frame on /mqtt, before CONNECT: the same connect timeout; and a frame on a
    // tunnel: the device cannot answer pings from inside a frame, so missed pongs (1 s × 2).
    let mut s = raw_ws(gw.addr(), "/mqtt", Some("mqtt")).await;
    let mut f = frame(true, 2, &[0u8; 64]);
    assert!(trickle_until_cut(&mut s, &f).await < Duration::from_secs(5));
    let mut s = raw_ws(gw.addr(), "/tunnel/echo", None).await;
    f = frame(true, 2, &[0u8; 64]);
    assert!(trickle_until_cut(&mut s, &f).await < Duration::from_secs(5));
    bystander_flows(&gw).await;
}

#[tokio::test]
async fn a_fragmented_message_that_never_ends_is_closed_1009() {
    let (gw, _b) = gateway("").await;
    let mut s = raw_ws(gw.addr(), "/tunnel/echo", None).await;
    let chunk = vec![7u8; 16 * 1024];
    let mut frames = frame(false, 2, &chunk);
    for _ in 0..32 {
        frames.extend(frame(false, 0, &chunk));
    }
    // The gateway may close while we write: the write error is the point, not a failure.
    let _ = s.write_all(&frames).await;
    assert_eq!(close_code(&mut s).await, Some(1009));
    bystander_flows(&gw).await;
}

#[tokio::test]
async fn a_hundred_thousand_empty_frames_change_nothing() {
    let (gw, _b) = gateway("").await;
    let mut s = raw_ws(gw.addr(), "/mqtt", Some("mqtt")).await;
    let empties: Vec<u8> = (0..100_000).flat_map(|_| frame(true, 2, &[])).collect();
    s.write_all(&empties).await.expect("empty frames");
    s.write_all(&frame(
        true,
        2,
        &wire::connect("empty-1", 30, Version::V311),
    ))
    .await
    .expect("CONNECT");
    // CONNACK 0, in a binary frame.
    let mut got = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(got, [0x82, 4, 0x20, 2, 0, 0]);
    bystander_flows(&gw).await;
}

#[tokio::test]
async fn a_ping_flood_is_answered_and_the_tunnel_still_carries_data() {
    let (gw, _b) = gateway("").await;
    let tcp = TcpStream::connect(gw.addr()).await.expect("tcp");
    let mut ws = support::ws::upgrade(tcp, &gw.ws_url("/tunnel/echo"), &[]).await;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    for _ in 0..10_000 {
        ws.feed(Message::Ping(b"flood".to_vec().into()))
            .await
            .expect("ping");
    }
    ws.flush().await.expect("flush");
    support::ws::assert_echo(&mut ws, b"after the flood").await;
    bystander_flows(&gw).await;
}

#[tokio::test]
async fn a_256_mib_mqtt_length_announced_is_refused_at_once() {
    let (gw, _b) = gateway("").await;
    // Before CONNECT: there is no MQTT version to answer in; the connection is closed.
    let mut s = TcpStream::connect(gw.addrs[1]).await.expect("tcp");
    s.write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f])
        .await
        .expect("header");
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    // After CONNECT, on MQTT 5: DISCONNECT 0x95 (packet too large), then closed.
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        dev.connect(&wire::connect("big-1", 30, Version::V5)).await,
        0
    );
    dev.send_ok(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;
    let (packets, end) = dev.until_end().await;
    assert_eq!(
        packets.last().and_then(|p| raw_mqtt::disconnect_reason(p)),
        Some(0x95),
        "{packets:?}"
    );
    assert_eq!(end, End::Eof);
    bystander_flows(&gw).await;
}

#[tokio::test]
async fn thousands_of_topic_aliases_end_the_session_with_0x94() {
    let (gw, _b) = gateway("").await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        dev.connect(&wire::connect("alias-1", 30, Version::V5))
            .await,
        0
    );
    let defs: Vec<u8> = (1..=2000u16)
        .flat_map(|a| raw_mqtt::publish_with_alias(&format!("t/{a}"), 0, 0, a, b"x"))
        .collect();
    let _ = dev.send(&defs).await;
    let (packets, _) = dev.until_end().await;
    assert_eq!(
        packets.last().and_then(|p| raw_mqtt::disconnect_reason(p)),
        Some(0x94),
        "{packets:?}"
    );
    bystander_flows(&gw).await;
}

#[tokio::test]
async fn a_subscribe_with_thousands_of_filters_is_refused_whole_under_permissions() {
    let policy = "[policy.classes.default]\nsubscribe_topics = [\"cmd/{clientid}/#\"]\n";
    let (gw, _b) = gateway(policy).await;
    let mut dev = RawClient::tcp(gw.addrs[1], Version::V5).await;
    assert_eq!(
        dev.connect(&wire::connect("subs-1", 30, Version::V5)).await,
        0
    );
    let names: Vec<String> = (0..5000).map(|i| format!("cmd/subs-1/{i}")).collect();
    let filters: Vec<(&str, u8)> = names.iter().map(|n| (n.as_str(), 0)).collect();
    dev.send_ok(&wire::subscribe_many(9, &filters, Version::V5))
        .await;
    let p = dev.packet().await;
    assert_eq!(p[0], 0x90, "SUBACK: {:02x?}", &p[..8]);
    // More filters than the gateway checks in one SUBSCRIBE: all refused, none forwarded.
    let codes = &p[p.len() - 5000..];
    assert!(codes.iter().all(|c| *c == 0x87));
    dev.ping().await;
    bystander_flows(&gw).await;
}

#[tokio::test]
async fn a_connect_with_huge_properties_is_refused_before_the_broker() {
    let (gw, _b) = gateway("").await;
    // A v5 CONNECT whose property block alone is 300 KiB (over max_packet_size, 256 KiB):
    // its fixed header, variable header and the property length, and nothing more.
    let props_len = 300 * 1024;
    let props_header = raw_mqtt::packet(0, &vec![0; props_len]);
    let props_varint = &props_header[1..props_header.len() - props_len];
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30];
    body.extend_from_slice(props_varint);
    let whole = raw_mqtt::packet(0x10, &[&body[..], &vec![0; props_len + 2 + 4]].concat());
    let packet = &whole[..whole.len() - (props_len + 2 + 4)];
    let mut s = TcpStream::connect(gw.addrs[1]).await.expect("tcp");
    // Only the header and the start: the gateway must not wait for (or buffer) the rest.
    s.write_all(packet).await.expect("start of CONNECT");
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    bystander_flows(&gw).await;
}

#[tokio::test]
async fn a_device_that_never_reads_is_closed_and_others_flow() {
    let (gw, _b) = gateway("").await;
    let mut s = raw_ws(gw.addr(), "/tunnel/echo", None).await;
    // Write echoes it never reads: the gateway's send to it stalls, and after the stall limit
    // (ping interval × (missed pongs + 1) = 2 s here) the gateway gives it up.
    let chunk = frame(true, 2, &vec![1u8; 32 * 1024]);
    let writer = tokio::spawn(async move {
        loop {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let cut = tokio::time::timeout(Duration::from_secs(30), writer).await;
    assert!(cut.is_ok(), "the gateway kept a device that never reads");
    bystander_flows(&gw).await;
}
