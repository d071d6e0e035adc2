//! `portcullis demo`: the whole picture in one process, with nothing installed.
//!
//! ```text
//! devices ──WebSocket──► gateway ──TCP──► broker ◄──TCP── platform
//!   3 × /mqtt               ▲            (rumqttd,        (subscribes to plant/#,
//!   3 abusers on /mqtt      │             embedded)        prints what arrives)
//!                           │ WebSocket: /tunnel/telemetry, raw
//! legacy device ──TCP──► agent
//!   plain MQTT 3.1.1       (in-process)
//! ```
//!
//! Every well-behaved device publishes a QoS 1 reading each second, in the rhythm its class
//! expects; the summary compares what the broker acknowledged with what the platform received.
//! Meanwhile three abusers report too often, flood, and reconnect in a loop: the gateway's
//! policy discards what they send, bans them and kicks them, and the others flow on. Halfway
//! through, the load balancer in front of the gateway (a stand-in: [`cutter`]) drops the
//! agent's WebSocket; the agent resumes the tunnel and the legacy device's MQTT session
//! carries on without a reconnect.

mod abuser;
mod agent;
mod broker;
mod config;
pub mod cutter;
mod device;
mod link;
mod platform;
mod sensor;
mod show;
mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::StatusSnapshot;
use crate::policy::StatsSnapshot;
use crate::{Config, Gateway};
use abuser::ABUSERS;
use broker::EmbeddedBroker;
use platform::Platform;
use sensor::SENSORS;
use transport::Endpoint;

/// What one demo run delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoReport {
    /// Readings the broker acknowledged (PUBACK) to the well-behaved devices.
    pub sent: u64,
    /// Of those, the readings the platform received.
    pub received: u64,
    /// The same, per well-behaved device.
    pub devices: Vec<DeviceReport>,
    /// What became of each abuser.
    pub abusers: Vec<AbuserReport>,
    /// The gateway's policy counters, just before it shut down.
    pub policy: StatsSnapshot,
    /// The agent's counters (the legacy device's tunnel), just before it shut down.
    pub agent: StatusSnapshot,
}

/// One well-behaved device's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    pub device: &'static str,
    /// Readings the broker acknowledged to it.
    pub sent: u64,
    /// Of those, the readings the platform received.
    pub received: u64,
}

/// One abuser's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuserReport {
    pub device: &'static str,
    /// Readings acknowledged to it: by the broker, or by the gateway when it discarded them.
    pub acknowledged: u64,
    /// Of those, the readings the platform received: only the ones the gateway forwarded.
    pub delivered: u64,
    /// The gateway closed its connection while it was connected.
    pub kicked: bool,
    /// The CONNACK code of its last connect attempt.
    pub last_connack: Option<u8>,
}

impl AbuserReport {
    /// Refused with "not authorized" on its last attempt: what a banned device hears on 3.1.1.
    pub fn banned(&self) -> bool {
        self.last_connack == Some(0x05)
    }
}

/// Largest MQTT packet the demo clients accept; theirs are tens of bytes.
const MAX_PACKET: usize = 64 * 1024;

/// An admin token for this run only, in a file of its own (removed at the end).
struct AdminToken {
    file: std::path::PathBuf,
    token: String,
}

impl AdminToken {
    fn make() -> Result<AdminToken, String> {
        let random = || crate::secret::random_token().ok_or("no randomness for the admin token");
        let token = random()?;
        // The name shares nothing with the token (anyone may list the temp dir).
        let name = format!(
            "portcullis-demo-{}-{}-tokens",
            std::process::id(),
            &random()?[..8]
        );
        let file = std::env::temp_dir().join(name);
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let mut f = open
            .open(&file)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        std::io::Write::write_all(&mut f, format!("demo:{token}\n").as_bytes())
            .map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(AdminToken { file, token })
    }
}

impl Drop for AdminToken {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

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
    // The platform's token key: the gateway gets its public half, the agent a token.
    let signer = crate::device_token::Signer::generate_ed25519()?;
    let public = signer.public_pem().unwrap_or_default();
    let admin = AdminToken::make()?;
    let config = Config::parse(&config::gateway(broker, &public, &admin.file), None)
        .map_err(|e| e.to_string())?;
    let gateway = Gateway::start(config).await?;
    let Some(&gateway_addr) = gateway.local_addrs().first() else {
        return Err("the gateway has no listener".into());
    };
    let token = signer.device_token(Some("demo"), "meter-4", 24 * 3600);
    // The agent reaches the gateway through a stand-in load balancer, which the demo restarts
    // halfway: the legacy meter's tunnel is resumed and its MQTT session never notices.
    let lb = match cutter::Cutter::start(gateway_addr).await {
        Ok(lb) => lb,
        Err(e) => {
            gateway.shutdown().await;
            return Err(format!("the demo's load balancer: {e}"));
        }
    };
    let agent = match agent::start(lb.addr, &token).await {
        Ok(agent) => agent,
        Err(e) => {
            gateway.shutdown().await;
            return Err(e);
        }
    };
    show::banner(broker, gateway_addr, agent.addr, duration);
    if let Some(addr) = gateway.admin_addr() {
        println!(
            "  dashboard http://{addr}/  token {}  (admin API and dashboard; try --seconds 300)\n",
            admin.token
        );
    }

    // Staggered starts spread the output; all devices are running after a second, and the
    // abusers take their turns after that.
    let stop_devices = CancellationToken::new();
    let devices: Vec<_> = (0u32..)
        .zip(&SENSORS)
        .map(|(i, sensor)| {
            let start_after = Duration::from_millis(250) * i;
            let at = if sensor.legacy {
                Endpoint::Plain(agent.addr)
            } else {
                Endpoint::Gateway(gateway_addr, sensor.path)
            };
            let task = device::run(sensor, at, start_after, stop_devices.clone());
            (sensor.device, tokio::spawn(task))
        })
        .collect();
    let tally = platform.tally();
    let abusers: Vec<_> = ABUSERS
        .iter()
        .map(|a| {
            let task = abuser::run(a, gateway_addr, tally.clone(), stop_devices.clone());
            (a.sensor.device, tokio::spawn(task))
        })
        .collect();
    let run_for = async {
        tokio::time::sleep(duration / 2).await;
        show::cut(lb.cut());
        tokio::time::sleep(duration - duration / 2).await;
    };
    tokio::select! {
        () = run_for => {}
        () = stop => {}
    }

    println!(
        "\nStopping: devices disconnect, the agent stops, the platform takes what is in flight, the gateway drains."
    );
    stop_devices.cancel();
    let mut failures = Vec::new();
    let sent = join(devices, &mut failures).await;
    let outcomes = join(abusers, &mut failures).await;
    // The agent is a client of the gateway: it goes first, like the devices, so its status
    // tells how the legacy device ended its tunnel, not how the gateway went away.
    let agent = agent.finish().await;
    let expected = sent.iter().sum();
    let received = platform.finish(expected, Duration::from_secs(3)).await;
    let policy = gateway.policy().stats().snapshot();
    gateway.shutdown().await;

    let received = received?;
    let abusers: Vec<_> = ABUSERS
        .iter()
        .zip(outcomes)
        .map(|(a, o)| AbuserReport {
            device: a.sensor.device,
            acknowledged: o.acknowledged,
            delivered: tally.of(a.sensor.device),
            kicked: o.kicked,
            last_connack: o.last_connack,
        })
        .collect();
    let devices: Vec<_> = SENSORS
        .iter()
        .zip(sent.iter().zip(&received))
        .map(|(s, (&sent, &received))| DeviceReport {
            device: s.device,
            sent,
            received,
        })
        .collect();
    show::summary(&devices, &abusers, &policy, &agent);
    if !failures.is_empty() {
        return Err(format!("some devices failed: {}", failures.join("; ")));
    }
    Ok(DemoReport {
        sent: expected,
        received: received.iter().sum(),
        devices,
        abusers,
        policy,
        agent,
    })
}

/// Each task's result in order; a failed task counts as the default, and its error is kept.
async fn join<T: Default>(
    tasks: Vec<(&str, JoinHandle<Result<T, String>>)>,
    failures: &mut Vec<String>,
) -> Vec<T> {
    let mut results = Vec::with_capacity(tasks.len());
    for (device, task) in tasks {
        match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(r) => results.push(r),
            Err(e) => {
                results.push(T::default());
                failures.push(format!("{device}: {e}"));
            }
        }
    }
    results
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
