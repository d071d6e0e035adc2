use super::*;

const MINIMAL: &str = r#"
[[listener]]
bind = "127.0.0.1:0"

[routes.mqtt]
upstreams = ["127.0.0.1:1883"]
"#;

fn err(text: &str) -> String {
    Config::parse(text, None).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = Config::parse(MINIMAL, None).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.kind, ListenerKind::Websocket);
    assert_eq!(l.proxy_protocol, ProxyProtocolMode::Off);
    assert!(
        l.trusted_proxies.is_empty(),
        "no client-IP header is believed by default"
    );
    assert!(!l.accept_unmasked_frames);
    assert_eq!(l.mqtt_route(), "mqtt");
    assert_eq!(c.websocket.ping_interval_secs, 25);
    assert_eq!(c.websocket.max_frame_size, 65536);
    assert_eq!(c.routes["mqtt"].balance, Balance::Consistent);
}

#[test]
fn unknown_key_is_refused_with_its_name_and_line() {
    let e = err(&format!(
        "{MINIMAL}\n[websocket]\nping_intervall_secs = 3\n"
    ));
    assert!(e.contains("ping_intervall_secs"), "{e}");
    assert!(e.contains("line 9"), "{e}");
}

#[test]
fn wrong_type_names_the_key() {
    let e = err("[[listener]]\nbind = \"127.0.0.1:0\"\nmax_connections = \"many\"\n");
    assert!(e.contains("max_connections"), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn semantic_errors_name_key_and_line() {
    let text = "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[routes.mqtt]\nupstreams = [\"nohost\"]\n";
    let e = err(text);
    assert!(e.starts_with("routes.mqtt.upstreams[0] (line 5)"), "{e}");
    assert!(e.contains("not host:port"), "{e}");
}

#[test]
fn proxy_protocol_needs_trusted_senders() {
    let e = err(&MINIMAL.replace(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\nproxy_protocol = \"v2\"",
    ));
    assert!(e.starts_with("listener[0].proxy_protocol_from"), "{e}");
}

#[test]
fn mqtt_listener_needs_a_route() {
    let e = err("[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"mqtt\"\n");
    assert!(e.starts_with("listener[0].kind (line 3)"), "{e}");
    let e = err(&MINIMAL.replace(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\nmqtt_route = \"broker\"",
    ));
    assert!(e.contains("no route named \"broker\""), "{e}");
}

#[test]
fn bad_values_are_refused() {
    let cases = [
        (
            "[websocket]\nmax_frame_size = 1",
            "websocket.max_frame_size",
        ),
        (
            "[websocket]\nmax_message_size = 1024",
            "websocket.max_message_size",
        ),
        (
            "[websocket]\nping_interval_secs = 0",
            "websocket.ping_interval_secs",
        ),
        (
            "[shutdown]\ndrain_window_secs = 60",
            "shutdown.drain_timeout_secs",
        ),
        ("[routes.\"a b\"]\nupstreams = [\"h:1\"]", "routes.a b"),
        ("[routes.x]\nupstreams = []", "routes.x.upstreams"),
    ];
    for (extra, key) in cases {
        let e = err(&format!("{MINIMAL}\n{extra}\n"));
        assert!(e.starts_with(key), "{extra:?} gave {e}");
    }
}

#[test]
fn missing_certificate_file_is_named() {
    let text = MINIMAL.replace(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\ntls = { certificates = [{ cert = \"/nonexistent.pem\", key = \"/k.pem\" }] }",
    );
    let e = err(&text);
    assert!(e.starts_with("listener[0].tls.certificates[0].cert"), "{e}");
    assert!(e.contains("/nonexistent.pem"), "{e}");
}

#[test]
fn duplicate_bind_is_refused() {
    let text = format!("{MINIMAL}\n[[listener]]\nbind = \"127.0.0.1:0\"\n").replace(":0", ":8883");
    let e = err(&text);
    assert!(e.starts_with("listener[1].bind"), "{e}");
}

#[test]
fn probe_and_store_settings_are_checked_by_key() {
    for (setting, key) in [
        ("max_message_size = 0", "probe.max_message_size"),
        ("max_body_size = 0", "probe.max_body_size"),
        ("sessions_per_minute = 0", "probe.sessions_per_minute"),
        ("max_sessions = 100000", "probe.max_sessions"),
        ("max_session_secs = 0", "probe.max_session_secs"),
    ] {
        let e = err(&format!("{MINIMAL}\n[probe]\n{setting}\n"));
        assert!(e.starts_with(key), "{setting}: {e}");
    }
    let e = err(&format!("{MINIMAL}\n[store]\ndirectory = \"/x\"\n"));
    assert!(e.contains("directory"), "{e}");
    // Relative store paths resolve against the config's folder, like every other file.
    let text = format!("{MINIMAL}\n[store]\ndir = \"state\"\nbootstrap_file = \"bans.csv\"\n");
    let c = Config::parse(&text, Some(std::path::Path::new("/etc/portcullis"))).unwrap();
    let store = c.store.unwrap();
    assert_eq!(store.dir, std::path::Path::new("/etc/portcullis/state"));
    assert_eq!(
        store.bootstrap_file.unwrap(),
        std::path::Path::new("/etc/portcullis/bans.csv")
    );
}

#[test]
fn push_settings_are_checked_with_the_key_named() {
    let base = format!(
        "{MINIMAL}\n[routes.collectors]\nupstreams = [\"127.0.0.1:8080\"]\nprotocol = \"http\"\n"
    );
    let ok = Config::parse(&format!("{base}\n[push]\nroute = \"collectors\"\n"), None).unwrap();
    let p = ok.push.expect("push");
    assert_eq!(p.idempotency_header, "Idempotency-Key");
    assert!(p.require_idempotency_key);
    assert_eq!(
        (p.retention_secs, p.lease_secs, p.discard_status),
        (86_400, 60, 202)
    );
    for (push, key) in [
        ("route = \"nowhere\"", "push.route"),
        ("route = \"mqtt\"", "push.route"),
        ("route = \"collectors\"\ncheckin_route = \"mqtt\"", "push.checkin_route"),
        ("route = \"collectors\"\nidempotency_header = \"bad header\"", "push.idempotency_header"),
        ("route = \"collectors\"\nmax_body_size = 0", "push.max_body_size"),
        ("route = \"collectors\"\nlease_secs = 5\ncollector_timeout_secs = 30", "push.lease_secs"),
        ("route = \"collectors\"\ndiscard_status = 403", "push.discard_status"),
        ("route = \"collectors\"\n[[push.redirect]]\nto = [\"https://x.example\"]", "push.redirect[0].serials"),
        ("route = \"collectors\"\n[[push.redirect]]\nserials = \"(\"\nto = [\"https://x.example\"]", "push.redirect[0].serials"),
        ("route = \"collectors\"\n[[push.redirect]]\ncustomer = \"acme\"\nto = [\"https://x.example\"]", "push.redirect[0].customer"),
        ("route = \"collectors\"\n[[push.redirect]]\nserials = \"^A\"\nto = [\"ftp://x\"]", "push.redirect[0].to[0]"),
        ("route = \"collectors\"\n[[push.redirect]]\nserials = \"^A\"\nto = []", "push.redirect[0].to"),
        ("route = \"collectors\"\n[push.customers]\nacme = [\"[\"]", "push.customers.acme[0]"),
        ("route = \"collectors\"\nunknown_key = 1", "unknown_key"),
    ] {
        let e = err(&format!("{base}\n[push]\n{push}\n"));
        assert!(e.contains(key), "{push}: {e}");
    }
}

#[test]
fn auth_settings_are_checked_key_by_key() {
    let token_listener = "[[listener]]\nbind = \"127.0.0.1:0\"\nauth = \"token\"\n[routes.mqtt]\nupstreams = [\"127.0.0.1:1883\"]\n";
    let e = err(token_listener);
    assert!(
        e.contains("listener[0].auth") && e.contains("[[auth.key]]"),
        "{e}"
    );
    let e = err(&format!(
        "{token_listener}[[auth.key]]\nalg = \"HS256\"\nsecret = \"short\"\n"
    ));
    assert!(
        e.contains("auth.key[0].secret") && e.contains("32 bytes"),
        "{e}"
    );
    let e = err(&format!(
        "{token_listener}[[auth.key]]\nalg = \"EdDSA\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n"
    ));
    assert!(e.contains("auth.key[0].secret"), "{e}");
    let e = err(&format!("{token_listener}[[auth.key]]\nalg = \"EdDSA\"\n"));
    assert!(e.contains("auth.key[0].public_key"), "{e}");
    let e = err(&format!("{token_listener}[[auth.key]]\nalg = \"RS256\"\n"));
    assert!(e.contains("RS256"), "{e}");
    let ok = format!(
        "{token_listener}[[auth.key]]\nalg = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n"
    );
    let c = Config::parse(&ok, None).unwrap();
    assert!(
        !format!("{c:?}").contains("0123456789abcdef"),
        "secrets are redacted"
    );

    // Certificates need a way in: our client_ca, or a trusted proxy's forward.
    let e = err(&format!(
        "{MINIMAL}[routes.meters]\nupstreams = [\"127.0.0.1:502\"]\nauth = \"mtls\"\n"
    ));
    assert!(
        e.contains("listener[0].auth") && e.contains("client_ca"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[auth]\nforwarded_cert_header = \"x-client-cert\"\n"
    ));
    assert!(e.contains("auth.forwarded_cert_ca"), "{e}");

    // A raw MQTT listener carries no header for a token.
    let e = err(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"mqtt\"\nauth = \"token\"\n[routes.mqtt]\nupstreams = [\"127.0.0.1:1883\"]\n[[auth.key]]\nalg = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
    );
    assert!(e.contains("raw MQTT listener"), "{e}");
}

#[test]
fn the_admin_monitor_interval_is_checked_and_the_dashboard_is_on_by_default() {
    let admin = "[admin]\ntokens_file = \"tokens\"\n";
    let c = Config::parse(&format!("{MINIMAL}\n{admin}"), None).unwrap();
    let a = c.admin.unwrap();
    assert!(a.dashboard);
    assert_eq!(a.monitor_interval_secs, 10);
    for bad in [0, 61] {
        let e = err(&format!(
            "{MINIMAL}\n{admin}monitor_interval_secs = {bad}\n"
        ));
        assert!(e.contains("admin.monitor_interval_secs"), "{e}");
    }
}

#[test]
fn a_reload_names_the_admin_keys_that_need_a_restart() {
    let parse = |extra: &str| {
        let text = format!("{MINIMAL}\n[admin]\ntokens_file = \"tokens\"\n{extra}");
        Config::parse(&text, None).unwrap().admin.unwrap()
    };
    let running = parse("");
    assert!(parse("").changed_needing_restart(&running).is_empty());
    let wanted = parse("bind = \"127.0.0.1:9191\"\ndashboard = false\nmonitor_interval_secs = 5\n");
    assert_eq!(
        wanted.changed_needing_restart(&running),
        ["bind", "dashboard", "monitor_interval_secs"]
    );
    let other_tokens = Config::parse(
        &format!("{MINIMAL}\n[admin]\ntokens_file = \"other\"\n"),
        None,
    )
    .unwrap()
    .admin
    .unwrap();
    assert!(
        other_tokens.changed_needing_restart(&running).is_empty(),
        "the tokens file is reloaded, not a restart"
    );
}
