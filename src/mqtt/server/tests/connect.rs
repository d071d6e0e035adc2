use rumqttc::mqttbytes::v4::{Connect as C4, LastWill as Will4, Login as Login4};
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::v5::mqttbytes::v5::{
    Connect as C5, ConnectProperties, LastWill as Will5, LastWillProperties, Login as Login5,
};
use rumqttc::v5::mqttbytes::QoS as Q5;

use super::*;

fn c4(id: &str, keep_alive: u16, clean: bool) -> C4 {
    let mut c = C4::new(id);
    c.keep_alive = keep_alive;
    c.clean_session = clean;
    c
}

fn c5(id: &str, keep_alive: u16, clean: bool, props: Option<ConnectProperties>) -> C5 {
    C5 {
        keep_alive,
        client_id: id.into(),
        clean_start: clean,
        properties: props,
    }
}

fn expect<'a>(
    version: Version,
    client_id: &'a str,
    username: Option<&'a str>,
    will: bool,
) -> Connect<'a> {
    Connect {
        version,
        client_id,
        username,
        keep_alive: 30,
        clean_start: true,
        will,
    }
}

#[test]
fn v311_connect_with_and_without_credentials_and_will() {
    let plain = v4(P4::Connect(c4("dev-1", 30, true)));
    let expected = expect(V311, "dev-1", None, false);
    assert_eq!(device(&plain, V311), DevicePacket::Connect(expected));
    // The session version does not matter: CONNECT carries its own level.
    assert_eq!(device(&plain, V5), DevicePacket::Connect(expected));

    let mut c = c4("dev-2", 30, true);
    c.login = Some(Login4::new("tenant-a", "s3cret"));
    let expected = expect(V311, "dev-2", Some("tenant-a"), false);
    assert_eq!(
        device(&v4(P4::Connect(c)), V311),
        DevicePacket::Connect(expected)
    );

    // rumqttc omits an empty password: user name only.
    let mut c = c4("dev-3", 30, true);
    c.login = Some(Login4::new("tenant-a", ""));
    let expected = expect(V311, "dev-3", Some("tenant-a"), false);
    assert_eq!(
        device(&v4(P4::Connect(c)), V311),
        DevicePacket::Connect(expected)
    );

    for (qos, retain) in [
        (Q4::AtMostOnce, false),
        (Q4::AtLeastOnce, true),
        (Q4::ExactlyOnce, false),
    ] {
        let mut c = c4("dev-4", 30, true);
        c.last_will = Some(Will4::new(
            "plant/dev-4/status",
            b"offline".to_vec(),
            qos,
            retain,
        ));
        c.login = Some(Login4::new("u", "p"));
        let expected = expect(V311, "dev-4", Some("u"), true);
        assert_eq!(
            device(&v4(P4::Connect(c)), V311),
            DevicePacket::Connect(expected)
        );
    }

    let bytes = v4(P4::Connect(c4("", 0, false)));
    let parsed = device(&bytes, V311);
    let expected = Connect {
        client_id: "",
        keep_alive: 0,
        clean_start: false,
        ..expect(V311, "", None, false)
    };
    assert_eq!(parsed, DevicePacket::Connect(expected));
}

#[test]
fn v5_connect_with_properties_will_and_login() {
    let plain = v5(P5::Connect(c5("dev-5", 30, true, None), None, None));
    let expected = expect(V5, "dev-5", None, false);
    assert_eq!(device(&plain, V311), DevicePacket::Connect(expected));

    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    props.receive_maximum = Some(20);
    props.max_packet_size = Some(65_536);
    props.topic_alias_max = Some(10);
    props.request_response_info = Some(1);
    props.request_problem_info = Some(0);
    props.user_properties = vec![("site".into(), "plant-7".into()), ("k".into(), "".into())];
    props.authentication_method = Some("SCRAM-SHA-1".into());
    props.authentication_data = Some(bytes::Bytes::from_static(b"\x00\x01\xff"));
    let will_props = LastWillProperties {
        delay_interval: Some(5),
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("plant/replies".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        user_properties: vec![("a".into(), "b".into())],
    };
    let will = Will5::new(
        "plant/dev-6/status",
        b"gone".to_vec(),
        Q5::AtLeastOnce,
        true,
        Some(will_props),
    );
    let bytes = v5(P5::Connect(
        c5("dev-6", 30, true, Some(props)),
        Some(will),
        Some(Login5::new("tenant-b", "pw")),
    ));
    let expected = expect(V5, "dev-6", Some("tenant-b"), true);
    assert_eq!(device(&bytes, V311), DevicePacket::Connect(expected));

    // A will without properties, and a password without a user name (legal in 5 only).
    let will = Will5::new("t", b"".to_vec(), Q5::AtMostOnce, false, None);
    let bytes = v5(P5::Connect(
        c5("dev-7", 30, true, None),
        Some(will),
        Some(Login5::new("", "pw")),
    ));
    let expected = expect(V5, "dev-7", None, true);
    assert_eq!(device(&bytes, V311), DevicePacket::Connect(expected));
}

#[test]
fn mqtt_3_1_connect_is_v311() {
    // 3.1 ("MQIsdp", level 3), as old Paho/Arduino clients send it: clean session, user "u".
    let bytes = b"\x10\x15\x00\x06MQIsdp\x03\x82\x00\x3c\x00\x04dev8\x00\x01u";
    let expected = Connect {
        keep_alive: 60,
        ..expect(V311, "dev8", Some("u"), false)
    };
    assert_eq!(device(bytes, V311), DevicePacket::Connect(expected));
}

#[test]
fn malformed_connects() {
    let good = v4(P4::Connect(c4("dev", 30, true)));
    assert!(!is_malformed(&good, V311));
    // Offsets in `good`: 2..8 "\0\x04MQTT", 8 level, 9 flags, 10..12 keep alive, 12.. client id.
    let with = |at: usize, byte: u8| {
        let mut b = good.clone();
        b[at] = byte;
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("flags in the fixed header", with(0, 0x11)),
        ("protocol name", with(7, b'X')),
        ("level 3 with \"MQTT\"", with(8, 3)),
        ("level 6", with(8, 6)),
        ("bridge bit", with(8, 0x84)),
        ("reserved connect flag", with(9, 0x03)),
        ("will QoS without a will", with(9, 0x0a)),
        ("will retain without a will", with(9, 0x22)),
        ("password without user name (3.1.1)", {
            let mut c = c4("dev", 30, true);
            c.login = Some(Login4::new("", "pw"));
            v4(P4::Connect(c))
        }),
        ("user name flag without a user name", with(9, 0x82)),
        ("trailing byte", {
            let mut b = good.clone();
            b[1] += 1;
            b.push(0);
            b
        }),
        ("client id not UTF-8", {
            let mut b = good.clone();
            b[14] = 0xff;
            b
        }),
        ("client id with U+0000", with(14, 0)),
        (
            "MQIsdp with level 4",
            b"\x10\x12\x00\x06MQIsdp\x04\x02\x00\x3c\x00\x04dev8".to_vec(),
        ),
    ];
    for (what, bytes) in &cases {
        assert!(is_malformed(bytes, V311), "{what}: {bytes:02x?}");
    }

    // A will QoS of 3, and a will topic with a wildcard.
    let mut c = c4("dev", 30, true);
    c.last_will = Some(Will4::new(
        "plant/+/status",
        b"x".to_vec(),
        Q4::AtLeastOnce,
        false,
    ));
    let bytes = v4(P4::Connect(c));
    assert!(is_malformed(&bytes, V311), "wildcard will topic");
    let mut c = c4("dev", 30, true);
    c.last_will = Some(Will4::new("s", b"x".to_vec(), Q4::AtLeastOnce, false));
    let mut bytes = v4(P4::Connect(c));
    assert!(!is_malformed(&bytes, V311));
    bytes[9] |= 0x18;
    assert!(is_malformed(&bytes, V311), "will QoS 3");

    // v5: a property block running past the packet, and an unknown property.
    let mut props = ConnectProperties::new();
    props.receive_maximum = Some(20);
    let mut bytes = v5(P5::Connect(c5("dev", 30, true, Some(props)), None, None));
    assert!(!is_malformed(&bytes, V5));
    // Offsets: 12 property length (3), 13 id 0x21, 14..16 value.
    assert_eq!(bytes[12..14], [3, 0x21]);
    bytes[12] = 4;
    assert!(is_malformed(&bytes, V5), "property length too long");
    bytes[12] = 2;
    assert!(is_malformed(&bytes, V5), "property length cuts a property");
    bytes[12] = 3;
    bytes[13] = 0x7f;
    assert!(is_malformed(&bytes, V5), "unknown property");
}
