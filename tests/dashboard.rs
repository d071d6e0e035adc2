//! The dashboard: its login, sessions and CSRF over real HTTP, the APIs it adds (offenders,
//! classes, overrides), and the whole of it in a real browser (Debian's chromium driven by
//! selenium through chromium-driver) against a real gateway, mosquitto and device.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use portcullis::mqtt::wire::{self, Version};
use serde_json::{json, Value};
use support::admin::{ops, AdminFiles, TOKEN};
use support::raw_mqtt::{self, RawClient};
use support::{Broker, TestGateway};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const DEVICE: &str = "meter-dash-1";
/// A client ID a device chose to attack the dashboard with.
const HOSTILE: &str = "<img src=x onerror=window.pwned=1>\"'</td><script>window.pwned=2</script>";

/// A WebSocket listener in front of mosquitto; `meter-*` devices report once an hour (so a
/// second publish within it is early); the monitor samples every second.
fn config(broker: SocketAddr, files: &AdminFiles) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"

[routes.mqtt]
upstreams = ["{broker}"]
health_check_interval_secs = 1

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 5

[policy.classes.default]

[policy.classes.meters]
push_interval_secs = 3600.0
tolerance_secs = 60.0

[policy.classes.tight]
messages_per_sec = 1
message_burst = 1

[[policy.device_prefixes]]
prefix = "meter-"
class = "meters"

{}monitor_interval_secs = 1
"#,
        files.toml()
    )
}

struct Setup {
    _broker: Broker,
    files: AdminFiles,
    gw: TestGateway,
    api: SocketAddr,
}

async fn setup() -> Setup {
    let broker = Broker::spawn().await;
    let files = AdminFiles::new();
    let gw = TestGateway::start(&config(broker.addr, &files)).await;
    let api = gw.gw().admin_addr().expect("[admin] configured");
    Setup {
        _broker: broker,
        files,
        gw,
        api,
    }
}

/// A device on `/mqtt` (MQTT 3.1.1); the CONNACK code.
async fn device(s: &Setup) -> (RawClient, u8) {
    let mut dev = RawClient::ws(&s.gw.ws_url("/mqtt"), Version::V311).await;
    let code = dev.connect(&wire::connect(DEVICE, 30, Version::V311)).await;
    (dev, code)
}

/// One QoS 1 publish, acknowledged (discarded ones are acknowledged too).
async fn publish(dev: &mut RawClient, id: u16) {
    let topic = format!("meters/{DEVICE}");
    dev.send_ok(&wire::publish(&topic, 1, id, b"42", Version::V311))
        .await;
    let ack = dev.packet().await;
    assert_eq!(raw_mqtt::kind(&ack), 4, "a PUBACK");
}

/// A plain HTTP request with optional cookie and extra headers: (status, headers, body).
async fn http(
    api: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    extra: &[(&'static str, &str)],
    body: &[u8],
) -> (u16, HeaderMap, String) {
    let mut tcp = tokio::net::TcpStream::connect(api).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("admin"));
    if let Some(c) = cookie {
        headers.insert(http::header::COOKIE, HeaderValue::from_str(c).unwrap());
    }
    for (k, v) in extra {
        headers.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    let a = portcullis::http1::request(
        &mut tcp,
        method,
        path,
        &headers,
        body,
        Duration::from_secs(10),
    )
    .await
    .expect("an answer");
    (a.status, a.headers, String::from_utf8_lossy(&a.body).into())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn pages_need_a_session_and_a_change_from_one_needs_its_csrf_token() {
    let s = setup().await;
    let api = s.api;
    // No session: the page leads to the login; scripts and the API are refused; only the
    // login page and its stylesheet are served.
    let (status, h, _) = http(api, "GET", "/", None, &[], b"").await;
    assert_eq!((status, header(&h, "location")), (303, "/login"));
    for path in [
        "/assets/app.js",
        "/assets/vendor/uPlot.iife.min.js",
        "/dashboard/session",
    ] {
        assert_eq!(
            http(api, "GET", path, None, &[], b"").await.0,
            401,
            "{path}"
        );
    }
    let (status, h, page) = http(api, "GET", "/login", None, &[], b"").await;
    assert_eq!(status, 200);
    assert!(page.contains("name=\"token\""), "{page}");
    assert!(header(&h, "content-security-policy").contains("script-src 'self'"));
    assert_eq!(header(&h, "x-frame-options"), "DENY");
    assert_eq!(
        http(api, "GET", "/assets/app.css", None, &[], b"").await.0,
        200
    );

    // A wrong token: the login page again, with a 401 and no cookie.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (status, h, page) = http(
        api,
        "POST",
        "/login",
        None,
        &form,
        b"token=wrong-0123456789abcdef",
    )
    .await;
    assert_eq!(status, 401);
    assert!(page.contains("not one of admin.tokens_file"), "{page}");
    assert!(h.get("set-cookie").is_none());

    // The right one: a session cookie that scripts cannot read and other sites cannot send.
    let body = format!("token={TOKEN}");
    let (status, h, _) = http(api, "POST", "/login", None, &form, body.as_bytes()).await;
    assert_eq!((status, header(&h, "location")), (303, "/"));
    let set = header(&h, "set-cookie").to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(TOKEN), "the cookie is not the token");
    let cookie = set.split(';').next().unwrap().to_owned();
    let (status, _, page) = http(api, "GET", "/", Some(&cookie), &[], b"").await;
    assert_eq!(status, 200);
    assert!(page.contains("/assets/app.js"));
    let (_, _, session) = http(api, "GET", "/dashboard/session", Some(&cookie), &[], b"").await;
    let session: Value = serde_json::from_str(&session).unwrap();
    assert_eq!(session["name"], "ops");
    let csrf = session["csrf"].as_str().unwrap().to_owned();

    // Reads with the cookie alone; a change needs the CSRF token too.
    let json = [("content-type", "application/json")];
    assert_eq!(
        http(api, "GET", "/api/v1/stats", Some(&cookie), &[], b"")
            .await
            .0,
        200
    );
    let ban = br#"{"as":"clientid","who":"csrf-victim"}"#;
    let (status, _, answer) = http(api, "POST", "/api/v1/banned", Some(&cookie), &json, ban).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("x-csrf-token"), "{answer}");
    let wrong = [
        ("content-type", "application/json"),
        ("x-csrf-token", "guess"),
    ];
    assert_eq!(
        http(api, "POST", "/api/v1/banned", Some(&cookie), &wrong, ban)
            .await
            .0,
        403
    );
    let right = [
        ("content-type", "application/json"),
        ("x-csrf-token", &csrf),
    ];
    let (status, _, answer) = http(api, "POST", "/api/v1/banned", Some(&cookie), &right, ban).await;
    assert_eq!(status, 201, "{answer}");
    let record: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        record["by"], "admin:ops",
        "the session acts as its token's name"
    );

    // A login form is a token and a few bytes: a larger body is refused before it is read.
    let big = format!("token={}", "x".repeat(5000));
    let (status, h, page) = http(api, "POST", "/login", None, &form, big.as_bytes()).await;
    assert_eq!(status, 413, "{page}");
    assert!(h.get("set-cookie").is_none());

    // Another site's page may not log a browser in.
    let cross = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("sec-fetch-site", "cross-site"),
    ];
    let (status, h, _) = http(api, "POST", "/login", None, &cross, body.as_bytes()).await;
    assert_eq!(status, 403);
    assert!(h.get("set-cookie").is_none());
    // Only the files themselves: a path that also finds a page is not a second entrance.
    for path in [
        "/assets/index.html",
        "/assets/index.html/",
        "/assets/./app.js",
    ] {
        assert_eq!(
            http(api, "GET", path, Some(&cookie), &[], b"").await.0,
            404,
            "{path}"
        );
    }
    // The browser's favicon request is no refused token.
    assert_eq!(
        http(api, "GET", "/favicon.ico", None, &[], b"").await.0,
        204
    );

    // Logout needs the CSRF token too, and ends the session here, not just in the browser.
    let (_, h, _) = http(api, "POST", "/login", None, &form, body.as_bytes()).await;
    let second = header(&h, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let (_, _, session) = http(api, "GET", "/dashboard/session", Some(&second), &[], b"").await;
    let second_csrf = serde_json::from_str::<Value>(&session).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second_csrf, csrf, "each session has its own");
    assert_eq!(
        http(api, "POST", "/logout", Some(&second), &[], b"")
            .await
            .0,
        403
    );
    assert_eq!(
        http(api, "GET", "/api/v1/stats", Some(&second), &[], b"")
            .await
            .0,
        200
    );
    let (status, h, _) = http(
        api,
        "POST",
        "/logout",
        Some(&second),
        &[("x-csrf-token", &second_csrf)],
        b"",
    )
    .await;
    assert_eq!((status, header(&h, "location")), (303, "/login"));
    assert!(header(&h, "set-cookie").contains("Max-Age=0"));
    assert_eq!(
        http(api, "GET", "/api/v1/stats", Some(&second), &[], b"")
            .await
            .0,
        401
    );
    assert_eq!(
        http(api, "GET", "/api/v1/stats", Some(&cookie), &[], b"")
            .await
            .0,
        200,
        "the other session lives"
    );
    // Refused so far: the wrong token at the login, and the logged-out session's request.
    let metrics = support::admin::text(api, "/metrics").await;
    assert!(
        metrics.contains("portcullis_admin_unauthorized_total 2"),
        "{metrics}"
    );

    // The token taken out of the file: its sessions end at the reload.
    std::fs::write(&s.files.tokens, "ci:ci-token-fedcba9876543210\n").unwrap();
    let config = portcullis::Config::parse(&config(s._broker.addr, &s.files), None).unwrap();
    s.gw.gw().reload(&config).expect("reload");
    let (status, h, _) = http(api, "GET", "/", Some(&cookie), &[], b"").await;
    assert_eq!((status, header(&h, "location")), (303, "/login"));
    assert_eq!(
        http(api, "GET", "/api/v1/stats", Some(&cookie), &[], b"")
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn without_the_dashboard_the_listener_serves_the_api_alone() {
    let broker = Broker::spawn().await;
    let files = AdminFiles::new();
    let toml =
        config(broker.addr, &files).replace("monitor_interval_secs = 1", "dashboard = false");
    let gw = TestGateway::start(&toml).await;
    let api = gw.gw().admin_addr().unwrap();
    let (status, _, body) = http(api, "GET", "/", None, &[], b"").await;
    assert_eq!(status, 401, "{body}");
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let login = format!("token={TOKEN}");
    let (status, h, _) = http(api, "POST", "/login", None, &form, login.as_bytes()).await;
    assert_eq!(status, 401);
    assert!(h.get("set-cookie").is_none());
    assert_eq!(ops(api, "GET", "/api/v1/stats", None).await.status, 200);
}

#[tokio::test]
async fn offenders_classes_and_overrides_are_listed() {
    let s = setup().await;
    let (mut dev, code) = device(&s).await;
    assert_eq!(code, 0);
    publish(&mut dev, 1).await; // in rhythm (the first)
    publish(&mut dev, 2).await; // early: discarded, a strike
    let mut offender = Value::Null;
    for _ in 0..200 {
        let a = ops(s.api, "GET", "/api/v1/offenders?limit=5", None).await;
        assert_eq!(a.status, 200, "{:?}", a.json);
        if let Some(o) = a.json.as_array().and_then(|l| l.first()) {
            offender = o.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(offender["clientid"], DEVICE, "{offender}");
    assert_eq!(offender["discarded_early"], 1, "{offender}");
    assert_eq!(offender["strikes"], 1, "{offender}");
    assert_eq!(offender["total"], 2, "{offender}");
    assert_eq!(offender["ban"], Value::Null);
    let bad = ops(s.api, "GET", "/api/v1/offenders?limit=0", None).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json["message"].as_str().unwrap().starts_with("limit"));

    let classes = ops(s.api, "GET", "/api/v1/classes", None).await;
    let names: Vec<&str> = classes
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "meters", "tight"]);
    assert_eq!(classes.json[1]["settings"]["push_interval_secs"], 3600.0);

    let set = ops(
        s.api,
        "PUT",
        &format!("/api/v1/devices/{DEVICE}"),
        Some(json!({"class": "tight"})),
    )
    .await;
    assert_eq!(set.status, 200, "{:?}", set.json);
    let list = ops(s.api, "GET", "/api/v1/overrides?like_clientid=dash", None).await;
    assert_eq!(
        list.json["data"],
        json!([{"clientid": DEVICE, "class": "tight"}])
    );
    assert_eq!(list.json["meta"]["count"], 1);
    let none = ops(s.api, "GET", "/api/v1/overrides?class=default", None).await;
    assert_eq!(none.json["meta"]["count"], 0);

    // A ban for a duration, counted by the gateway's clock (what the dashboard sends).
    let ban = json!({"as": "clientid", "who": "for-an-hour", "for_secs": 3600});
    let made = ops(s.api, "POST", "/api/v1/banned", Some(ban)).await;
    assert_eq!(made.status, 201, "{:?}", made.json);
    let until = chrono::DateTime::parse_from_rfc3339(made.json["until"].as_str().unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let left = until.timestamp() - now.as_secs() as i64;
    assert!((3590..=3600).contains(&left), "{left} s left");
    for (bad, field) in [
        (
            json!({"as": "clientid", "who": "x", "for_secs": 0}),
            "for_secs",
        ),
        (
            json!({"as": "clientid", "who": "x", "for_secs": 315_360_001u64}),
            "for_secs",
        ),
        (
            json!({"as": "clientid", "who": "x", "for_secs": 60, "until": "2099-01-01T00:00:00Z"}),
            "for_secs",
        ),
    ] {
        let a = ops(s.api, "POST", "/api/v1/banned", Some(bad)).await;
        assert_eq!(a.status, 400, "{:?}", a.json);
        assert!(
            a.json["message"].as_str().unwrap().starts_with(field),
            "{:?}",
            a.json
        );
    }
}

/// Until the monitor's latest sample satisfies `cond` (a sample a second).
async fn sampled(s: &Setup, cond: impl Fn(&Value) -> bool) {
    for _ in 0..300 {
        let a = ops(s.api, "GET", "/api/v1/monitor?latest=10", None).await;
        if a.json.as_array().and_then(|l| l.last()).is_some_and(&cond) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no monitor sample showed it within 30 s");
}

/// The browser driver's Python (a venv with selenium, made by tests/run.sh).
fn browser_python() -> std::path::PathBuf {
    let from_env = std::env::var_os("PORTCULLIS_BROWSER_PYTHON").map(std::path::PathBuf::from);
    let default =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-venv/bin/python");
    let python = from_env.unwrap_or(default);
    assert!(
        python.exists() && std::path::Path::new("/usr/bin/chromedriver").exists(),
        "selenium or chromium-driver is not installed: the test command (bash tests/run.sh) installs them"
    );
    python
}

#[tokio::test]
async fn in_a_browser_an_admin_bans_a_device_from_its_row_lifts_the_ban_and_sees_the_charts_move() {
    let python = browser_python();
    let s = setup().await;
    let (mut dev, code) = device(&s).await;
    assert_eq!(code, 0);
    publish(&mut dev, 1).await;
    let mut hostile = RawClient::ws(&s.gw.ws_url("/mqtt"), Version::V311).await;
    assert_eq!(
        hostile
            .connect(&wire::connect(HOSTILE, 30, Version::V311))
            .await,
        0
    );

    let shots = std::env::var("PORTCULLIS_SCREENSHOTS").unwrap_or_default();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browser.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .env("PORTCULLIS_ADMIN_URL", format!("http://{}", s.api))
        .env("PORTCULLIS_ADMIN_TOKEN", TOKEN)
        .env("PORTCULLIS_DEVICE", DEVICE)
        .env("PORTCULLIS_HOSTILE_DEVICE", HOSTILE)
        .env("PORTCULLIS_SCREENSHOTS", &shots)
        .env("SE_OFFLINE", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the browser driver starts");
    let mut to_browser = child.stdin.take().unwrap();
    let mut from_browser = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_step = async || {
        let line = tokio::time::timeout(Duration::from_secs(120), from_browser.next_line())
            .await
            .expect("the browser moves on within 2 minutes")
            .expect("its output");
        line.unwrap_or_else(|| "ended".into())
    };

    // Banned from its row: the device's connection was closed, and a reconnect is refused.
    assert_eq!(next_step().await, "STEP banned");
    let (_, end) = dev.until_end().await;
    eprintln!("the device's connection ended: {end:?}");
    let (_, code) = device(&s).await;
    assert_eq!(code, 0x05, "a reconnect is refused (not authorized)");
    // The browser is quick: the ban must be in a monitor sample before it is lifted.
    sampled(&s, |m| m["bans_active"] == 1).await;
    to_browser.write_all(b"GO\n").await.unwrap();

    // The ban lifted: the device is back; its second publish within the hour is early.
    assert_eq!(next_step().await, "STEP unbanned");
    let (mut dev, code) = device(&s).await;
    assert_eq!(code, 0, "admitted once the ban is gone");
    publish(&mut dev, 2).await; // the first of this session: judged in rhythm
    publish(&mut dev, 3).await; // early
    sampled(&s, |m| m["messages_discarded_by"]["early"] == 1).await;
    to_browser.write_all(b"GO\n").await.unwrap();

    assert_eq!(next_step().await, "STEP done");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "the browser driver failed: {status}");
    let stats = ops(s.api, "GET", "/api/v1/stats", None).await;
    assert_eq!(
        stats.json["refused"]["connect_banned"], 1,
        "{:?}",
        stats.json
    );
    assert_eq!(stats.json["bans"]["active"], 0);
}
