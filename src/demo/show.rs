//! What the demo prints besides the live lines: the banner, and the summary at the end.

use std::net::SocketAddr;
use std::time::Duration;

use super::abuser::ABUSERS;
use super::config::{BAN_SECS, STRIKES, STRIKE_WINDOW_SECS};
use super::{AbuserReport, SENSORS};
use crate::policy::StatsSnapshot;

pub fn banner(broker: SocketAddr, gateway: SocketAddr, duration: Duration) {
    let on = |path: &str| {
        let names: Vec<_> = SENSORS
            .iter()
            .filter(|s| s.path == path)
            .map(|s| s.device)
            .collect();
        names.join(", ")
    };
    println!("portcullis demo: a broker, the gateway and devices, all in this process.\n");
    println!("  broker    {broker}  (rumqttd, embedded; MQTT 3.1.1 over TCP)");
    println!("  gateway   ws://{gateway}  (portcullis, one WebSocket listener)");
    println!("              GET /mqtt              subprotocol mqtt  -> route mqtt      -> broker");
    println!("              GET /tunnel/telemetry  raw binary frames -> route telemetry -> broker");
    println!("  devices   {} on /mqtt", on("/mqtt"));
    println!(
        "            {} on /tunnel/telemetry (the same MQTT, opaque to the gateway)",
        on("/tunnel/telemetry")
    );
    println!(
        "            each publishes a QoS 1 reading to plant/<device>/<quantity> every second,"
    );
    println!("            as the class `sensor` expects");
    for (i, a) in ABUSERS.iter().enumerate() {
        let label = if i == 0 { "abusers" } else { "" };
        let (device, path) = (a.sensor.device, a.sensor.path);
        println!("  {label:<9} {device:<9} on {path} {}", a.habit.describe());
    }
    println!("  policy    a reading too early or over the rate: acknowledged, dropped, a strike");
    println!("            a connect too many: refused with CONNACK 0x03, a strike");
    println!(
        "            {STRIKES} strikes within {STRIKE_WINDOW_SECS} s: banned for {BAN_SECS} s (kicked if connected, refused at CONNECT)"
    );
    println!("  platform  subscribed to plant/# directly on the broker\n");
    println!(
        "Running for {} s (Ctrl-C stops earlier).\n",
        duration.as_secs()
    );
}

pub fn summary(sent: &[u64], received: &[u64], abusers: &[AbuserReport], p: &StatsSnapshot) {
    println!("\n  device     path                 sent  received");
    for ((s, sent), received) in SENSORS.iter().zip(sent).zip(received) {
        println!("  {:<10} {:<19} {sent:>5} {received:>9}", s.device, s.path);
    }
    let (sent, received) = (sent.iter().sum::<u64>(), received.iter().sum::<u64>());
    println!("  {:<30} {sent:>5} {received:>9}", "total");
    if sent == received {
        println!("\nEvery acknowledged reading of a well-behaved device reached the platform.");
    } else {
        println!(
            "\n{} acknowledged reading(s) did not reach the platform.",
            sent.saturating_sub(received)
        );
    }

    println!("\n  abuser     acknowledged  delivered  then");
    for a in abusers {
        let (acked, delivered) = (a.acknowledged, a.delivered);
        println!(
            "  {:<10} {acked:>12} {delivered:>10}  {}",
            a.device,
            fate(a)
        );
    }

    println!("\nThe gateway's policy counters:");
    let refused =
        p.refused_banned + p.refused_unknown + p.refused_connect_rate + p.refused_too_many;
    let rows = [
        (
            p.forwarded,
            "forwarded",
            "passed to the broker (meter-4's tunnel is not judged)",
        ),
        (
            p.discarded_early,
            "discarded early",
            "acknowledged, dropped, a strike each",
        ),
        (
            p.discarded_late,
            "discarded late",
            "acknowledged, dropped, no strike",
        ),
        (
            p.rate_limited,
            "rate limited",
            "acknowledged, dropped, a strike each",
        ),
        (refused, "refused at CONNECT", ""),
        (p.refused_banned, "  banned", ""),
        (
            p.refused_connect_rate,
            "  reconnecting too fast",
            "a strike each",
        ),
        (p.strikes, "strikes", ""),
        (p.bans_issued, "bans issued", ""),
    ];
    for (n, what, note) in rows {
        let line = format!("  {what:<24} {n:>5}  {note}");
        println!("{}", line.trim_end());
    }
}

/// How an abuser's run ended, in a few words.
fn fate(a: &AbuserReport) -> String {
    let kicked = if a.kicked { "kicked, then " } else { "" };
    match a.last_connack {
        Some(0x05) => format!("{kicked}refused: CONNACK 0x05 (banned)"),
        Some(code) => format!("{kicked}last CONNACK {code:#04x}"),
        None => "the demo ended before its turn".into(),
    }
}
