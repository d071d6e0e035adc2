//! The device agent on the whole real path: legacy MQTT clients (mosquitto_pub / mosquitto_sub)
//! → agent → squid (CONNECT, Basic auth) → nginx (TLS) → gateway → mosquitto.

mod support;

use std::time::Duration;

use portcullis::agent::{check, Failure, Step};
use support::agent::{self as agent_support, pin_of_pem, TestAgent};
use support::certs::Ca;
use support::mosquitto_clients::{publish, try_publish, Sub};
use support::nginx::Nginx;
use support::squid::{Squid, SquidOptions};
use support::ws::toml_path;
use support::{ws, Broker, TestGateway};

const GW: &str = "gw.example.test";
/// A proxy password with the characters that break naive URL handling.
const PROXY_PASS: &str = "p@ss:w#rd";
const PROXY_PASS_ENCODED: &str = "p%40ss%3Aw%23rd";

struct Path {
    _broker: Broker,
    _gw: TestGateway,
    nginx: Nginx,
    squid: Squid,
    ca_file: std::path::PathBuf,
    pin: String,
    _dir: tempfile::TempDir,
}

/// mosquitto ← gateway (plain, trusting nginx) ← nginx (TLS for gw.example.test) ← squid (auth).
async fn path() -> Path {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "nginx", &[GW]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let broker = Broker::spawn().await;
    let gw = TestGateway::start(&ws::config(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &[("mqtt", broker.addr)],
    ))
    .await;
    let nginx = Nginx::spawn(&leaf, gw.addr()).await;
    let squid = Squid::spawn(SquidOptions {
        auth: Some(("alice", PROXY_PASS)),
        ..Default::default()
    })
    .await;
    Path {
        pin: pin_of_pem(&leaf.pem),
        _broker: broker,
        _gw: gw,
        nginx,
        squid,
        ca_file,
        _dir: dir,
    }
}

impl Path {
    /// The agent config: through squid with `proxy_userinfo`, TLS to nginx by IP with SNI and
    /// Host overridden to the certificate's name, the CA file and `pins`.
    fn agent_config(&self, proxy_userinfo: &str, pins: &[&str]) -> String {
        let url = format!("wss://127.0.0.1:{}/tunnel/mqtt", self.nginx.addr.port());
        let pins: Vec<String> = pins.iter().map(|p| format!("{p:?}")).collect();
        agent_support::config(
            &url,
            &format!("sni = \"{GW}\"\nhost = \"{GW}\""),
            &format!(
                "[proxy]\nurl = \"http://{proxy_userinfo}@{}\"\nfrom_env = false\n[tls]\nca_file = {}\npins = [{}]\n[device]\ntoken = \"device-token-1\"\n",
                self.squid.addr,
                toml_path(&self.ca_file),
                pins.join(", ")
            ),
        )
    }
}

#[tokio::test]
async fn mosquitto_clients_deliver_qos1_through_agent_proxy_nginx_gateway() {
    let p = path().await;
    let userinfo = format!("alice:{PROXY_PASS_ENCODED}");
    // The right pin among others (rotation): the key pin and the CA both have to pass.
    let other = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let mut agent = TestAgent::start(&p.agent_config(&userinfo, &[other, &p.pin])).await;

    let sub = Sub::spawn(agent.addr(), "agent-sub", "plant/+/temp");
    sub.wait_for("received SUBACK", 1, Duration::from_secs(20))
        .await;
    for i in 1..=3 {
        // mosquitto_pub exits 0 only after the broker's PUBACK came back through the path.
        publish(
            agent.addr(),
            &format!("agent-pub-{i}"),
            "plant/7/temp",
            &format!("t={i}"),
        )
        .await;
    }
    sub.wait_for("plant/7/temp t=", 3, Duration::from_secs(20))
        .await;
    for i in 1..=3 {
        assert_eq!(
            sub.count(&format!("plant/7/temp t={i}")),
            1,
            "{:?}",
            sub.lines()
        );
    }
    drop(sub);

    // The tunnels really went through squid, authenticated as alice (decoded password), to nginx.
    let target = format!("CONNECT 127.0.0.1:{}", p.nginx.addr.port());
    let line = p
        .squid
        .wait_for_log(&[&target, "alice", "TCP_TUNNEL/200"])
        .await;
    assert!(line.contains("alice"), "{line}");
    let s = agent.status();
    assert!(s.tunnels_opened >= 4, "{s:?}");
    assert_eq!(s.dial_failures, 0, "{s:?}");
    assert!(s.bytes_to_gateway > 0 && s.bytes_from_gateway > 0, "{s:?}");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_wrong_pin_refuses_the_gateway_and_names_the_key_it_saw() {
    let p = path().await;
    let wrong = "sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let mut agent =
        TestAgent::start(&p.agent_config(&format!("alice:{PROXY_PASS_ENCODED}"), &[wrong])).await;

    // The legacy client gets no broker: its publish fails and the agent closes it.
    let asked = std::time::Instant::now();
    let out = try_publish(agent.addr(), "pinned-out", "t", "x").await;
    assert!(!out.status.success());
    // At once, not after the open timeout: a wrong key does not fix itself.
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    let s = agent.status();
    let (_, err) = s.last_error.expect("an error was recorded");
    assert!(err.contains("matches none of tls.pins"), "{err}");
    assert!(
        err.contains(&p.pin),
        "the key the agent saw is named: {err}"
    );
    // nginx saw the agent abort the handshake with rustls's alert for a refused key
    // (access_denied): the handshake never finished, so no request could have been sent.
    let aborted = support::eventually(Duration::from_secs(10), || {
        p.nginx.error_log().contains("alert access denied")
    })
    .await;
    assert!(aborted, "{}", p.nginx.error_log());
    agent.shutdown().await;

    // And --check says the same, at the tls step, naming the key.
    let report = check(&agent_support::parse(
        &p.agent_config(&format!("alice:{PROXY_PASS_ENCODED}"), &[wrong]),
    ))
    .await;
    let failure = report.failure().expect("check fails");
    assert_eq!(failure.step, Step::Tls);
    match &failure.failure {
        Failure::PinMismatch { seen: Some(seen) } => assert_eq!(seen.to_string(), p.pin),
        other => panic!("{other:?}: {report}"),
    }
}

#[tokio::test]
async fn check_passes_on_the_whole_path_and_says_how() {
    let p = path().await;
    let config =
        agent_support::parse(&p.agent_config(&format!("alice:{PROXY_PASS_ENCODED}"), &[&p.pin]));
    let report = check(&config).await;
    assert!(report.ok(), "{report}");
    let text = report.to_string();
    for expected in [
        "via proxy http://alice:***@127.0.0.1:",
        "CONNECT 127.0.0.1:",
        &format!("with {GW}, trusted by CA file"),
        &p.pin,
        "101 Switching Protocols on /tunnel/mqtt",
        "frames pass both ways",
        "=> ok",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(!text.contains(PROXY_PASS), "{text}");
}
