//! `portcullis probe` and the gateway's `/probe` endpoint: the probe through a real corporate
//! proxy (squid) from the environment, NO_PROXY, the binary's exit codes and JSON, and every cap
//! of the endpoint with the exact answer a client sees.

mod support;

use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use portcullis::agent::probe::{probe, ProbeArgs, Report, Verdict};
use portcullis::probe::Hello;
use support::agent::{tls_gateway, TlsGateway, GW};
use support::squid::{Squid, SquidOptions};
use support::{echo_server, ws, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

fn args(url: String, config: Option<std::path::PathBuf>) -> ProbeArgs {
    ProbeArgs {
        url,
        config,
        sni: Some(GW.into()),
        host: None,
        quick: true,
        idle_max_secs: 4,
        max_message: 64 << 10,
        max_body: 64 << 10,
        json: false,
    }
}

/// The probe against a TLS gateway, trusting its CA, with `env` as the process environment.
async fn probe_tls(g: &TlsGateway, env: &[(&str, String)]) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.toml");
    // No [proxy] section: the environment decides, as for a device.
    let config = g
        .config("echo", "")
        .replace("[proxy]\nfrom_env = false\n", "");
    assert!(!config.contains("[proxy]"));
    std::fs::write(&agent, config).unwrap();
    let url = format!("wss://127.0.0.1:{}", g.gw.addr().port());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let report = probe(&args(url, Some(agent)), move |k| {
        env.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    })
    .await;
    eprintln!("{report}");
    report
}

fn verdict(report: &Report, name: &str) -> Verdict {
    report
        .find(name)
        .unwrap_or_else(|| panic!("no {name} check:\n{report}"))
        .verdict
}

#[tokio::test]
async fn through_the_environments_proxy_with_tls_every_check_passes() {
    let g = tls_gateway(&[("echo", echo_server().await)]).await;
    let squid = Squid::spawn(SquidOptions::default()).await;
    let report = probe_tls(&g, &[("HTTPS_PROXY", squid.url())]).await;
    assert!(!report.failed(), "{report}");
    let route = report.find("route").unwrap();
    assert!(
        route.detail.contains("via proxy") && route.detail.contains("HTTPS_PROXY"),
        "{report}"
    );
    assert_eq!(verdict(&report, "proxy"), Verdict::Ok);
    assert!(report
        .find("cert")
        .unwrap()
        .detail
        .contains("issued by CN=portcullis test CA"));
    assert_eq!(verdict(&report, "idle"), Verdict::Skip, "--quick");
    squid
        .wait_for_log(&["TCP_TUNNEL/200", "CONNECT 127.0.0.1:"])
        .await;
}

#[tokio::test]
async fn no_proxy_sends_the_probe_direct() {
    let g = tls_gateway(&[("echo", echo_server().await)]).await;
    let report = probe_tls(
        &g,
        &[
            ("HTTPS_PROXY", "http://127.0.0.1:9".to_string()),
            ("NO_PROXY", "127.0.0.1".to_string()),
        ],
    )
    .await;
    assert!(!report.failed(), "{report}");
    assert!(
        report.find("route").unwrap().detail.starts_with("direct"),
        "{report}"
    );
    assert!(report.find("proxy").is_none(), "{report}");
}

#[test]
fn the_binary_exits_non_zero_and_names_the_failed_step() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["probe", &format!("ws://{closed}"), "--quick"])
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  tcp"), "{stdout}");
    assert!(stdout.contains("refused the connection"), "{stdout}");
}

#[tokio::test]
async fn the_binary_prints_json_and_exits_zero_when_all_passes() {
    let gw = TestGateway::start(&ws::config("", &[("echo", echo_server().await)])).await;
    let url = format!("ws://{}", gw.addr());
    // Off the runtime's thread: the in-process gateway must keep serving meanwhile.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["probe", &url, "--quick", "--json"])
            .env_remove("http_proxy")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let checks = json["checks"].as_array().unwrap();
    assert!(checks.len() >= 10, "{stdout}");
    for c in checks {
        assert!(c["verdict"] == "ok" || c["verdict"] == "skip", "{c}");
    }
}

/// A gateway with a `[probe]` section.
async fn gateway(probe: &str) -> TestGateway {
    let mut config = ws::config("", &[("echo", echo_server().await)]);
    config.push_str(&format!("\n[probe]\n{probe}\n"));
    TestGateway::start(&config).await
}

/// A `/probe` WebSocket, or the HTTP status the gateway refused it with.
async fn open(
    gw: &TestGateway,
    headers: &[(&str, &str)],
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, (u16, http::HeaderMap)> {
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let mut req = gw.ws_url("/probe").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err((resp.status().as_u16(), resp.headers().clone())),
        Err(e) => panic!("{e}"),
    }
}

async fn hello(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Hello {
    match ws.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).expect("hello JSON"),
        other => panic!("expected the hello, got {other:?}"),
    }
}

/// `POST /probe` with `len` bytes: (status, body).
async fn post(gw: &TestGateway, len: usize) -> (u16, String) {
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "POST /probe HTTP/1.1\r\nHost: gw\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let _ = tcp.write_all(&vec![b'x'; len]).await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test]
async fn the_hello_tells_what_the_gateway_saw_and_hides_credentials() {
    let gw = gateway("").await;
    let mut ws = open(
        &gw,
        &[("authorization", "Bearer s3cret"), ("x-site", "plant-7")],
    )
    .await
    .unwrap();
    let h = hello(&mut ws).await;
    assert_eq!(h.client_ip, "127.0.0.1");
    assert_eq!(h.ip_source, "peer");
    assert!(!h.tls_at_gateway);
    assert_eq!(h.ping_interval_secs, 25);
    assert_eq!(h.max_message_size, 1 << 20);
    let header = |n: &str| {
        h.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("authorization"), Some("***"));
    assert_eq!(header("x-site"), Some("plant-7"));
    // Echo keeps the frame type; a ping gets its pong.
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.send(Message::Ping(vec![9u8].into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(vec![9u8].into())
    );
}

#[tokio::test]
async fn off_means_not_found() {
    let gw = gateway("enabled = false").await;
    assert_eq!(open(&gw, &[]).await.err().map(|e| e.0), Some(404));
    assert_eq!(post(&gw, 10).await.0, 404);
}

#[tokio::test]
async fn over_the_session_rate_is_429_with_retry_after() {
    let gw = gateway("sessions_per_minute = 2").await;
    let _a = open(&gw, &[]).await.unwrap();
    let _b = open(&gw, &[]).await.unwrap();
    let (status, headers) = open(&gw, &[]).await.expect_err("refused");
    assert_eq!(status, 429);
    assert_eq!(headers.get("retry-after").unwrap(), "60");
    assert_eq!(headers.get("x-portcullis").unwrap(), "gateway");
    // A body count takes from the same budget.
    assert_eq!(post(&gw, 10).await.0, 429);
}

#[tokio::test]
async fn over_the_open_sessions_cap_is_503_until_one_ends() {
    let gw = gateway("max_sessions = 1").await;
    let mut first = open(&gw, &[]).await.unwrap();
    assert_eq!(open(&gw, &[]).await.err().map(|e| e.0), Some(503));
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    // The slot comes back when the session ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open(&gw, &[]).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn messages_and_bodies_over_the_caps_are_refused() {
    let gw = gateway("max_message_size = 1024\nmax_body_size = 1024").await;
    let mut ws = open(&gw, &[]).await.unwrap();
    hello(&mut ws).await;
    ws.send(Message::binary(vec![0u8; 1024])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().len(), 1024);
    ws.send(Message::binary(vec![0u8; 2048])).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(c)))) => assert_eq!(c.code, CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    let (status, body) = post(&gw, 1000).await;
    assert_eq!(status, 200);
    let receipt: portcullis::probe::BodyReceipt = serde_json::from_str(&body).expect(&body);
    assert_eq!(receipt.received, 1000);
    assert_eq!(receipt.view.client_ip, "127.0.0.1");
    assert_eq!(post(&gw, 2000).await.0, 413);
}

#[tokio::test]
async fn a_session_ends_after_its_lifetime() {
    let gw = gateway("max_session_secs = 1").await;
    let mut ws = open(&gw, &[]).await.unwrap();
    hello(&mut ws).await;
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("closed in time");
    match end {
        Some(Ok(Message::Close(Some(c)))) => assert_eq!(c.code, CloseCode::Normal),
        other => panic!("expected close 1000, got {other:?}"),
    }
}

#[tokio::test]
async fn a_body_count_holds_its_session_slot_until_the_body_is_read() {
    let gw = gateway("max_sessions = 1").await;
    // A slow POST: the head and a first part of its body, the rest later.
    let mut slow = TcpStream::connect(gw.addr()).await.unwrap();
    let head = "POST /probe HTTP/1.1\r\nHost: gw\r\nContent-Length: 20\r\nConnection: close\r\n\r\n0123456789";
    slow.write_all(head.as_bytes()).await.unwrap();
    // The gateway has read the head once the WebSocket is refused as busy.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open(&gw, &[]).await {
            Err((503, _)) => break,
            Ok(_) => {
                // The POST's head may not have been read yet: its slot is not taken. The
                // session just opened is dropped and frees the slot again.
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the POST never took the slot"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    slow.write_all(b"0123456789").await.unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open(&gw, &[]).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_banned_ip_behind_a_trusted_proxy_cannot_post_either() {
    use portcullis::policy::{Ban, BanSource, Subject};
    let mut config = ws::config(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &[("echo", echo_server().await)],
    );
    config.push_str("\n[probe]\n");
    let gw = TestGateway::start(&config).await;
    let now = std::time::SystemTime::now();
    gw.gw()
        .ban(Ban {
            subject: Subject::Ip("198.51.100.9".parse().unwrap()),
            reason: "test".into(),
            source: BanSource::admin("ops"),
            created: now,
            expires: Some(now + Duration::from_secs(3600)),
        })
        .await
        .unwrap();
    let status = |xff: &'static str| {
        let addr = gw.addr();
        async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let req = format!("POST /probe HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: {xff}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        }
    };
    assert_eq!(status("198.51.100.9").await, "HTTP/1.1 403 Forbidden");
    assert_eq!(status("198.51.100.10").await, "HTTP/1.1 200 OK");
}

#[test]
fn the_probes_plain_requests_carry_no_websocket_handshake_headers() {
    let config = portcullis::agent::AgentConfig::parse(
        "[[tunnel]]\nlisten = \"127.0.0.1:0\"\nurl = \"wss://gw.example.com/probe\"\n[device]\ntoken = \"t0k\"\n[device.headers]\nX-Site = \"plant-7\"\n",
        None,
    )
    .unwrap();
    let connector = portcullis::agent::dial::Connector::new(&config, |_| None).unwrap();
    let target = portcullis::agent::target::Target::new(&config.tunnels[0]).unwrap();
    let h = connector.device_headers(&target).unwrap();
    for gone in [
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
    ] {
        assert!(!h.contains_key(gone), "{gone} in {h:?}");
    }
    assert_eq!(h.get("authorization").unwrap(), "Bearer t0k");
    assert_eq!(h.get("x-site").unwrap(), "plant-7");
    assert!(
        h.contains_key("host") && h.contains_key("user-agent"),
        "{h:?}"
    );
}

/// The first frame the gateway sends back after `frame` on a fresh `/probe` (the hello skipped).
async fn after_raw_frame(gw: &TestGateway, frame: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let head = "GET /probe HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(frame).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    // After the 101's head: the hello (text, 0x81), then what answers our frame.
    let body = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .expect("101");
    let frames = &got[body..];
    assert_eq!(frames[0], 0x81, "the hello first: {frames:02x?}");
    let hello_len = match frames[1] {
        126 => 4 + usize::from(u16::from_be_bytes([frames[2], frames[3]])),
        n => 2 + usize::from(n),
    };
    frames[hello_len..].to_vec()
}

#[tokio::test]
async fn an_unmasked_frame_gets_close_1002() {
    let gw = gateway("").await;
    // RFC 6455 §5.1: a client frame must be masked; this one is not.
    let back = after_raw_frame(&gw, &[0x82, 0x02, b'h', b'i']).await;
    assert_eq!(back[0], 0x88, "a Close frame: {back:02x?}");
    assert_eq!(u16::from_be_bytes([back[2], back[3]]), 1002);
}

#[tokio::test]
async fn a_body_that_stalls_gets_400() {
    let gw = gateway("").await;
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let head = "POST /probe HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nonly ten b";
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The gateway gives up after 10 s without a byte of the rest.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("stalled"), "{answer}");
}

#[tokio::test]
async fn a_draining_gateway_closes_probe_sessions_with_1001() {
    let mut gw = gateway("").await;
    let mut ws = open(&gw, &[]).await.unwrap();
    hello(&mut ws).await;
    let closed = async {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(c))))) => c.code,
            other => panic!("expected a Close, got {other:?}"),
        }
    };
    let (code, ()) = tokio::join!(closed, gw.shutdown());
    assert_eq!(code, CloseCode::Away);
}
