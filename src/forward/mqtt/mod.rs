//! The MQTT-aware relay: the same bytes as a plain tunnel, but read packet by packet so the
//! policy can judge each CONNECT and PUBLISH before the broker sees it.
//!
//! The device's CONNECT is read and judged before any upstream connection exists, so a banned
//! or unknown device never costs the broker a socket. After that, device packets are forwarded
//! unchanged unless the policy discards a publish; then the gateway answers for the broker
//! (PUBACK / PUBREC / PUBCOMP), in order, and keeps the broker session alive with PINGREQs.

mod downstream;
mod scan;
mod state;
mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

pub use crate::forward::relay::{DeviceRx, DeviceTx, RawRx, RawTx, WsRx, WsTx};

use crate::config::policy::{MqttSettings, PolicyConfig};
use crate::error::{self, Error, Kind};
use crate::forward::relay::{self as core, Ending, RelaySettings, RxEvent};
use crate::forward::{Pool, Traffic};
use crate::gateway::clients::{MqttIdentity, Registration};
use crate::mqtt::server::{self, DevicePacket, Framer, Version};
use crate::policy::{Identity, Policy};
use crate::shutdown::Drain;
use state::{AckOrder, Inflight};

/// Everything the MQTT relay needs from the gateway.
pub struct MqttCtx<'a> {
    pub policy: &'a Policy,
    pub policy_config: &'a PolicyConfig,
    pub pool: &'a Pool,
    pub settings: &'a MqttSettings,
    pub relay: &'a RelaySettings,
    /// This connection in the registry of live connections: identified there once CONNECT is
    /// admitted, so that a ban on its client ID or username (or an admin's kick) reaches it.
    pub client: &'a Registration,
    /// Its byte counters (the registry's, so the admin API sees them live).
    pub traffic: &'a Traffic,
    /// Where the policy's decision time goes (one publish in `DECISION_SAMPLE`).
    pub decision_time: &'a prometheus_client::metrics::histogram::Histogram,
    pub drain: &'a Drain,
    pub client_ip: IpAddr,
    /// What the device proved before its CONNECT, where its route asks.
    pub proof: Proof,
}

/// Authentication as the CONNECT sees it.
#[derive(Debug, Clone, Default)]
pub enum Proof {
    /// The route asks for nothing.
    #[default]
    NotAsked,
    /// The device proved `identity`; its client ID must be bound to it.
    Proven {
        identity: Arc<str>,
        binding: crate::config::Binding,
    },
    /// A raw MQTT device whose certificate did not do (no HTTP to refuse it with): refused
    /// at its CONNECT, with this reason.
    Refused(String),
}

impl Proof {
    /// What authentication found: nothing asked, or the identity and its binding.
    pub fn of(device: Option<crate::auth::Authenticated>) -> Proof {
        match device {
            Some(d) => Proof::Proven {
                identity: d.identity,
                binding: d.binding,
            },
            None => Proof::NotAsked,
        }
    }
}

/// State both directions touch. Held only between awaits (never across one).
#[derive(Default)]
struct Shared {
    acks: AckOrder,
    inflight: Inflight,
    /// QoS 2 ids whose PUBREC we sent ourselves: their PUBREL is ours to answer.
    local_qos2: std::collections::HashSet<u16>,
    /// PINGREQs we sent for the device: that many PINGRESPs are ours to swallow.
    injected_pings: u32,
    /// Local packets due to the device now, in order.
    to_device: std::collections::VecDeque<Bytes>,
    /// SUBSCRIBEs forwarded without their refused filters, by packet id: which were kept, so
    /// the broker's SUBACK can be made whole again.
    subacks: std::collections::HashMap<u16, Vec<bool>>,
    /// The broker's Topic Alias Maximum (MQTT 5 CONNACK; absent means 0), once its CONNACK
    /// has passed: a device alias above it is the device's error, answered 0x94 here rather
    /// than by the broker dropping the connection (which the device would see as 0x88).
    alias_max: Option<u16>,
}

type Guarded = std::sync::Mutex<Shared>;

fn lock(s: &Guarded) -> std::sync::MutexGuard<'_, Shared> {
    // Poisoning needs a panic while held; nothing in here panics, and the data stays coherent.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Relay one MQTT device connection to the broker, judging it packet by packet.
///
/// Not an `async fn`: its arguments are used where they were captured rather than copied
/// into locals, which keeps this future (held for as long as the connection lives) smaller.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn relay<'a, R: DeviceRx + 'a, T: DeviceTx + 'a>(
    mut rx: R,
    mut tx: T,
    ctx: MqttCtx<'a>,
) -> impl std::future::Future<Output = Ending> + 'a {
    async move {
        let mut framer = Framer::new(ctx.settings.max_packet_size);

        // 1. CONNECT, within the connect timeout; nothing else may come first.
        let connect_timeout = Duration::from_secs(ctx.settings.connect_timeout_secs);
        let connect = match tokio::time::timeout(
            connect_timeout,
            read_connect(&mut rx, &mut tx, &mut framer),
        )
        .await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return fail_before_connect(&mut tx, e).await,
            Err(_) => {
                let e = Error::device(Kind::Timeout, "no CONNECT within the connect timeout");
                return fail_before_connect(&mut tx, e).await;
            }
        };
        let Ok(DevicePacket::Connect(c)) = server::parse_device(&connect, Version::V311) else {
            let e = Error::device(Kind::Malformed, "first packet is not a well-formed CONNECT");
            return fail_before_connect(&mut tx, e).await;
        };
        let version = c.version;
        let keep_alive = c.keep_alive;
        if c.client_id.is_empty() {
            // The gateway knows devices by client ID; a broker-assigned one identifies nobody.
            let code = error::connack_for_empty_client_id(version);
            let e = Error::device(Kind::Refused, "empty client ID");
            return refuse(&mut tx, server::connack(code, version), e).await;
        }
        // Authentication: the client ID must be the identity the device proved.
        match &ctx.proof {
            Proof::NotAsked => {}
            Proof::Proven { identity, binding } => {
                if !crate::policy::client_id_bound(*binding, identity, c.client_id) {
                    let code = error::connack_not_authorized(version);
                    let e = Error::device(
                    Kind::Refused,
                    format!(
                        "client ID {:?} is not bound to the authenticated device {identity:?} (auth.bind_client_id = {binding:?})",
                        c.client_id
                    ),
                );
                    return refuse(&mut tx, server::connack(code, version), e).await;
                }
            }
            Proof::Refused(why) => {
                let code = error::connack_not_authorized(version);
                let e = Error::device(Kind::Refused, format!("not authenticated: {why}"));
                return refuse(&mut tx, server::connack(code, version), e).await;
            }
        }
        let identity = Identity {
            client_id: Arc::from(c.client_id),
            username: c.username.map(Arc::from),
            ip: ctx.client_ip,
            named: crate::policy::Naming::ClientId,
        };
        let span = tracing::Span::current();
        span.record("client_id", &*identity.client_id);

        // 2. policy: bans, unknown devices, flapping, concurrent connections. A client ID at its
        // class's max_connections takes over from its oldest connection (MQTT spec, 3.1.4) unless
        // the class refuses duplicates; the old one's slot is free once it is gone (bounded wait).
        if let Some(n) = ctx.policy.takeover_needed(&identity) {
            let closed = ctx
                .client
                .take_over(&identity.client_id, n, Duration::from_secs(3))
                .await;
            tracing::info!(closed, "session taken over");
        }
        let session = match ctx.policy.on_connect(&identity) {
            Ok(s) => s,
            Err(refusal) => {
                let code = error::connack_for_refusal(&refusal, version);
                let e = Error::device(Kind::Refused, format!("CONNECT refused: {refusal}"));
                return refuse(&mut tx, server::connack(code, version), e).await;
            }
        };

        // Listed under its client ID and username from now on; a ban issued between the check
        // above and this moment would have found nothing to kick, so look once more.
        ctx.client.identify(MqttIdentity {
            client_id: identity.client_id.clone(),
            username: identity.username.clone(),
            proto_ver: if version == Version::V5 { 5 } else { 4 },
            keepalive: keep_alive,
        });
        if let Some(ban) = ctx.policy.banned(&session) {
            let refusal = crate::policy::Refusal::Banned(ban);
            let code = error::connack_for_refusal(&refusal, version);
            let e = Error::device(Kind::Refused, format!("CONNECT refused: {refusal}"));
            return refuse(&mut tx, server::connack(code, version), e).await;
        }

        // 3. forward: a broker chosen by client ID, so a device keeps its broker across reconnects.
        let upstream = match ctx.pool.connect(identity.client_id.as_bytes()).await {
            Ok((up, _)) => up,
            Err(e) => {
                return refuse(
                    &mut tx,
                    server::connack(error::connack_unavailable(version), version),
                    e,
                )
                .await
            }
        };
        let up = &upstream;
        if let Err(e) = crate::forward::relay::write_all_vectored(up, &mut [connect]).await {
            let e = Error::upstream(Kind::UpstreamIo, format!("sending CONNECT: {e}"));
            return refuse(
                &mut tx,
                server::connack(error::connack_unavailable(version), version),
                e,
            )
            .await;
        }

        let shared = Guarded::default();
        let notify = Notify::new();
        let up_rules = upstream::Up {
            framer,
            version,
            keep_alive,
            session,
            shared: &shared,
            notify: &notify,
            ctx: &ctx,
            judged: 0,
            aliases: Default::default(),
        };
        let down_rules = downstream::Down {
            scanner: Default::default(),
            version,
            shared: &shared,
        };
        // A ban that covers this client (or an admin's kick, or a newer session taking over).
        let client = ctx.client.client();
        let kick = async move {
            let why = client.kicked().await;
            let kind = match client.taken_over() {
                true => Kind::TakenOver,
                false => Kind::Kicked,
            };
            Error::device(kind, why)
        };
        let mut up_rules = up_rules;
        let mut down_rules = down_rules;
        let kick = std::pin::pin!(kick);
        let run = core::Run {
            settings: ctx.relay,
            drain: ctx.drain,
            kick,
            traffic: ctx.traffic,
            wakeup: Some(&notify),
        };
        core::relay(&mut rx, &mut tx, up, &mut up_rules, &mut down_rules, run).await
    }
}

async fn read_connect<R: DeviceRx, T: DeviceTx>(
    rx: &mut R,
    tx: &mut T,
    framer: &mut Framer,
) -> Result<Bytes, Error> {
    loop {
        match framer.next_packet() {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => {
                return Err(Error::device(
                    Kind::from_wire(&e),
                    format!("before CONNECT: {e}"),
                ))
            }
        }
        match rx.recv().await {
            RxEvent::Data(b) => framer.push(&b),
            // A ping before CONNECT (`portcullis agent check` sends one) is answered too.
            RxEvent::Ping(payload) => {
                let _ = tx.pong(payload).await;
            }
            RxEvent::Pong | RxEvent::Control => {}
            RxEvent::Closed(_) | RxEvent::Gone => {
                return Err(Error::device(Kind::Gone, "device left before CONNECT"))
            }
            RxEvent::Failed(e) => return Err(e),
            RxEvent::Text(_) => return Err(crate::forward::relay::text_frame()),
        }
    }
}

/// Before CONNECT there is no MQTT version to answer in: only the transport can say why.
async fn fail_before_connect<T: DeviceTx>(tx: &mut T, e: Error) -> Ending {
    // Bounded: a device that reads nothing must not hold its connection slot.
    let _ = tokio::time::timeout(REFUSAL_WAIT, tx.close(e.close_code(), &e.to_string())).await;
    Ending::from_error(&e, 0, 0)
}

/// How long a refusal (CONNACK, Close) may take to reach a device.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);

/// CONNACK with a failure code, then close: the broker never hears of this device.
async fn refuse<T: DeviceTx>(tx: &mut T, connack: Vec<u8>, e: Error) -> Ending {
    let answer = async {
        let _ = tx.send(Bytes::from(connack)).await;
        tx.close(e.close_code(), &e.to_string()).await;
    };
    let _ = tokio::time::timeout(REFUSAL_WAIT, answer).await;
    Ending::from_error(&e, 0, 0)
}

// Kept here so both directions agree on what the device's close codes mean.
impl Ending {
    pub(crate) fn from_error(e: &Error, bytes_up: u64, bytes_down: u64) -> Ending {
        Ending {
            code: core::ending_code(e),
            by: e.side(),
            reason: e.to_string(),
            bytes_up,
            bytes_down,
        }
    }
}
