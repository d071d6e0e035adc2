//! Every refusal path asserts the exact status or close code the device sees, and that the
//! gateway keeps serving a good client afterwards.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{basic_config, echo_server, raw_request, Broker, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

async fn gateway_with_echo() -> (TestGateway, Broker) {
    let broker = Broker::spawn().await;
    let echo = echo_server().await;
    let config = format!(
        "{}\n[routes.echo]\nupstreams = [\"{echo}\"]\n",
        basic_config(broker.addr)
    );
    (TestGateway::start(&config).await, broker)
}

/// The gateway still relays for a well-behaved client.
async fn still_serving(gw: &TestGateway) {
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/tunnel/echo"))
        .await
        .expect("good client connects");
    ws.send(Message::binary(b"still here".to_vec()))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), b"still here");
}

async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> CloseCode {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(Message::Close(None))) => panic!("close without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error instead of a close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

#[tokio::test]
async fn plain_get_on_a_websocket_path_is_400_with_a_reason() {
    let (gw, _b) = gateway_with_echo().await;
    let (status, text) = raw_request(gw.addr(), "GET /mqtt HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_eq!(status, 400);
    assert!(text.contains("WebSocket endpoint"), "{text}");
    still_serving(&gw).await;
}

#[tokio::test]
async fn handshake_errors_have_their_exact_statuses() {
    let (gw, _b) = gateway_with_echo().await;
    let missing_key = "GET /tunnel/echo HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(raw_request(gw.addr(), missing_key).await.0, 400);

    let wrong_version = upgrade("/tunnel/echo", "").replace("Version: 13", "Version: 8");
    let (status, text) = raw_request(gw.addr(), &wrong_version).await;
    assert_eq!(status, 426);
    assert!(
        text.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{text}"
    );

    assert_eq!(
        raw_request(gw.addr(), &upgrade("/nowhere", "")).await.0,
        404
    );
    let (status, text) = raw_request(gw.addr(), &upgrade("/tunnel/not-a-route", "")).await;
    assert_eq!(status, 404);
    assert!(text.contains("unknown tunnel route"), "{text}");
    // A device can never name a destination: host:port in the path is just an unknown route.
    assert_eq!(
        raw_request(gw.addr(), &upgrade("/tunnel/127.0.0.1:22", ""))
            .await
            .0,
        404
    );

    let post = upgrade("/mqtt", "").replacen("GET", "POST", 1);
    assert_eq!(raw_request(gw.addr(), &post).await.0, 405);
    let chat = upgrade("/mqtt", "Sec-WebSocket-Protocol: chat\r\n");
    assert_eq!(raw_request(gw.addr(), &chat).await.0, 400);
    still_serving(&gw).await;
}

#[tokio::test]
async fn mqtt_subprotocol_is_selected() {
    let (gw, _b) = gateway_with_echo().await;
    let (status, text) = raw_request(
        gw.addr(),
        &upgrade("/mqtt", "Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n"),
    )
    .await;
    assert_eq!(status, 101);
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("sec-websocket-protocol: mqtt\r\n"), "{text}");
    // RFC 6455 §1.3 worked example: this key must give this accept value.
    assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
}

#[tokio::test]
async fn health_endpoints() {
    let (gw, _b) = gateway_with_echo().await;
    assert_eq!(
        raw_request(gw.addr(), "GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .0,
        200
    );
    assert_eq!(
        raw_request(gw.addr(), "GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn readyz_is_503_and_device_gets_1013_when_no_upstream_is_up() {
    let dead = support::free_port();
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\
         [routes.mqtt]\nupstreams = [\"127.0.0.1:{dead}\"]\nconnect_timeout_ms = 500\nhealth_check_interval_secs = 1\n\
         [routes.collector]\nupstreams = [\"127.0.0.1:{dead}\"]\nconnect_timeout_ms = 500\n"
    );
    let gw = TestGateway::start(&config).await;
    // A plain tunnel learns it at once.
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/tunnel/collector"))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Again);
    // An MQTT device learns it in MQTT first: CONNACK 0x03 (server unavailable), then 1013.
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/mqtt"))
        .await
        .unwrap();
    let connect =
        portcullis::mqtt::wire::connect("dev-1", 30, portcullis::mqtt::wire::Version::V311);
    ws.send(Message::binary(connect)).await.unwrap();
    let connack = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(connack.into_data().as_ref(), &[0x20, 2, 0, 0x03]);
    assert_eq!(close_code(&mut ws).await, CloseCode::Again);
    // Once the health check has run, readiness says so too.
    let addr = gw.addr();
    let mut ready = 0;
    for _ in 0..100 {
        ready = raw_request(addr, "GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 503);
}

#[tokio::test]
async fn text_frame_on_mqtt_is_closed_1002() {
    let (gw, _b) = gateway_with_echo().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/mqtt"))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Protocol);
    still_serving(&gw).await;
}

#[tokio::test]
async fn oversized_frame_is_closed_1009() {
    let (gw, _b) = gateway_with_echo().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/tunnel/echo"))
        .await
        .unwrap();
    ws.send(Message::binary(vec![7u8; 64 * 1024 + 1]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Size);
    still_serving(&gw).await;
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let (gw, _b) = gateway_with_echo().await;
    let mut silent = TcpStream::connect(gw.addr()).await.unwrap();
    // Meanwhile others are served.
    still_serving(&gw).await;
    let mut buf = [0u8; 1];
    let started = tokio::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("closed by the gateway, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "no bytes, just a close");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before the 2 s handshake timeout"
    );
}

#[tokio::test]
async fn garbage_before_http_is_refused_and_others_still_served() {
    let (gw, _b) = gateway_with_echo().await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00garbage-not-http\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    still_serving(&gw).await;
}

/// Upgrade by hand, then send one binary frame with the given mask bit; return what comes back.
async fn send_frame_raw(gw: &TestGateway, masked: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(upgrade("/tunnel/echo", "").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let payload = b"F5 says hi";
    let mut frame = vec![0x82];
    if masked {
        let key = [1u8, 2, 3, 4];
        frame.push(0x80 | payload.len() as u8);
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.push(payload.len() as u8);
        frame.extend_from_slice(payload);
    }
    s.write_all(&frame).await.unwrap();
    let mut back = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut back))
        .await
        .unwrap()
        .unwrap();
    back.truncate(n);
    back
}

#[tokio::test]
async fn unmasked_client_frames_are_refused_unless_the_listener_allows_them() {
    let (gw, _b) = gateway_with_echo().await;
    // RFC 6455 §5.1: the server must fail the connection: Close 1002.
    let back = send_frame_raw(&gw, false).await;
    assert_eq!(back[0], 0x88, "a Close frame: {back:?}");
    assert_eq!(u16::from_be_bytes([back[2], back[3]]), 1002);
    // A masked frame on the same listener is echoed (server frames are unmasked).
    assert_eq!(
        send_frame_raw(&gw, true).await,
        [&[0x82, 10][..], b"F5 says hi"].concat()
    );

    // Behind an F5 whose masking mode forwards unmasked frames, the listener can accept them.
    let echo = echo_server().await;
    let config = format!("[[listener]]\nbind = \"127.0.0.1:0\"\naccept_unmasked_frames = true\n[routes.echo]\nupstreams = [\"{echo}\"]\n");
    let lenient = TestGateway::start(&config).await;
    assert_eq!(
        send_frame_raw(&lenient, false).await,
        [&[0x82, 10][..], b"F5 says hi"].concat()
    );
}
