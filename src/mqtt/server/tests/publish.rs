use bytes::Bytes;
use rumqttc::mqttbytes::v4::Publish as Pub4;
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::v5::mqttbytes::v5::{Publish as Pub5, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as Q5;

use super::*;

const TOPIC: &str = "plant/boiler-1/temp";

fn pub4(qos: Q4, dup: bool, retain: bool, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Pub4::new(TOPIC, qos, payload.to_vec());
    (p.dup, p.retain, p.pkid) = (dup, retain, pkid);
    v4(P4::Publish(p))
}

fn pub5(
    topic: &str,
    qos: Q5,
    pkid: u16,
    payload: &[u8],
    props: Option<PublishProperties>,
) -> Vec<u8> {
    let mut p = Pub5::new(topic, qos, payload.to_vec(), props);
    (p.dup, p.retain, p.pkid) = (qos != Q5::AtMostOnce, true, pkid);
    v5(P5::Publish(p))
}

fn publish(bytes: &[u8], version: Version) -> Publish<'_> {
    match device(bytes, version) {
        DevicePacket::Publish(p) => p,
        other => panic!("not a PUBLISH: {other:?}"),
    }
}

fn alias(n: u16) -> PublishProperties {
    PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    }
}

/// Every property a client may put on a PUBLISH, around a topic alias.
fn all_props(topic_alias: Option<u16>) -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(86_400),
        topic_alias,
        response_topic: Some("plant/replies/boiler-1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00req-42\xff")),
        user_properties: vec![("unit".into(), "degC".into()), ("seq".into(), "7".into())],
        subscription_identifiers: vec![],
        content_type: Some("text/plain".into()),
    }
}

#[test]
fn v311_publish_every_qos_dup_and_retain() {
    let payload = b"21.4";
    for (qos, pkid) in [
        (Q4::AtMostOnce, 0),
        (Q4::AtLeastOnce, 7),
        (Q4::ExactlyOnce, 65_535),
    ] {
        for (dup, retain) in [(false, false), (true, false), (false, true), (true, true)] {
            if dup && qos == Q4::AtMostOnce {
                continue; // forbidden, see `malformed`
            }
            let bytes = pub4(qos, dup, retain, pkid, payload);
            let p = publish(&bytes, V311);
            let q = qos as u8;
            assert_eq!((p.dup, p.qos, p.retain), (dup, q, retain), "{bytes:02x?}");
            assert_eq!((p.topic, p.packet_id), (TOPIC, (q > 0).then_some(pkid)));
            assert_eq!((p.topic_alias, p.payload_len), (None, payload.len()));
            assert_eq!(&bytes[bytes.len() - p.payload_len..], payload);
        }
    }
    // Empty payload; a payload at a remaining-length boundary.
    assert_eq!(
        publish(&pub4(Q4::AtLeastOnce, false, false, 1, b""), V311).payload_len,
        0
    );
    let big = vec![0xa5; 300];
    assert_eq!(
        publish(&pub4(Q4::AtMostOnce, false, false, 0, &big), V311).payload_len,
        300
    );
}

#[test]
fn v5_publish_with_alias_and_other_properties() {
    let payload = b"{\"t\":21.4}";
    for qos in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce] {
        let q = qos as u8;
        let pkid = if q > 0 { 300 } else { 0 };
        let cases = [
            (TOPIC, None, None),
            (TOPIC, Some(alias(3)), Some(3)),
            ("", Some(alias(3)), Some(3)),
            (TOPIC, Some(all_props(None)), None),
            (TOPIC, Some(all_props(Some(65_535))), Some(65_535)),
            ("", Some(all_props(Some(1))), Some(1)),
        ];
        for (topic, props, topic_alias) in cases {
            let bytes = pub5(topic, qos, pkid, payload, props);
            let p = publish(&bytes, V5);
            assert_eq!((p.dup, p.qos, p.retain), (q > 0, q, true));
            assert_eq!((p.topic, p.packet_id), (topic, (q > 0).then_some(pkid)));
            assert_eq!((p.topic_alias, p.payload_len), (topic_alias, payload.len()));
            assert_eq!(&bytes[bytes.len() - p.payload_len..], payload);
        }
    }
}

/// Re-parse the rewritten packet: equal to the original apart from the topic and the layout,
/// and rumqttc reads the new topic, the same properties and the same payload.
fn check_rewrite(bytes: &[u8], version: Version, new_topic: &str) {
    let original = publish(bytes, version);
    let out = publish_with_topic(bytes, &original, new_topic);
    let rewritten = publish(&out, version);
    let expected = Publish {
        topic: new_topic,
        layout: rewritten.layout,
        ..original
    };
    assert_eq!(rewritten, expected);
    assert_eq!(out[0], bytes[0], "flags unchanged");
    let (old_end, new_end) = (
        bytes.len() - original.payload_len,
        out.len() - rewritten.payload_len,
    );
    assert_eq!(out[new_end..], bytes[old_end..], "payload intact");
    match version {
        V311 => {
            let (P4::Publish(a), P4::Publish(b)) = (read_v4(bytes), read_v4(&out)) else {
                panic!("rumqttc reads no PUBLISH");
            };
            assert_eq!(b.topic, new_topic);
            assert_eq!(
                Pub4 {
                    topic: a.topic.clone(),
                    ..b
                },
                a
            );
        }
        V5 => {
            let (P5::Publish(a), P5::Publish(b)) = (read_v5(bytes), read_v5(&out)) else {
                panic!("rumqttc reads no PUBLISH");
            };
            assert_eq!(&b.topic[..], new_topic.as_bytes());
            assert_eq!(
                Pub5 {
                    topic: a.topic.clone(),
                    ..b
                },
                a
            );
        }
    }
}

#[test]
fn publish_with_topic_rewrites_only_the_topic() {
    let long = "plant/".repeat(30); // 180 bytes: moves the remaining length across 127
    for (qos, pkid) in [
        (Q4::AtMostOnce, 0),
        (Q4::AtLeastOnce, 9),
        (Q4::ExactlyOnce, 10),
    ] {
        let bytes = pub4(qos, qos != Q4::AtMostOnce, true, pkid, b"payload");
        for topic in ["x", TOPIC, &long] {
            check_rewrite(&bytes, V311, topic);
        }
        let bytes = pub4(qos, false, false, pkid, &[0x5a; 120]);
        for topic in ["x", &long] {
            check_rewrite(&bytes, V311, topic);
        }
    }
    for (qos, pkid) in [
        (Q5::AtMostOnce, 0),
        (Q5::AtLeastOnce, 9),
        (Q5::ExactlyOnce, 10),
    ] {
        // The alias re-expansion case: an alias-only PUBLISH gets its topic back, alias kept.
        for props in [alias(4), all_props(Some(4))] {
            let bytes = pub5("", qos, pkid, b"\x00\x01binary\xff", Some(props));
            check_rewrite(&bytes, V5, TOPIC);
            check_rewrite(&bytes, V5, &long);
        }
        let bytes = pub5(TOPIC, qos, pkid, &[0x5a; 120], None);
        check_rewrite(&bytes, V5, "y");
        check_rewrite(&bytes, V5, &long);
    }
}

#[test]
fn malformed_publishes() {
    let cases: [(&[u8], Version, &str); 17] = [
        (b"\x36\x05\x00\x01t\x00\x01", V311, "QoS 3"),
        (b"\x38\x03\x00\x01t", V311, "DUP on QoS 0"),
        (b"\x32\x05\x00\x01t\x00\x00", V311, "packet id 0"),
        (b"\x34\x05\x00\x01t\x00\x00", V311, "packet id 0, QoS 2"),
        (b"\x32\x04\x00\x01t\x00", V311, "packet id cut short"),
        (b"\x30\x05\x00\x03a/+", V311, "single-level wildcard"),
        (b"\x30\x05\x00\x03a/#", V311, "multi-level wildcard"),
        (b"\x30\x05\x00\x03a\x00b", V311, "U+0000"),
        (b"\x30\x04\x00\x02\xc3\x28", V311, "invalid UTF-8"),
        (b"\x30\x05\x00\x03\xed\xa0\x80", V311, "UTF-16 surrogate"),
        (b"\x30\x03\x00\x05t", V311, "topic longer than the packet"),
        (b"\x30\x02\x00\x00", V311, "empty topic (3.1.1)"),
        (b"\x30\x03\x00\x00\x00", V5, "empty topic without alias"),
        (b"\x30\x06\x00\x00\x03\x23\x00\x00", V5, "alias 0"),
        (
            b"\x30\x0a\x00\x01t\x06\x23\x00\x01\x23\x00\x02",
            V5,
            "alias twice",
        ),
        (
            b"\x30\x07\x00\x01t\x04\x23\x00\x01",
            V5,
            "properties past the packet",
        ),
        (b"\x30\x05\x00\x01t\x01\x23", V5, "alias cut short"),
    ];
    for (bytes, version, what) in cases {
        assert!(is_malformed(bytes, version), "{what}: {bytes:02x?}");
    }
    // The same packets without the fault parse (so each case tests one thing).
    for (bytes, version) in [
        (&b"\x30\x03\x00\x01t"[..], V311),
        (b"\x32\x05\x00\x01t\x00\x01", V311),
        (b"\x30\x05\x00\x03a/b", V311),
        (b"\x30\x06\x00\x00\x03\x23\x00\x01", V5),
        (b"\x30\x04\x00\x01t\x00", V5),
        (b"\x30\x09\x00\x01t\x05\x01\x01\x23\x00\x01", V5),
    ] {
        assert!(parse_device(bytes, version).is_ok(), "{bytes:02x?}");
    }
}
