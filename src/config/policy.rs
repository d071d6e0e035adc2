//! `[policy]` and `[mqtt]`: the per-device rules, as data.
//!
//! Rates are "per second" with a burst; the connect limits that EMQX and AWS IoT document
//! (15 per minute per client, a handful per second per IP) are the defaults.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Devices matched by no rule: "admit" (default class) or "refuse" (CONNACK not authorized).
    #[serde(default)]
    pub unknown_devices: UnknownDevices,
    /// The class unmatched devices get when admitted.
    #[serde(default = "defaults::default_class")]
    pub default_class: String,
    #[serde(default = "defaults::classes")]
    pub classes: BTreeMap<String, DeviceClass>,
    /// Exact client ID → class name (per-device overrides).
    #[serde(default)]
    pub devices: BTreeMap<String, String>,
    /// Client ID prefix → class name, checked in order after `devices`.
    #[serde(default)]
    pub device_prefixes: Vec<PrefixRule>,
    /// What a late publish (Δ > T + E) gets: "discard" (the rule) or "forward".
    #[serde(default)]
    pub late: LateAction,
    /// MQTT 5 reason code on the local PUBACK/PUBREC of a discarded publish.
    #[serde(default)]
    pub discard_reason: DiscardReasonCode,
    #[serde(default)]
    pub connects: ConnectLimits,
    #[serde(default)]
    pub strikes: StrikeRules,
    #[serde(default)]
    pub storm: StormRules,
    /// Regex bans (`clientid_re`, `username_re`) that may exist at once: each is matched on
    /// every CONNECT (in one set), so their number is kept small.
    #[serde(default = "defaults::max_regex_bans")]
    pub max_regex_bans: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            unknown_devices: UnknownDevices::default(),
            default_class: defaults::default_class(),
            classes: defaults::classes(),
            devices: BTreeMap::new(),
            device_prefixes: Vec::new(),
            late: LateAction::default(),
            discard_reason: DiscardReasonCode::default(),
            connects: ConnectLimits::default(),
            strikes: StrikeRules::default(),
            storm: StormRules::default(),
            max_regex_bans: defaults::max_regex_bans(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownDevices {
    #[default]
    Admit,
    Refuse,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateAction {
    #[default]
    Discard,
    Forward,
}

/// 0x00 success, or 0x10 "no matching subscribers" (also success-class for clients).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscardReasonCode {
    #[default]
    Success,
    NoMatchingSubscribers,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRule {
    pub prefix: String,
    pub class: String,
}

/// How a kind of device is expected to behave.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceClass {
    /// T: the push interval. Absent: no rhythm check for this class.
    #[serde(default)]
    pub push_interval_secs: Option<f64>,
    /// E: the tolerance; in rhythm iff T - E <= Δ <= T + E.
    #[serde(default)]
    pub tolerance_secs: f64,
    /// MQTT topic filters the rhythm applies to; empty = every publish.
    #[serde(default)]
    pub rhythm_topics: Vec<String>,
    #[serde(default = "defaults::messages_per_sec")]
    pub messages_per_sec: u32,
    #[serde(default = "defaults::message_burst")]
    pub message_burst: u32,
    #[serde(default = "defaults::bytes_per_sec")]
    pub bytes_per_sec: u32,
    #[serde(default = "defaults::byte_burst")]
    pub byte_burst: u32,
    /// Concurrent connections per client ID.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// A CONNECT for a client ID whose `max_connections` are in use: `takeover` (the MQTT
    /// spec's behaviour: the oldest connection is closed, DISCONNECT 0x8E on MQTT 5) or
    /// `refuse` (CONNACK 0x97 / 0x03).
    #[serde(default)]
    pub on_duplicate: OnDuplicate,
    /// Topic filters a device of this class may publish to; `{clientid}` and `{username}`
    /// stand for its own (a whole level each). Empty: anywhere the broker allows. A publish
    /// outside is acknowledged, not forwarded (PUBACK/PUBREC 0x87 on MQTT 5), and a strike.
    #[serde(default)]
    pub publish_topics: Vec<String>,
    /// A publish outside `publish_topics`: `ack` (acknowledged, discarded, a strike) or
    /// `disconnect` (DISCONNECT 0x87 on MQTT 5, a close on 3.1.1).
    #[serde(default)]
    pub on_publish_denied: OnDenied,
    /// Topic filters a device of this class may subscribe to, with the same placeholders. A
    /// requested filter must lie wholly inside one of them (`#` only where one allows `#`).
    /// Empty: anything the broker allows. A filter outside gets SUBACK 0x87 (MQTT 5) / 0x80
    /// (3.1.1); the rest of the SUBSCRIBE goes on.
    #[serde(default)]
    pub subscribe_topics: Vec<String>,
}

/// What a publish outside a class's permissions does to the connection.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnDenied {
    /// Acknowledged and discarded (0x87 on MQTT 5), a strike: the connection stays.
    #[default]
    Ack,
    /// The connection is closed (DISCONNECT 0x87 first on MQTT 5).
    Disconnect,
}

/// What a CONNECT for a client ID already at its `max_connections` does.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnDuplicate {
    /// The new connection takes over: a device whose old connection died silently behind a
    /// NAT is back at once, not after the broker's keep-alive.
    #[default]
    Takeover,
    /// The new connection is refused while the old one lives.
    Refuse,
}

impl Default for DeviceClass {
    fn default() -> Self {
        DeviceClass {
            push_interval_secs: None,
            tolerance_secs: 0.0,
            rhythm_topics: Vec::new(),
            messages_per_sec: defaults::messages_per_sec(),
            message_burst: defaults::message_burst(),
            bytes_per_sec: defaults::bytes_per_sec(),
            byte_burst: defaults::byte_burst(),
            max_connections: defaults::max_connections(),
            on_duplicate: OnDuplicate::default(),
            publish_topics: Vec::new(),
            on_publish_denied: OnDenied::default(),
            subscribe_topics: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectLimits {
    /// Connection attempts per client IP (before TLS). NAT puts many devices behind one IP.
    #[serde(default = "defaults::per_ip_per_sec")]
    pub per_ip_per_sec: u32,
    #[serde(default = "defaults::per_ip_burst")]
    pub per_ip_burst: u32,
    /// CONNECTs per client ID per minute (flapping); EMQX's default is 15.
    #[serde(default = "defaults::per_client_per_minute")]
    pub per_client_per_minute: u32,
    /// Accepts per listener per second, whoever connects.
    #[serde(default = "defaults::per_listener_per_sec")]
    pub per_listener_per_sec: u32,
    #[serde(default = "defaults::per_listener_burst")]
    pub per_listener_burst: u32,
}

impl Default for ConnectLimits {
    fn default() -> Self {
        ConnectLimits {
            per_ip_per_sec: defaults::per_ip_per_sec(),
            per_ip_burst: defaults::per_ip_burst(),
            per_client_per_minute: defaults::per_client_per_minute(),
            per_listener_per_sec: defaults::per_listener_per_sec(),
            per_listener_burst: defaults::per_listener_burst(),
        }
    }
}

/// N strikes within W → ban for D, doubling on each repeat up to the cap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrikeRules {
    #[serde(default = "defaults::strike_threshold")]
    pub threshold: u32,
    #[serde(default = "defaults::strike_window_secs")]
    pub window_secs: u64,
    #[serde(default = "defaults::ban_secs")]
    pub ban_secs: u64,
    #[serde(default = "defaults::max_ban_secs")]
    pub max_ban_secs: u64,
    /// Ban a username once this many distinct client IDs under it were banned or struck out.
    #[serde(default = "defaults::username_min_client_ids")]
    pub username_min_client_ids: u32,
    /// Ban an IP once this many distinct client IDs from it were banned or struck out.
    #[serde(default = "defaults::ip_min_client_ids")]
    pub ip_min_client_ids: u32,
}

impl Default for StrikeRules {
    fn default() -> Self {
        StrikeRules {
            threshold: defaults::strike_threshold(),
            window_secs: defaults::strike_window_secs(),
            ban_secs: defaults::ban_secs(),
            max_ban_secs: defaults::max_ban_secs(),
            username_min_client_ids: defaults::username_min_client_ids(),
            ip_min_client_ids: defaults::ip_min_client_ids(),
        }
    }
}

/// A reconnect storm: this many distinct client IDs connecting within the window means a broker
/// or gateway restart, not abuse; connect-rate strikes are suspended for `hold_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormRules {
    #[serde(default = "defaults::storm_min_devices")]
    pub min_devices: u32,
    #[serde(default = "defaults::storm_window_secs")]
    pub window_secs: u64,
    #[serde(default = "defaults::storm_hold_secs")]
    pub hold_secs: u64,
}

impl Default for StormRules {
    fn default() -> Self {
        StormRules {
            min_devices: defaults::storm_min_devices(),
            window_secs: defaults::storm_window_secs(),
            hold_secs: defaults::storm_hold_secs(),
        }
    }
}

/// `[mqtt]`: limits of the MQTT-aware relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// No CONNECT within this → closed.
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// A device packet larger than this → DISCONNECT 0x95 (MQTT 5) / close.
    #[serde(default = "defaults::max_packet_size")]
    pub max_packet_size: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            connect_timeout_secs: defaults::connect_timeout_secs(),
            max_packet_size: defaults::max_packet_size(),
        }
    }
}

mod defaults {
    use super::DeviceClass;
    use std::collections::BTreeMap;

    pub fn max_regex_bans() -> usize {
        100
    }

    pub fn default_class() -> String {
        "default".into()
    }
    pub fn classes() -> BTreeMap<String, DeviceClass> {
        BTreeMap::from([(default_class(), DeviceClass::default())])
    }
    pub fn messages_per_sec() -> u32 {
        100
    }
    pub fn message_burst() -> u32 {
        200
    }
    pub fn bytes_per_sec() -> u32 {
        512 * 1024
    }
    pub fn byte_burst() -> u32 {
        1024 * 1024
    }
    pub fn max_connections() -> u32 {
        1
    }
    pub fn per_ip_per_sec() -> u32 {
        50
    }
    pub fn per_ip_burst() -> u32 {
        200
    }
    pub fn per_client_per_minute() -> u32 {
        15
    }
    pub fn per_listener_per_sec() -> u32 {
        2_000
    }
    pub fn per_listener_burst() -> u32 {
        4_000
    }
    pub fn strike_threshold() -> u32 {
        5
    }
    pub fn strike_window_secs() -> u64 {
        60
    }
    pub fn ban_secs() -> u64 {
        300
    }
    pub fn max_ban_secs() -> u64 {
        86_400
    }
    pub fn username_min_client_ids() -> u32 {
        3
    }
    pub fn ip_min_client_ids() -> u32 {
        5
    }
    pub fn storm_min_devices() -> u32 {
        50
    }
    pub fn storm_window_secs() -> u64 {
        10
    }
    pub fn storm_hold_secs() -> u64 {
        60
    }
    pub fn connect_timeout_secs() -> u64 {
        10
    }
    pub fn max_packet_size() -> usize {
        256 * 1024
    }
}
