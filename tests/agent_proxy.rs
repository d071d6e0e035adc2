//! The agent through a real squid: Basic auth right and wrong, a proxy's port policy, and the
//! environment (`HTTPS_PROXY`, `NO_PROXY`) read by the real `portcullis agent` binary.

mod support;

use std::process::Command;
use std::time::Duration;

use portcullis::agent::{check, Failure, Step};
use support::agent::{self as agent_support, tls_gateway, TestAgent, GW};
use support::echo_server;
use support::raw_mqtt::{End, RawClient, Recv};
use support::squid::{Squid, SquidOptions};

fn proxy_section(squid: &Squid, user: Option<(&str, &str)>) -> String {
    let creds = user.map_or(String::new(), |(u, p)| {
        format!("username = \"{u}\"\npassword = \"{p}\"\n")
    });
    format!(
        "[proxy]\nurl = \"{}\"\nfrom_env = false\n{creds}",
        squid.url()
    )
}

#[tokio::test]
async fn basic_auth_right_credentials_pass_wrong_and_missing_ones_are_407() {
    let g = tls_gateway(&[("echo", echo_server().await)]).await;
    let squid = Squid::spawn(SquidOptions {
        auth: Some(("alice", "s3cret:#1")),
        ..Default::default()
    })
    .await;

    let right = g.config("echo", &proxy_section(&squid, Some(("alice", "s3cret:#1"))));
    let report = check(&agent_support::parse(&right)).await;
    assert!(report.ok(), "{report}");

    let wrong = g.config("echo", &proxy_section(&squid, Some(("alice", "nope"))));
    let report = check(&agent_support::parse(&wrong)).await;
    let e = report.failure().expect("wrong credentials fail");
    assert_eq!(e.step, Step::Proxy, "{report}");
    assert_eq!(
        e.failure,
        Failure::ProxyAuth {
            status: 407,
            sent: true
        }
    );
    assert!(
        e.message.starts_with("proxy authentication failed (407)"),
        "{e}"
    );

    let missing = g.config("echo", &proxy_section(&squid, None));
    let report = check(&agent_support::parse(&missing)).await;
    let e = report.failure().expect("missing credentials fail");
    assert_eq!(
        e.failure,
        Failure::ProxyAuth {
            status: 407,
            sent: false
        }
    );
    assert!(
        e.message.contains("proxy authentication required (407)"),
        "{e}"
    );

    // The running agent: the local client is closed (not left hanging) and the reason is kept.
    let mut agent = TestAgent::start(&wrong).await;
    let mut client = RawClient::tcp(agent.addr(), portcullis::mqtt::wire::Version::V311).await;
    client.send_ok(b"hello").await;
    let asked = std::time::Instant::now();
    match client.recv_within(Duration::from_secs(20)).await {
        Some(Recv::Ended(End::Eof)) => {}
        other => panic!("expected the agent to close the local client, got {other:?}"),
    }
    // At once: wrong credentials are not worth keeping the client for the open timeout (15 s).
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    let s = agent.status();
    assert!(s.dial_failures >= 1 && s.local_refused == 1, "{s:?}");
    let (_, last) = s.last_error.expect("last error");
    assert!(last.contains("proxy authentication failed (407)"), "{last}");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_proxy_that_forbids_the_port_is_a_403_refusal_not_an_auth_failure() {
    let g = tls_gateway(&[("echo", echo_server().await)]).await;
    // A proxy without auth that allows the port: the path works.
    let open = Squid::spawn(SquidOptions::default()).await;
    let report = check(&agent_support::parse(
        &g.config("echo", &proxy_section(&open, None)),
    ))
    .await;
    assert!(report.ok(), "{report}");
    open.wait_for_log(&["TCP_TUNNEL/200", "CONNECT 127.0.0.1:"])
        .await;

    let squid = Squid::spawn(SquidOptions {
        only_port_443: true,
        ..Default::default()
    })
    .await;
    let report = check(&agent_support::parse(
        &g.config("echo", &proxy_section(&squid, None)),
    ))
    .await;
    let e = report.failure().expect("refused");
    assert_eq!(e.step, Step::Proxy);
    assert_eq!(e.failure, Failure::ProxyRefused { status: 403 });
    assert!(e.message.contains("forbid this destination or port"), "{e}");
}

/// `portcullis agent --config <file> --check` with exactly `env` as proxy environment. Off the
/// test's runtime thread: the gateway it checks runs on that thread.
async fn run_check(config: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["agent", "--check", "--config"]).arg(&file);
    for var in [
        "https_proxy",
        "HTTPS_PROXY",
        "http_proxy",
        "HTTP_PROXY",
        "no_proxy",
        "NO_PROXY",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run portcullis"))
        .await
        .expect("join");
    drop(dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_binary_takes_https_proxy_from_the_environment_and_no_proxy_bypasses_it() {
    let g = tls_gateway(&[("echo", echo_server().await)]).await;
    let squid = Squid::spawn(SquidOptions {
        auth: Some(("alice", "p@ss:w#rd")),
        ..Default::default()
    })
    .await;
    // No [proxy] section: the environment decides.
    let config = agent_support::config(&g.url("echo"), &format!("sni = \"{GW}\""), &g.trust)
        .replace("[proxy]\nfrom_env = false\n", "");
    assert!(!config.contains("[proxy]"));

    // HTTPS_PROXY with percent-encoded credentials ('@', ':' and '#' in the password).
    let via = format!("http://alice:p%40ss%3Aw%23rd@{}", squid.addr);
    let (ok, out) = run_check(&config, &[("HTTPS_PROXY", &via)]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "via proxy http://alice:***@{} (from HTTPS_PROXY)",
            squid.addr
        )),
        "{out}"
    );
    let gw_port = g.gw.addr().port();
    squid
        .wait_for_log(&[
            &format!("CONNECT 127.0.0.1:{gw_port}"),
            "alice",
            "TCP_TUNNEL/200",
        ])
        .await;

    // A proxy that is not there: every connection fails at the proxy...
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let (ok, out) = run_check(&config, &[("https_proxy", &dead)]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  connect") && out.contains("the proxy"),
        "{out}"
    );
    // ...unless NO_PROXY names the gateway.
    let (ok, out) = run_check(
        &config,
        &[
            ("https_proxy", &dead),
            ("NO_PROXY", "localhost,127.0.0.0/8"),
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("direct (127.0.0.1 matches 127.0.0.0/8 in NO_PROXY)"),
        "{out}"
    );
    assert!(out.contains("--    proxy     not used"), "{out}");
}
