//! The "platform": the cloud side that consumes readings. It connects to the broker directly
//! over TCP (it lives next to the broker, not behind a firewall) and prints what arrives,
//! counting per device, abusers included: what they got through the gateway arrives here too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::sensor::{all_sensors, SENSORS};
use super::MAX_PACKET;
use crate::mqtt::wire::{self, Incoming, Version};

const V: Version = Version::V311;
const KEEP_ALIVE_SECS: u16 = 30;
const FILTER: &str = "plant/#";

/// Readings received per device, in the order of `all_sensors()`.
#[derive(Clone)]
pub struct Tally(Arc<[AtomicU64]>);

impl Tally {
    /// Readings received so far from `device`.
    pub fn of(&self, device: &str) -> u64 {
        all_sensors()
            .position(|s| s.device == device)
            .map_or(0, |i| self.0[i].load(Ordering::Relaxed))
    }

    /// Readings received so far from the well-behaved devices, per entry of `SENSORS`.
    fn well_behaved(&self) -> Vec<u64> {
        SENSORS.iter().map(|s| self.of(s.device)).collect()
    }
}

pub struct Platform {
    received: Tally,
    stop: CancellationToken,
    task: JoinHandle<Result<(), String>>,
}

impl Platform {
    /// Connect and subscribe (both acknowledged) before returning, so no reading is missed.
    pub async fn start(broker: SocketAddr) -> Result<Platform, String> {
        let mut tcp = TcpStream::connect(broker)
            .await
            .map_err(|e| format!("cannot reach the broker at {broker}: {e}"))?;
        let mut buf = BytesMut::new();
        send(&mut tcp, &wire::connect("platform", KEEP_ALIVE_SECS, V)).await?;
        let connack = recv(&mut tcp, &mut buf).await?;
        if wire::parse(&connack, V) != Ok(Incoming::ConnAck { code: 0 }) {
            return Err(format!("broker refused the platform: {connack:02x?}"));
        }
        send(&mut tcp, &wire::subscribe(1, FILTER, 1, V)).await?;
        let suback = recv(&mut tcp, &mut buf).await?;
        if wire::parse(&suback, V) != Ok(Incoming::SubAck { packet_id: 1 }) {
            return Err(format!("subscription refused: {suback:02x?}"));
        }

        let received = Tally(all_sensors().map(|_| AtomicU64::new(0)).collect());
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume(tcp, buf, received.clone(), stop.clone()));
        Ok(Platform {
            received,
            stop,
            task,
        })
    }

    /// A handle on the counts, for the devices to report what got through.
    pub fn tally(&self) -> Tally {
        self.received.clone()
    }

    /// Wait (bounded) until `expected` readings of the well-behaved devices have arrived, then
    /// disconnect. Returns their counts, per entry of `SENSORS`; the abusers' stay in the tally.
    pub async fn finish(mut self, expected: u64, patience: Duration) -> Result<Vec<u64>, String> {
        let deadline = tokio::time::Instant::now() + patience;
        while self.received.well_behaved().iter().sum::<u64>() < expected
            && tokio::time::Instant::now() < deadline
            && !self.task.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(self.received.well_behaved()),
            Ok(Err(e)) => Err(format!("platform: {e}")),
            Err(e) => Err(format!("platform: {e}")),
        }
    }
}

async fn consume(
    mut tcp: TcpStream,
    mut buf: BytesMut,
    received: Tally,
    stop: CancellationToken,
) -> Result<(), String> {
    // Publishes arrive without our asking; PINGREQ keeps the session alive when they do not.
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 2));
    ping.tick().await;
    loop {
        let packet = tokio::select! {
            () = stop.cancelled() => break,
            _ = ping.tick() => {
                send(&mut tcp, &wire::pingreq()).await?;
                continue;
            }
            // Cancel-safe: a partly read packet stays in `buf`.
            packet = wire::read_packet(&mut tcp, &mut buf, MAX_PACKET) => match packet {
                Ok(Some(p)) => p,
                Ok(None) => return Err("the broker closed the connection".into()),
                Err(e) => return Err(format!("receive failed: {e}")),
            },
        };
        let Ok(Incoming::Publish {
            topic,
            qos,
            packet_id,
            payload,
        }) = wire::parse(&packet, V)
        else {
            continue; // PINGRESP, or nothing a subscriber needs
        };
        if let (1, Some(id)) = (qos, packet_id) {
            send(&mut tcp, &wire::puback(id, V)).await?;
        }
        // plant/{device}/{quantity}
        let device = topic.split('/').nth(1).unwrap_or_default();
        let reading = String::from_utf8_lossy(payload);
        match all_sensors()
            .zip(received.0.iter())
            .find(|(s, _)| s.device == device)
        {
            Some((s, count)) => {
                count.fetch_add(1, Ordering::Relaxed);
                println!(
                    "  platform  <- {topic:<24} {reading:>6} {:<5} (via {})",
                    s.unit,
                    s.via()
                );
            }
            None => println!("  platform  <- {topic:<24} {reading:>6}       (not a demo device)"),
        }
    }
    let _ = send(&mut tcp, &wire::disconnect(V)).await;
    Ok(())
}

async fn send(tcp: &mut TcpStream, packet: &[u8]) -> Result<(), String> {
    tcp.write_all(packet)
        .await
        .map_err(|e| format!("send failed: {e}"))
}

/// The next packet during setup, where the broker answers at once or is broken.
async fn recv(tcp: &mut TcpStream, buf: &mut BytesMut) -> Result<BytesMut, String> {
    let read = wire::read_packet(tcp, buf, MAX_PACKET);
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(Some(packet))) => Ok(packet),
        Ok(Ok(None)) => Err("the broker closed the connection".into()),
        Ok(Err(e)) => Err(format!("receive failed: {e}")),
        Err(_) => Err("no reply from the broker within 5 s".into()),
    }
}
