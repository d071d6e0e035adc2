//! Session resumption between the agent and the gateway (a tunnel that survives a dropped
//! WebSocket): the pure parts both ends share. Nothing here does I/O; the relay wires them in.
//!
//! The protocol, as the pieces here implement it:
//! - **Negotiation at the upgrade.** The agent offers with [`OFFER`]; a gateway that can
//!   answers with [`TOKEN`] (256 random bits, see [`tokens`]), [`NODE`] (its node name, so the
//!   agent can tell which node it must return to) and [`WINDOW`] (its replay buffer). A peer
//!   that does not know the headers ignores them: today's tunnel, unchanged.
//! - **Data** stays in binary frames, byte for byte as today. **Acknowledgements** are text
//!   frames, `ack N` (N: bytes received so far, cumulative), sent by [`replay::Receiver`]'s
//!   rule, never one per data frame; `fin N` says the sender's side ended after N bytes.
//! - **Resume.** The agent upgrades again with [`TOKEN`] and [`RECEIVED`]; the gateway answers
//!   101 with a new [`TOKEN`], then sends `resume N` (its own count) as the first frame once
//!   the old WebSocket's relay has stopped, so the count is final; each side replays what
//!   the other lacks ([`replay::ReplayBuffer::resume`]). A gateway without the session answers 409 with
//!   [`REFUSED`] naming why, and the agent closes the device's connection as it does today.
//!
//! [`session::Session`] holds both directions of one tunnel as one end sees them; its tests
//! run two ends over a link that loses everything in flight at random moments.
//!
//! The relay of one leg (one WebSocket) is `forward::relay::resumable`; the gateway parks a
//! dropped tunnel in [`lot`], the agent in its own tunnel loop.

#[cfg(feature = "gateway")]
pub mod lot;
pub mod replay;
pub mod session;
pub mod tokens;

/// The agent's offer: `1`.
pub const OFFER: &str = "x-portcullis-resume";
/// The gateway's token for the next resume (answer); the agent's token at a resume (request).
pub const TOKEN: &str = "x-portcullis-resume-token";
/// The gateway's node name.
pub const NODE: &str = "x-portcullis-node";
/// Bytes of the sender's replay buffer: the receiver acknowledges every quarter of it.
pub const WINDOW: &str = "x-portcullis-resume-window";
/// Bytes received so far, at a resume (both ways).
pub const RECEIVED: &str = "x-portcullis-received";
/// Why a resume was refused ([`tokens::Refusal::label`]).
pub const REFUSED: &str = "x-portcullis-resume-refused";

/// Replay buffer per direction unless configured.
pub const DEFAULT_WINDOW: usize = 1 << 20;

/// A control frame of a resumable tunnel (a text frame; data is binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The sender of this frame has received this many bytes.
    Ack(u64),
    /// The sender of this frame will send nothing after this many bytes (its source ended).
    Fin(u64),
    /// The gateway's first frame on a resumed WebSocket: it has received this many bytes
    /// (the agent replays from there).
    Resume(u64),
}

impl Control {
    pub fn to_text(self) -> String {
        match self {
            Control::Ack(n) => format!("ack {n}"),
            Control::Fin(n) => format!("fin {n}"),
            Control::Resume(n) => format!("resume {n}"),
        }
    }

    /// Strict: one word, one space, a decimal count; anything else is a broken peer.
    pub fn parse(text: &str) -> Result<Control, String> {
        let bad = || format!("not a control frame: {:?}", truncate(text));
        let (word, n) = text.split_once(' ').ok_or_else(bad)?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = n.parse().map_err(|_| bad())?;
        match word {
            "ack" => Ok(Control::Ack(n)),
            "fin" => Ok(Control::Fin(n)),
            "resume" => Ok(Control::Resume(n)),
            _ => Err(bad()),
        }
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(32);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_round_trip_and_nothing_else_parses() {
        for c in [
            Control::Ack(0),
            Control::Ack(u64::MAX),
            Control::Fin(12345),
            Control::Resume(7),
        ] {
            assert_eq!(Control::parse(&c.to_text()), Ok(c));
        }
        for bad in [
            "",
            "ack",
            "ack ",
            "ack -1",
            "ack +1",
            "ack 1 ",
            " ack 1",
            "ack 18446744073709551616",
            "nak 1",
            "ACK 1",
            "ack 1\n",
            "ack ١",
            "fin 0x10",
        ] {
            assert!(Control::parse(bad).is_err(), "{bad:?}");
        }
        let long = "é".repeat(100);
        assert!(
            Control::parse(&long).unwrap_err().len() < 80,
            "a bad frame is quoted short"
        );
    }
}
