//! Device packets a server must refuse (CONNECT and PUBLISH have their own, in their files).

use super::*;

#[test]
fn reserved_flags() {
    // (first byte with the correct flags, body): each must parse as is and fail with any
    // other low nibble.
    let cases: [(u8, &[u8], Version); 10] = [
        (0x40, b"\x00\x01", V311),              // PUBACK
        (0x50, b"\x00\x01", V311),              // PUBREC
        (0x62, b"\x00\x01", V311),              // PUBREL: 0b0010
        (0x70, b"\x00\x01", V311),              // PUBCOMP
        (0x82, b"\x00\x01\x00\x01t\x01", V311), // SUBSCRIBE: 0b0010
        (0xa2, b"\x00\x01\x00\x01t", V311),     // UNSUBSCRIBE: 0b0010
        (0xc0, b"", V311),                      // PINGREQ
        (0xe0, b"", V311),                      // DISCONNECT
        (0xe0, b"\x00", V5),                    // DISCONNECT
        (0xf0, b"", V5),                        // AUTH
    ];
    for (first, body, version) in cases {
        let len = u8::try_from(body.len()).expect("short");
        let packet = |first: u8| [&[first, len][..], body].concat();
        assert!(parse_device(&packet(first), version).is_ok(), "{first:02x}");
        for flags in (0..16).filter(|&f| f != first & 0x0f) {
            let bad = packet(first & 0xf0 | flags);
            assert!(is_malformed(&bad, version), "{bad:02x?}");
        }
    }
}

#[test]
fn packets_only_a_server_sends() {
    for (bytes, what) in [
        (&b"\x20\x02\x00\x00"[..], "CONNACK"),
        (b"\x90\x03\x00\x01\x00", "SUBACK"),
        (b"\xb0\x02\x00\x01", "UNSUBACK"),
        (b"\xd0\x00", "PINGRESP"),
        (b"\x00\x00", "reserved type 0"),
    ] {
        for version in [V311, V5] {
            let err = parse_device(bytes, version).expect_err(what);
            assert!(matches!(err, WireError::Malformed(_)), "{what}: {err:?}");
        }
    }
    assert!(is_malformed(b"\xf0\x00", V311), "AUTH is v5 only");
}

#[test]
fn bodies_that_do_not_fit() {
    let cases: [(&[u8], Version, &str); 26] = [
        (b"", V311, "empty"),
        (b"\x40", V311, "no remaining length"),
        (b"\x40\x02\x00", V311, "shorter than its length"),
        (b"\x40\x01\x00\x01", V311, "longer than its length"),
        (b"\x40\x00", V311, "ack without an id"),
        (b"\x40\x02\x00\x00", V311, "ack id 0"),
        (b"\x62\x02\x00\x00", V5, "PUBREL id 0"),
        (b"\x40\x03\x00\x01\x00", V311, "3.1.1 ack with a reason"),
        (
            b"\x40\x04\x00\x01\x00\x05",
            V5,
            "v5 ack properties past the end",
        ),
        (
            b"\x40\x06\x00\x01\x00\x01\x23\x00",
            V5,
            "v5 ack property cut short",
        ),
        (
            b"\x40\x05\x00\x01\x00\x00\x00",
            V5,
            "v5 ack bytes after its properties",
        ),
        (b"\x82\x02\x00\x01", V311, "SUBSCRIBE without filters"),
        (b"\x82\x03\x00\x01\x00", V5, "v5 SUBSCRIBE without filters"),
        (
            b"\x82\x05\x00\x01\x00\x01t",
            V311,
            "SUBSCRIBE filter without options",
        ),
        (b"\x82\x06\x00\x01\x00\x01t\x03", V311, "SUBSCRIBE QoS 3"),
        (
            b"\x82\x06\x00\x01\x00\x01t\x04",
            V311,
            "3.1.1 SUBSCRIBE v5 options",
        ),
        (
            b"\x82\x07\x00\x01\x00\x00\x01t\x30",
            V5,
            "SUBSCRIBE retain handling 3",
        ),
        (
            b"\x82\x07\x00\x01\x00\x00\x01t\x40",
            V5,
            "SUBSCRIBE reserved option bit",
        ),
        (
            b"\x82\x05\x00\x01\x00\x00\x00",
            V311,
            "SUBSCRIBE empty filter",
        ),
        (b"\x82\x06\x00\x00\x00\x01t\x00", V311, "SUBSCRIBE id 0"),
        (
            b"\x82\x06\x00\x01\x00\x01\xff\x00",
            V311,
            "SUBSCRIBE filter not UTF-8",
        ),
        (b"\xa2\x02\x00\x01", V311, "UNSUBSCRIBE without filters"),
        (
            b"\xa2\x04\x00\x01\x00\x00",
            V311,
            "UNSUBSCRIBE empty filter",
        ),
        (b"\xc0\x01\x00", V311, "PINGREQ with a body"),
        (b"\xe0\x01\x00", V311, "3.1.1 DISCONNECT with a body"),
        (
            b"\xe0\x03\x00\x05\x11",
            V5,
            "v5 DISCONNECT properties past the end",
        ),
    ];
    for (bytes, version, what) in cases {
        assert!(
            parse_device(bytes, version).is_err(),
            "{what}: {bytes:02x?}"
        );
    }
    // Control cases: the nearest valid packets.
    for (bytes, version) in [
        (&b"\x40\x03\x00\x01\x00"[..], V5),
        (b"\x40\x04\x00\x01\x00\x00", V5),
        (b"\x82\x06\x00\x01\x00\x01t\x02", V311),
        (b"\x82\x07\x00\x01\x00\x00\x01t\x2e", V5),
        (b"\x82\x0b\x00\x01\x00\x00\x01a\x01\x00\x01b\x02", V5),
        (b"\xa2\x05\x00\x01\x00\x01t", V311),
    ] {
        assert!(parse_device(bytes, version).is_ok(), "{bytes:02x?}");
    }
    assert_eq!(
        parse_device(b"\x40\x80", V311),
        Err(WireError::RemainingLength)
    );
    let padded = b"\x40\x82\x00\x00\x01";
    assert_eq!(parse_device(padded, V311), Err(WireError::RemainingLength));
}
