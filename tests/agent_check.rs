//! `portcullis agent --check`: every way the path can break is reported at its own step, as its
//! own kind of failure, with a sentence that says what to change; and the binary's exit code.

mod support;

use std::process::Command;

use portcullis::agent::{check, CheckReport, Failure, Step};
use support::agent::{self as agent_support, pin_of_pem, tls_gateway, GW};
use support::squid::{Squid, SquidOptions};
use support::{echo_server, free_port};

async fn report(config: &str) -> CheckReport {
    check(&agent_support::parse(config)).await
}

/// The failing step and kind, asserting the message contains `words`.
async fn failing(config: &str, words: &str) -> (Step, Failure) {
    let r = report(config).await;
    let e = r
        .failure()
        .unwrap_or_else(|| panic!("expected a failure:\n{r}"));
    assert!(e.message.contains(words), "{words:?} not in:\n{r}");
    // What was not reached is said so; what worked before is listed.
    let text = r.to_string();
    assert!(text.contains(&format!("=> FAILED at {}", e.step)), "{text}");
    (e.step, e.failure.clone())
}

#[tokio::test]
async fn each_broken_hop_is_reported_at_its_own_step() {
    let g = tls_gateway(&[
        ("echo", echo_server().await),
        ("dead", ([127, 0, 0, 1], free_port()).into()),
    ])
    .await;
    let squid_auth = Squid::spawn(SquidOptions {
        auth: Some(("alice", "right")),
        ..Default::default()
    })
    .await;
    let squid_443 = Squid::spawn(SquidOptions {
        only_port_443: true,
        ..Default::default()
    })
    .await;
    let proxy =
        |url: &str, user: &str| format!("[proxy]\nurl = \"{url}\"\nfrom_env = false\n{user}");
    let dead_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let plain_gw =
        support::TestGateway::start(&support::ws::config("", &[("echo", echo_server().await)]))
            .await;

    let mut seen = Vec::new();
    // 1. The proxy is not there.
    seen.push(
        failing(
            &g.config("echo", &proxy(&format!("http://127.0.0.1:{dead_port}"), "")),
            &format!("the proxy 127.0.0.1:{dead_port}"),
        )
        .await,
    );
    // 2. The proxy wants other credentials.
    seen.push(
        failing(
            &g.config(
                "echo",
                &proxy(
                    &squid_auth.url(),
                    "username = \"alice\"\npassword = \"wrong\"\n",
                ),
            ),
            "proxy authentication failed (407)",
        )
        .await,
    );
    // 3. The proxy forbids the port.
    seen.push(
        failing(
            &g.config("echo", &proxy(&squid_443.url(), "")),
            "the proxy refused CONNECT: 403",
        )
        .await,
    );
    // 4. Direct, and the gateway is not there.
    seen.push(
        failing(
            &agent_support::config(&format!("wss://127.0.0.1:{dead_port}/tunnel/echo"), "", ""),
            "the gateway 127.0.0.1",
        )
        .await,
    );
    // 5. A certificate from a CA the device does not trust (it trusts another private CA)...
    let stranger =
        rcgen::generate_simple_self_signed(vec!["stranger-ca.test".to_string()]).unwrap();
    let stranger_ca = dir.path().join("stranger-ca.pem");
    std::fs::write(&stranger_ca, stranger.cert.pem()).unwrap();
    seen.push(
        failing(
            &agent_support::config(
                &g.url("echo"),
                &format!("sni = \"{GW}\""),
                &format!(
                    "[tls]\nca_file = {}\n",
                    support::ws::toml_path(&stranger_ca)
                ),
            ),
            "not signed by a CA trusted here (CA file",
        )
        .await,
    );
    // ...or a CA of the same name that did not sign it (a re-generated CA).
    let twin_ca = dir.path().join("twin-ca.pem");
    std::fs::write(&twin_ca, support::certs::Ca::new().pem).unwrap();
    seen.push(
        failing(
            &agent_support::config(
                &g.url("echo"),
                &format!("sni = \"{GW}\""),
                &format!("[tls]\nca_file = {}\n", support::ws::toml_path(&twin_ca)),
            ),
            "another CA with the same name",
        )
        .await,
    );
    // 6. The right CA, the wrong name.
    seen.push(
        failing(
            &agent_support::config(&g.url("echo"), "sni = \"other.example.test\"", &g.trust),
            "not valid for \"other.example.test\"",
        )
        .await,
    );
    // 7. A key pin that does not match (the CA would have been fine).
    let pins = "pins = [\"sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"]\n";
    seen.push(
        failing(
            &g.config("echo", pins),
            &format!(
                "the server's key {} matches none of tls.pins",
                pin_of_pem(&g.leaf_pem)
            ),
        )
        .await,
    );
    // 8. wss:// to a port that speaks plain HTTP.
    seen.push(
        failing(
            &agent_support::config(&format!("wss://{}/tunnel/echo", plain_gw.addr()), "", ""),
            "did not answer in TLS",
        )
        .await,
    );
    // 9. A route the gateway does not have.
    seen.push(failing(&g.config("nope", ""), "HTTP 404").await);
    // 10. The route exists but its upstream is down: the gateway closes right after 101.
    seen.push(
        failing(
            &g.config("dead", ""),
            "closed the tunnel right after the upgrade",
        )
        .await,
    );

    let expected = [
        (Step::Connect, Failure::Unreachable),
        (
            Step::Proxy,
            Failure::ProxyAuth {
                status: 407,
                sent: true,
            },
        ),
        (Step::Proxy, Failure::ProxyRefused { status: 403 }),
        (Step::Connect, Failure::Unreachable),
        (Step::Tls, Failure::Untrusted),
        (Step::Tls, Failure::Untrusted),
        (Step::Tls, Failure::Untrusted),
        (Step::Tls, Failure::PinMismatch { seen: None }),
        (Step::Tls, Failure::TlsFailed),
        (Step::Upgrade, Failure::Status { status: 404 }),
        (Step::Ping, Failure::Protocol),
    ];
    for (i, ((step, failure), (want_step, want))) in seen.iter().zip(&expected).enumerate() {
        assert_eq!(step, want_step, "case {}", i + 1);
        match (failure, want) {
            (Failure::PinMismatch { seen }, Failure::PinMismatch { .. }) => {
                assert_eq!(seen.map(|p| p.to_string()), Some(pin_of_pem(&g.leaf_pem)));
            }
            _ => assert_eq!(failure, want, "case {}", i + 1),
        }
    }

    // And the healthy path, for contrast.
    let ok = report(&g.config("echo", "")).await;
    assert!(ok.ok(), "{ok}");
}

#[tokio::test]
async fn the_binary_exits_non_zero_when_a_step_fails() {
    let g = tls_gateway(&[("echo", echo_server().await)]).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, config: String| {
        let file = dir.path().join(name);
        std::fs::write(&file, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(["agent", "--check", "-c"]).arg(&file);
        cmd.env_remove("RUST_LOG");
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
                .await
                .expect("join");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, stdout, _) = run("ok.toml", g.config("echo", "")).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("=> ok: this tunnel works end to end"),
        "{stdout}"
    );

    let (code, stdout, _) = run("route.toml", g.config("nope", "")).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  upgrade   HTTP 404"), "{stdout}");
    assert!(stdout.contains("skip  ping      not reached"), "{stdout}");

    let (code, _, stderr) = run(
        "bad.toml",
        g.config("echo", "[keepalive]\nping_interval_secs = 0\n"),
    )
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("keepalive.ping_interval_secs"), "{stderr}");
}
