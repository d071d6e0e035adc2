//! The shipped edge profiles, run for real in front of the gateway: nginx, HAProxy and Caddy,
//! each as shipped (an MQTT client round-trips through it, and `portcullis probe` passes every
//! check) and broken on purpose (upgrade headers dropped, a 6 s idle cut, a 1 KiB body limit):
//! the probe names the broken hop and the fix each time.
//!
//! Envoy and Traefik are not in Debian's archive and ship no registry package here, so their
//! profiles are only checked as YAML (tests/deploy.rs).

mod support;

use portcullis::agent::probe::{probe, ProbeArgs, Report, Verdict};
use support::certs::Ca;
use support::edge::{Edge, Fault, Product};
use support::{mqtt_wss, ws, Broker, TestGateway};

struct Stack {
    ca: Ca,
    edge: Edge,
    _gw: TestGateway,
    _broker: Broker,
    dir: tempfile::TempDir,
}

/// mosquitto ← gateway (trusting 127.0.0.1's X-Forwarded-For, pinging every 10 s) ← `product`
/// (TLS for localhost) with `fault`.
async fn stack(product: Product, fault: Fault) -> Stack {
    let broker = Broker::spawn().await;
    let mut config = ws::config(
        "trusted_proxies = [\"127.0.0.1/32\"]\nclient_ip_header = \"x-forwarded-for\"",
        &[("mqtt", broker.addr)],
    );
    // Short enough that the idle check (steps 2, 4, 8, 12 s) tells a 6 s cut from a safe path,
    // with 2 s of slack on either side of the cut for a loaded machine.
    config.push_str("\n[websocket]\nping_interval_secs = 10\n");
    let gw = TestGateway::start(&config).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "edge", &["localhost"]);
    let edge = Edge::spawn(product, fault, &leaf, &ca.pem, gw.addr()).await;
    Stack {
        ca,
        edge,
        _gw: gw,
        _broker: broker,
        dir,
    }
}

impl Stack {
    /// `portcullis probe wss://localhost:PORT`, trusting the test CA, idle check up to 12 s
    /// unless `quick`.
    async fn probe(&self, quick: bool) -> Report {
        let ca = self.dir.path().join("ca.pem");
        std::fs::write(&ca, &self.ca.pem).unwrap();
        let agent = self.dir.path().join("agent.toml");
        let url = format!("wss://localhost:{}", self.edge.addr.port());
        std::fs::write(
            &agent,
            format!(
                "[[tunnel]]\nlisten = \"127.0.0.1:0\"\nurl = \"{url}/tunnel/mqtt\"\n[tls]\nca_file = {}\n",
                ws::toml_path(&ca)
            ),
        )
        .unwrap();
        let args = ProbeArgs {
            url,
            config: Some(agent),
            sni: None,
            host: None,
            quick,
            idle_max_secs: 12,
            max_message: 1 << 20,
            max_body: 1 << 20,
            json: false,
        };
        let report = probe(&args, |_| None).await;
        eprintln!("{report}");
        report
    }

    async fn mqtt_round_trip(&self, id: &str) {
        let port = self.edge.addr.port();
        mqtt_wss::qos1_round_trip("localhost", port, &self.ca.pem, id, &format!("edge/{id}")).await;
    }
}

fn check<'a>(report: &'a Report, name: &str) -> &'a portcullis::agent::probe::Check {
    report
        .find(name)
        .unwrap_or_else(|| panic!("no {name} check in:\n{report}"))
}

/// As shipped: MQTT flows, every probe check passes, and the gateway believes the device's
/// address from the edge's X-Forwarded-For.
async fn as_shipped(product: Product) {
    let s = stack(product, Fault::None).await;
    s.mqtt_round_trip(&format!("{product:?}-shipped").to_lowercase())
        .await;
    let report = s.probe(false).await;
    assert!(!report.failed(), "{report}");
    for name in [
        "tls", "cert", "gateway", "upgrade", "headers", "frames", "messages", "bodies", "idle",
    ] {
        assert_eq!(
            check(&report, name).verdict,
            Verdict::Ok,
            "{name}:\n{report}"
        );
    }
    let ip = check(&report, "client ip");
    assert_eq!(ip.verdict, Verdict::Ok, "{report}");
    assert!(ip.detail.contains("x-forwarded-for"), "{report}");
    assert!(
        check(&report, "headers").detail.contains("x-forwarded-for"),
        "{report}"
    );
    assert!(
        check(&report, "messages").detail.contains("1 MiB"),
        "{report}"
    );
    assert!(
        check(&report, "cert").detail.contains("portcullis test CA"),
        "{report}"
    );
}

/// The upgrade headers dropped: the upgrade fails, the gateway's 400 is recognised, and the
/// fix names the product's setting.
async fn without_upgrade(product: Product, fix: &str) {
    let s = stack(product, Fault::NoUpgrade).await;
    let report = s.probe(true).await;
    let c = check(&report, "upgrade");
    assert_eq!(c.verdict, Verdict::Fail, "{report}");
    assert!(c.detail.contains("HTTP 400 from the gateway"), "{report}");
    let f = c.fix.as_deref().unwrap_or_default();
    assert!(
        f.contains("without its Upgrade header") && f.contains(fix),
        "{report}"
    );
}

/// A 6 s idle cut with the gateway pinging every 10 s: the idle check fails and names the fix.
async fn with_idle_cut(product: Product, fix: &str) {
    let s = stack(product, Fault::IdleCut6s).await;
    let report = s.probe(false).await;
    let c = check(&report, "idle");
    assert_eq!(c.verdict, Verdict::Fail, "{report}");
    assert!(c.detail.contains("after 4–8 s"), "{report}");
    assert!(
        c.fix.as_deref().unwrap_or_default().contains(fix),
        "{report}"
    );
    // Everything before it still works: only the idle cut is reported.
    assert_eq!(check(&report, "messages").verdict, Verdict::Ok, "{report}");
}

/// A 1 KiB body limit: HTTP push's bodies fail at the edge with 413, named.
async fn with_body_limit(product: Product, by: &str, fix: &str) {
    let s = stack(product, Fault::Body1KiB).await;
    let report = s.probe(true).await;
    let c = check(&report, "bodies");
    assert_eq!(c.verdict, Verdict::Fail, "{report}");
    assert!(
        c.detail.contains("413") && c.detail.contains(by),
        "{report}"
    );
    assert!(
        c.detail.contains("the largest that passed: 1 KiB"),
        "{report}"
    );
    assert!(
        c.fix.as_deref().unwrap_or_default().contains(fix),
        "{report}"
    );
    assert_eq!(check(&report, "upgrade").verdict, Verdict::Ok, "{report}");
}

#[tokio::test]
async fn nginx_as_shipped() {
    as_shipped(Product::Nginx).await;
}

#[tokio::test]
async fn nginx_without_upgrade_headers() {
    without_upgrade(Product::Nginx, "proxy_set_header Upgrade").await;
}

#[tokio::test]
async fn nginx_with_a_6s_read_timeout() {
    with_idle_cut(Product::Nginx, "proxy_read_timeout").await;
}

#[tokio::test]
async fn nginx_with_a_1k_body_limit() {
    with_body_limit(Product::Nginx, "nginx", "client_max_body_size").await;
}

#[tokio::test]
async fn haproxy_as_shipped() {
    as_shipped(Product::Haproxy).await;
}

#[tokio::test]
async fn haproxy_without_upgrade_headers() {
    // HAProxy does not name itself: the advice covers every product, HAProxy's line included.
    without_upgrade(Product::Haproxy, "HAProxy: `mode http`").await;
}

#[tokio::test]
async fn haproxy_with_a_6s_tunnel_timeout() {
    with_idle_cut(Product::Haproxy, "timeout tunnel").await;
}

#[tokio::test]
async fn haproxy_with_a_1k_body_limit() {
    with_body_limit(
        Product::Haproxy,
        "a hop in front of the gateway",
        "HAProxy:",
    )
    .await;
}

#[tokio::test]
async fn caddy_as_shipped() {
    as_shipped(Product::Caddy).await;
}

#[tokio::test]
async fn caddy_without_upgrade_headers() {
    without_upgrade(Product::Caddy, "Caddy: `reverse_proxy` passes upgrades").await;
}

#[tokio::test]
async fn caddy_with_a_1k_body_limit() {
    with_body_limit(Product::Caddy, "Caddy", "request_body").await;
}
