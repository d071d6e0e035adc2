//! The story of a resumable tunnel, which can outlive its WebSocket: legs of the relay
//! (`forward::relay::resumable`), and between them the upstream parked for the grace period
//! while the agent comes back with its token. A resume arrives on another connection; that
//! connection only hands its WebSocket over ([`hand_over`]) and this task carries on.
//!
//! On an MQTT route the resumable layer sits below the MQTT relay ([`resumable_mqtt`]): the
//! legs carry the device's bytes into an in-memory pipe, the MQTT relay (policy and all) reads
//! the other end as it reads a raw MQTT device, and never sees a WebSocket drop.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::error::{Error, Kind, Side};
use crate::forward::relay::resumable::{relay_resumable, ByteStream, Carry, Leg, Out};
use crate::forward::relay::{DeviceTx, FrameRx, FrameTx, Run};
use crate::forward::resume::lot::{Attach, Inbox, Lease, Lot};
use crate::forward::resume::Control;
use crate::forward::{Ending, RelaySettings, Traffic};
use crate::gateway::clients::Registration;

/// A resume's connection: give its WebSocket to the tunnel, or say the tunnel is gone.
pub(super) async fn hand_over(inbox: &Inbox, attach: Attach) {
    match inbox.deliver(attach) {
        Ok(()) => tracing::info!("resume handed to its tunnel"),
        Err(mut attach) => {
            tracing::info!("resume came as its tunnel ended");
            let reason = "that tunnel has ended";
            let close = attach.tx.close(CloseCode::Policy, reason);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), close).await;
        }
    }
}

/// The relay's halves of a resumable tunnel's WebSocket (text control frames allowed).
pub(super) fn halves(ws: crate::handshake::DeviceUpgrade) -> (FrameRx, FrameTx) {
    use crate::forward::relay::{device_halves, frame_limits};
    let limits = crate::forward::resume::lot::resumable_limits(frame_limits(&ws.config));
    device_halves(ws.io, limits)
}

/// A resumable tunnel's story, if the upgrade granted one (and so the lot is on).
pub(super) fn resumable<'a>(
    shared: &'a crate::gateway::Shared,
    resume: Option<(Lease, usize)>,
    settings: &'a RelaySettings,
    client: &'a Registration,
) -> Option<Resumable<'a>> {
    let (lot, (inbox, peer_window)) = (shared.resume.as_ref()?, resume?);
    Some(Resumable {
        lot,
        inbox,
        peer_window,
        settings,
        shared,
        client,
        traffic: &client.client().traffic,
    })
}

pub(super) struct Resumable<'a> {
    pub lot: &'a Arc<Lot>,
    /// The tunnel's place in the lot (its token is forgotten when this goes).
    pub inbox: Lease,
    /// The agent's replay buffer (we acknowledge every quarter of it).
    pub peer_window: usize,
    pub settings: &'a RelaySettings,
    pub shared: &'a crate::gateway::Shared,
    /// Its listing among the live connections: moved to a resume's address.
    pub client: &'a Registration,
    pub traffic: &'a Traffic,
}

impl Resumable<'_> {
    /// Relay until the tunnel ends for good; the token is forgotten then.
    pub async fn run<S: ByteStream>(
        self,
        rx: FrameRx,
        tx: FrameTx,
        upstream: S,
        kick: impl Future<Output = Error> + Send,
    ) -> Ending {
        // However this ends (even dropped), the token goes with `self.inbox`.
        self.legs(rx, tx, &upstream, kick).await
    }

    async fn legs<S: ByteStream>(
        &self,
        mut rx: FrameRx,
        mut tx: FrameTx,
        upstream: &S,
        kick: impl Future<Output = Error> + Send,
    ) -> Ending {
        let lot = self.lot;
        let mut kick = pin!(kick);
        let mut carry = Carry::new(lot.settings.window, self.peer_window);
        let mut first = Vec::new();
        loop {
            let run = Run {
                settings: self.settings,
                drain: &self.shared.drain,
                kick: kick.as_mut(),
                traffic: self.traffic,
                wakeup: None,
            };
            let leg = relay_resumable(
                &mut rx,
                &mut tx,
                upstream,
                &mut carry,
                first,
                run,
                self.inbox.arrived(),
            )
            .await;
            let why = match leg {
                Leg::Ended(ending) => return ending,
                Leg::Dropped(why) => why,
            };
            let dropped = Instant::now();
            let abandon = tx.abandon();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), abandon).await;
            lot.stats.parked.fetch_add(1, Relaxed);
            let held = carry.session().held();
            tracing::info!(held, "tunnel parked: {why}");

            // Parked: the upstream is read no more (its bytes wait in the kernel) until a
            // resume arrives, the grace period passes, a kick, or the shutdown.
            let deadline = dropped + lot.settings.grace;
            let attach = loop {
                if self.inbox.is_ended() {
                    let why = "its token came with another identity";
                    break Err(Error::new(Kind::Refused, Side::Device, why));
                }
                if let Some(attach) = self.inbox.take() {
                    break Ok(attach);
                }
                tokio::select! {
                    () = self.inbox.arrived() => continue,
                    () = tokio::time::sleep_until(deadline) => {
                        lot.fail("grace");
                        let secs = lot.settings.grace.as_secs();
                        let why = format!("no resume within the grace period ({secs} s)");
                        break Err(Error::new(Kind::Gone, Side::Device, why));
                    }
                    () = self.shared.drain.started() => {
                        break Err(Error::new(Kind::Shutdown, Side::Internal, "gateway shutting down"));
                    }
                    e = kick.as_mut() => break Err(e),
                }
            };
            let attach = match attach {
                Ok(attach) => attach,
                Err(e) => {
                    // Nobody to tell: the WebSocket is gone. The upstream gets what it is owed
                    // and its FIN; the ending says why, as a live tunnel's would.
                    carry.finish(upstream, LAST_WORDS).await;
                    tracing::info!("parked tunnel ended: {e}");
                    let code = crate::forward::relay::ending_code(&e);
                    return ending(code, e.side(), e.to_string(), self.traffic);
                }
            };
            (rx, tx) = (attach.rx, attach.tx);
            // A roaming device resumes from a new address: IP bans now find it there. One
            // issued since the resume's admission found nothing there to kick: look once more
            // (the kick then ends the tunnel as any kick does, the MQTT relay's included).
            self.client.moved_to(attach.ip);
            if let Some(why) = super::ip_ban(self.shared, attach.ip) {
                let subject = crate::policy::Subject::Ip(attach.ip.to_canonical());
                self.shared.clients.kick_covered(&subject, &why);
            }
            let resumed = carry.session().resume(attach.peer_received);
            let (again, fin) = match resumed {
                Ok(r) => r,
                Err(e) => {
                    lot.fail("replay");
                    let why = format!("cannot resume: {e}");
                    let close = tx.close(CloseCode::Policy, &why);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), close).await;
                    let _ = upstream.shutdown_write();
                    tracing::warn!("{why}");
                    return ending(CloseCode::Policy, Side::Device, why, self.traffic);
                }
            };
            let replayed: usize = again.iter().map(|b| b.len()).sum();
            let received = carry.session().received_total();
            first = std::iter::once(Out::Control(Control::Resume(received)))
                .chain(again.into_iter().map(Out::Data))
                .chain(fin.map(Out::Control))
                .collect();
            let took = dropped.elapsed();
            let stats = &lot.stats;
            stats.resumed.fetch_add(1, Relaxed);
            stats.bytes_replayed.fetch_add(replayed as u64, Relaxed);
            stats
                .resume_micros
                .fetch_add(took.as_micros() as u64, Relaxed);
            tracing::info!(
                replayed,
                received,
                after_ms = took.as_millis() as u64,
                "tunnel resumed"
            );
        }
    }
}

/// How long a resumable MQTT tunnel's last bytes (a DISCONNECT, the `fin`) may take to reach
/// the agent once the MQTT relay has ended.
const LAST_WORDS: std::time::Duration = std::time::Duration::from_secs(5);

/// A resumable tunnel on an MQTT route: the legs to one end of an in-memory pipe, the MQTT
/// relay (with the policy) on the other. The MQTT relay's ending is the connection's.
pub(super) async fn resumable_mqtt(
    tunnel: Resumable<'_>,
    rx: FrameRx,
    tx: FrameTx,
    ctx: crate::forward::mqtt::MqttCtx<'_>,
) -> Ending {
    let (ours, relay_rx, relay_tx) = crate::forward::relay::pipe::pipe();
    let mqtt = crate::forward::mqtt::relay(relay_rx, relay_tx, ctx);
    // The MQTT relay counts the device's bytes; the legs count into their own.
    let legs_traffic = Traffic::default();
    let tunnel = Resumable {
        traffic: &legs_traffic,
        ..tunnel
    };
    // Once the MQTT relay has ended, and its last bytes had their time, the legs end with its
    // reason: the agent hears a Close (a kick stays a kick), not a drop to resume.
    let (end_legs, ended) = tokio::sync::oneshot::channel::<Error>();
    let kick = async move {
        match ended.await {
            Ok(e) => e,
            Err(_) => std::future::pending().await,
        }
    };
    let legs = tunnel.run(rx, tx, ours, kick);
    let (mut legs, mut mqtt) = (pin!(legs), pin!(mqtt));
    tokio::select! {
        ending = &mut mqtt => {
            // The relay closed its end: the legs pass that on as a `fin` (or end on their own).
            if tokio::time::timeout(LAST_WORDS, &mut legs).await.is_err() {
                let kind = match ending.code {
                    CloseCode::Policy => Kind::Kicked,
                    _ => Kind::UpstreamClosed,
                };
                let _ = end_legs.send(Error::new(kind, ending.by, ending.reason.clone()));
                let _ = tokio::time::timeout(LAST_WORDS, legs).await;
            }
            ending
        }
        // The WebSocket side is over and the pair closed with it: the relay sees its device
        // leave.
        _ = &mut legs => mqtt.await,
    }
}

fn ending(code: CloseCode, by: Side, reason: String, traffic: &Traffic) -> Ending {
    Ending {
        code,
        by,
        reason,
        bytes_up: traffic.up(),
        bytes_down: traffic.down(),
    }
}
