use super::*;
use Version::{V311, V5};

/// Delimit with `packet_len` (in a buffer with trailing junk) and parse.
fn roundtrip(bytes: &[u8], version: Version) -> Incoming<'_> {
    let mut buf = bytes.to_vec();
    buf.extend_from_slice(&[0x30, 0x7f]); // the start of another packet
    assert_eq!(packet_len(&buf, 1 << 20), Ok(Some(bytes.len())));
    for cut in 0..bytes.len() {
        assert_eq!(packet_len(&bytes[..cut], 1 << 20), Ok(None), "cut at {cut}");
    }
    parse(bytes, version).expect("parses")
}

#[test]
fn connect_matches_the_spec_bytes() {
    let v3 = connect("c1", 60, V311);
    assert_eq!(v3, b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1");
    let v5 = connect_with_username("c1", "u", 60, V5);
    assert_eq!(
        v5,
        b"\x10\x12\x00\x04MQTT\x05\x82\x00\x3c\x00\x00\x02c1\x00\x01u"
    );
    assert_eq!(roundtrip(&v5, V5), Incoming::Other { packet_type: 1 });
}

/// rumqttc's decoders (a dev-dependency) read what we write.
#[test]
fn client_packets_decode_with_rumqttc() {
    use rumqttc::mqttbytes::v4::Packet as P4;
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    let v4 = |b: Vec<u8>| P4::read(&mut BytesMut::from(&b[..]), 1 << 20).expect("v4 decodes");
    let v5 = |b: Vec<u8>| P5::read(&mut BytesMut::from(&b[..]), None).expect("v5 decodes");

    let P4::Connect(c) = v4(connect_with_username("dev", "tenant", 30, V311)) else {
        panic!("not a CONNECT")
    };
    assert_eq!(
        (c.client_id.as_str(), c.clean_session, c.keep_alive),
        ("dev", true, 30)
    );
    assert_eq!(c.login.map(|l| l.username), Some("tenant".into()));
    let P5::Connect(c, None, None) = v5(connect("dev", 30, V5)) else {
        panic!("not a plain CONNECT")
    };
    assert_eq!(
        (c.client_id.as_str(), c.clean_start, c.keep_alive),
        ("dev", true, 30)
    );

    let P4::Publish(p) = v4(publish("a/b", 1, 7, b"hi", V311)) else {
        panic!()
    };
    assert_eq!(
        (p.topic.as_str(), p.pkid, &p.payload[..]),
        ("a/b", 7, &b"hi"[..])
    );
    let P5::Publish(p) = v5(publish("a/b", 2, 9, b"hi", V5)) else {
        panic!()
    };
    assert_eq!(
        (&p.topic[..], p.pkid, &p.payload[..]),
        (&b"a/b"[..], 9, &b"hi"[..])
    );

    let P4::Subscribe(s) = v4(subscribe(3, "plant/#", 1, V311)) else {
        panic!()
    };
    assert_eq!((s.pkid, s.filters[0].path.as_str()), (3, "plant/#"));
    let P5::Subscribe(s) = v5(subscribe(3, "plant/#", 1, V5)) else {
        panic!()
    };
    assert_eq!((s.pkid, s.filters[0].path.as_str()), (3, "plant/#"));

    assert!(matches!(v4(puback(5, V311)), P4::PubAck(a) if a.pkid == 5));
    assert!(matches!(v5(puback(5, V5)), P5::PubAck(a) if a.pkid == 5));
    assert!(matches!(v4(pingreq().to_vec()), P4::PingReq));
    assert!(matches!(v4(disconnect(V311)), P4::Disconnect));
    // rumqttc's v5 decoder refuses the (legal) zero-length DISCONNECT; rumqttd takes it.
    assert_eq!(disconnect(V5), disconnect(V311));
}

#[test]
fn publish_round_trips_in_both_versions() {
    for version in [V311, V5] {
        for qos in 0..=2 {
            let bytes = publish("plant/boiler-1/temp", qos, 42, b"21.4", version);
            let expected = Incoming::Publish {
                topic: "plant/boiler-1/temp",
                qos,
                packet_id: (qos > 0).then_some(42),
                payload: b"21.4",
            };
            assert_eq!(
                roundtrip(&bytes, version),
                expected,
                "{version:?} qos {qos}"
            );
        }
    }
}

#[test]
fn server_packets_parse_in_both_versions() {
    let cases: [(&[u8], Version, Incoming); 13] = [
        (b"\x20\x02\x00\x05", V311, Incoming::ConnAck { code: 5 }),
        (b"\x20\x03\x01\x00\x00", V5, Incoming::ConnAck { code: 0 }),
        (
            b"\x20\x06\x00\x87\x03\x21\x00\x0a",
            V5,
            Incoming::ConnAck { code: 0x87 },
        ),
        (&puback(9, V311), V311, Incoming::PubAck { packet_id: 9 }),
        (
            b"\x40\x04\x01\x02\x10\x00",
            V5,
            Incoming::PubAck { packet_id: 258 },
        ),
        (b"\x50\x02\x00\x03", V311, Incoming::PubRec { packet_id: 3 }),
        (b"\x70\x02\x00\x03", V5, Incoming::PubComp { packet_id: 3 }),
        (
            b"\x90\x03\x00\x04\x01",
            V311,
            Incoming::SubAck { packet_id: 4 },
        ),
        (
            b"\x90\x04\x00\x04\x00\x01",
            V5,
            Incoming::SubAck { packet_id: 4 },
        ),
        (b"\xd0\x00", V311, Incoming::PingResp),
        (b"\xe0\x00", V311, Incoming::Disconnect { reason: None }),
        (b"\xe0\x00", V5, Incoming::Disconnect { reason: Some(0) }),
        (
            b"\xe0\x01\x8e",
            V5,
            Incoming::Disconnect { reason: Some(0x8e) },
        ),
    ];
    for (bytes, version, expected) in cases {
        assert_eq!(roundtrip(bytes, version), expected, "{bytes:02x?}");
    }
    assert_eq!(
        roundtrip(b"\x62\x02\x00\x01", V311),
        Incoming::Other { packet_type: 6 }
    );
}

#[test]
fn remaining_length_boundaries() {
    // (remaining length, header bytes): one more byte of header at each boundary.
    for (len, header) in [(127, 2), (128, 3), (16_383, 3), (16_384, 4)] {
        let payload = vec![0xa5; len - 2 - 1]; // topic "t" takes 3 bytes
        let bytes = publish("t", 0, 0, &payload, V311);
        assert_eq!(bytes.len(), header + len);
        let parsed = roundtrip(&bytes, V311);
        assert!(matches!(parsed, Incoming::Publish { payload: p, .. } if p.len() == payload.len()));
        assert_eq!(
            packet_len(&bytes, bytes.len() - 1),
            Err(WireError::TooBig(bytes.len()))
        );
    }
    // The limit applies from the header alone, before the body arrives.
    assert_eq!(
        packet_len(b"\x30\xff\xff\x7f", 1024),
        Err(WireError::TooBig(2_097_155))
    );
    assert_eq!(packet_len(b"\x30\xff\xff\xff\x7f", usize::MAX), Ok(None));
}

#[test]
fn malformed_input_is_an_error() {
    let bad_len = Err(WireError::RemainingLength);
    assert_eq!(packet_len(b"\x30\xff\xff\xff\xff\x01", usize::MAX), bad_len);
    assert_eq!(packet_len(b"\x30\x80\x00", usize::MAX), bad_len); // padded zero
    assert_eq!(parse(b"\x30\x80", V311), Err(WireError::RemainingLength));
    let malformed = |b: &[u8], v| matches!(parse(b, v), Err(WireError::Malformed(_)));
    for (bytes, version) in [
        (&b""[..], V311),
        (b"\x00\x00", V311),                  // packet type 0
        (b"\x20\x02\x00", V311),              // shorter than its length
        (b"\x20\x01\x00\x00", V311),          // longer than its length
        (b"\x20\x03\x00\x00\x00", V311),      // 3.1.1 CONNACK with a tail
        (b"\x20\x03\x00\x00\x05", V5),        // properties longer than the packet
        (b"\x36\x05\x00\x01t\x00\x01", V311), // QoS 3
        (b"\x32\x03\x00\x01t", V311),         // QoS 1 without a packet id
        (b"\x30\x03\x00\x05t", V311),         // topic longer than the packet
        (b"\x30\x04\x00\x02\xff\xfe", V311),  // topic not UTF-8
        (b"\x42\x02\x00\x01", V311),          // reserved flags set
        (b"\x40\x03\x00\x01\x00", V311),      // 3.1.1 PUBACK with a tail
        (b"\x90\x02\x00\x01", V311),          // SUBACK without return codes
        (b"\xd0\x01\x00", V311),              // PINGRESP with a body
        (b"\xe0\x01\x00", V311),              // 3.1.1 DISCONNECT with a body
    ] {
        assert!(malformed(bytes, version), "{bytes:02x?} {version:?}");
    }
}

/// Every 1-3 byte input and a large random sample of longer ones: errors, never panics.
#[test]
fn parse_never_panics() {
    use rand::{Rng, SeedableRng};
    let check = |bytes: &[u8]| {
        let _ = packet_len(bytes, 1 << 16);
        let _ = parse(bytes, V311);
        let _ = parse(bytes, V5);
    };
    for a in 0..=255u8 {
        check(&[a]);
        for b in 0..=255u8 {
            check(&[a, b]);
            check(&[a, 1, b]);
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..200_000 {
        let len = rng.random_range(2..24);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        bytes[1] = (len - 2) as u8; // a consistent length, to reach the body decoders
        check(&bytes);
    }
}

#[tokio::test]
async fn read_packet_splits_a_stream() {
    let mut stream = publish("a", 1, 1, b"x", V311);
    stream.extend_from_slice(&pingreq());
    let mut r = &stream[..];
    let mut buf = BytesMut::new();
    let first = read_packet(&mut r, &mut buf, 1024).await.expect("reads");
    assert_eq!(first.as_deref(), Some(&publish("a", 1, 1, b"x", V311)[..]));
    let second = read_packet(&mut r, &mut buf, 1024).await.expect("reads");
    assert_eq!(second.as_deref(), Some(&pingreq()[..]));
    assert!(read_packet(&mut r, &mut buf, 1024)
        .await
        .expect("eof")
        .is_none());

    let mut truncated = &stream[..3];
    let err = read_packet(&mut truncated, &mut BytesMut::new(), 1024).await;
    assert_eq!(err.map_err(|e| e.kind()), Err(io::ErrorKind::UnexpectedEof));
}
