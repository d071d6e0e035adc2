//! An in-memory byte pipe between a resumable tunnel's legs and the MQTT relay of an MQTT
//! route: the legs see a [`ByteStream`] (as they see an upstream socket), the relay a raw
//! device ([`DeviceRx`], [`DeviceTx`]).
//!
//! It stands where a Unix socket pair stood: no system calls, and a write wakes the reader
//! directly rather than through the reactor (both ends run in the tunnel's one task), so a
//! QoS 1 round trip costs what it costs without resumption, and the relay gets everything the
//! legs wrote since its last read as one chunk to frame. Each direction holds about
//! [`CAPACITY`] bytes, a socket buffer's worth: a writer that finds it full waits. The relay's
//! sends are whole or nothing (a packet may take the buffer past its capacity once), so a
//! send cut off by a kick or a timeout never leaves half a packet for its last words to follow.
//!
//! Ends behave as a socket's do: `shutdown_write` and a writer's `close` are a FIN (the reader
//! gets what was buffered, then the end); an end dropped is a close, so the other side's
//! reads end and its writes fail.

use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::resumable::ByteStream;
use super::{DeviceRx, DeviceTx, RxEvent};

/// What one direction holds before its writer waits (as much as a Unix socket pair's buffer:
/// a parked tunnel's relay may keep sending this much before it stalls).
pub const CAPACITY: usize = 256 * 1024;

/// A pipe: the legs' end, and the relay's reading and writing ends.
pub fn pipe() -> (LegsEnd, RelayRx, RelayTx) {
    let shared = Arc::new(Shared::default());
    (
        LegsEnd(shared.clone()),
        RelayRx(shared.clone()),
        RelayTx(shared),
    )
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    legs_readable: Notify,
    legs_writable: Notify,
    relay_readable: Notify,
    relay_writable: Notify,
}

#[derive(Default)]
struct State {
    /// Legs → relay: the device's bytes.
    down: Direction,
    /// Relay → legs: the broker's bytes, as the relay lets them through.
    up: Direction,
}

#[derive(Default)]
struct Direction {
    buf: BytesMut,
    /// The writer is done (FIN, or its end dropped): the reader gets the rest, then the end.
    fin: bool,
    /// The reader is gone: writes fail.
    unread: bool,
}

impl Direction {
    fn room(&self) -> usize {
        CAPACITY.saturating_sub(self.buf.len())
    }

    /// Whether a writer can make progress (or learn that it cannot, at once).
    fn writable(&self) -> bool {
        self.unread || self.fin || self.room() > 0
    }

    /// Whether a reader can make progress (data, or the end).
    fn readable(&self) -> bool {
        !self.buf.is_empty() || self.fin
    }

    /// Takes what fits of `data`, or says why nothing can be written.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.unread || self.fin {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = data.len().min(self.room());
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `ready` holds: registered before the check, so no change is missed.
    async fn until(&self, notify: &Notify, ready: impl Fn(&State) -> bool) {
        loop {
            let notified = notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if ready(&self.state()) {
                return;
            }
            notified.await;
        }
    }
}

/// The legs' end: reads what the relay writes, writes what the relay reads.
pub struct LegsEnd(Arc<Shared>);

impl ByteStream for LegsEnd {
    async fn readable(&self) -> io::Result<()> {
        let s = &self.0;
        s.until(&s.legs_readable, |st| st.up.readable()).await;
        Ok(())
    }

    async fn writable(&self) -> io::Result<()> {
        let s = &self.0;
        s.until(&s.legs_writable, |st| st.down.writable()).await;
        Ok(())
    }

    fn try_read_buf(&self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        let mut st = self.0.state();
        let up = &mut st.up;
        if up.buf.is_empty() {
            return match up.fin {
                true => Ok(0),
                false => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        let n = max.min(up.buf.len());
        buf.extend_from_slice(&up.buf[..n]);
        up.buf.advance(n);
        drop(st);
        self.0.relay_writable.notify_one();
        Ok(n)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        {
            let mut st = self.0.state();
            for b in bufs {
                match st.down.write(b) {
                    Ok(n) if n < b.len() => {
                        total += n;
                        break;
                    }
                    Ok(n) => total += n,
                    Err(e) if total == 0 => return Err(e),
                    Err(_) => break,
                }
            }
        }
        self.0.relay_readable.notify_one();
        Ok(total)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.0.state().down.fin = true;
        self.0.relay_readable.notify_one();
        Ok(())
    }

    fn shut_both(&self) -> io::Result<()> {
        {
            let mut st = self.0.state();
            st.down.fin = true;
            st.up.unread = true;
            st.up.buf = BytesMut::new();
        }
        self.0.relay_readable.notify_one();
        self.0.relay_writable.notify_one();
        Ok(())
    }
}

impl Drop for LegsEnd {
    fn drop(&mut self) {
        let _ = self.shut_both();
    }
}

/// The relay's reading end: the device's bytes as a raw device's.
pub struct RelayRx(Arc<Shared>);

impl DeviceRx for RelayRx {
    async fn recv(&mut self) -> RxEvent {
        let s = &self.0;
        s.until(&s.relay_readable, |st| st.down.readable()).await;
        let mut st = s.state();
        if st.down.buf.is_empty() {
            return RxEvent::Closed(None);
        }
        // All of it, as one chunk: the relay frames across chunks.
        let data = st.down.buf.split().freeze();
        drop(st);
        s.legs_writable.notify_one();
        RxEvent::Data(data)
    }
}

impl Drop for RelayRx {
    fn drop(&mut self) {
        {
            let mut st = self.0.state();
            st.down.unread = true;
            st.down.buf = BytesMut::new();
        }
        self.0.legs_writable.notify_one();
    }
}

/// The relay's writing end: what the relay sends the device.
pub struct RelayTx(Arc<Shared>);

impl DeviceTx for RelayTx {
    async fn send(&mut self, data: Bytes) -> Result<(), ()> {
        let s = &self.0;
        // Whole, with no wait after the first byte is in: cancel-safe.
        s.until(&s.relay_writable, |st| st.up.writable()).await;
        let mut st = s.state();
        if st.up.unread || st.up.fin {
            return Err(());
        }
        st.up.buf.extend_from_slice(&data);
        drop(st);
        s.legs_readable.notify_one();
        Ok(())
    }

    fn has_pings(&self) -> bool {
        false
    }

    async fn ping(&mut self) -> Result<(), ()> {
        Ok(())
    }

    async fn close(&mut self, _code: CloseCode, _reason: &str) {
        self.0.state().up.fin = true;
        self.0.legs_readable.notify_one();
    }
}

impl Drop for RelayTx {
    fn drop(&mut self) {
        self.0.state().up.fin = true;
        self.0.legs_readable.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(legs: &LegsEnd, data: &[u8]) -> io::Result<usize> {
        legs.try_write_vectored(&[IoSlice::new(data)])
    }

    #[test]
    fn a_vectored_write_takes_what_fits_in_order() {
        let (legs, _rx, _tx) = pipe();
        let a = vec![1u8; CAPACITY - 3];
        let n = legs.try_write_vectored(&[IoSlice::new(&a), IoSlice::new(b"xyz12")]);
        assert_eq!(n.unwrap(), CAPACITY);
        let st = legs.0.state();
        assert_eq!(&st.down.buf[CAPACITY - 3..], b"xyz");
    }

    fn read(legs: &LegsEnd, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = BytesMut::new();
        legs.try_read_buf(&mut buf, max)?;
        Ok(buf.to_vec())
    }

    fn data(ev: RxEvent) -> Bytes {
        match ev {
            RxEvent::Data(b) => b,
            _ => panic!("expected data"),
        }
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_in_order_and_in_one_chunk() {
        let (legs, mut rx, mut tx) = pipe();
        assert_eq!(write(&legs, b"hel").unwrap(), 3);
        assert_eq!(write(&legs, b"lo").unwrap(), 2);
        assert_eq!(&data(rx.recv().await)[..], b"hello");

        tx.send(Bytes::from_static(b"world")).await.unwrap();
        legs.readable().await.unwrap();
        assert_eq!(read(&legs, 3).unwrap(), b"wor");
        assert_eq!(read(&legs, 3).unwrap(), b"ld");
        let would_block = read(&legs, 3).unwrap_err();
        assert_eq!(would_block.kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn a_full_direction_makes_the_writer_wait_until_read() {
        let (legs, mut rx, _tx) = pipe();
        let big = vec![7u8; CAPACITY + 10];
        assert_eq!(write(&legs, &big).unwrap(), CAPACITY);
        let full = write(&legs, &big).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), legs.writable());
        assert!(waiting.await.is_err(), "writable while full");
        assert_eq!(data(rx.recv().await).len(), CAPACITY);
        legs.writable().await.unwrap();
        assert_eq!(write(&legs, &big[..10]).unwrap(), 10);
    }

    #[tokio::test]
    async fn the_relays_sends_are_whole_and_a_cut_off_one_leaves_nothing() {
        let (legs, _rx, mut tx) = pipe();
        let big = Bytes::from(vec![1u8; CAPACITY + 10]);
        assert_eq!(
            tx.send(big).await,
            Ok(()),
            "room for a byte: the packet goes in whole"
        );
        let small = tx.send(Bytes::from_static(b"after"));
        let cut_off = tokio::time::timeout(std::time::Duration::from_millis(50), small);
        assert!(cut_off.await.is_err(), "full: the send waits");
        assert_eq!(
            legs.0.state().up.buf.len(),
            CAPACITY + 10,
            "nothing of it went in"
        );
        let mut got = 0;
        while got < CAPACITY + 10 {
            got += read(&legs, 10_000).unwrap().len();
        }
        assert_eq!(tx.send(Bytes::from_static(b"after")).await, Ok(()));
        assert_eq!(read(&legs, 100).unwrap(), b"after");
    }

    #[tokio::test]
    async fn fins_deliver_the_rest_then_the_end() {
        let (legs, mut rx, mut tx) = pipe();
        write(&legs, b"last").unwrap();
        legs.shutdown_write().unwrap();
        assert_eq!(&data(rx.recv().await)[..], b"last");
        assert!(matches!(rx.recv().await, RxEvent::Closed(None)));
        assert!(write(&legs, b"more").is_err());

        tx.send(Bytes::from_static(b"bye")).await.unwrap();
        tx.close(CloseCode::Normal, "").await;
        assert_eq!(read(&legs, 8).unwrap(), b"bye");
        assert_eq!(read(&legs, 8).unwrap(), b"");
    }

    #[tokio::test]
    async fn a_dropped_end_ends_the_other_side() {
        let (legs, mut rx, mut tx) = pipe();
        drop(legs);
        assert!(matches!(rx.recv().await, RxEvent::Closed(None)));
        assert_eq!(tx.send(Bytes::from_static(b"x")).await, Err(()));

        let (legs, rx, tx) = pipe();
        drop(rx);
        legs.writable().await.unwrap();
        assert_eq!(
            write(&legs, b"x").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        drop(tx);
        legs.readable().await.unwrap();
        assert_eq!(read(&legs, 4).unwrap(), b"");
    }

    #[tokio::test]
    async fn shut_both_ends_reads_and_writes_of_the_relay() {
        let (legs, mut rx, mut tx) = pipe();
        write(&legs, b"kept").unwrap();
        legs.shut_both().unwrap();
        assert_eq!(&data(rx.recv().await)[..], b"kept");
        assert!(matches!(rx.recv().await, RxEvent::Closed(None)));
        assert_eq!(tx.send(Bytes::from_static(b"x")).await, Err(()));
    }
}
