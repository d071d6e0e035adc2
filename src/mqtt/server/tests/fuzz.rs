//! Peer bytes never panic the parsers. Random bytes mostly die at the fixed header, so half the
//! inputs are valid packets with bytes flipped, which reach the body and property decoders.

use rand::{Rng, SeedableRng};

use super::*;
use crate::mqtt::wire;

/// Everything a peer can make us do with one packet; a PUBLISH is also rewritten and re-read.
fn check(bytes: &[u8]) {
    for version in [V311, V5] {
        if let Ok(DevicePacket::Publish(p)) = parse_device(bytes, version) {
            let out = publish_with_topic(bytes, &p, "re/written");
            let DevicePacket::Publish(q) = device(&out, version) else {
                panic!("rewrite of {bytes:02x?} is not a PUBLISH");
            };
            assert_eq!((q.topic, q.payload_len), ("re/written", p.payload_len));
        }
        let _ = parse_broker(bytes, version);
    }
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        wire::connect_with_username("dev", "user", 30, V311),
        wire::connect_with_username("dev", "user", 30, V5),
        b"\x10\x26\x00\x04MQTT\x05\xee\x00\x3c\x05\x11\x00\x00\x00\x10\x00\x01d\x05\x18\x00\x00\x00\x05\x00\x01t\x00\x01p\x00\x01u\x00\x02pw".to_vec(),
        wire::publish("a/b", 1, 7, b"hi", V311),
        b"\x3b\x13\x00\x01t\x00\x09\x0b\x0b\x01\x23\x00\x05\x26\x00\x01k\x00\x00xy".to_vec(),
        wire::subscribe(3, "a/#", 1, V5),
        b"\x62\x07\x00\x01\x92\x03\x1f\x00\x00".to_vec(),
        b"\x20\x06\x00\x00\x03\x22\x00\x0a".to_vec(),
        b"\xe0\x02\x8e\x00".to_vec(),
    ]
}

#[test]
fn parsers_never_panic() {
    for a in 0..=255u8 {
        check(&[a]);
        for b in 0..=255u8 {
            check(&[a, b]);
            check(&[a, 1, b]);
            check(&[a, 2, 0, b]);
        }
    }
    let seeds = seeds();
    for seed in &seeds {
        assert!(
            packet_len(seed, 1 << 10) == Ok(Some(seed.len())),
            "{seed:02x?}"
        );
        let parses = [V311, V5].iter().any(|&v| parse_device(seed, v).is_ok());
        assert!(parses || seed[0] >> 4 == 2, "{seed:02x?}"); // CONNACK: a broker seed
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6d71_7474);
    for i in 0..200_000 {
        let bytes = if i % 2 == 0 {
            let len = rng.random_range(2..40);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            bytes[1] = (len - 2) as u8; // a consistent length, to reach the body decoders
            bytes
        } else {
            let mut bytes = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(2..bytes.len());
                bytes[at] = rng.random();
            }
            bytes
        };
        check(&bytes);
    }
}
