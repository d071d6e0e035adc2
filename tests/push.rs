//! HTTP push against real parts: real collectors (hyper servers counting every body they
//! receive whole), the real gateway, HTTP clients over plain TCP and TLS, a real redis-server
//! for two gateways, a real nginx from the shipped profile in front.

mod support;

use std::time::{Duration, SystemTime};

use portcullis::policy::Subject;
use support::certs::Ca;
use support::push::{self, Collector, Mode, Reply, Send};
use support::redis::Redis;
use support::TestGateway;

const KEY: &str = "idempotency-key";

async fn upload(gw: &TestGateway, serial: &str, txid: &str, body: &[u8]) -> Reply {
    push::post(gw.addr(), &format!("/push/{serial}"), &[(KEY, txid)], body).await
}

/// Every answer the same as the first, which was not a replay; all later ones replays.
fn same_answers(answers: &[Reply]) {
    let first = &answers[0];
    assert_eq!(first.status, 200, "{first:?}");
    for a in answers {
        assert_eq!((a.status, &a.body), (first.status, &first.body), "{a:?}");
        assert_eq!(a.header("content-type"), first.header("content-type"));
    }
}

#[tokio::test]
async fn the_same_transaction_five_times_over_tls_reaches_the_collector_once() {
    let collector = Collector::spawn(Mode::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "gw", &["localhost"]);
    let tls = format!(
        "[[listener.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"",
        leaf.cert.display(),
        leaf.key.display()
    );
    let config = push::config(&[collector.addr], "", "").replacen(
        "handshake_timeout_secs = 5",
        &format!("handshake_timeout_secs = 5\n{tls}"),
        1,
    );
    let gw = TestGateway::start(&config).await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let headers = [(KEY, "\"tx-0001\"")];
        answers
            .push(push::post_tls(gw.addr(), &ca.pem, "/push/SN-1", &headers, b"reading=42").await);
    }
    same_answers(&answers);
    assert_eq!(answers[0].body, "stored 1");
    assert!(!answers[0].replayed());
    assert!(answers[1..].iter().all(Reply::replayed));
    let got = collector.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"reading=42");
    assert_eq!(got[0].path, "/push/SN-1");
    let h = &got[0].headers;
    assert_eq!(h["x-portcullis-serial"], "SN-1");
    assert_eq!(h["x-portcullis-transaction"], "tx-0001");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn concurrent_retries_deliver_once_and_the_rest_hear_409_then_the_same_answer() {
    let collector = Collector::spawn(Mode::Slow(Duration::from_millis(600))).await;
    let gw = TestGateway::start(&push::config(&[collector.addr], "", "")).await;
    let sends = (0..5).map(|_| upload(&gw, "SN-2", "tx-c", b"batch"));
    let answers = futures_util::future::join_all(sends).await;
    let delivered: Vec<&Reply> = answers.iter().filter(|a| a.status == 200).collect();
    assert!(
        delivered.iter().filter(|a| !a.replayed()).count() == 1,
        "{answers:?}"
    );
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(a.status, 409, "{a:?}");
        assert!(a
            .header("retry-after")
            .is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    }
    // Retries once it is done: the stored answer, every time.
    let mut after = vec![delivered[0].clone()];
    for _ in 0..4 {
        after.push(upload(&gw, "SN-2", "tx-c", b"batch").await);
    }
    same_answers(&after);
    assert_eq!(collector.count(), 1);
}

#[tokio::test]
async fn a_retry_after_a_restart_is_replayed_from_the_store() {
    let collector = Collector::spawn(Mode::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("[store]\ndir = \"{}\"", dir.path().display());
    let config = push::config(&[collector.addr], "", &store);
    let mut gw = TestGateway::start(&config).await;
    let first = upload(&gw, "SN-3", "tx-r", b"before").await;
    gw.shutdown().await;
    let gw = TestGateway::start(&config).await;
    let again = upload(&gw, "SN-3", "tx-r", b"before").await;
    assert!(again.replayed(), "{again:?}");
    same_answers(&[first, again]);
    assert_eq!(collector.count(), 1);
}

#[tokio::test]
async fn two_gateways_sharing_redis_deliver_a_transaction_sent_to_both_at_once_once() {
    let redis = Redis::spawn().await;
    let collector = Collector::spawn(Mode::Slow(Duration::from_millis(600))).await;
    let node = |n: &str| format!("[cluster]\nredis = \"{}\"\nnode = \"{n}\"", redis.url());
    let a = TestGateway::start(&push::config(&[collector.addr], "", &node("gw-a"))).await;
    let b = TestGateway::start(&push::config(&[collector.addr], "", &node("gw-b"))).await;
    let (ra, rb) = tokio::join!(
        upload(&a, "SN-4", "tx-2gw", b"x"),
        upload(&b, "SN-4", "tx-2gw", b"x")
    );
    let statuses = [ra.status, rb.status];
    assert!(statuses.contains(&200), "{ra:?} {rb:?}");
    assert_eq!(collector.count(), 1, "{ra:?} {rb:?}");
    let first = if ra.status == 200 { ra } else { rb };
    // Whichever gateway a retry reaches, the same answer.
    let from_a = upload(&a, "SN-4", "tx-2gw", b"x").await;
    let from_b = upload(&b, "SN-4", "tx-2gw", b"x").await;
    same_answers(&[first, from_a, from_b]);
    assert_eq!(collector.count(), 1);
}

#[tokio::test]
async fn a_collector_5xx_leaves_the_upload_retryable_and_the_retry_is_delivered_once() {
    let collector = Collector::spawn(Mode::FailFirst(1)).await;
    let gw = TestGateway::start(&push::config(&[collector.addr], "", "")).await;
    let failed = upload(&gw, "SN-5", "tx-f", b"data").await;
    assert_eq!(failed.status, 502, "{failed:?}");
    assert!(failed.header("retry-after").is_some());
    assert!(failed.body.contains("503"), "{failed:?}");
    let retried = upload(&gw, "SN-5", "tx-f", b"data").await;
    assert_eq!(
        (retried.status, retried.replayed()),
        (200, false),
        "{retried:?}"
    );
    let again = upload(&gw, "SN-5", "tx-f", b"data").await;
    assert!(again.replayed());
    assert_eq!(collector.count(), 1);
    assert_eq!(collector.requests(), 2);
}

#[tokio::test]
async fn a_collector_that_is_down_leaves_the_upload_retryable() {
    let up = Collector::spawn(Mode::Ok).await;
    // Nothing listens on `down` (bound, then closed).
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start(&push::config(&[down], "", "")).await;
    let failed = upload(&gw, "SN-6", "tx-d", b"data").await;
    assert_eq!(failed.status, 502, "{failed:?}");
    drop(gw);
    let gw = TestGateway::start(&push::config(&[up.addr], "", "")).await;
    let ok = upload(&gw, "SN-6", "tx-d", b"data").await;
    assert_eq!(ok.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn bodies_over_the_maximum_are_refused_with_413_and_never_delivered() {
    let collector = Collector::spawn(Mode::Ok).await;
    let gw = TestGateway::start(&push::config(&[collector.addr], "max_body_size = 1024", "")).await;
    // Announced: refused before a byte is forwarded.
    let announced = upload(&gw, "SN-7", "tx-big", &[b'x'; 2048]).await;
    assert_eq!(announced.status, 413, "{announced:?}");
    assert_eq!(collector.requests(), 0);
    // Chunked: cut off when it crosses the maximum; the collector never gets it whole.
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let pieces = vec![vec![b'y'; 600]; 4];
    let chunked = push::request_on(
        tcp,
        "POST",
        "/push/SN-7",
        &[(KEY, "tx-chunk")],
        Send::Chunked(pieces),
    )
    .await;
    assert_eq!(chunked.status, 413, "{chunked:?}");
    assert_eq!(collector.count(), 0);
    // Nothing recorded: the same transaction with a body that fits goes through.
    let ok = upload(&gw, "SN-7", "tx-chunk", b"small").await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(collector.count(), 1);
}

#[tokio::test]
async fn transaction_ids_missing_reused_with_another_body_or_from_the_query() {
    let collector = Collector::spawn(Mode::Ok).await;
    let keys = "idempotency_query = \"txid\"";
    let gw = TestGateway::start(&push::config(&[collector.addr], keys, "")).await;
    let none = push::post(gw.addr(), "/push/SN-8", &[], b"a").await;
    assert_eq!(none.status, 400);
    assert!(none.body.contains("Idempotency-Key"), "{none:?}");
    let first = upload(&gw, "SN-8", "tx-m", b"one body").await;
    assert_eq!(first.status, 200);
    let other = upload(&gw, "SN-8", "tx-m", b"another body").await;
    assert_eq!(other.status, 422, "{other:?}");
    // The same id under another serial is another transaction.
    assert_eq!(upload(&gw, "SN-9", "tx-m", b"x").await.status, 200);
    let by_query = push::post(gw.addr(), "/push/SN-8?txid=q-1", &[], b"q").await;
    let again = push::post(gw.addr(), "/push/SN-8?txid=q-1", &[], b"q").await;
    assert_eq!((by_query.status, again.replayed()), (200, true));
    assert_eq!(collector.count(), 3);
    let bad = push::post(gw.addr(), "/push/bad%2Fserial", &[(KEY, "k")], b"q").await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn redirect_rules_send_a_customers_serials_to_their_server() {
    let collector = Collector::spawn(Mode::Ok).await;
    let keys = r#"
[push.customers]
acme = ["^AC-"]
[[push.redirect]]
customer = "acme"
to = ["https://acme-1.example", "https://acme-2.example"]
"#;
    let gw = TestGateway::start(&push::config(&[collector.addr], keys, "")).await;
    let a = upload(&gw, "AC-100", "t1", b"x").await;
    let b = upload(&gw, "AC-100", "t2", b"x").await;
    assert_eq!((a.status, b.status), (307, 307));
    assert_eq!(
        a.header("location"),
        Some("https://acme-1.example/push/AC-100")
    );
    assert_eq!(
        b.header("location"),
        Some("https://acme-2.example/push/AC-100")
    );
    assert_eq!(upload(&gw, "ZZ-1", "t1", b"x").await.status, 200);
    assert_eq!(collector.count(), 1);
}

#[tokio::test]
async fn a_banned_serial_gets_403_with_retry_after() {
    let collector = Collector::spawn(Mode::Ok).await;
    let gw = TestGateway::start(&push::config(&[collector.addr], "", "")).await;
    assert_eq!(upload(&gw, "SN-B", "t0", b"x").await.status, 200);
    let ban = support::admin_ban(
        Subject::Serial("SN-B".into()),
        Some(Duration::from_secs(600)),
    );
    gw.gw().ban(ban).await.unwrap();
    let refused = upload(&gw, "SN-B", "t1", b"x").await;
    assert_eq!(refused.status, 403, "{refused:?}");
    let secs: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((590..=600).contains(&secs), "{secs}");
    assert_eq!(collector.count(), 1);
}

#[tokio::test]
async fn a_serial_posting_too_often_is_discarded_then_banned() {
    let collector = Collector::spawn(Mode::Ok).await;
    let policy = r#"
[policy.classes.default]
[policy.classes.logger]
push_interval_secs = 60.0
tolerance_secs = 5.0
[[policy.device_prefixes]]
prefix = "LOG-"
class = "logger"
[policy.strikes]
threshold = 3
"#;
    let gw = TestGateway::start(&push::config(&[collector.addr], "", policy)).await;
    // The first upload arms the rhythm and is delivered.
    assert_eq!(upload(&gw, "LOG-1", "t0", b"x").await.status, 200);
    // Early ones: accepted, discarded, struck.
    for i in 1..3 {
        let early = upload(&gw, "LOG-1", &format!("t{i}"), b"x").await;
        assert_eq!(early.status, 202, "{early:?}");
        assert_eq!(early.header("x-portcullis-discarded"), Some("early"));
        // A retry of a discarded upload hears the same.
        let again = upload(&gw, "LOG-1", &format!("t{i}"), b"x").await;
        assert_eq!((again.status, again.replayed()), (202, true));
    }
    // The third strike bans the serial: that upload is still answered, the next is refused.
    assert_eq!(upload(&gw, "LOG-1", "t3", b"x").await.status, 202);
    let banned = upload(&gw, "LOG-1", "t4", b"x").await;
    assert_eq!(banned.status, 403, "{banned:?}");
    assert!(banned.header("retry-after").is_some());
    assert_eq!(collector.count(), 1);
    let bans = gw.gw().policy().bans().list(SystemTime::now());
    assert!(
        bans.iter()
            .any(|b| b.subject == Subject::Serial("LOG-1".into())),
        "{bans:?}"
    );
}

#[tokio::test]
async fn a_checkin_carries_the_time_and_the_update_services_answer() {
    let collector = Collector::spawn(Mode::Ok).await;
    let updates = Collector::spawn(Mode::Update("{\"firmware\":\"2.1.0\"}")).await;
    let extra = format!(
        "[routes.updates]\nupstreams = [\"{}\"]\nprotocol = \"http\"",
        updates.addr
    );
    let gw = TestGateway::start(&push::config(
        &[collector.addr],
        "checkin_route = \"updates\"",
        &extra,
    ))
    .await;
    // An upload first: the connection it leaves idle is the collectors', not the update
    // service's, and must not carry the check-in.
    assert_eq!(upload(&gw, "SN-C", "t0", b"x").await.status, 200);
    let before = SystemTime::now();
    // A GET announcing a body it does not send: the update service is not told of one.
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let answer = push::request_on(tcp, "GET", "/checkin/SN-C", &[], Send::Whole(Vec::new())).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "{\"firmware\":\"2.1.0\"}");
    assert!(answer.header("date").is_some());
    let time = answer.header("x-portcullis-time").unwrap();
    let t: chrono::DateTime<chrono::Utc> = time.parse().unwrap();
    let t = SystemTime::from(t);
    assert!(
        t >= before - Duration::from_secs(1) && t <= SystemTime::now() + Duration::from_secs(1),
        "{time}"
    );
    let seen = updates.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-portcullis-serial"], "SN-C");
    assert_eq!(collector.count(), 1);
    // Uploads are POST, check-ins GET.
    let wrong = push::post(gw.addr(), "/checkin/SN-C", &[], b"").await;
    assert_eq!(wrong.status, 405);
}

#[tokio::test]
async fn through_nginx_from_the_shipped_profile() {
    use support::edge::{Edge, Fault, Product};
    let collector = Collector::spawn(Mode::Ok).await;
    let proxies = "trusted_proxies = [\"127.0.0.1/32\"]";
    let config = push::config(&[collector.addr], "max_body_size = 4194304", "").replacen(
        "handshake_timeout_secs = 5",
        &format!("handshake_timeout_secs = 5\n{proxies}"),
        1,
    );
    let gw = TestGateway::start(&config).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "edge", &["localhost"]);
    let edge = Edge::spawn(Product::Nginx, Fault::None, &leaf, &ca.pem, gw.addr()).await;
    // 3 MiB: over nginx's default 1m, under the profile's 16m and the gateway's 4 MiB.
    let big = vec![b'z'; 3 << 20];
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers
            .push(push::post_tls(edge.addr, &ca.pem, "/push/SN-N", &[(KEY, "tx-n")], &big).await);
    }
    same_answers(&answers);
    let got = collector.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.len(), 3 << 20);
    assert_eq!(got[0].headers["x-forwarded-for"], "127.0.0.1");
    // Over the gateway's maximum: 413 from the gateway, through nginx.
    let huge = vec![b'z'; 5 << 20];
    let refused =
        push::post_tls(edge.addr, &ca.pem, "/push/SN-N", &[(KEY, "tx-huge")], &huge).await;
    assert_eq!(refused.status, 413, "{refused:?}");
    assert_eq!(collector.count(), 1);
}

#[tokio::test]
async fn the_admin_api_lists_push_devices_bans_serials_and_counts_uploads() {
    use support::admin::{ops, text, AdminFiles};
    let collector = Collector::spawn(Mode::Ok).await;
    let admin = AdminFiles::new();
    let gw = TestGateway::start(&push::config(&[collector.addr], "", &admin.toml())).await;
    let api = gw.gw().admin_addr().unwrap();
    upload(&gw, "SN-A", "t1", b"x").await;
    upload(&gw, "SN-A", "t1", b"x").await;
    let clients = ops(api, "GET", "/api/v1/clients?transport=http", None).await;
    assert_eq!(clients.status, 200, "{clients:?}");
    let row = &clients.json["data"][0];
    assert_eq!(row["serial"], "SN-A", "{clients:?}");
    assert_eq!(row["transport"], "http");
    assert_eq!(row["messages"]["forwarded"], 1);
    let stats = ops(api, "GET", "/api/v1/stats", None).await;
    assert_eq!(stats.json["push_uploads"]["delivered"], 1, "{stats:?}");
    assert_eq!(stats.json["push_uploads"]["replayed"], 1);
    let metrics = text(api, "/metrics").await;
    assert!(
        metrics.contains("portcullis_push_uploads_total{outcome=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_push_collector_seconds_count 1"),
        "{metrics}"
    );
    // `as = serial` through the API: the next upload is refused.
    let ban = serde_json::json!({"as": "serial", "who": "SN-A", "reason": "stolen meter"});
    let made = ops(api, "POST", "/api/v1/banned", Some(ban)).await;
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(upload(&gw, "SN-A", "t2", b"x").await.status, 403);
    let listed = ops(api, "GET", "/api/v1/banned?as=serial", None).await;
    assert_eq!(listed.json["data"][0]["who"], "SN-A", "{listed:?}");
}

#[tokio::test]
async fn redirect_rules_change_with_a_reload() {
    let collector = Collector::spawn(Mode::Ok).await;
    let gw = TestGateway::start(&push::config(&[collector.addr], "", "")).await;
    assert_eq!(upload(&gw, "MOVE-1", "t1", b"x").await.status, 200);
    let rule = "[[push.redirect]]\nserials = \"^MOVE-\"\nto = [\"https://new-site.example\"]";
    let config =
        portcullis::Config::parse(&push::config(&[collector.addr], rule, ""), None).unwrap();
    gw.gw().reload(&config).unwrap();
    let moved = upload(&gw, "MOVE-1", "t2", b"x").await;
    assert_eq!(moved.status, 307);
    assert_eq!(
        moved.header("location"),
        Some("https://new-site.example/push/MOVE-1")
    );
    // A reload whose rule does not compile (past the config's own check) changes nothing.
    let mut bad = config.clone();
    bad.push.as_mut().unwrap().redirect[0].serials = Some("(".into());
    assert!(gw.gw().reload(&bad).is_err());
    assert_eq!(upload(&gw, "MOVE-1", "t3", b"x").await.status, 307);
    assert_eq!(collector.count(), 1);
}

#[tokio::test]
async fn a_dead_collector_in_the_pool_is_passed_over_and_gzip_bodies_go_as_sent() {
    let up = Collector::spawn(Mode::Ok).await;
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start(&push::config(&[down, up.addr], "", "")).await;
    // Not a real gzip stream: the gateway neither inflates nor checks it, it forwards bytes.
    let gz = [0x1f, 0x8b, 8, 0, 1, 2, 3, 4];
    for i in 0..6 {
        let headers = [(KEY, &*format!("gz-{i}")), ("content-encoding", "gzip")];
        let a = push::post(gw.addr(), "/push/SN-G", &headers, &gz).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let got = up.received();
    assert_eq!(got.len(), 6);
    assert!(got
        .iter()
        .all(|r| r.body == gz && r.headers["content-encoding"] == "gzip"));
}

#[tokio::test]
async fn a_collector_too_slow_to_answer_leaves_the_upload_retryable_under_the_same_id() {
    let slow = Collector::spawn(Mode::Slow(Duration::from_secs(3))).await;
    let keys = "collector_timeout_secs = 1\nlease_secs = 1";
    let gw = TestGateway::start(&push::config(&[slow.addr], keys, "")).await;
    let first = upload(&gw, "SN-S", "tx-slow", b"data").await;
    assert_eq!(first.status, 502, "{first:?}");
    assert!(first.header("retry-after").is_some());
    // The collector did get that body (it only answered late): the retry reaches it again,
    // under the same transaction id, which is how a collector closes this gap itself.
    let second = upload(&gw, "SN-S", "tx-slow", b"data").await;
    assert_eq!(second.status, 502);
    let got = slow.received();
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .all(|r| r.headers["x-portcullis-transaction"] == "tx-slow"));
}

#[tokio::test]
async fn the_serial_can_come_in_a_configured_header() {
    let collector = Collector::spawn(Mode::Ok).await;
    let keys = "serial_header = \"X-Serial\"";
    let gw = TestGateway::start(&push::config(&[collector.addr], keys, "")).await;
    let a = push::post(
        gw.addr(),
        "/push",
        &[(KEY, "h1"), ("x-serial", "HDR-1")],
        b"x",
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        collector.received()[0].headers["x-portcullis-serial"],
        "HDR-1"
    );
    let none = push::post(gw.addr(), "/push", &[(KEY, "h2")], b"x").await;
    assert_eq!(none.status, 400, "{none:?}");
    assert!(none.body.contains("no serial"), "{none:?}");
    let bad = push::post(
        gw.addr(),
        "/push",
        &[(KEY, "h3"), ("x-serial", "a b")],
        b"x",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(collector.count(), 1);
}

#[tokio::test]
async fn a_failed_delivery_gives_its_rhythm_sample_back_so_its_retry_is_not_early() {
    let collector = Collector::spawn(Mode::FailFirst(1)).await;
    let policy = r#"
[policy.classes.default]
push_interval_secs = 60.0
tolerance_secs = 5.0
"#;
    let gw = TestGateway::start(&push::config(&[collector.addr], "", policy)).await;
    assert_eq!(upload(&gw, "R-1", "t0", b"x").await.status, 502);
    let retry = upload(&gw, "R-1", "t0", b"x").await;
    assert_eq!((retry.status, retry.replayed()), (200, false), "{retry:?}");
    assert_eq!(collector.count(), 1);
    // A new transaction right after is early: the delivered one armed the rhythm.
    let early = upload(&gw, "R-1", "t1", b"x").await;
    assert_eq!(early.status, 202, "{early:?}");
}

#[tokio::test]
async fn a_collector_that_stops_reading_is_given_up_and_the_transaction_freed() {
    // Accepts, never reads, never answers.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stuck.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stuck.accept().await {
            held.push(s);
        }
    });
    let keys = "collector_timeout_secs = 1\nlease_secs = 1";
    let gw = TestGateway::start(&push::config(&[addr], keys, "")).await;
    // Streamed (over 64 KiB), larger than loopback's socket buffers take at once.
    let big = vec![b'b'; 6 << 20];
    let first = upload(&gw, "SN-X", "tx-stuck", &big).await;
    assert_eq!(first.status, 502, "{first:?}");
    // Not "in flight" for ever: the retry is tried again (and fails the same way).
    let again = upload(&gw, "SN-X", "tx-stuck", &big).await;
    assert_eq!(again.status, 502, "{again:?}");
}

/// Every refusal the story of an upload can make before a collector, with the exact status
/// and header the device sees.
#[tokio::test]
async fn each_refusal_has_its_exact_status() {
    let collector = Collector::spawn(Mode::Ok).await;
    let policy = r#"
[policy]
unknown_devices = "refuse"
[policy.classes.default]
messages_per_sec = 1
message_burst = 1
[[policy.device_prefixes]]
prefix = "OK-"
class = "default"
"#;
    let proxies = "trusted_proxies = [\"127.0.0.1/32\"]";
    let config = push::config(&[collector.addr], "max_devices = 2", policy).replacen(
        "handshake_timeout_secs = 5",
        &format!("handshake_timeout_secs = 5\n{proxies}"),
        1,
    );
    let gw = TestGateway::start(&config).await;
    // A device no rule names: 403.
    let unknown = upload(&gw, "WHO-1", "t1", b"x").await;
    assert_eq!(unknown.status, 403, "{unknown:?}");
    assert!(unknown.body.contains("unknown device"), "{unknown:?}");
    // A transaction id that is not one: 400.
    let bad_key = push::post(gw.addr(), "/push/OK-1", &[(KEY, "has space")], b"x").await;
    assert_eq!(bad_key.status, 400, "{bad_key:?}");
    assert!(bad_key.body.contains("transaction id"), "{bad_key:?}");
    // Over the class's message rate (burst 1): 429 with Retry-After, nothing recorded.
    assert_eq!(upload(&gw, "OK-1", "r1", b"x").await.status, 200);
    let over = upload(&gw, "OK-1", "r2", b"x").await;
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.header("retry-after"), Some("1"));
    // More push devices than max_devices (2): 503 with Retry-After.
    assert_eq!(upload(&gw, "OK-2", "d1", b"x").await.status, 200);
    let third = upload(&gw, "OK-3", "d1", b"x").await;
    assert_eq!(third.status, 503, "{third:?}");
    assert_eq!(third.header("retry-after"), Some("60"));
    // A client IP from a trusted proxy's header, banned: 403 from the router.
    let ban = support::admin_ban(Subject::Ip("203.0.113.7".parse().unwrap()), None);
    gw.gw().ban(ban).await.unwrap();
    let headers = [(KEY, "b1"), ("x-forwarded-for", "203.0.113.7")];
    let banned = push::post(gw.addr(), "/push/OK-1", &headers, b"x").await;
    assert_eq!(banned.status, 403, "{banned:?}");
    // The collectors are never a tunnel route: 404 on the upgrade.
    let tunnel = push::get(gw.addr(), "/tunnel/collectors").await;
    assert_eq!(tunnel.status, 404, "{tunnel:?}");
    assert_eq!(tunnel.body, "unknown tunnel route\n");
    assert_eq!(collector.count(), 2);
}

#[tokio::test]
async fn without_push_the_paths_are_not_found() {
    let collector = Collector::spawn(Mode::Ok).await;
    let config = push::config(&[collector.addr], "", "");
    let without = config[..config.find("[push]").unwrap()].to_string();
    let gw = TestGateway::start(&without).await;
    for path in ["/push/SN-1", "/push", "/checkin/SN-1"] {
        let a = push::post(gw.addr(), path, &[(KEY, "t")], b"x").await;
        assert_eq!(a.status, 404, "{path}: {a:?}");
        assert_eq!(a.body, "HTTP push is not enabled here\n");
    }
    assert_eq!(collector.requests(), 0);
}
