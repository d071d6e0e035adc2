//! Scale curves: how the cost grows with the number of devices.
//!
//! - **Publishing devices.** N devices (1, 100, 1,000, 10,000), each publishing QoS 1 at its
//!   share of one fixed total rate, one message in flight each; for direct mosquitto and the
//!   gateway's `/mqtt`, the gateway's and mosquitto's CPU µs per message and the PUBACK round
//!   trip p50/p99. The offered load is the same at every N, so the curve shows what more
//!   connections cost, not more messages.
//! - **New connections per second.** Connect, CONNECT/CONNACK, DISCONNECT, close, from a few
//!   concurrent clients: direct, and through the gateway (the WebSocket upgrade included).

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::mqtt::wire::{self, Incoming, Version};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Endpoints, MqttConn, Path};
use crate::cpu::{Cpu, Meter};
use crate::measure::{percentile, KEEP_ALIVE_SECS};
use crate::BoxError;

const V: Version = Version::V311;
const PAYLOAD: [u8; 64] = [0x5a; 64];
/// Devices handshaking at once while a fleet connects.
const CONNECTING: usize = 200;
/// Clients opening connections at once for the connection rate.
const CONN_RATE_CLIENTS: usize = 8;

pub struct ScalePoint {
    pub path: Path,
    pub devices: usize,
    pub messages: usize,
    pub cpu: Cpu,
    pub p50: Duration,
    pub p99: Duration,
    /// Messages that got no PUBACK within the run (a device that fell behind its rhythm).
    pub late: usize,
}

impl ScalePoint {
    pub fn us_per_msg(&self, secs: f64) -> f64 {
        secs * 1e6 / self.messages.max(1) as f64
    }
}

/// `devices` publishers sharing `rate` msg/s for `secs` seconds.
pub async fn publishing(
    path: Path,
    ep: &Endpoints,
    meter: &Meter,
    devices: usize,
    rate: f64,
    secs: f64,
    run: &str,
) -> Result<ScalePoint, BoxError> {
    // Connect the fleet first (not measured), then start everyone together.
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut connecting = JoinSet::new();
    for i in 0..devices {
        let (gate, ep) = (gate.clone(), *ep);
        let id = format!("{run}-{i}");
        connecting.spawn(async move {
            let _permit = gate.acquire_owned().await;
            MqttConn::connect(path, &ep, &id, KEEP_ALIVE_SECS).await
        });
    }
    let mut conns = Vec::with_capacity(devices);
    while let Some(c) = connecting.join_next().await {
        conns.push(c??);
    }
    let period = Duration::from_secs_f64(devices as f64 / rate);
    let per_device = ((secs * rate) / devices as f64).ceil().max(1.0) as usize;
    let start = Instant::now() + Duration::from_millis(200);
    let cpu0 = meter.read();
    let mut running = JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let topic = format!("bench/{run}/{}", i % 64);
        // Spread the devices over one period, so the load is even rather than in bursts.
        let offset = period.mul_f64(i as f64 / devices as f64);
        running.spawn(async move {
            let mut rtts = Vec::with_capacity(per_device);
            let mut late = 0;
            let mut next = start + offset;
            for k in 0..per_device {
                tokio::time::sleep_until(next.into()).await;
                next += period;
                let id = (k % 65535) as u16 + 1;
                let t = Instant::now();
                c.send(wire::publish(&topic, 1, id, &PAYLOAD, V)).await?;
                match wire::parse(&c.next_packet().await?, V)? {
                    Incoming::PubAck { packet_id } if packet_id == id => rtts.push(t.elapsed()),
                    other => return Err(format!("expected PUBACK {id}, got {other:?}").into()),
                }
                if Instant::now() > next {
                    late += 1;
                }
            }
            Ok::<_, BoxError>((rtts, late, c))
        });
    }
    let mut rtts = Vec::with_capacity(devices * per_device);
    let mut late = 0;
    let mut done = Vec::with_capacity(devices);
    while let Some(r) = running.join_next().await {
        let (mut d, l, c) = r??;
        rtts.append(&mut d);
        late += l;
        done.push(c);
    }
    // Read before the fleet disconnects: closing 10,000 connections is not publishing.
    let cpu = meter.read() - cpu0;
    let mut closing = JoinSet::new();
    for c in done {
        closing.spawn(c.close());
    }
    while closing.join_next().await.is_some() {}
    Ok(ScalePoint {
        path,
        devices,
        messages: rtts.len(),
        cpu,
        p50: percentile(&mut rtts, 50),
        p99: percentile(&mut rtts, 99),
        late,
    })
}

/// Complete MQTT connections (connect, CONNACK, DISCONNECT, close) per second over `secs`.
pub async fn connection_rate(
    path: Path,
    ep: &Endpoints,
    meter: &Meter,
    secs: f64,
    run: &str,
) -> Result<(f64, Cpu, usize), BoxError> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let cpu0 = meter.read();
    let mut clients = JoinSet::new();
    for c in 0..CONN_RATE_CLIENTS {
        let (ep, run) = (*ep, run.to_string());
        clients.spawn(async move {
            let mut n = 0usize;
            while Instant::now() < until {
                let conn = MqttConn::connect(path, &ep, &format!("{run}-{c}-{n}"), 60).await?;
                conn.close().await;
                n += 1;
            }
            Ok::<_, BoxError>(n)
        });
    }
    let mut total = 0;
    while let Some(n) = clients.join_next().await {
        total += n??;
    }
    let cpu = meter.read() - cpu0;
    Ok((total as f64 / t0.elapsed().as_secs_f64(), cpu, total))
}
