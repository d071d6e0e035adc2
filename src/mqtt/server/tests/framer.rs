use crate::mqtt::wire;

use super::*;

fn stream() -> Vec<Vec<u8>> {
    vec![
        wire::connect("dev-1", 30, V5),
        wire::publish("plant/a", 1, 1, b"x", V5),
        wire::pingreq().to_vec(),
        wire::publish("plant/b", 0, 0, &[7; 300], V5), // a 3-byte fixed header
        wire::disconnect(V5),
    ]
}

fn drain(f: &mut Framer) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(p) = f.next_packet().expect("frames") {
        out.push(p.to_vec());
    }
    out
}

#[test]
fn several_packets_in_one_push() {
    let packets = stream();
    let mut f = Framer::new(1024);
    f.push(&packets.concat());
    assert_eq!(drain(&mut f), packets);
    assert_eq!((f.buffered(), f.capacity()), (0, 0));
}

#[test]
fn packets_split_over_many_pushes() {
    let packets = stream();
    let bytes = packets.concat();
    for chunk in [1, 2, 3, 7, 64, 301] {
        let mut f = Framer::new(1024);
        let mut got = Vec::new();
        for piece in bytes.chunks(chunk) {
            f.push(piece);
            got.extend(drain(&mut f));
            assert!(f.capacity() <= 1024 + 5, "chunk {chunk}: {}", f.capacity());
        }
        assert_eq!(got, packets, "chunk {chunk}");
        assert_eq!((f.buffered(), f.capacity()), (0, 0), "chunk {chunk}");
    }
}

#[test]
fn packets_are_zero_copy_slices() {
    let mut f = Framer::new(1024);
    f.push(&stream().concat());
    let first = f.next_packet().expect("frames").expect("a packet");
    let second = f.next_packet().expect("frames").expect("a packet");
    // Adjacent in one allocation: split, not copied.
    assert_eq!(first.as_ptr().wrapping_add(first.len()), second.as_ptr());
}

#[test]
fn too_big_as_soon_as_the_header_says_so() {
    // Fed byte by byte: refused at the last length byte, before any body arrives.
    let mut f = Framer::new(1000);
    for b in [0x30, 0xe9] {
        f.push(&[b]);
        assert_eq!(f.next_packet(), Ok(None));
    }
    f.push(&[0x07]); // remaining length 1001
    assert_eq!(f.next_packet(), Err(WireError::TooBig(1004)));
    // Final: the buffer is freed, later bytes are ignored, the error repeats.
    assert_eq!((f.buffered(), f.capacity()), (0, 0));
    f.push(&[0; 100]);
    assert_eq!(f.buffered(), 0);
    assert_eq!(f.next_packet(), Err(WireError::TooBig(1004)));

    // Even if the caller pushes again before asking: push checks the header itself.
    let mut f = Framer::new(1000);
    f.push(b"\x30\xff\xff\xff\x7f");
    f.push(&[0; 4096]);
    assert_eq!((f.buffered(), f.capacity()), (0, 0));
    assert_eq!(f.next_packet(), Err(WireError::TooBig(268_435_460)));

    // Exactly the maximum is fine; one over is not, even behind a good packet.
    let at_max = wire::publish("t", 0, 0, &[1; 994], V311);
    assert_eq!(at_max.len(), 1000);
    let mut f = Framer::new(1000);
    f.push(&at_max);
    f.push(&wire::publish("t", 0, 0, &[1; 995], V311)[..3]);
    assert_eq!(f.next_packet().expect("fits").as_deref(), Some(&at_max[..]));
    assert_eq!(f.next_packet(), Err(WireError::TooBig(1001)));

    let mut f = Framer::new(1000);
    f.push(b"\x30\x80\x80\x80\x80");
    assert_eq!(f.next_packet(), Err(WireError::RemainingLength));
}

#[test]
fn memory_stays_bounded_and_is_released() {
    let max = 4096;
    let big = wire::publish("t", 1, 1, &[9; 4000], V311);
    // Trickled: grows with what arrived (not with what the header announced), capped.
    let mut f = Framer::new(max);
    for (i, b) in big.iter().enumerate() {
        f.push(&[*b]);
        assert!(
            f.capacity() <= (2 * (i + 1)).max(8).min(max + 5),
            "{i}: {}",
            f.capacity()
        );
        if i + 1 < big.len() {
            assert_eq!(f.next_packet(), Ok(None));
        }
    }
    assert_eq!(f.next_packet().expect("frames").as_deref(), Some(&big[..]));
    assert_eq!(
        (f.buffered(), f.capacity()),
        (0, 0),
        "drained: no allocation kept"
    );

    // A large push (many whole packets and a partial one): once drained to the partial packet,
    // the partial packet is moved out of the large allocation.
    let small = wire::publish("t", 0, 0, b"tiny", V311);
    let mut chunk = small.repeat(2000);
    chunk.extend_from_slice(&big[..10]);
    let mut f = Framer::new(max);
    f.push(&chunk);
    assert!(f.capacity() >= chunk.len());
    assert_eq!(drain(&mut f).len(), 2000);
    assert_eq!((f.buffered(), f.capacity()), (10, 10));
    f.push(&big[10..]);
    assert_eq!(drain(&mut f), vec![big.clone()]);
    assert_eq!(f.capacity(), 0);
}
