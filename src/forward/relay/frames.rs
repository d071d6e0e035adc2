//! RFC 6455 frames on the gateway's device side, read and written here rather than through
//! tungstenite's message stream.
//!
//! Why: the relay carries a byte stream, so it never needs a whole message. A data frame's
//! payload is handed on as it arrives (unmasked in place, no reassembly, no copy), memory per
//! connection is what is being read right now (nothing while idle), and one read can take as
//! much as the socket has. tungstenite stays for the handshake, the probe and the agent.
//!
//! What is enforced, as RFC 6455 §5 asks of a server: every client frame masked (unless the
//! listener accepts unmasked frames), no RSV bits (no extension is ever negotiated), known
//! opcodes only, control frames whole and at most 125 bytes, continuation frames only inside
//! a fragmented message, frame and message sizes within the configured limits, and a Close
//! payload that is empty or a valid code with UTF-8 reason. Text frames are refused (every
//! endpoint carries bytes), except on a resumable tunnel, whose acknowledgements are short
//! text frames: there a text frame must be whole, at most 125 bytes and UTF-8.

use bytes::{Buf, Bytes, BytesMut};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A control frame's payload is at most this long (§5.5).
pub const MAX_CONTROL: usize = 125;

/// What one device frame (or the part of one that has arrived) means.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Payload bytes of a binary message, unmasked.
    Data(Bytes),
    /// A whole text frame (a resumable tunnel's control frame).
    Text(String),
    Ping(Bytes),
    Pong,
    /// The device's Close: its code and reason, if it gave them.
    Close(Option<(u16, String)>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A frame or message over the limit, with its size.
    TooBig(u64),
    Protocol(&'static str),
    /// A Close reason that is not UTF-8 (closed with 1002, as every protocol error here).
    BadUtf8,
    /// A text frame.
    Text,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooBig(n) => write!(f, "frame or message of {n} bytes is over the limit"),
            FrameError::Protocol(why) => f.write_str(why),
            FrameError::BadUtf8 => f.write_str("close reason is not UTF-8"),
            FrameError::Text => f.write_str("text frame"),
        }
    }
}

/// Limits and expectations for the frames of one device.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    pub max_message: usize,
    /// RFC 6455 requires masked client frames; a listener may accept unmasked ones.
    pub require_mask: bool,
    /// Whether short, whole text frames are accepted (a resumable tunnel's control frames).
    pub text_control: bool,
}

/// A data frame whose payload is still arriving.
#[derive(Debug)]
struct InData {
    remaining: u64,
    mask: Option<[u8; 4]>,
    /// Payload bytes of this frame already unmasked (the mask's phase).
    done: u64,
}

/// Reads device frames from a buffer the caller fills.
#[derive(Debug)]
pub struct Reader {
    limits: Limits,
    data: Option<InData>,
    /// Inside a fragmented binary message, with its length so far.
    message: Option<u64>,
}

impl Reader {
    pub fn new(limits: Limits) -> Reader {
        Reader {
            limits,
            data: None,
            message: None,
        }
    }

    /// The next event from the front of `buf` (its bytes consumed), or `None` when `buf` holds
    /// nothing more to report yet.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, FrameError> {
        loop {
            if let Some(d) = &mut self.data {
                if d.remaining == 0 {
                    self.data = None;
                    continue;
                }
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = buf
                    .len()
                    .min(usize::try_from(d.remaining).unwrap_or(usize::MAX));
                let mut part = buf.split_to(take);
                if let Some(mask) = d.mask {
                    unmask(&mut part, mask, d.done);
                }
                d.remaining -= take as u64;
                d.done += take as u64;
                return Ok(Some(Event::Data(part.freeze())));
            }
            let Some(h) = parse_header(buf, &self.limits)? else {
                return Ok(None);
            };
            match h.opcode {
                // Refused (every endpoint here carries bytes), so its payload never matters...
                OP_TEXT if !self.limits.text_control => return Err(FrameError::Text),
                // ...except a resumable tunnel's control frames: short and whole.
                OP_TEXT if !h.fin || h.len > MAX_CONTROL as u64 || self.message.is_some() => {
                    return Err(FrameError::Protocol(
                        "text frames here are whole control frames of at most 125 bytes",
                    ))
                }
                OP_BINARY | OP_CONTINUATION => {
                    let so_far = match (h.opcode, self.message) {
                        (OP_BINARY, None) => 0,
                        (OP_BINARY, Some(_)) => {
                            return Err(FrameError::Protocol(
                                "a new message inside a fragmented one",
                            ))
                        }
                        (_, Some(n)) => n,
                        (_, None) => {
                            return Err(FrameError::Protocol(
                                "continuation frame outside a fragmented message",
                            ))
                        }
                    };
                    let total = so_far.saturating_add(h.len);
                    if total > self.limits.max_message as u64 {
                        return Err(FrameError::TooBig(total));
                    }
                    self.message = (!h.fin).then_some(total);
                    buf.advance(h.header_len);
                    self.data = Some(InData {
                        remaining: h.len,
                        mask: h.mask,
                        done: 0,
                    });
                }
                _ => {
                    // Control frames are at most 125 bytes: wait for the whole frame.
                    let whole = h.header_len + h.len as usize;
                    if buf.len() < whole {
                        return Ok(None);
                    }
                    buf.advance(h.header_len);
                    let mut payload = buf.split_to(h.len as usize);
                    if let Some(mask) = h.mask {
                        unmask(&mut payload, mask, 0);
                    }
                    return control(h.opcode, payload.freeze()).map(Some);
                }
            }
        }
    }
}

fn control(opcode: u8, payload: Bytes) -> Result<Event, FrameError> {
    match opcode {
        OP_PING => Ok(Event::Ping(payload)),
        OP_TEXT => match String::from_utf8(payload.into()) {
            Ok(text) => Ok(Event::Text(text)),
            Err(_) => Err(FrameError::Protocol("text frame that is not UTF-8")),
        },
        OP_PONG => Ok(Event::Pong),
        _ => close_payload(&payload).map(Event::Close),
    }
}

/// A Close frame's payload: nothing, or a code a peer may send and a UTF-8 reason (§5.5.1, §7.4).
fn close_payload(p: &[u8]) -> Result<Option<(u16, String)>, FrameError> {
    match p.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !sendable {
                return Err(FrameError::Protocol("close code a peer may not send"));
            }
            let reason = std::str::from_utf8(&p[2..]).map_err(|_| FrameError::BadUtf8)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

#[derive(Debug)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    header_len: usize,
}

fn parse_header(buf: &[u8], limits: &Limits) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    let opcode = b0 & 0x0F;
    let control = opcode >= OP_CLOSE;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(FrameError::Protocol("unknown opcode")),
    }
    let masked = b1 & 0x80 != 0;
    if !masked && limits.require_mask {
        return Err(FrameError::Protocol("unmasked frame from a client"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                let len = u64::from_be_bytes(n);
                // §5.2: the most significant bit of a 64-bit length must be 0.
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("64-bit length with its top bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if control && (!fin || len > MAX_CONTROL as u64) {
        return Err(FrameError::Protocol(
            "control frame fragmented or over 125 bytes",
        ));
    }
    if len > limits.max_frame as u64 {
        return Err(FrameError::TooBig(len));
    }
    let mask = if masked {
        let Some(m) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        header_len: at,
    }))
}

/// XOR `data` with `mask`, `offset` bytes into the payload: eight bytes at a time.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let phase = (offset % 4) as usize;
    let m: [u8; 4] = std::array::from_fn(|i| mask[(i + phase) % 4]);
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut words = data.chunks_exact_mut(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        w.copy_from_slice(&(u64::from_ne_bytes(b) ^ wide).to_ne_bytes());
    }
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= m[i % 4];
    }
}

/// A server frame's header (never masked): FIN set, `opcode`, `len` payload bytes.
pub fn header(opcode: Opcode, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode as u8;
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, n)
}

/// The frames the gateway sends.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Opcode {
    Binary = OP_BINARY,
    Text = OP_TEXT,
    Close = OP_CLOSE,
    Ping = OP_PING,
    Pong = OP_PONG,
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
