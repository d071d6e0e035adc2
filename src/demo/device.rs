//! A well-behaved device: a QoS 1 reading every second, exactly what its class expects. On
//! `/mqtt` the gateway knows it carries MQTT and judges it. A legacy device speaks the same
//! MQTT over plain TCP to the agent, whose tunnel is opaque bytes to the gateway.

use std::time::Duration;

use rand::Rng;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::sensor::Sensor;
use super::transport::Endpoint;

/// The push interval T of the demo's `sensor` class.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Run until `stop`, then disconnect cleanly. Returns the readings the broker acknowledged.
///
/// `stop` is only looked at between readings: a publish in flight always gets its PUBACK
/// first, so "acknowledged" is an exact count the platform's tally can be checked against.
pub async fn run(
    sensor: &Sensor,
    at: Endpoint,
    start_after: Duration,
    stop: CancellationToken,
) -> Result<u64, String> {
    tokio::select! {
        () = tokio::time::sleep(start_after) => {}
        () = stop.cancelled() => return Ok(0),
    }
    let (mut link, code) = Link::connect(at, sensor.device).await?;
    if code != 0 {
        return Err(format!("connection refused: CONNACK {code:#04x}"));
    }
    let note = match at {
        Endpoint::Plain(_) => "  (plain MQTT, to the agent)",
        Endpoint::Gateway(..) => "",
    };
    println!("  {:<9} connected     {at}{note}", sensor.device);

    let topic = sensor.topic();
    let mut value = sensor.base;
    let mut acked = 0;
    let mut tick = tokio::time::interval(PERIOD);
    // The gateway checks the rhythm (1 s ± 0.3 s). After a late tick, the default (Burst)
    // would fire the missed ones back to back: early readings, discarded and struck. Delay
    // keeps a full period between readings whatever happens.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for packet_id in (1..=u16::MAX).cycle() {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        value = drift(value, sensor.base);
        link.publish(&topic, packet_id, &format!("{value:.1}"))
            .await?;
        acked += 1;
    }
    link.close().await;
    Ok(acked)
}

/// A random walk that stays near `base`, so the readings look like a plant, not noise.
pub fn drift(value: f64, base: f64) -> f64 {
    let noise: f64 = rand::rng().random_range(-1.0..1.0);
    value + (base - value) * 0.3 + noise * base * 0.02
}
