//! The abusers: devices that misbehave in the three ways the policy exists for, all on `/mqtt`
//! where the gateway reads MQTT. Each prints its story as it happens: its readings discarded
//! (acknowledged by the gateway, never forwarded), banned after a few strikes, kicked, and
//! refused when it comes back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use super::config::{CONNECTS_PER_MINUTE, MESSAGES_PER_SEC, MESSAGE_BURST, TOLERANCE_SECS};
use super::device::{drift, PERIOD};
use super::link::{Link, LinkError};
use super::platform::Tally;
use super::sensor::{sensor, Sensor};
use super::transport::Endpoint;

const PATH: &str = "/mqtt";
/// chatty-5 reports five times as often as its class expects.
const CHATTY_PERIOD: Duration = Duration::from_millis(200);
/// flapper-7's pause between a disconnect and its next connect.
const FLAP_PAUSE: Duration = Duration::from_millis(150);
/// How long a kicked abuser waits before it tries to come back; by then the platform has
/// received whatever of its readings the gateway forwarded.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Readings or connects before giving up: if the policy never bit, the flood would otherwise
/// fill the terminal.
const GIVE_UP_AFTER: u16 = 1_000;

/// CONNACK return codes of MQTT 3.1.1 (§3.2.2.3).
const ACCEPTED: u8 = 0x00;
const NOT_AUTHORIZED: u8 = 0x05;

pub struct Abuser {
    pub sensor: Sensor,
    pub habit: Habit,
    /// One after another, once the well-behaved devices flow, so the stories do not overlap.
    pub starts_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Habit {
    /// Reports every 200 ms in a class that expects a reading a second.
    Chatty,
    /// QoS 1 readings back to back, as fast as they are acknowledged.
    Flood,
    /// Connects and disconnects in a loop.
    Flapper,
}

pub static ABUSERS: [Abuser; 3] = [
    abuser(
        sensor("chatty-5", "temp", "°C", 48.0, PATH),
        Habit::Chatty,
        1_500,
    ),
    abuser(
        sensor("flood-6", "vibration", "mm/s", 2.5, PATH),
        Habit::Flood,
        3_000,
    ),
    abuser(
        sensor("flapper-7", "door", "", 1.0, PATH),
        Habit::Flapper,
        4_000,
    ),
];

impl Habit {
    /// The habit and the rule it breaks, for the banner.
    pub fn describe(self) -> String {
        match self {
            Habit::Chatty => format!(
                "reports every {} ms; its class expects every {} s ± {TOLERANCE_SECS} s",
                CHATTY_PERIOD.as_millis(),
                PERIOD.as_secs()
            ),
            Habit::Flood => format!(
                "publishes back to back; its class allows {MESSAGES_PER_SEC}/s, bursts of {MESSAGE_BURST}"
            ),
            Habit::Flapper => format!(
                "reconnects every {} ms; {CONNECTS_PER_MINUTE} connects a minute are allowed",
                FLAP_PAUSE.as_millis()
            ),
        }
    }
}

const fn abuser(sensor: Sensor, habit: Habit, starts_after_ms: u64) -> Abuser {
    Abuser {
        sensor,
        habit,
        starts_after: Duration::from_millis(starts_after_ms),
    }
}

/// What an abuser went through.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Readings acknowledged to it: by the broker, or by the gateway when it discarded them.
    pub acknowledged: u64,
    /// The gateway closed its connection under it: the ban's kick.
    pub kicked: bool,
    /// The CONNACK code of its last connect attempt.
    pub last_connack: Option<u8>,
}

/// Misbehave, get banned, try to come back. Returns early, with the story so far, on `stop`.
pub async fn run(
    abuser: &'static Abuser,
    gateway: SocketAddr,
    tally: Tally,
    stop: CancellationToken,
) -> Result<Outcome, String> {
    let mut outcome = Outcome::default();
    let story = async {
        tokio::time::sleep(abuser.starts_after).await;
        let device = abuser.sensor.device;
        if abuser.habit == Habit::Flapper {
            return flap(device, gateway, &mut outcome).await;
        }
        publish_until_kicked(abuser, gateway, &mut outcome).await?;
        if !outcome.kicked {
            return Ok(());
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
        println!(
            "  {device:<9} {} readings acknowledged, {} reached the platform (the rest {}: discarded)",
            outcome.acknowledged,
            tally.of(device),
            match abuser.habit {
                Habit::Chatty => "arrived early",
                _ => "were over the message rate",
            },
        );
        reconnect(device, gateway, &mut outcome).await
    };
    tokio::select! {
        result = story => result?,
        () = stop.cancelled() => {}
    }
    Ok(outcome)
}

/// Connect, then publish readings at the habit's pace until the gateway kicks it.
async fn publish_until_kicked(
    abuser: &Abuser,
    gateway: SocketAddr,
    outcome: &mut Outcome,
) -> Result<(), String> {
    let s = &abuser.sensor;
    let (mut link, code) = Link::connect(Endpoint::Gateway(gateway, PATH), s.device).await?;
    outcome.last_connack = Some(code);
    if code != ACCEPTED {
        return Err(format!("refused at its first connect: CONNACK {code:#04x}"));
    }
    println!("  {:<9} connected     ws://{gateway}{PATH}", s.device);

    // chatty-5 waits out its (too short) period; flood-6 does not wait at all.
    let mut tick = (abuser.habit == Habit::Chatty).then(|| tokio::time::interval(CHATTY_PERIOD));
    let topic = s.topic();
    let mut value = s.base;
    for packet_id in 1..=GIVE_UP_AFTER {
        value = drift(value, s.base);
        let payload = format!("{value:.1}");
        let published = async {
            pace(&mut link, tick.as_mut()).await?;
            link.publish(&topic, packet_id, &payload).await
        };
        match published.await {
            Ok(()) => outcome.acknowledged += 1,
            // 1008 "policy violation": on MQTT 3.1.1 closing is the only way to kick (MQTT 5
            // would get DISCONNECT 0x98 first). The close reason says why.
            Err(LinkError::Closed { code: 1008, reason }) => {
                outcome.kicked = true;
                let why = reason.trim_start_matches("device error: ");
                println!("  {:<9} kicked: {why}", s.device);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("  {:<9} was never kicked; it gives up", s.device);
    link.close().await;
    Ok(())
}

/// Wait for the next tick, if there is a pace, noticing meanwhile if the gateway closes.
async fn pace(link: &mut Link, tick: Option<&mut Interval>) -> Result<(), LinkError> {
    let Some(tick) = tick else { return Ok(()) };
    loop {
        tokio::select! {
            _ = tick.tick() => return Ok(()),
            // Between readings nothing is due from the broker: what comes is the kick.
            packet = link.next_packet() => { packet?; }
        }
    }
}

/// A banned device that comes back is refused at CONNECT: the broker never sees it.
async fn reconnect(device: &str, gateway: SocketAddr, outcome: &mut Outcome) -> Result<(), String> {
    let (link, code) = Link::connect(Endpoint::Gateway(gateway, PATH), device).await?;
    outcome.last_connack = Some(code);
    if code == ACCEPTED {
        println!("  {device:<9} reconnected: CONNACK 0x00 (not banned)");
        link.close().await;
    } else {
        println!(
            "  {device:<9} reconnect refused: CONNACK {code:#04x} ({})",
            meaning(code)
        );
    }
    Ok(())
}

/// Connect and disconnect in a loop: refused for reconnecting too fast, each refusal a strike,
/// until the strikes make a ban.
async fn flap(device: &str, gateway: SocketAddr, outcome: &mut Outcome) -> Result<(), String> {
    for attempt in 1..=GIVE_UP_AFTER {
        let (link, code) = Link::connect(Endpoint::Gateway(gateway, PATH), device).await?;
        outcome.last_connack = Some(code);
        match code {
            ACCEPTED => {
                if attempt == 1 {
                    println!("  {device:<9} connected     ws://{gateway}{PATH}  (and disconnects, and again)");
                }
                link.close().await;
            }
            NOT_AUTHORIZED => {
                println!(
                    "  {device:<9} reconnect refused: CONNACK {code:#04x} ({}), connect #{attempt}",
                    meaning(code)
                );
                return Ok(());
            }
            _ => println!(
                "  {device:<9} refused: CONNACK {code:#04x} ({}), connect #{attempt}",
                meaning(code)
            ),
        }
        tokio::time::sleep(FLAP_PAUSE).await;
    }
    println!("  {device:<9} was never banned; it gives up");
    Ok(())
}

/// What a refusal means from this demo's gateway (MQTT 3.1.1 has few codes: EMQX's mapping).
fn meaning(code: u8) -> &'static str {
    match code {
        0x03 => "server unavailable = reconnecting too fast",
        NOT_AUTHORIZED => "not authorized = banned",
        _ => "refused",
    }
}
