use bytes::BytesMut;

use super::*;

const LIMITS: Limits = Limits {
    max_frame: 1 << 20,
    max_message: 4 << 20,
    require_mask: true,
    text_control: false,
};

/// A client frame as RFC 6455 builds it.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xFFFF => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if let Some(k) = mask {
        f.extend_from_slice(&k);
        for (i, b) in body.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    f.extend_from_slice(&body);
    f
}

const K: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

/// Every event from `bytes`, fed in pieces of `step` bytes; data concatenated.
fn read_all(
    bytes: &[u8],
    step: usize,
    limits: Limits,
) -> Result<(Vec<u8>, Vec<Event>), FrameError> {
    let mut r = Reader::new(limits);
    let mut buf = BytesMut::new();
    let (mut data, mut others) = (Vec::new(), Vec::new());
    for piece in bytes.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(ev) = r.next(&mut buf)? {
            match ev {
                Event::Data(d) => data.extend_from_slice(&d),
                other => others.push(other),
            }
        }
    }
    Ok((data, others))
}

#[test]
fn masked_binary_frames_come_out_unmasked_whatever_the_pieces_they_arrive_in() {
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
    for len in [0, 1, 7, 8, 9, 125, 126, 127, 65_535, 65_536, 70_000] {
        let bytes = frame(true, 2, &payload[..len], K);
        for step in [1, 3, 8, 1000, usize::MAX] {
            let (data, others) = read_all(&bytes, step, LIMITS).unwrap();
            assert_eq!(data, &payload[..len], "len {len} step {step}");
            assert!(others.is_empty());
        }
    }
}

#[test]
fn fragments_and_interleaved_controls_make_one_stream() {
    let mut bytes = frame(false, 2, b"hello ", K);
    bytes.extend(frame(true, 9, b"are you there", K));
    bytes.extend(frame(false, 0, b"wide ", K));
    bytes.extend(frame(true, 10, b"", K));
    bytes.extend(frame(true, 0, b"world", K));
    bytes.extend(frame(true, 2, b"!", K));
    for step in [1, 5, usize::MAX] {
        let (data, others) = read_all(&bytes, step, LIMITS).unwrap();
        assert_eq!(data, b"hello wide world!");
        assert_eq!(
            others,
            vec![
                Event::Ping(Bytes::from_static(b"are you there")),
                Event::Pong
            ]
        );
    }
}

#[test]
fn what_a_server_must_refuse_is_refused() {
    let proto = |bytes: Vec<u8>| match read_all(&bytes, usize::MAX, LIMITS) {
        Err(FrameError::Protocol(_)) => {}
        other => panic!("{bytes:?}: {other:?}"),
    };
    proto(frame(true, 2, b"x", None)); // unmasked
    proto(vec![0xC2, 0x81, 1, 2, 3, 4, 0]); // RSV1
    proto(vec![0xA2, 0x81, 1, 2, 3, 4, 0]); // RSV2
    proto(frame(true, 3, b"x", K)); // reserved data opcode
    proto(frame(true, 0xB, b"x", K)); // reserved control opcode
    proto(frame(true, 9, &[0; 126], K)); // control over 125
    proto(frame(false, 9, b"x", K)); // fragmented control
    proto(frame(true, 0, b"x", K)); // continuation outside a message
    let mut two = frame(false, 2, b"a", K);
    two.extend(frame(true, 2, b"b", K));
    proto(two); // a new message inside a fragmented one
    proto(frame(true, 8, &[3], K)); // one-byte close payload
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        proto(frame(true, 8, &code.to_be_bytes(), K));
    }
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[0xff, 0xfe]);
    assert_eq!(
        read_all(&frame(true, 8, &bad_reason, K), usize::MAX, LIMITS).unwrap_err(),
        FrameError::BadUtf8
    );
}

#[test]
fn sizes_are_checked_at_the_header_before_any_payload_is_read() {
    let small = Limits {
        max_frame: 100,
        max_message: 150,
        require_mask: true,
        text_control: false,
    };
    // A 64-bit length far over the limit: refused from the header alone.
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(
        read_all(&huge, usize::MAX, small).unwrap_err(),
        FrameError::TooBig(u64::MAX >> 1)
    );
    // §5.2: a 64-bit length with its top bit set is a protocol error, not a size.
    let mut top = vec![0x82, 0x80 | 127];
    top.extend_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        read_all(&top, usize::MAX, small),
        Err(FrameError::Protocol(_))
    ));
    assert_eq!(
        read_all(&frame(true, 2, &[0; 101], K), 5, small).unwrap_err(),
        FrameError::TooBig(101)
    );
    let mut fragments = frame(false, 2, &[0; 100], K);
    fragments.extend(frame(true, 0, &[0; 51], K));
    assert_eq!(
        read_all(&fragments, usize::MAX, small).unwrap_err(),
        FrameError::TooBig(151)
    );
    let mut fits = frame(false, 2, &[0; 100], K);
    fits.extend(frame(true, 0, &[0; 50], K));
    assert_eq!(read_all(&fits, 7, small).unwrap().0.len(), 150);
}

#[test]
fn closes_texts_and_the_unmasked_allowance() {
    let (_, ev) = read_all(&frame(true, 8, b"", K), 1, LIMITS).unwrap();
    assert_eq!(ev, vec![Event::Close(None)]);
    let mut p = 4001u16.to_be_bytes().to_vec();
    p.extend_from_slice("bye €".as_bytes());
    let (_, ev) = read_all(&frame(true, 8, &p, K), 2, LIMITS).unwrap();
    assert_eq!(ev, vec![Event::Close(Some((4001, "bye €".into())))]);
    assert_eq!(
        read_all(&frame(true, 1, b"hi", K), 1, LIMITS).unwrap_err(),
        FrameError::Text
    );
    let lax = Limits {
        require_mask: false,
        ..LIMITS
    };
    assert_eq!(
        read_all(&frame(true, 2, b"plain", None), 2, lax).unwrap().0,
        b"plain"
    );
}

#[test]
fn unmasking_matches_the_definition_at_every_length_and_phase() {
    let mask = [0xde, 0xad, 0xbe, 0xef];
    for len in 0..40 {
        for offset in 0..8u64 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask, offset);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[(i + offset as usize) % 4])
                .collect();
            assert_eq!(fast, slow, "len {len} offset {offset}");
        }
    }
}

#[test]
fn server_headers_parse_back_to_their_length() {
    let lax = Limits {
        max_frame: usize::MAX,
        max_message: usize::MAX,
        require_mask: false,
        text_control: false,
    };
    for len in [0usize, 1, 125, 126, 65_535, 65_536, 1 << 20] {
        let (h, n) = header(Opcode::Binary, len);
        let parsed = parse_header(&h[..n], &lax).unwrap().unwrap();
        assert_eq!(
            (parsed.len, parsed.header_len, parsed.fin),
            (len as u64, n, true)
        );
        assert_eq!(parsed.opcode, 2);
        assert!(parsed.mask.is_none());
    }
}

#[test]
fn a_resumable_tunnel_takes_short_whole_text_frames_and_nothing_longer() {
    let resumable = Limits {
        text_control: true,
        ..LIMITS
    };
    let mut bytes = frame(true, 1, b"ack 1048576", K);
    bytes.extend(frame(true, 2, b"data", K));
    for step in [1, 3, 100] {
        let (data, others) = read_all(&bytes, step, resumable).unwrap();
        assert_eq!(data, b"data");
        assert_eq!(others, vec![Event::Text("ack 1048576".into())]);
    }
    // Refused: off by default, fragmented, over 125 bytes, inside a binary message, not UTF-8.
    assert_eq!(
        read_all(&frame(true, 1, b"ack 1", K), 1, LIMITS).unwrap_err(),
        FrameError::Text
    );
    let mut inside = frame(false, 2, b"da", K);
    inside.extend(frame(true, 1, b"ack 1", K));
    for bad in [
        frame(false, 1, b"ack", K),
        frame(true, 1, &[b'a'; 126], K),
        inside,
        frame(true, 1, &[0xff, 0xfe], K),
    ] {
        assert!(matches!(
            read_all(&bad, 7, resumable),
            Err(FrameError::Protocol(_))
        ));
    }
}
