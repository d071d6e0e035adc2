//! `portcullis demo`: the whole picture in one process, with nothing installed.
//!
//! ```text
//! devices ──WebSocket──► gateway ──TCP──► broker ◄──TCP── platform
//!   3 × /mqtt (subprotocol mqtt)    (rumqttd,        (subscribes to plant/#,
//!   1 × /tunnel/telemetry (raw)      embedded)        prints what arrives)
//! ```
//!
//! Every device publishes a QoS 1 reading each second; the summary compares what the broker
//! acknowledged with what the platform received.

mod broker;
mod device;
mod platform;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Config, Gateway};
use broker::EmbeddedBroker;
use platform::Platform;

/// What one demo run delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoReport {
    /// Readings the broker acknowledged (PUBACK) to the devices.
    pub sent: u64,
    /// Readings the platform received.
    pub received: u64,
}

/// One simulated device and the reading it sends.
struct Sensor {
    device: &'static str,
    quantity: &'static str,
    unit: &'static str,
    /// Readings wander around this value.
    base: f64,
    /// The gateway path it connects to.
    path: &'static str,
}

impl Sensor {
    fn topic(&self) -> String {
        format!("plant/{}/{}", self.device, self.quantity)
    }
}

static SENSORS: [Sensor; 4] = [
    sensor("boiler-1", "temp", "°C", 21.0, "/mqtt"),
    sensor("press-2", "pressure", "bar", 4.2, "/mqtt"),
    sensor("pump-3", "flow", "m³/h", 12.5, "/mqtt"),
    sensor("meter-4", "power", "kW", 3.1, "/tunnel/telemetry"),
];

const fn sensor(
    device: &'static str,
    quantity: &'static str,
    unit: &'static str,
    base: f64,
    path: &'static str,
) -> Sensor {
    Sensor {
        device,
        quantity,
        unit,
        base,
        path,
    }
}

/// Largest MQTT packet the demo clients accept; theirs are tens of bytes.
const MAX_PACKET: usize = 64 * 1024;

/// Run the demo for `duration` or until `stop` resolves.
pub async fn run(duration: Duration, stop: impl Future<Output = ()>) -> Result<(), String> {
    run_with_report(duration, stop).await.map(|_| ())
}

/// [`run`], returning what was delivered.
pub async fn run_with_report(
    duration: Duration,
    stop: impl Future<Output = ()>,
) -> Result<DemoReport, String> {
    let (broker, platform) = start_broker_and_platform().await?;
    let config = Config::parse(&gateway_config(broker), None).map_err(|e| e.to_string())?;
    let gateway = Gateway::start(config).await?;
    let Some(&gateway_addr) = gateway.local_addrs().first() else {
        return Err("the gateway has no listener".into());
    };
    banner(broker, gateway_addr, duration);

    // Staggered starts spread the output; all devices are running after a second.
    let stop_devices = CancellationToken::new();
    let devices: Vec<_> = (0u32..)
        .zip(&SENSORS)
        .map(|(i, sensor)| {
            let start_after = Duration::from_millis(250) * i;
            tokio::spawn(device::run(
                sensor,
                gateway_addr,
                start_after,
                stop_devices.clone(),
            ))
        })
        .collect();
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = stop => {}
    }

    println!(
        "\nStopping: devices disconnect, the platform takes what is in flight, the gateway drains."
    );
    stop_devices.cancel();
    let mut sent = Vec::new();
    let mut failures = Vec::new();
    for (sensor, task) in SENSORS.iter().zip(devices) {
        match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(n) => sent.push(n),
            Err(e) => {
                sent.push(0);
                failures.push(format!("{}: {e}", sensor.device));
            }
        }
    }
    let expected = sent.iter().sum();
    let received = platform.finish(expected, Duration::from_secs(3)).await;
    gateway.shutdown().await;

    let received = received?;
    summary(&sent, &received);
    if !failures.is_empty() {
        return Err(format!("some devices failed: {}", failures.join("; ")));
    }
    Ok(DemoReport {
        sent: expected,
        received: received.iter().sum(),
    })
}

/// Start the broker and prove it serves by connecting the platform to it; on a port race
/// (someone else took the free port first) start again on another port.
async fn start_broker_and_platform() -> Result<(SocketAddr, Platform), String> {
    let mut last_error = String::new();
    for _ in 0..5 {
        let broker = EmbeddedBroker::spawn()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !broker.has_stopped() && tokio::time::Instant::now() < deadline {
            match Platform::start(broker.addr).await {
                Ok(platform) => return Ok((broker.addr, platform)),
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Err(format!("the embedded broker did not start: {last_error}"))
}

/// One WebSocket listener; `/mqtt` and `/tunnel/telemetry` both lead to the broker.
fn gateway_config(broker: SocketAddr) -> String {
    format!(
        r#"
[[listener]]
name = "demo"
bind = "127.0.0.1:0"

[routes.mqtt]
upstreams = ["{broker}"]

[routes.telemetry]
upstreams = ["{broker}"]

[shutdown]
drain_window_secs = 1
drain_timeout_secs = 3
"#
    )
}

fn banner(broker: SocketAddr, gateway: SocketAddr, duration: Duration) {
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
        "            each publishes a QoS 1 reading to plant/<device>/<quantity> every second"
    );
    println!("  platform  subscribed to plant/# directly on the broker\n");
    println!(
        "Running for {} s (Ctrl-C stops earlier).\n",
        duration.as_secs()
    );
}

fn summary(sent: &[u64], received: &[u64]) {
    println!("\n  device     path                 sent  received");
    for ((s, sent), received) in SENSORS.iter().zip(sent).zip(received) {
        println!("  {:<10} {:<19} {sent:>5} {received:>9}", s.device, s.path);
    }
    let (sent, received) = (sent.iter().sum::<u64>(), received.iter().sum::<u64>());
    println!("  {:<30} {sent:>5} {received:>9}", "total");
    if sent == received {
        println!("\nEvery acknowledged reading reached the platform.");
    } else {
        println!(
            "\n{} acknowledged reading(s) did not reach the platform.",
            sent.saturating_sub(received)
        );
    }
}
