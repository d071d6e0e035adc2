//! The device side's WebSocket frames, which the relay reads and writes itself: what a raw
//! client sends byte by byte, and what comes back, over a real gateway and a real echo upstream.

mod support;

use std::time::Duration;

use support::{echo_server, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn upgrade() -> Vec<u8> {
    b"GET /tunnel/echo HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec()
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![first, 0x80 | payload.len() as u8];
    f.extend_from_slice(&KEY);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    f
}

async fn gateway() -> TestGateway {
    let echo = echo_server().await;
    let config =
        format!("[[listener]]\nbind = \"127.0.0.1:0\"\n[routes.echo]\nupstreams = [\"{echo}\"]\n");
    TestGateway::start(&config).await
}

/// Connect, send `first` (the upgrade, possibly with frames after it in the same write), and
/// read past the 101.
async fn open(gw: &TestGateway, first: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(first).await.unwrap();
    let mut got = Vec::new();
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&b[..n]);
    };
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    (s, got.split_off(end))
}

/// Read until `have` holds at least `n` bytes.
async fn read_to(s: &mut TcpStream, have: &mut Vec<u8>, n: usize) {
    while have.len() < n {
        let mut b = [0u8; 1024];
        let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(k > 0, "closed early; have {have:?}");
        have.extend_from_slice(&b[..k]);
    }
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_relayed() {
    let gw = gateway().await;
    let mut first = upgrade();
    first.extend(frame(0x82, b"eager"));
    let (mut s, mut back) = open(&gw, &first).await;
    read_to(&mut s, &mut back, 7).await;
    assert_eq!(back, [&[0x82, 5][..], b"eager"].concat());
}

#[tokio::test]
async fn a_ping_gets_its_pong_and_a_fragmented_message_its_bytes() {
    let gw = gateway().await;
    let (mut s, mut back) = open(&gw, &upgrade()).await;
    // A fragmented message with a ping between its fragments (RFC 6455 §5.4 allows it).
    let mut burst = frame(0x02, b"frag");
    burst.extend(frame(0x89, b"are you there"));
    burst.extend(frame(0x80, b"ments"));
    s.write_all(&burst).await.unwrap();
    // The pong (15 bytes) and the echoed bytes (one or two frames, in either order relative to
    // the pong): collect until both are seen.
    let pong = [&[0x8A, 13][..], b"are you there"].concat();
    let mut data = Vec::new();
    let mut saw_pong = false;
    while !(saw_pong && data.len() == 9) {
        read_to(&mut s, &mut back, 2).await;
        let len = back[1] as usize;
        read_to(&mut s, &mut back, 2 + len).await;
        let f: Vec<u8> = back.drain(..2 + len).collect();
        match f[0] {
            0x8A => {
                assert_eq!(f, pong);
                saw_pong = true;
            }
            0x82 => data.extend_from_slice(&f[2..]),
            other => panic!("unexpected frame {other:#x}: {f:?}"),
        }
    }
    assert_eq!(data, b"fragments");
}

#[tokio::test]
async fn protocol_errors_close_1002_and_a_device_close_is_answered() {
    let gw = gateway().await;
    for (what, bad) in [
        ("RSV1 set", frame(0xC2, b"x")),
        ("reserved opcode", frame(0x83, b"x")),
        ("close code 1005", frame(0x88, &1005u16.to_be_bytes())),
        ("continuation first", frame(0x80, b"x")),
        // A 64-bit length with its top bit set (§5.2), before any mask or payload.
        ("length top bit", {
            let mut f = vec![0x82, 0x80 | 127];
            f.extend_from_slice(&u64::MAX.to_be_bytes());
            f
        }),
    ] {
        let (mut s, mut back) = open(&gw, &upgrade()).await;
        s.write_all(&bad).await.unwrap();
        read_to(&mut s, &mut back, 4).await;
        assert_eq!(back[0], 0x88, "{what}: a Close frame, got {back:?}");
        assert_eq!(u16::from_be_bytes([back[2], back[3]]), 1002, "{what}");
    }
    // A device's own Close gets a Close back, and then the connection ends.
    let (mut s, mut back) = open(&gw, &upgrade()).await;
    let mut close = 4001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    s.write_all(&frame(0x88, &close)).await.unwrap();
    read_to(&mut s, &mut back, 2).await;
    assert_eq!(back[0], 0x88, "a Close reply: {back:?}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the gateway closes the connection after the handshake");
}

/// MQTT packets cut anywhere across frames, several in one frame: the relay's packet reader
/// takes whole packets from a frame without copying and keeps partial ones for the next.
#[tokio::test]
async fn mqtt_packets_split_and_joined_across_frames_reach_the_broker_whole() {
    use futures_util::{SinkExt, StreamExt};
    use portcullis::mqtt::wire::{self, Incoming, Version};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;

    let broker = support::Broker::spawn().await;
    let gw = TestGateway::start(&support::basic_config(broker.addr)).await;
    let mut req = gw.ws_url("/mqtt").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let v = Version::V311;
    let mut stream = wire::connect("split-device", 30, v);
    for id in 1..=5u16 {
        stream.extend(wire::publish("split/t", 1, id, &[id as u8; 300], v));
    }
    // Cut points that land inside headers, inside payloads, and on packet boundaries.
    let cuts = [3usize, 5, 40, 41, 400, 900, 901, 1500];
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let cut = cut.min(stream.len());
        ws.send(Message::binary(stream[at..cut].to_vec()))
            .await
            .unwrap();
        at = cut;
    }
    let mut got = Vec::new();
    let mut buf = Vec::new();
    while got.len() < 6 {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("answers in time")
            .expect("stream open")
            .expect("no error");
        buf.extend_from_slice(&msg.into_data());
        while let Some(n) = wire::packet_len(&buf, 1 << 20).unwrap() {
            let p: Vec<u8> = buf.drain(..n).collect();
            got.push(match wire::parse(&p, v).unwrap() {
                Incoming::ConnAck { code } => format!("connack {code}"),
                Incoming::PubAck { packet_id } => format!("puback {packet_id}"),
                other => format!("{other:?}"),
            });
        }
    }
    assert_eq!(
        got,
        [
            "connack 0",
            "puback 1",
            "puback 2",
            "puback 3",
            "puback 4",
            "puback 5"
        ]
    );
}

/// `portcullis agent check` pings right after the upgrade, before any MQTT: the pong must come
/// even though the MQTT relay is still waiting for CONNECT.
#[tokio::test]
async fn a_ping_before_connect_on_mqtt_gets_its_pong() {
    let broker = support::Broker::spawn().await;
    let gw = TestGateway::start(&support::basic_config(broker.addr)).await;
    let mut first = upgrade();
    let at = first
        .windows(13)
        .position(|w| w == b"/tunnel/echo ")
        .unwrap();
    first.splice(at..at + 12, b"/mqtt".iter().copied());
    first.splice(
        first.len() - 2..first.len() - 2,
        b"Sec-WebSocket-Protocol: mqtt\r\n".iter().copied(),
    );
    let (mut s, mut back) = open(&gw, &first).await;
    s.write_all(&frame(0x89, b"check")).await.unwrap();
    read_to(&mut s, &mut back, 7).await;
    assert_eq!(back, [&[0x8A, 5][..], b"check"].concat());
}
