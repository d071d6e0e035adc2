//! The demo gateway's config: one WebSocket listener, two routes, and a `[policy]` that lets the
//! well-behaved devices through and bans the abusers within seconds. The numbers are here once,
//! shared with the banner and the abusers' own pacing, so what the demo prints is what it runs.

use std::net::SocketAddr;

use super::device;

/// The `sensor` class's tolerance E: a reading every 1 s ± this is in rhythm.
pub const TOLERANCE_SECS: f64 = 0.3;
/// The `gadget` class's message rate limit (per second) and burst.
pub const MESSAGES_PER_SEC: u32 = 5;
pub const MESSAGE_BURST: u32 = 10;
/// CONNECTs per client ID per minute before "reconnecting too fast".
pub const CONNECTS_PER_MINUTE: u32 = 5;
/// This many strikes within the window ban the device for `BAN_SECS`.
pub const STRIKES: u32 = 3;
pub const STRIKE_WINDOW_SECS: u64 = 30;
pub const BAN_SECS: u64 = 60;

/// `/mqtt` and `/tunnel/telemetry` both lead to the broker; only `/mqtt` is judged by the
/// policy (route `mqtt` carries MQTT by default, `telemetry` is an opaque tunnel). The
/// tunnel is for authenticated devices only: the agent presents a device token signed with
/// the key whose public half is `token_key_pem`.
pub fn gateway(broker: SocketAddr, token_key_pem: &str, admin_tokens: &std::path::Path) -> String {
    let period = device::PERIOD.as_secs_f64();
    // A TOML string, escaped: the temp dir's path is the system's choice.
    let admin = toml::Value::String(admin_tokens.to_string_lossy().into_owned());
    format!(
        r#"
[[listener]]
name = "demo"
bind = "127.0.0.1:0"

[routes.mqtt]
upstreams = ["{broker}"]

[routes.telemetry]
upstreams = ["{broker}"]
auth = "token"

# Device tokens the platform signs (EdDSA); the gateway holds only the public key.
[[auth.key]]
kid = "demo"
alg = "EdDSA"
public_key_pem = """
{token_key_pem}"""

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 3

# The admin API and the dashboard, on loopback; the demo makes a token for this run.
[admin]
bind = "127.0.0.1:0"
tokens_file = {admin}
monitor_interval_secs = 2

[policy]
# The demo knows its whole fleet: a client ID not listed below is refused.
unknown_devices = "refuse"
default_class = "sensor"

# A reading every second, give or take {TOLERANCE_SECS} s. Early readings are discarded and
# struck; late ones discarded (a device that was offline is not an abuser).
[policy.classes.sensor]
push_interval_secs = {period:.1}
tolerance_secs = {TOLERANCE_SECS}
rhythm_topics = ["plant/#"]

# No rhythm, but a message rate: over it, readings are discarded and struck.
[policy.classes.gadget]
messages_per_sec = {MESSAGES_PER_SEC}
message_burst = {MESSAGE_BURST}

# meter-4 is not here: its tunnel is opaque, the policy never sees its CONNECT.
[policy.devices]
boiler-1 = "sensor"
press-2 = "sensor"
pump-3 = "sensor"
chatty-5 = "sensor"
flood-6 = "gadget"
flapper-7 = "gadget"

[policy.connects]
per_client_per_minute = {CONNECTS_PER_MINUTE}

[policy.strikes]
threshold = {STRIKES}
window_secs = {STRIKE_WINDOW_SECS}
ban_secs = {BAN_SECS}
# Every demo device connects from 127.0.0.1: banning the address because several client IDs
# misbehaved from it would ban the well-behaved devices too.
ip_min_client_ids = 1000
"#
    )
}
