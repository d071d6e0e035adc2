//! The server side checked against real client bytes: packets are written by rumqttc's own
//! encoders (a dev-dependency), and what we encode is read back by its decoders.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet as P4;
use rumqttc::v5::mqttbytes::v5::Packet as P5;

use super::*;
use crate::mqtt::wire::packet_len;
use Version::{V311, V5};

mod acks;
mod broker;
mod connect;
mod framer;
mod fuzz;
mod malformed;
mod publish;

/// rumqttc's 3.1.1 encoding of `p`.
fn v4(p: P4) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.write(&mut buf, 1 << 20).expect("rumqttc v4 encodes");
    buf.to_vec()
}

/// rumqttc's 5 encoding of `p`.
fn v5(p: P5) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.write(&mut buf, None).expect("rumqttc v5 encodes");
    buf.to_vec()
}

fn read_v4(bytes: &[u8]) -> P4 {
    let mut buf = BytesMut::from(bytes);
    let p = P4::read(&mut buf, 1 << 20).expect("rumqttc v4 decodes");
    assert!(buf.is_empty(), "rumqttc v4 left {buf:02x?}");
    p
}

fn read_v5(bytes: &[u8]) -> P5 {
    let mut buf = BytesMut::from(bytes);
    let p = P5::read(&mut buf, None).expect("rumqttc v5 decodes");
    assert!(buf.is_empty(), "rumqttc v5 left {buf:02x?}");
    p
}

/// Delimit `bytes` as the relay would (it must be exactly one packet), then parse it.
fn device(bytes: &[u8], version: Version) -> DevicePacket<'_> {
    assert_eq!(
        packet_len(bytes, 1 << 20),
        Ok(Some(bytes.len())),
        "one whole packet"
    );
    match parse_device(bytes, version) {
        Ok(p) => p,
        Err(e) => panic!("{e} for {bytes:02x?} ({version:?})"),
    }
}

fn broker(bytes: &[u8], version: Version) -> BrokerPacket {
    match parse_broker(bytes, version) {
        Ok(p) => p,
        Err(e) => panic!("{e} for {bytes:02x?} ({version:?})"),
    }
}

fn is_malformed(bytes: &[u8], version: Version) -> bool {
    matches!(parse_device(bytes, version), Err(WireError::Malformed(_)))
}
