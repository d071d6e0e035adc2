//! The three throughput/latency measurements, each on a fresh publisher connection.

use std::time::{Duration, Instant};

use portcullis::mqtt::wire::{self, Incoming, Version};

use crate::client::{Endpoints, MqttConn, Path};
use crate::BoxError;

const V: Version = Version::V311;
const PAYLOAD: [u8; 64] = [0x5a; 64];
/// Publishes written per flush at QoS 0: keeps the client's syscalls out of the way; the
/// gateway still sees (and must relay) one WebSocket frame per publish.
const QOS0_BATCH: usize = 32;
/// Unacknowledged QoS 1 publishes in flight.
pub const QOS1_WINDOW: usize = 32;
/// The subscriber gives up when nothing has arrived for this long (the rest was dropped).
const STALL: Duration = Duration::from_secs(3);
/// Idle devices and benchmark clients alike: longer than any run, so no PINGREQ is needed.
pub const KEEP_ALIVE_SECS: u16 = 600;

/// Packet ids are 1..=65535; cycle through them.
fn packet_id(i: usize) -> u16 {
    (i % 65535) as u16 + 1
}

pub struct Qos0 {
    pub sent: usize,
    pub delivered: usize,
    pub rate: f64,
}

/// QoS 0 publishes as fast as the path takes them, counted by a subscriber connected directly
/// to mosquitto; the clock stops at the last one it receives.
pub async fn qos0(path: Path, ep: &Endpoints, n: usize, run: &str) -> Result<Qos0, BoxError> {
    let topic = format!("bench/{run}/q0");
    let mut sub =
        MqttConn::connect(Path::Direct, ep, &format!("{run}-sub"), KEEP_ALIVE_SECS).await?;
    sub.send(wire::subscribe(1, &topic, 0, V)).await?;
    match wire::parse(&sub.next_packet().await?, V)? {
        Incoming::SubAck { .. } => {}
        _ => return Err("expected SUBACK".into()),
    }
    let counter = tokio::spawn(count_publishes(sub, n));
    let mut publisher = MqttConn::connect(path, ep, &format!("{run}-pub"), KEEP_ALIVE_SECS).await?;

    let start = Instant::now();
    for i in 0..n {
        publisher
            .feed(wire::publish(&topic, 0, 0, &PAYLOAD, V))
            .await?;
        if (i + 1) % QOS0_BATCH == 0 {
            publisher.flush().await?;
        }
    }
    publisher.flush().await?;
    let (delivered, last) = counter.await??;
    publisher.close().await;
    let elapsed = last.unwrap_or_else(Instant::now).duration_since(start);
    Ok(Qos0 {
        sent: n,
        delivered,
        rate: delivered as f64 / elapsed.as_secs_f64(),
    })
}

/// Count PUBLISHes until `n` arrived or the stream stalls; when did the last one arrive.
async fn count_publishes(
    mut sub: MqttConn,
    n: usize,
) -> Result<(usize, Option<Instant>), BoxError> {
    let (mut count, mut last) = (0, None);
    while count < n {
        let Ok(packet) = tokio::time::timeout(STALL, sub.next_packet()).await else {
            break;
        };
        if let Incoming::Publish { .. } = wire::parse(&packet?, V)? {
            count += 1;
            last = Some(Instant::now());
        }
    }
    sub.close().await;
    Ok((count, last))
}

/// QoS 1 publishes with a window of `QOS1_WINDOW` unacknowledged; PUBACKs per second.
pub async fn qos1(path: Path, ep: &Endpoints, n: usize, run: &str) -> Result<f64, BoxError> {
    let topic = format!("bench/{run}/q1");
    let mut c = MqttConn::connect(path, ep, &format!("{run}-pub"), KEEP_ALIVE_SECS).await?;
    let (mut sent, mut acked) = (0, 0);
    let start = Instant::now();
    while acked < n {
        while sent - acked < QOS1_WINDOW && sent < n {
            c.feed(wire::publish(&topic, 1, packet_id(sent), &PAYLOAD, V))
                .await?;
            sent += 1;
        }
        c.flush().await?;
        // Wait for one acknowledgement, then take every one already here, so the window is
        // refilled in one write rather than one write per PUBACK.
        let mut packet = Some(c.next_packet().await);
        while let Some(p) = packet.take() {
            if let Incoming::PubAck { .. } = wire::parse(&p?, V)? {
                acked += 1;
            }
            packet = c.try_next_packet();
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    c.close().await;
    Ok(rate)
}

/// One QoS 1 publish at a time: the time from writing it to reading its PUBACK.
pub async fn latency(
    path: Path,
    ep: &Endpoints,
    samples: usize,
    run: &str,
) -> Result<Vec<Duration>, BoxError> {
    let topic = format!("bench/{run}/lat");
    let mut c = MqttConn::connect(path, ep, &format!("{run}-pub"), KEEP_ALIVE_SECS).await?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = packet_id(i);
        let t = Instant::now();
        c.send(wire::publish(&topic, 1, id, &PAYLOAD, V)).await?;
        loop {
            match wire::parse(&c.next_packet().await?, V)? {
                Incoming::PubAck { packet_id } if packet_id == id => break,
                Incoming::PubAck { packet_id } => {
                    return Err(format!("PUBACK for {packet_id}, expected {id}").into())
                }
                _ => {}
            }
        }
        out.push(t.elapsed());
    }
    c.close().await;
    Ok(out)
}

/// The `p`-th percentile (0..=100) of unsorted samples.
pub fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = (samples.len() * p / 100).min(samples.len() - 1);
    samples[i]
}
