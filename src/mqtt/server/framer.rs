//! Incremental framing of an MQTT byte stream (either direction), with bounded memory.

use bytes::{Bytes, BytesMut};

use super::WireError;
use crate::mqtt::wire::packet_len;

/// Accumulates stream bytes and yields whole packets; memory bounded by `max_packet`.
///
/// Usage: after each [`push`](Self::push), call [`next_packet`](Self::next_packet) until it
/// returns `Ok(None)`. Between pushes the framer then holds at most one partial packet, in an
/// allocation of at most `max_packet + 5` bytes (a fixed header is at most 5); when it holds
/// nothing it holds no allocation, so idle connections cost nothing. A single push larger than
/// that is copied whole (the caller had it in memory already) and released as it is drained.
///
/// Errors are final: a stream that cannot be framed cannot be resynchronised, so the buffer is
/// freed, later pushes are ignored and every later call returns the same error.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    max_packet: usize,
    failed: Option<WireError>,
    /// `buf` is the tail of an allocation that packets already handed out also point into.
    shared: bool,
}

impl Framer {
    pub fn new(max_packet: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_packet,
            failed: None,
            shared: false,
        }
    }

    /// Append stream bytes. An oversized or malformed fixed header at the front is detected
    /// here, so nothing more is buffered for a packet that will be refused.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() || bytes.is_empty() {
            return;
        }
        let needed = self.buf.len() + bytes.len();
        if needed > self.buf.capacity() {
            // Reallocate ourselves rather than let BytesMut double: geometric growth keeps
            // trickled bytes linear, and the cap keeps a header announcing a large packet from
            // reserving memory its sender has not actually sent.
            let limit = self.max_packet.saturating_add(5);
            let capacity = needed.max(self.buf.capacity().saturating_mul(2).min(limit));
            let mut grown = BytesMut::with_capacity(capacity);
            grown.extend_from_slice(&self.buf);
            self.buf = grown;
            self.shared = false;
        }
        self.buf.extend_from_slice(bytes);
        if let Err(e) = packet_len(&self.buf, self.max_packet) {
            self.fail(e);
        }
    }

    /// The next whole packet (fixed header included), split off without copying; `Ok(None)`
    /// until one is complete. `TooBig` as soon as a fixed header announces more than
    /// `max_packet` bytes, `RemainingLength` for a malformed one.
    pub fn next_packet(&mut self) -> Result<Option<Bytes>, WireError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match packet_len(&self.buf, self.max_packet) {
            Ok(Some(n)) => {
                let packet = self.buf.split_to(n).freeze();
                if self.buf.is_empty() {
                    // Let go of the allocation: the packets handed out keep it alive for as
                    // long as they need it, and then it is freed.
                    self.buf = BytesMut::new();
                    self.shared = false;
                } else {
                    self.shared = true;
                }
                Ok(Some(packet))
            }
            Ok(None) => {
                // A partial packet left at the end of a shared allocation pins all of it
                // (`capacity()` only shows the tail): move it to an allocation of its own.
                if self.shared {
                    self.buf = BytesMut::from(&self.buf[..]);
                    self.shared = false;
                }
                Ok(None)
            }
            Err(e) => {
                self.fail(e);
                Err(e)
            }
        }
    }

    /// Bytes received but not yet returned as a packet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn max_packet(&self) -> usize {
        self.max_packet
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn fail(&mut self, e: WireError) {
        self.failed = Some(e);
        self.buf = BytesMut::new();
        self.shared = false;
    }
}
