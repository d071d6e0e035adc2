//! What the agent puts on the wire and how it lives: masked frames and header credentials,
//! a dead path found by missed pongs, a pin refusal that sends no byte, and a gateway restart
//! in the middle of a stream.

mod support;

use std::time::Duration;

use portcullis::agent::{check, Failure, Step};
use portcullis::device_token::Signer;
use portcullis::mqtt::wire::{self, Version};
use support::agent::{self as agent_support, pin_of_pem, TestAgent};
use support::certs::Ca;
use support::mosquitto_clients::{publish, try_publish, Sub};
use support::raw_mqtt::{End, RawClient, Recv};
use support::raw_peers::{self, frames, header, silent_ws_server, tls_sink};
use support::ws::toml_path;
use support::{eventually, ws, Broker, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const OPCODE_BINARY: u8 = 2;
const OPCODE_CLOSE: u8 = 8;
const OPCODE_PING: u8 = 9;

#[tokio::test]
async fn frames_are_masked_and_credentials_ride_in_headers_not_the_url() {
    let (addr, record) = silent_ws_server().await;
    let config = agent_support::config(
        &format!("ws://{addr}/tunnel/raw"),
        "host = \"gw.example.test\"",
        "[device]\ntoken = \"tok-42\"\n[device.headers]\nX-Site = \"plant-7\"\n",
    );
    let mut agent = TestAgent::start(&config).await;
    let mut local = agent.connect().await;
    local.write_all(b"hello").await.unwrap();

    let got = eventually(Duration::from_secs(10), || {
        raw_peers::seen(&record)
            .first()
            .is_some_and(|s| !frames(&s.after).is_empty())
    })
    .await;
    assert!(got, "no frame reached the server");
    let seen = raw_peers::seen(&record).remove(0);
    let request_line = seen.head.lines().next().unwrap_or_default().to_string();
    assert_eq!(request_line, "GET /tunnel/raw HTTP/1.1");
    assert_eq!(
        header(&seen.head, "authorization").as_deref(),
        Some("Bearer tok-42")
    );
    assert_eq!(header(&seen.head, "x-site").as_deref(), Some("plant-7"));
    assert_eq!(
        header(&seen.head, "host").as_deref(),
        Some("gw.example.test")
    );
    let ua = header(&seen.head, "user-agent").unwrap_or_default();
    assert!(ua.starts_with("portcullis-agent/"), "{ua}");
    assert!(!request_line.contains("tok-42"));
    // RFC 6455 §5.1: every client frame is masked (strict WAFs drop unmasked ones).
    assert_eq!(frames(&seen.after)[0], (OPCODE_BINARY, true, 5));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_gateway_that_stops_answering_pings_is_dead_and_the_local_client_is_closed() {
    let (addr, record) = silent_ws_server().await;
    // 1 s pings, 2 missed pongs: dead at the third tick, 3 s after the tunnel opened.
    let config = agent_support::config(
        &format!("ws://{addr}/tunnel/raw"),
        "",
        "[keepalive]\nping_interval_secs = 1\nmax_missed_pongs = 2\n",
    );
    let mut agent = TestAgent::start(&config).await;
    let mut local = agent.connect().await;
    local.write_all(b"x").await.unwrap();
    let opened = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), local.read(&mut buf)).await;
    let elapsed = opened.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the local client must be closed: {read:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(2500) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    // The agent's Close 1008 went out before the local FIN; the server may not have read it yet.
    let closed = eventually(Duration::from_secs(5), || {
        frames(&raw_peers::seen(&record)[0].after)
            .last()
            .is_some_and(|f| f.0 == OPCODE_CLOSE)
    })
    .await;
    let sent = frames(&raw_peers::seen(&record)[0].after);
    assert!(closed, "{sent:?}");
    let pings = sent.iter().filter(|f| f.0 == OPCODE_PING).count();
    assert_eq!(pings, 2, "{sent:?}");
    assert!(sent.iter().all(|f| f.1), "all masked: {sent:?}");
    let (_, err) = agent.status().last_error.expect("recorded");
    assert!(err.contains("keep-alive failed (pongs missed)"), "{err}");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_pin_mismatch_sends_not_one_byte_to_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "gw", &["gw.example.test"]);
    let (addr, record) = tls_sink(&leaf.cert, &leaf.key, None).await;
    let pin = pin_of_pem(&leaf.pem);
    let url = format!("wss://127.0.0.1:{}/tunnel/pinned", addr.port());
    let with_pin = |p: &str| {
        agent_support::config(
            &url,
            "sni = \"gw.example.test\"",
            &format!("[tls]\npins = [{p:?}]\n[device]\ntoken = \"secret-token\"\n"),
        )
    };

    // The right pin (no CA needed): TLS passes and the request arrives, token in a header.
    let report = check(&agent_support::parse(&with_pin(&pin))).await;
    let e = report.failure().expect("the sink answers 404");
    assert_eq!(
        (e.step, &e.failure),
        (Step::Upgrade, &Failure::Status { status: 404 }),
        "{report}"
    );
    let first = raw_peers::seen(&record).remove(0);
    assert!(first.tls_error.is_none());
    assert!(
        first.head.starts_with("GET /tunnel/pinned HTTP/1.1\r\n"),
        "{}",
        first.head
    );
    assert_eq!(
        header(&first.head, "authorization").as_deref(),
        Some("Bearer secret-token")
    );

    // A wrong pin: the handshake is aborted by the agent, and the server got nothing.
    let wrong = "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let report = check(&agent_support::parse(&with_pin(wrong))).await;
    let e = report.failure().expect("refused");
    assert_eq!(e.step, Step::Tls);
    assert!(
        matches!(&e.failure, Failure::PinMismatch { seen: Some(s) } if s.to_string() == pin),
        "{report}"
    );
    assert!(
        e.message.contains(&pin) && e.message.contains("nothing was sent"),
        "{e}"
    );

    // The same through a running agent, with a legacy client that talks first.
    let mut agent = TestAgent::start(&with_pin(wrong)).await;
    let mut client = RawClient::tcp(agent.addr(), Version::V311).await;
    client
        .send_ok(&wire::connect("pinned-device", 30, Version::V311))
        .await;
    let asked = Instant::now();
    match client.recv_within(Duration::from_secs(20)).await {
        Some(Recv::Ended(End::Eof)) => {}
        other => panic!("expected the local client closed, got {other:?}"),
    }
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    agent.shutdown().await;
    let all = raw_peers::seen(&record);
    assert!(all.len() >= 3, "{all:?}");
    for refused in &all[1..] {
        let err = refused.tls_error.as_deref().unwrap_or_default();
        assert!(err.contains("AccessDenied"), "the agent's alert: {err}");
        assert_eq!(refused.app_bytes, 0, "{refused:?}");
    }
}

#[tokio::test]
async fn a_gateway_restart_mid_stream_closes_local_clients_and_new_ones_work_again() {
    let broker = Broker::spawn().await;
    let routes = [("mqtt", broker.addr)];
    let mut gw = TestGateway::start(&ws::config("", &routes)).await;
    let gw_addr = gw.addr();
    let config = agent_support::config(
        &format!("ws://{gw_addr}/tunnel/mqtt"),
        "",
        "[reconnect]\nmin_delay_ms = 1000\nmax_delay_secs = 2\nopen_timeout_secs = 3\n",
    );
    let mut agent = TestAgent::start(&config).await;

    // A persistent QoS 1 subscriber (it reconnects by itself) and a raw client mid-session.
    let sub = Sub::spawn(agent.addr(), "restart-sub", "restart/t");
    sub.wait_for("received SUBACK", 1, Duration::from_secs(20))
        .await;
    publish(agent.addr(), "restart-pub-1", "restart/t", "before").await;
    sub.wait_for("restart/t before", 1, Duration::from_secs(20))
        .await;
    let mut raw = RawClient::tcp(agent.addr(), Version::V311).await;
    assert_eq!(
        raw.connect(&wire::connect("restart-raw", 30, Version::V311))
            .await,
        0
    );

    // The gateway goes away: the live local client is closed promptly (drain window 1 s).
    let down = Instant::now();
    gw.shutdown().await;
    let (_, end) = raw.until_end().await;
    assert_eq!(end, End::Eof);
    assert!(
        down.elapsed() < Duration::from_secs(4),
        "{:?}",
        down.elapsed()
    );

    // While it is down, the agent still accepts, and closes what it cannot carry within the
    // open timeout (3 s), instead of leaving it hanging.
    let mut waiting = RawClient::tcp(agent.addr(), Version::V311).await;
    let asked = Instant::now();
    waiting
        .send_ok(&wire::connect("restart-wait", 30, Version::V311))
        .await;
    match waiting.recv_within(Duration::from_secs(10)).await {
        Some(Recv::Ended(End::Eof)) => {}
        other => panic!("expected a prompt close, got {other:?}"),
    }
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let s = agent.status();
    assert!(s.local_refused >= 1 && s.dial_failures >= 1, "{s:?}");

    // Back on the same port: new local connections work again and the subscriber is back.
    let restarted = ws::config("", &routes).replace("127.0.0.1:0", &gw_addr.to_string());
    let mut gw = TestGateway::start(&restarted).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = try_publish(agent.addr(), "restart-pub-2", "restart/t", "after").await;
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never carried a connection again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sub.wait_for("restart/t after", 1, Duration::from_secs(20))
        .await;
    let s = agent.status();
    assert!(s.reconnects >= 1, "{s:?}");
    // No hammering: failures are paced by the shared backoff (floor 1 s), whatever the number
    // of local clients retrying (mosquitto_sub reconnects every second, plus our publishes).
    let down_secs = down.elapsed().as_secs();
    assert!(
        s.dial_failures <= down_secs + 2,
        "{} failures in {down_secs} s",
        s.dial_failures
    );
    drop(sub);
    agent.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_certificate_is_presented_and_its_absence_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let server = ca.leaf(dir.path(), "gw", &["gw.example.test"]);
    let device = ca.leaf(dir.path(), "device", &["device-17.devices.example.test"]);
    let (addr, record) = tls_sink(&server.cert, &server.key, Some(&ca.pem)).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let url = format!("wss://127.0.0.1:{}/tunnel/mtls", addr.port());
    let tls = |client: &str| {
        agent_support::config(
            &url,
            "sni = \"gw.example.test\"",
            &format!("[tls]\nca_file = {}\n{client}", toml_path(&ca_file)),
        )
    };

    let with_cert = tls(&format!(
        "client_cert = {}\nclient_key = {}\n",
        toml_path(&device.cert),
        toml_path(&device.key)
    ));
    let report = check(&agent_support::parse(&with_cert)).await;
    // TLS passed (the sink answers the request with 404).
    assert_eq!(
        report.failure().map(|e| e.step),
        Some(Step::Upgrade),
        "{report}"
    );
    let seen = raw_peers::seen(&record).remove(0);
    let presented = seen.client_cert.expect("a client certificate");
    assert_eq!(presented, support::tls_client::der(&device.pem).to_vec());

    let report = check(&agent_support::parse(&tls(""))).await;
    let e = report.failure().expect("refused without a certificate");
    assert_eq!(
        (e.step, &e.failure),
        (Step::Tls, &Failure::TlsFailed),
        "{report}"
    );
    assert!(
        e.message
            .contains("it requires a client certificate (set tls.client_cert"),
        "{e}"
    );
}

/// An agent config for `url` whose `[device]` has `token` and `[tls]` the given lines.
fn device_config(url: &str, device: &str, tls: &str) -> String {
    agent_support::config(
        url,
        "sni = \"gw.example.test\"",
        &format!("{tls}[device]\n{device}"),
    )
}

#[tokio::test]
async fn the_gateway_lets_in_the_agent_with_a_valid_token_and_tells_an_expired_one() {
    let echo = support::echo_server().await;
    let signer = Signer::generate_ed25519().expect("key");
    let gw_config = ws::config("auth = \"token\"", &[("meters", echo)])
        + &format!(
            "\n[[auth.key]]\nalg = \"EdDSA\"\npublic_key_pem = \"\"\"\n{}\"\"\"\n",
            signer.public_pem().expect("pem")
        );
    let mut gw = TestGateway::start(&gw_config).await;
    let url = format!("ws://{}/tunnel/meters", gw.addr());

    let token = signer.device_token(None, "meter-5", 600);
    let config = device_config(&url, &format!("token = \"{token}\"\n"), "");
    let mut agent = TestAgent::start(&config).await;
    let mut local = agent.connect().await;
    local.write_all(b"reading 17").await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), local.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&got, b"reading 17");
    agent.shutdown().await;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = signer
        .sign(
            None,
            &serde_json::json!({"sub": "meter-5", "exp": now - 3600}),
        )
        .expect("sign");
    for (token, says) in [
        (expired.as_str(), "token expired"),
        ("", "token is required"),
    ] {
        let device = match token {
            "" => String::new(),
            t => format!("token = \"{t}\"\n"),
        };
        let report = check(&agent_support::parse(&device_config(&url, &device, ""))).await;
        let e = report.failure().expect("refused");
        assert_eq!(
            (e.step, &e.failure),
            (Step::Upgrade, &Failure::Status { status: 401 }),
            "{report}"
        );
        assert!(e.message.contains(says), "{e}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn the_gateway_lets_in_the_agent_by_its_client_certificate() {
    let echo = support::echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let server = ca.leaf(dir.path(), "gw", &["gw.example.test"]);
    let device = ca.client(dir.path(), "meter-6");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let listener = format!(
        "auth = \"mtls\"\ntls = {{ client_ca = {ca}, certificates = [{{ cert = {}, key = {} }}] }}",
        toml_path(&server.cert),
        toml_path(&server.key),
        ca = toml_path(&ca_file),
    );
    let mut gw = TestGateway::start(&ws::config(&listener, &[("meters", echo)])).await;
    let url = format!("wss://127.0.0.1:{}/tunnel/meters", gw.addr().port());
    let tls = format!(
        "[tls]\nca_file = {}\nclient_cert = {}\nclient_key = {}\n",
        toml_path(&ca_file),
        toml_path(&device.cert),
        toml_path(&device.key)
    );
    let mut agent = TestAgent::start(&device_config(&url, "", &tls)).await;
    let mut local = agent.connect().await;
    local.write_all(b"meter-6 up").await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), local.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&got, b"meter-6 up");
    agent.shutdown().await;

    let no_cert = format!("[tls]\nca_file = {}\n", toml_path(&ca_file));
    let report = check(&agent_support::parse(&device_config(&url, "", &no_cert))).await;
    let e = report.failure().expect("refused without a certificate");
    assert_eq!(e.step, Step::Tls, "{report}");
    gw.shutdown().await;
}
