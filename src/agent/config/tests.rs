//! Unit tests of the agent's config: defaults, redaction, errors that name the key.

use super::*;
use crate::agent::target::GatewayUrl;

const MINIMAL: &str =
    "[[tunnel]]\nlisten = \"127.0.0.1:1883\"\nurl = \"wss://gw.example.com/tunnel/mqtt\"\n";

fn err(text: &str) -> String {
    AgentConfig::parse(text, None).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = AgentConfig::parse(MINIMAL, None).unwrap();
    assert_eq!(c.keepalive.ping_interval_secs, 25);
    assert_eq!(c.keepalive.max_missed_pongs, 2);
    assert_eq!(c.reconnect.min_delay_ms, 1000);
    assert_eq!(c.device.token_header, "authorization");
    assert!(c.device.user_agent.starts_with("portcullis-agent/"));
    assert!(c.proxy.from_env);
    let u = GatewayUrl::parse(&c.tunnels[0].url).unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.tls),
        ("gw.example.com", 443, true)
    );
}

#[test]
fn the_shipped_example_is_valid() {
    let c = AgentConfig::parse(include_str!("../../../profiles/agent.toml"), None).unwrap();
    assert_eq!(c.tunnels[0].listen, "127.0.0.1:1883".parse().unwrap());
    assert_eq!(c.keepalive.ping_interval_secs, 25);
}

#[test]
fn secrets_never_print() {
    let text = format!(
        "{MINIMAL}[device]\ntoken = \"tok-123\"\n[proxy]\nurl = \"http://p:3128\"\nusername = \"u\"\npassword = \"pw-456\"\n"
    );
    let c = AgentConfig::parse(&text, None).unwrap();
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("tok-123") && !shown.contains("pw-456"),
        "{shown}"
    );
    assert_eq!(c.device.token.unwrap().expose(), "tok-123");
}

#[test]
fn errors_name_the_key() {
    assert!(
        err("[[tunnel]]\nlisten = \"127.0.0.1:1\"\nurl = \"https://gw/tunnel/x\"\n")
            .starts_with("tunnel[0].url (line 3)")
    );
    assert!(
        err("[[tunnel]]\nlisten = \"127.0.0.1:1\"\nurl = \"wss://u:p@gw/tunnel/x\"\n")
            .contains("no credentials in the URL")
    );
    assert!(
        err("[[tunnel]]\nlisten = \"127.0.0.1:1\"\nurl = \"wss://gw/tunnel/x?token=1\"\n")
            .contains("no query string")
    );
    assert!(err(&format!("{MINIMAL}[reconnect]\nmin_delay_ms = 100\n"))
        .starts_with("reconnect.min_delay_ms (line 5)"));
    assert!(err(&format!("{MINIMAL}[tls]\npins = [\"md5//abc\"]\n")).starts_with("tls.pins[0]"));
    assert!(err(&format!("{MINIMAL}[device.headers]\nHost = \"x\"\n"))
        .starts_with("device.headers.Host"));
    assert!(
        err(&format!("{MINIMAL}[keepalive]\nping_interval_secs = 120\n")).contains("Cloudflare")
    );
    assert!(
        err(&format!("{MINIMAL}[tls]\nclient_cert = \"c.pem\"\n")).starts_with("tls.client_key")
    );
    assert!(err(&format!("{MINIMAL}bogus = 1\n")).contains("unknown field"));
    assert!(err("status_interval_secs = 5\n").contains("tunnel"));
}
