//! Broker→device packets: only acks, PINGRESP and CONNACK are read; the rest pass as `Other`.

use rumqttc::mqttbytes::v4 as m4;
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::v5::mqttbytes::v5 as m5;
use rumqttc::v5::mqttbytes::QoS as Q5;

use super::*;

fn connack_props(topic_alias_max: Option<u16>) -> m5::ConnAckProperties {
    m5::ConnAckProperties {
        session_expiry_interval: Some(0),
        receive_max: Some(100),
        max_qos: Some(1),
        retain_available: Some(1),
        max_packet_size: Some(1 << 20),
        assigned_client_identifier: Some("auto-1".into()),
        topic_alias_max,
        reason_string: Some("welcome".into()),
        user_properties: vec![("node".into(), "b-1".into())],
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(1),
        server_keep_alive: Some(60),
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

#[test]
fn connack_in_both_versions() {
    let ack = m4::ConnAck::new(m4::ConnectReturnCode::NotAuthorized, false);
    let bytes = v4(P4::ConnAck(ack));
    let expected = BrokerPacket::ConnAck {
        code: 5,
        topic_alias_max: None,
    };
    assert_eq!(broker(&bytes, V311), expected);

    for (alias_max, session_present) in [(Some(10), true), (None, false), (Some(0), false)] {
        let ack = m5::ConnAck {
            session_present,
            code: m5::ConnectReturnCode::Success,
            properties: Some(connack_props(alias_max)),
        };
        let expected = BrokerPacket::ConnAck {
            code: 0,
            topic_alias_max: alias_max,
        };
        assert_eq!(broker(&v5(P5::ConnAck(ack)), V5), expected);
    }
    // Lenient: a v5 CONNACK with no property block at all.
    let expected = BrokerPacket::ConnAck {
        code: 0x87,
        topic_alias_max: None,
    };
    assert_eq!(broker(b"\x20\x02\x00\x87", V5), expected);
    // But a property block that does not walk is an error, not a silent "no maximum".
    assert!(parse_broker(b"\x20\x05\x00\x00\x02\x22\x00", V5).is_err());
    assert!(parse_broker(b"\x20\x07\x00\x00\x04\x22\x00\x01\x99", V5).is_err());
    assert!(parse_broker(b"\x20\x01\x00", V311).is_err());
}

#[test]
fn acks_and_pingresp() {
    let id = 77;
    assert_eq!(
        broker(&v4(P4::PubAck(m4::PubAck::new(id))), V311),
        BrokerPacket::PubAck(id)
    );
    assert_eq!(
        broker(&v4(P4::PubRec(m4::PubRec::new(id))), V311),
        BrokerPacket::PubRec(id)
    );
    assert_eq!(
        broker(&v4(P4::PubComp(m4::PubComp::new(id))), V311),
        BrokerPacket::PubComp(id)
    );
    assert_eq!(broker(&v4(P4::PingResp), V311), BrokerPacket::PingResp);

    let mut puback = m5::PubAck::new(id, None);
    puback.reason = m5::PubAckReason::QuotaExceeded;
    let props = m5::PubRecProperties {
        reason_string: Some("no".into()),
        user_properties: vec![],
    };
    let mut pubrec = m5::PubRec::new(id, Some(props));
    pubrec.reason = m5::PubRecReason::NotAuthorized;
    let mut pubcomp = m5::PubComp::new(id, None);
    pubcomp.reason = m5::PubCompReason::PacketIdentifierNotFound;
    assert_eq!(
        broker(&v5(P5::PubAck(puback)), V5),
        BrokerPacket::PubAck(id)
    );
    assert_eq!(
        broker(&v5(P5::PubRec(pubrec)), V5),
        BrokerPacket::PubRec(id)
    );
    assert_eq!(
        broker(&v5(P5::PubComp(pubcomp)), V5),
        BrokerPacket::PubComp(id)
    );
    assert_eq!(
        broker(&v5(P5::PingResp(m5::PingResp)), V5),
        BrokerPacket::PingResp
    );

    // Too short to hold an id; a body that does not match the remaining length.
    assert_eq!(
        parse_broker(b"\x40\x01\x00", V5),
        Err(WireError::Malformed("PUBACK"))
    );
    assert_eq!(
        parse_broker(b"\x40\x02\x00", V5),
        Err(WireError::Malformed("PUBACK"))
    );
    assert_eq!(
        parse_broker(b"\x40\x80", V5),
        Err(WireError::RemainingLength)
    );
}

#[test]
fn everything_else_is_other() {
    let mut publish = m4::Publish::new("cmd/dev-1", Q4::AtLeastOnce, b"on".to_vec());
    publish.pkid = 1;
    let suback = m4::SubAck::new(3, vec![m4::SubscribeReasonCode::Success(Q4::AtLeastOnce)]);
    let mut others = vec![
        v4(P4::Publish(publish)),
        v4(P4::SubAck(suback)),
        v4(P4::UnsubAck(m4::UnsubAck::new(4))),
        v4(P4::PubRel(m4::PubRel::new(5))),
    ];
    for bytes in &others {
        assert_eq!(broker(bytes, V311), BrokerPacket::Other, "{bytes:02x?}");
    }
    let mut publish = m5::Publish::new("cmd/dev-1", Q5::ExactlyOnce, b"on".to_vec(), None);
    publish.pkid = 2;
    let shut = m5::Disconnect {
        reason_code: m5::DisconnectReasonCode::ServerShuttingDown,
        properties: Some(m5::DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some("maintenance".into()),
            user_properties: vec![],
            server_reference: Some("b-2".into()),
        }),
    };
    others = vec![
        v5(P5::Publish(publish)),
        v5(P5::Disconnect(shut)),
        b"\xf0\x00".to_vec(),
    ];
    for bytes in &others {
        assert_eq!(broker(bytes, V5), BrokerPacket::Other, "{bytes:02x?}");
    }
}
