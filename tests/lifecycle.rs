//! How tunnels end: drain on shutdown, dead peers, upstream half-close, MQTT framing freedom.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{basic_config, echo_server, Broker, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_close(ws: &mut Ws) -> (CloseCode, Vec<Vec<u8>>) {
    let mut data = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return (f.code, data),
            Some(Ok(Message::Binary(b))) => data.push(b.to_vec()),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn shutdown_sends_1001_within_the_drain_window_and_finishes() {
    let echo = echo_server().await;
    let config = format!("[[listener]]\nbind = \"127.0.0.1:0\"\n[routes.echo]\nupstreams = [\"{echo}\"]\n[shutdown]\ndrain_window_secs = 1\ndrain_timeout_secs = 5\n");
    let mut gw = TestGateway::start(&config).await;
    let mut devices = Vec::new();
    for _ in 0..5 {
        let (ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/tunnel/echo"))
            .await
            .unwrap();
        devices.push(ws);
    }
    assert_eventually!(gw.gw().open_connections() == 5);
    let readers = devices
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { next_close(&mut ws).await.0 }));
    let readers: Vec<_> = readers.collect();
    let started = tokio::time::Instant::now();
    gw.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "drained well before the timeout: {:?}",
        started.elapsed()
    );
    for r in readers {
        assert_eq!(r.await.unwrap(), CloseCode::Away);
    }
}

#[tokio::test]
async fn a_device_that_stops_answering_pings_is_closed() {
    let echo = echo_server().await;
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[routes.echo]\nupstreams = [\"{echo}\"]\n[websocket]\nping_interval_secs = 1\nmax_missed_pongs = 2\n"
    );
    let gw = TestGateway::start(&config).await;
    // A client that answers pings (tungstenite does while reading) stays up past 3 intervals.
    let (mut alive, _) = tokio_tungstenite::connect_async(gw.ws_url("/tunnel/echo"))
        .await
        .unwrap();
    let keep_reading = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(Ok(m)) = alive.next().await {
            if m.is_ping() {
                pings += 1;
                if pings == 4 {
                    return pings;
                }
            }
        }
        pings
    });
    // A client that does the upgrade by hand and then never writes never answers a ping.
    let mut dead = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    dead.write_all(
        b"GET /tunnel/echo HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut stream = Vec::new();
    let read_all = tokio::time::timeout(Duration::from_secs(15), dead.read_to_end(&mut stream));
    read_all.await.expect("the gateway closes a dead peer").ok();
    let head_end = stream
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("101 response")
        + 4;
    assert!(stream.starts_with(b"HTTP/1.1 101"));
    // Server frames are unmasked: [FIN|opcode, len(<126), payload].
    let mut frames = Vec::new();
    let mut rest = &stream[head_end..];
    while rest.len() >= 2 {
        let (opcode, len) = (rest[0] & 0x0f, rest[1] as usize);
        frames.push((opcode, rest[2..2 + len].to_vec()));
        rest = &rest[2 + len..];
    }
    let pings = frames.iter().filter(|(op, _)| *op == 0x9).count();
    assert_eq!(pings, 2, "two unanswered pings, then the close: {frames:?}");
    let (op, payload) = frames.last().unwrap();
    assert_eq!(*op, 0x8, "last frame is a Close");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
    assert_eq!(
        keep_reading.await.unwrap(),
        4,
        "the answering client got 4 pings and was never closed"
    );
}

#[tokio::test]
async fn upstream_half_close_delivers_everything_then_close_1000() {
    // An upstream that answers, then closes its side after reading the device's EOF... or at once.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Health checks connect too: only a connection that sends something back counts.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = s.write_all(&vec![b'x'; 100_000]).await;
                // FIN: "I am done sending". The device may still send; that must still arrive.
                let _ = s.shutdown().await;
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                if !got.is_empty() {
                    let _ = tx.send(got);
                }
            });
        }
    });
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[routes.collector]\nupstreams = [\"{addr}\"]\n"
    );
    let gw = TestGateway::start(&config).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/tunnel/collector"))
        .await
        .unwrap();
    let mut received = 0;
    while received < 100_000 {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap();
        received += m.unwrap().unwrap().into_data().len();
    }
    // The upstream is done sending, and the gateway has (or soon will have) sent Close. What the
    // device sends before it has read that Close still reaches the upstream: half-close.
    ws.send(Message::binary(b"last words".to_vec()))
        .await
        .unwrap();
    let (code, data) = next_close(&mut ws).await;
    assert_eq!(code, CloseCode::Normal);
    assert!(data.is_empty(), "every byte arrived before the close");
    // Reading on sends tungstenite's queued Close reply, which completes the handshake.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while ws.next().await.is_some() {}
    });
    drained
        .await
        .expect("the gateway ends the connection after the close handshake");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"last words");
}

/// MQTT 3.1.1 CONNECT for client id `id`, clean session, keep-alive 60 s.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

fn publish_qos0(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    let mut p = vec![0x30, body.len() as u8];
    p.extend(body);
    p
}

#[tokio::test]
async fn one_frame_may_hold_several_packets_or_part_of_one() {
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&basic_config(broker.addr)).await;
    // A plain TCP subscriber straight at the broker sees what the gateway delivered.
    let mut sub = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    sub.write_all(&connect_packet("framing-sub")).await.unwrap();
    // SUBSCRIBE id 1, filter "f/#", QoS 0: [0x82, len, id(2), filter len(2), "f/#", qos]
    sub.write_all(&[0x82, 8, 0, 1, 0, 3, b'f', b'/', b'#', 0])
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let mut seen = Vec::new();
    // CONNACK (4 bytes) + SUBACK (5 bytes)
    while seen.len() < 9 {
        let n = sub.read(&mut buf).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }

    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        gw.ws_url("/mqtt"),
    )
    .unwrap();
    let mut req = req;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    // CONNECT and a PUBLISH in one frame...
    let mut both = connect_packet("framing-dev");
    both.extend(publish_qos0("f/one", b"1"));
    ws.send(Message::binary(both)).await.unwrap();
    // ...and a PUBLISH split over two frames.
    let split = publish_qos0("f/two", b"22");
    ws.send(Message::binary(split[..3].to_vec())).await.unwrap();
    ws.send(Message::binary(split[3..].to_vec())).await.unwrap();

    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let want = publish_qos0("f/one", b"1").len() + split.len();
    while got.len() < want {
        let n = tokio::time::timeout_at(deadline, sub.read(&mut buf))
            .await
            .expect("both publishes arrive")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let mut expected = publish_qos0("f/one", b"1");
    expected.extend(split);
    assert_eq!(got, expected);
}
