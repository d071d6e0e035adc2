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
