//! What the demo prints besides the live lines: the banner, and the summary at the end.

use std::net::SocketAddr;
use std::time::Duration;

use super::abuser::ABUSERS;
use super::config::{BAN_SECS, STRIKES, STRIKE_WINDOW_SECS};
use super::sensor::SENSORS;
use super::{AbuserReport, DeviceReport};
use crate::agent::StatusSnapshot;
use crate::policy::StatsSnapshot;

pub fn banner(broker: SocketAddr, gateway: SocketAddr, agent: SocketAddr, duration: Duration) {
    let direct: Vec<_> = SENSORS
        .iter()
        .filter(|s| !s.legacy)
        .map(|s| s.device)
        .collect();
    println!("portcullis demo: a broker, the gateway and devices, all in this process.\n");
    println!("  broker    {broker}  (rumqttd, embedded; MQTT 3.1.1 over TCP)");
    println!("  gateway   ws://{gateway}  (portcullis, one WebSocket listener)");
    println!("              GET /mqtt              subprotocol mqtt  -> route mqtt      -> broker");
    println!("              GET /tunnel/telemetry  raw binary frames -> route telemetry -> broker");
    println!("                                     (device token required: a signed JWT, EdDSA)");
    println!("  agent     {agent}  (portcullis agent, in-process; plain TCP in, WebSocket out)");
    println!("  devices   {} on /mqtt", direct.join(", "));
    for s in SENSORS.iter().filter(|s| s.legacy) {
        println!(
            "            {} (plain MQTT) -> agent {agent} -> ws://{gateway}{}",
            s.device, s.path
        );
    }
    println!("              a legacy device: MQTT 3.1.1 over TCP, no WebSocket, no TLS; the agent");
    println!(
        "              carries it in a masked WebSocket (ws:// in the demo, wss:// deployed),"
    );
    println!("              opaque to the gateway; it proves it is meter-4 with its device token");
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

/// The stand-in load balancer dropped `n` connections (the agent's tunnel among them).
pub fn cut(n: usize) {
    if n > 0 {
        println!(
            "\n  -- the load balancer restarts: the agent's WebSocket is cut, no close frame ({n} connection(s)).\n     The agent keeps meter-4's TCP connection and resumes the tunnel; its MQTT session goes on.\n"
        );
    }
}

pub fn summary(
    devices: &[DeviceReport],
    abusers: &[AbuserReport],
    p: &StatsSnapshot,
    agent: &StatusSnapshot,
) {
    println!("\n  device     via                         sent  received");
    for (s, d) in SENSORS.iter().zip(devices) {
        let (sent, received) = (d.sent, d.received);
        println!("  {:<10} {:<26} {sent:>5} {received:>9}", d.device, s.via());
    }
    let sent = devices.iter().map(|d| d.sent).sum::<u64>();
    let received = devices.iter().map(|d| d.received).sum::<u64>();
    println!("  {:<37} {sent:>5} {received:>9}", "total");
    if sent == received {
        println!("\nEvery acknowledged reading of a well-behaved device reached the platform.");
    } else {
        println!(
            "\n{} acknowledged reading(s) did not reach the platform.",
            sent.saturating_sub(received)
        );
    }

    println!("\nThe agent's tunnels: {agent}");

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
