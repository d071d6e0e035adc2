//! Tunnels that survive a dropped WebSocket: the agent and the gateway resume them.
//!
//! Real parts: the agent in-process, a real nginx terminating TLS in front of the gateway
//! (killed with SIGKILL and restarted mid-stream), a collector that hashes what it gets, a
//! real mosquitto with `mosquitto_sub` behind the agent; and a hand-written agent (tungstenite)
//! for the refusals and the stalled peer.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;

use support::agent::{self as agent_support, TestAgent, GW};
use support::certs::Ca;
use support::mosquitto_clients::{publish, Sub};
use support::nginx::Nginx;
use support::ws::{self, toml_path};
use support::{eventually, Broker, TestGateway};

const MIB: u64 = 1 << 20;

/// A collector: hashes each connection's bytes until EOF, answers with the byte count and the
/// SHA-256 in hex, then closes. `got` counts bytes as they arrive (health checks connect too).
async fn hashing_collector(got: Arc<AtomicU64>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let mut buf = vec![0u8; 64 * 1024];
                let mut n_total = 0u64;
                loop {
                    let n = s.read(&mut buf).await.expect("collector read");
                    if n == 0 {
                        break;
                    }
                    ctx.update(&buf[..n]);
                    n_total += n as u64;
                    got.fetch_add(n as u64, Relaxed);
                }
                let answer = format!("{n_total} {}\n", hex(ctx.finish().as_ref()));
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Deterministic bytes that do not compress or repeat in step with any buffer size.
fn chunk(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct TlsPath {
    gw: TestGateway,
    nginx: Nginx,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// gateway (plain, routes as given) ← nginx (TLS for gw.example.test).
async fn tls_path(routes: &[(&str, SocketAddr)], extra: &str) -> TlsPath {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "nginx", &[GW]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let mut config = ws::config("trusted_proxies = [\"127.0.0.1/32\"]", routes);
    config.push_str(extra);
    let gw = TestGateway::start(&config).await;
    let nginx = Nginx::spawn(&leaf, gw.addr()).await;
    TlsPath {
        gw,
        nginx,
        ca_file,
        _dir: dir,
    }
}

impl TlsPath {
    fn agent_config(&self, route: &str) -> String {
        let url = format!("wss://127.0.0.1:{}/tunnel/{route}", self.nginx.addr.port());
        agent_support::config(
            &url,
            &format!("sni = \"{GW}\"\nhost = \"{GW}\""),
            &format!(
                "[tls]\nca_file = {}\n[reconnect]\nmin_delay_ms = 1000\nmax_delay_secs = 2\n",
                toml_path(&self.ca_file)
            ),
        )
    }

    /// Kill nginx (every WebSocket through it drops without a close), wait until the agent
    /// saw the drop, start nginx again, wait until the agent resumed.
    async fn cut(&mut self, agent: &TestAgent, n: u64) {
        self.nginx.kill();
        let saw = eventually(Duration::from_secs(20), || agent.status().drops >= n).await;
        assert!(saw, "the agent never saw drop {n}: {:?}", agent.status());
        self.nginx.restart().await;
        let back = eventually(Duration::from_secs(20), || agent.status().resumed >= n).await;
        assert!(back, "drop {n} was not resumed: {:?}", agent.status());
    }
}

#[tokio::test]
async fn fifty_mib_cross_three_nginx_kills_byte_exact_and_the_local_connection_never_drops() {
    let got = Arc::new(AtomicU64::new(0));
    let collector = hashing_collector(got.clone()).await;
    let mut path = tls_path(&[("collect", collector)], "").await;
    let agent = TestAgent::start(&path.agent_config("collect")).await;

    const TOTAL: u64 = 50 * MIB;
    const CHUNK: usize = 64 * 1024;
    let mut local = agent.connect().await;
    let client = tokio::spawn(async move {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for i in 0..TOTAL / CHUNK as u64 {
            let c = chunk(i, CHUNK);
            ctx.update(&c);
            // Any error here is the local connection dropping: the test fails on it.
            local.write_all(&c).await.expect("local write never fails");
        }
        local.shutdown().await.expect("local FIN");
        let mut answer = String::new();
        local
            .read_to_string(&mut answer)
            .await
            .expect("local read ends with EOF, not a reset");
        (answer, hex(ctx.finish().as_ref()))
    });

    for (n, mark) in [(1, 10 * MIB), (2, 25 * MIB), (3, 40 * MIB)] {
        let reached = eventually(Duration::from_secs(60), || got.load(Relaxed) >= mark).await;
        assert!(reached, "collector stuck at {} bytes", got.load(Relaxed));
        path.cut(&agent, n).await;
    }
    let (answer, sent_hash) = tokio::time::timeout(Duration::from_secs(120), client)
        .await
        .expect("transfer finishes")
        .unwrap();
    assert_eq!(
        answer,
        format!("{TOTAL} {sent_hash}\n"),
        "every byte once, in order"
    );

    let s = agent.status();
    assert_eq!(s.tunnels_opened, 1, "one tunnel throughout: {s:?}");
    assert_eq!((s.drops, s.resumed, s.resume_failures), (3, 3, 0), "{s:?}");
    let lot = path.gw.gw().resume().expect("resumption on by default");
    assert_eq!(lot.stats.resumed.load(Relaxed), 3);
    assert!(lot.stats.parked.load(Relaxed) >= 3);
    let ended = eventually(Duration::from_secs(10), || lot.is_empty()).await;
    assert!(ended, "the finished tunnel's token is forgotten");
}

#[tokio::test]
async fn an_mqtt_client_behind_the_agent_keeps_its_session_across_three_drops() {
    let broker = Broker::spawn().await;
    let mut path = tls_path(&[("mqtt", broker.addr)], "").await;
    let agent = TestAgent::start(&path.agent_config("mqtt")).await;
    let sub = Sub::spawn(agent.addr(), "resumed-sub", "meter/+/reading");
    sub.wait_for("received SUBACK", 1, Duration::from_secs(20))
        .await;
    let mut sent = 0;
    // Straight to the broker: each returns after its PUBACK.
    let publish_five = |sent: &mut usize| {
        let from = *sent + 1;
        *sent += 5;
        let broker = broker.addr;
        async move {
            for i in from..from + 5 {
                let id = format!("meter-pub-{i}");
                publish(broker, &id, "meter/7/reading", &format!("r={i};")).await;
            }
        }
    };
    publish_five(&mut sent).await;
    for drop_n in 1..=3 {
        // Published while the path is down: the broker sends them to the gateway's parked
        // upstream socket (not read while parked), and they cross after the resume.
        path.nginx.kill();
        let saw = eventually(Duration::from_secs(20), || agent.status().drops >= drop_n).await;
        assert!(saw, "drop {drop_n} unseen: {:?}", agent.status());
        publish_five(&mut sent).await;
        path.nginx.restart().await;
        let back = eventually(Duration::from_secs(20), || agent.status().resumed >= drop_n).await;
        assert!(back, "drop {drop_n} not resumed: {:?}", agent.status());
    }
    publish_five(&mut sent).await;
    sub.wait_for("meter/7/reading r=", sent, Duration::from_secs(30))
        .await;
    for i in 1..=sent {
        assert_eq!(
            sub.count(&format!("meter/7/reading r={i};")),
            1,
            "QoS 1 message {i} exactly once: {:?}",
            sub.lines()
        );
    }
    assert_eq!(
        sub.count("sending CONNECT"),
        1,
        "the MQTT session was never re-established: {:?}",
        sub.lines()
    );
    let s = agent.status();
    assert_eq!((s.tunnels_opened, s.resumed), (1, 3), "{s:?}");
}

/// A hand-written agent: the upgrade with `headers`, the answer's status and headers.
async fn upgrade_raw(
    gw: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> Result<(RawWs, http::HeaderMap), (u16, http::HeaderMap)> {
    let mut request = format!("ws://{gw}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let tcp = TcpStream::connect(gw).await.unwrap();
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, response)) => Ok((ws, response.headers().clone())),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            Err((r.status().as_u16(), r.headers().clone()))
        }
        Err(e) => panic!("upgrade: {e}"),
    }
}

fn offer() -> Vec<(&'static str, String)> {
    vec![
        ("x-portcullis-resume", "1".into()),
        ("x-portcullis-resume-window", "65536".into()),
    ]
}

fn resume_headers(token: &str, received: u64) -> Vec<(&'static str, String)> {
    vec![
        ("x-portcullis-resume-token", token.into()),
        ("x-portcullis-received", received.to_string()),
    ]
}

fn token_of(h: &http::HeaderMap) -> String {
    h.get("x-portcullis-resume-token")
        .expect("a token in the 101")
        .to_str()
        .unwrap()
        .to_owned()
}

type RawWs = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A resumed WebSocket's first frame: the gateway's count (`resume N`), as text.
async fn first_text(ws: &mut RawWs) -> String {
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    match first {
        Ok(Some(Ok(Message::Text(t)))) => t.as_str().to_owned(),
        other => panic!("the gateway's count comes first: {other:?}"),
    }
}

/// The code of the Close that ends `ws` (other frames skipped), within 10 s.
async fn close_code(ws: &mut RawWs) -> Option<u16> {
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("ended without a Close: {other:?}"),
            }
        }
    });
    close.await.expect("a Close in time")
}

fn refusal_of(h: &http::HeaderMap) -> &str {
    h.get("x-portcullis-resume-refused")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn wrong_reused_expired_and_foreign_tokens_are_refused_and_a_resume_replays_exactly() {
    let echo = support::echo_server().await;
    let mut config = ws::config("", &[("echo", echo), ("other", echo)]);
    config.push_str("\n[resume]\nnode = \"node-a\"\ngrace_secs = 2\n");
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr();

    // A plain upgrade (no offer) gets no token: today's tunnel.
    let (_plain, h) = upgrade_raw(addr, "/tunnel/echo", &[]).await.unwrap();
    assert!(h.get("x-portcullis-resume-token").is_none());

    // Offered: a token (256 bits), the node, the window.
    let (mut ws1, h) = upgrade_raw(addr, "/tunnel/echo", &offer()).await.unwrap();
    let t1 = token_of(&h);
    assert_eq!(t1.len(), 43);
    assert_eq!(h.get("x-portcullis-node").unwrap(), "node-a");
    assert_eq!(h.get("x-portcullis-resume-window").unwrap(), "1048576");
    ws1.send(Message::binary(b"hello".to_vec())).await.unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 5 {
        match ws1.next().await.unwrap().unwrap() {
            Message::Binary(b) => echoed.extend_from_slice(&b),
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(echoed, b"hello");
    // Drop the WebSocket without a close: the gateway parks the tunnel.
    drop(ws1);
    let lot = gw.gw().resume().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || lot.stats.parked.load(Relaxed)
            == 1)
        .await
    );

    // A wrong token: 409, "unknown".
    let bogus = resume_headers("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 0);
    let (status, h) = upgrade_raw(addr, "/tunnel/echo", &bogus).await.unwrap_err();
    assert_eq!((status, refusal_of(&h)), (409, "unknown"));

    // The right token, saying we got 2 of the 5 echoed bytes: the gateway says it got our 5
    // and replays "llo".
    let (mut ws2, h) = upgrade_raw(addr, "/tunnel/echo", &resume_headers(&t1, 2))
        .await
        .unwrap();
    let t2 = token_of(&h);
    assert_ne!(t1, t2, "rotated on every resume");
    assert_eq!(first_text(&mut ws2).await, "resume 5");
    match ws2.next().await.unwrap().unwrap() {
        Message::Binary(b) => assert_eq!(&b[..], b"llo", "exactly what we lacked"),
        other => panic!("{other:?}"),
    }
    assert_eq!(lot.stats.bytes_replayed.load(Relaxed), 3);

    // The spent token: refused.
    let (status, h) = upgrade_raw(addr, "/tunnel/echo", &resume_headers(&t1, 5))
        .await
        .unwrap_err();
    assert_eq!((status, refusal_of(&h)), (409, "unknown"), "single use");

    // The live token on another route: refused as another identity, and the tunnel ends.
    let (status, h) = upgrade_raw(addr, "/tunnel/other", &resume_headers(&t2, 5))
        .await
        .unwrap_err();
    assert_eq!((status, refusal_of(&h)), (409, "identity"));
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws2.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel whose token was misused ends");
    assert!(eventually(Duration::from_secs(10), || lot.is_empty()).await);

    // Expired: a new tunnel, dropped, and not resumed within grace_secs (2 s).
    let (ws3, h) = upgrade_raw(addr, "/tunnel/echo", &offer()).await.unwrap();
    let t3 = token_of(&h);
    drop(ws3);
    let failures = |reason: &str| {
        lot.stats
            .failures()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| n)
    };
    assert!(eventually(Duration::from_secs(15), || failures("grace") == 1).await);
    let (status, h) = upgrade_raw(addr, "/tunnel/echo", &resume_headers(&t3, 0))
        .await
        .unwrap_err();
    assert_eq!((status, refusal_of(&h)), (409, "unknown"), "expired");
    assert_eq!(failures("unknown"), 3);
    assert_eq!(failures("identity"), 1);

    // The metrics say the same.
    let text = portcullis_metrics(&gw).await;
    assert!(text.contains("portcullis_resume_resumed_total 1"), "{text}");
    assert!(
        text.contains("portcullis_resume_failures_total{reason=\"grace\"} 1"),
        "{text}"
    );
}

async fn portcullis_metrics(gw: &TestGateway) -> String {
    gw.gw().metrics_text()
}

#[tokio::test]
async fn a_stalled_peer_gets_no_more_than_the_window() {
    // An upstream that writes without end.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let firehose = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let block = vec![0x5a_u8; 16 * 1024];
                while s.write_all(&block).await.is_ok() {}
            });
        }
    });
    let mut config = ws::config("", &[("fire", firehose)]);
    config.push_str("\n[resume]\nwindow_bytes = 65536\n");
    let gw = TestGateway::start(&config).await;
    let (mut ws, _) = upgrade_raw(gw.addr(), "/tunnel/fire", &offer())
        .await
        .unwrap();
    let mut got = 0u64;
    // We never acknowledge: the gateway must stop at its window, 64 KiB.
    while got < 65536 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got += b.len() as u64,
            Ok(Some(Ok(_))) => {}
            other => panic!("the window was not filled: {got} bytes, then {other:?}"),
        }
    }
    assert_eq!(got, 65536, "never more than the window");
    // Nothing more while we say nothing (a bounded wait for something that must not come).
    let more = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Some(Ok(Message::Binary(_))) = ws.next().await {
                return;
            }
        }
    })
    .await;
    assert!(more.is_err(), "data beyond the window without an ack");
    // An acknowledgement opens the window again.
    ws.send(Message::text("ack 65536")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Ok(Message::Binary(b))) = ws.next().await {
                return b.len();
            }
        }
    })
    .await
    {
        Ok(n) => assert!(n > 0 && n <= 65536),
        Err(_) => panic!("no data after the ack"),
    }
}

#[tokio::test]
async fn a_resume_to_a_restarted_gateway_is_refused_and_the_local_connection_closes() {
    let echo = support::echo_server().await;
    let mut path = tls_path(&[("echo", echo)], "").await;
    let port = path.gw.addr().port();
    let agent = TestAgent::start(&path.agent_config("echo")).await;
    let mut local = agent.connect().await;
    local.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    local.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // The path drops; meanwhile the gateway restarts (its tunnels are gone); the path is back.
    path.nginx.kill();
    assert!(eventually(Duration::from_secs(20), || agent.status().drops == 1).await);
    path.gw.shutdown().await;
    let config = ws::config("trusted_proxies = [\"127.0.0.1/32\"]", &[("echo", echo)])
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    path.gw = TestGateway::start(&config).await;
    path.nginx.restart().await;

    // The resume is refused: the local connection is closed cleanly (EOF), as without resumption.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(30), local.read_to_end(&mut rest))
        .await
        .expect("the local connection is closed once the resume is refused");
    assert!(n.is_ok(), "EOF, not a reset: {n:?}");
    let s = agent.status();
    assert_eq!((s.resumed, s.resume_failures), (0, 1), "{s:?}");
    let lot = path.gw.gw().resume().unwrap();
    let unknown = lot
        .stats
        .failures()
        .find(|(r, _)| *r == "unknown")
        .unwrap()
        .1;
    assert_eq!(unknown, 1, "the new gateway refused the resume as unknown");
}

#[tokio::test]
async fn a_resume_while_the_old_websocket_still_looks_alive_takes_the_tunnel_over() {
    // One side saw the drop (the agent), the other did not (the gateway): the resume must
    // not wait for the gateway's pings to time out.
    let echo = support::echo_server().await;
    let gw = TestGateway::start(&ws::config("", &[("echo", echo)])).await;
    let (mut old, h) = upgrade_raw(gw.addr(), "/tunnel/echo", &offer())
        .await
        .unwrap();
    let token = token_of(&h);
    old.send(Message::binary(b"abc".to_vec())).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Message::Binary(b) = old.next().await.unwrap().unwrap() {
            got.extend_from_slice(&b);
        }
    }
    // The old WebSocket stays open; a resume claims the tunnel with all 3 bytes received.
    let (mut new, _) = upgrade_raw(gw.addr(), "/tunnel/echo", &resume_headers(&token, 3))
        .await
        .unwrap();
    assert_eq!(first_text(&mut new).await, "resume 3");
    new.send(Message::binary(b"def".to_vec())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut got = Vec::new();
        while got.len() < 3 {
            if let Some(Ok(Message::Binary(b))) = new.next().await {
                got.extend_from_slice(&b);
            }
        }
        got
    })
    .await
    .expect("the tunnel carries on on the new WebSocket");
    assert_eq!(echoed, b"def");
    // The old one is let go (shut, without a Close: it is not the tunnel's end).
    let old_ends = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match old.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(Message::Close(_))) => return false,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(
        old_ends.ok(),
        Some(true),
        "the old WebSocket is dropped, not closed"
    );
    let lot = gw.gw().resume().unwrap();
    assert_eq!(lot.stats.resumed.load(Relaxed), 1);
}

/// A ban is the end of a resumable tunnel, never a drop to resume. Live: the MQTT 5 device
/// behind the agent gets its DISCONNECT (administrative action) and EOF, and the agent counts
/// no drop. Parked: banned while its WebSocket is down, the tunnel ends at the gateway
/// well within the grace period, so the agent's resume is refused and the device's connection closes.
#[tokio::test]
async fn a_ban_ends_a_resumable_mqtt_tunnel_live_or_parked_and_nothing_resumes_it() {
    use portcullis::mqtt::wire::{self, Version};
    use portcullis::policy::Subject;
    use support::raw_mqtt::{disconnect_reason, End, RawClient};
    let broker = Broker::spawn().await;
    let mut path = tls_path(&[("mqtt", broker.addr)], "").await;
    let agent = TestAgent::start(&path.agent_config("mqtt")).await;
    let ban = |id: &str| support::admin_ban(Subject::ClientId(id.into()), None);

    let mut live = RawClient::tcp(agent.addr(), Version::V5).await;
    let connect = wire::connect("banned-live", 30, Version::V5);
    assert_eq!(live.connect(&connect).await, 0);
    path.gw.gw().ban(ban("banned-live")).await.unwrap();
    let (packets, end) = live.until_end().await;
    assert_eq!(end, End::Eof);
    let last = packets.last().map(Vec::as_slice).unwrap_or_default();
    assert_eq!(disconnect_reason(last), Some(0x98), "{packets:?}");
    drop(live);
    assert!(eventually(Duration::from_secs(20), || agent.status().tunnels_up == 0).await);
    let s = agent.status();
    assert_eq!((s.drops, s.resume_failures), (0, 0), "{s:?}");

    let mut parked = RawClient::tcp(agent.addr(), Version::V5).await;
    let connect = wire::connect("banned-parked", 30, Version::V5);
    assert_eq!(parked.connect(&connect).await, 0);
    path.nginx.kill();
    assert!(eventually(Duration::from_secs(20), || agent.status().drops == 1).await);
    path.gw.gw().ban(ban("banned-parked")).await.unwrap();
    // The parked tunnel ends (its token with it) once the MQTT relay's last words had their
    // time (5 s), not after the grace period (60 s).
    let held = || path.gw.gw().metrics_text();
    let gone = eventually(Duration::from_secs(20), || {
        held().contains("\nportcullis_resumable_tunnels 0\n")
    })
    .await;
    assert!(gone, "{}", held());
    path.nginx.restart().await;
    let (_, end) = parked.until_end().await;
    assert_eq!(end, End::Eof);
    let refused = eventually(Duration::from_secs(20), || {
        agent.status().resume_failures == 1
    })
    .await;
    assert!(refused, "{:?}", agent.status());
    assert_eq!(agent.status().resumed, 0);
}

/// A roaming device resumes from a new address: its tunnel is listed there, and an IP ban on
/// the new address ends it, while a ban on the address it left does not.
#[tokio::test]
async fn a_tunnel_resumed_from_a_new_address_is_listed_and_banned_there() {
    use serde_json::json;
    use support::admin::{ops, AdminFiles};
    let echo = support::echo_server().await;
    let files = AdminFiles::new();
    let mut config = ws::config("trusted_proxies = [\"127.0.0.1/32\"]", &[("echo", echo)]);
    config.push_str(&files.toml());
    let gw = TestGateway::start(&config).await;
    let api = gw.gw().admin_addr().expect("[admin] configured");
    let from = |ip: &str| ("x-forwarded-for", ip.to_string());

    let mut headers = offer();
    headers.push(from("198.51.100.1"));
    let (old, h) = upgrade_raw(gw.addr(), "/tunnel/echo", &headers)
        .await
        .unwrap();
    drop(old);
    let mut headers = resume_headers(&token_of(&h), 0);
    headers.push(from("203.0.113.7"));
    let (mut new, _) = upgrade_raw(gw.addr(), "/tunnel/echo", &headers)
        .await
        .unwrap();
    assert_eq!(first_text(&mut new).await, "resume 0");

    let listed = ops(api, "GET", "/api/v1/clients?route=echo", None).await;
    assert_eq!(listed.json["meta"]["count"], 1, "{:?}", listed.json);
    assert_eq!(listed.json["data"][0]["ip_address"], json!("203.0.113.7"));

    let ban = |who: &str| Some(json!({ "as": "peerhost", "who": who, "reason": "test" }));
    let left = ops(api, "POST", "/api/v1/banned", ban("198.51.100.1")).await;
    assert_eq!(left.status, 201, "{:?}", left.json);
    new.send(Message::binary(b"still".to_vec())).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        let frame = tokio::time::timeout(Duration::from_secs(10), new.next()).await;
        match frame {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(Message::Text(_)))) => {} // an acknowledgement
            other => panic!("a ban on the address it left ended the tunnel: {other:?}"),
        }
    }
    assert_eq!(got, b"still");

    let here = ops(api, "POST", "/api/v1/banned", ban("203.0.113.7")).await;
    assert_eq!(here.status, 201, "{:?}", here.json);
    assert_eq!(close_code(&mut new).await, Some(1008));
}

/// Short resumable tunnels that the local client ends are no failure of the gateway: the
/// agent's backoff stays out of the way, and each new local connection gets its tunnel at once
/// (a finished tunnel was once counted as the gateway dropping it, and the agent backed off).
#[tokio::test]
async fn local_clients_that_hang_up_do_not_make_the_agent_back_off() {
    let echo = support::echo_server().await;
    let gw = TestGateway::start(&ws::config("", &[("echo", echo)])).await;
    let url = format!("ws://{}/tunnel/echo", gw.addr());
    let agent = TestAgent::start(&agent_support::config(&url, "", "")).await;
    for i in 0..4u8 {
        let mut local = TcpStream::connect(agent.addr()).await.unwrap();
        local.write_all(&[b'a' + i; 3]).await.unwrap();
        let mut got = [0u8; 3];
        let read = tokio::time::timeout(Duration::from_secs(10), local.read_exact(&mut got));
        read.await.expect("echo in time").unwrap();
        assert_eq!(got, [b'a' + i; 3]);
        local.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), local.read_to_end(&mut rest));
        assert_eq!(end.await.expect("EOF in time").unwrap(), 0);
        let ended = eventually(Duration::from_secs(10), || agent.status().tunnels_up == 0).await;
        assert!(ended, "{:?}", agent.status());
    }
    let s = agent.status();
    assert_eq!(s.tunnels_opened, 4, "{s:?}");
    assert_eq!(
        (s.reconnects, s.dial_failures, s.resumed),
        (0, 0, 0),
        "{s:?}"
    );
}

/// What the agent itself is told when the MQTT relay above a resumable tunnel is kicked: the
/// device's DISCONNECT (0x98) in the byte stream, our `fin`, then Close 1008, not a drop it
/// would try to resume. A hand-written agent, so the close code is seen as sent.
#[tokio::test]
async fn a_banned_resumable_mqtt_tunnel_closes_its_websocket_with_1008() {
    use portcullis::mqtt::wire::{self, Version};
    use portcullis::policy::Subject;
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&ws::config("", &[("mqtt", broker.addr)])).await;
    let (mut ws, h) = upgrade_raw(gw.addr(), "/tunnel/mqtt", &offer())
        .await
        .unwrap();
    let _ = token_of(&h);
    let connect = wire::connect("banned-raw", 30, Version::V5);
    ws.send(Message::binary(connect)).await.unwrap();
    let mut stream = Vec::new();
    let mut texts = Vec::new();
    let mut banned = false;
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => stream.extend_from_slice(&b),
                Some(Ok(Message::Text(t))) => texts.push(t.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                other => panic!("ended without a Close: {other:?}"),
            }
            // CONNACK (4+ bytes, success) seen: ban the client ID.
            if !banned && stream.len() >= 4 {
                assert_eq!(
                    (stream[0], stream[3]),
                    (0x20, 0),
                    "CONNACK success: {stream:?}"
                );
                let ban = support::admin_ban(Subject::ClientId("banned-raw".into()), None);
                gw.gw().ban(ban).await.unwrap();
                banned = true;
            }
        }
    })
    .await
    .expect("the ban ends the tunnel");
    assert_eq!(close, Some(1008), "texts {texts:?}");
    let connack_len = 2 + stream[1] as usize;
    assert_eq!(
        &stream[connack_len..],
        &[0xE0, 2, 0x98, 0],
        "then DISCONNECT 0x98"
    );
    assert!(
        texts.iter().any(|t| t == &format!("fin {}", stream.len())),
        "our fin after the DISCONNECT: {texts:?}"
    );
}
