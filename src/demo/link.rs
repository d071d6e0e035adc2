//! A simulated device's MQTT 3.1.1 session, over a WebSocket to the gateway or, for a legacy
//! device, plain TCP to the agent. Shared by the well-behaved devices and the abusers, which
//! speak exactly the same protocol.

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;

use super::transport::{Endpoint, Transport};
use super::MAX_PACKET;
use crate::mqtt::wire::{self, Incoming, Version};

const V: Version = Version::V311;
const KEEP_ALIVE_SECS: u16 = 30;
/// CONNACK and every PUBACK must come within this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a link stopped carrying packets.
#[derive(Debug)]
pub enum LinkError {
    /// The gateway closed the WebSocket, with this close code and reason. On MQTT 3.1.1 that is
    /// how a device learns it was kicked: the protocol has no server DISCONNECT.
    Closed {
        code: u16,
        reason: String,
    },
    Failed(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Closed { code, reason } => write!(f, "the gateway closed ({code} {reason})"),
            LinkError::Failed(e) => f.write_str(e),
        }
    }
}

impl From<LinkError> for String {
    fn from(e: LinkError) -> String {
        e.to_string()
    }
}

/// MQTT packets over a transport. A packet may span WebSocket frames or TCP reads, or one of
/// those hold several: nothing on the way promises otherwise, so bytes are buffered and
/// delimited here.
pub struct Link {
    transport: Transport,
    buf: BytesMut,
}

impl Link {
    /// Connect to `to` and CONNECT as `client_id`. Returns the CONNACK's code (0 is accepted);
    /// after a refusal the other end closes, so the link is only good for dropping.
    pub async fn connect(to: Endpoint, client_id: &str) -> Result<(Link, u8), String> {
        let mut link = Link {
            transport: Transport::open(to).await?,
            buf: BytesMut::new(),
        };
        link.transport
            .send(wire::connect(client_id, KEEP_ALIVE_SECS, V))
            .await?;
        let connack = link.recv().await?;
        match wire::parse(&connack, V) {
            Ok(Incoming::ConnAck { code }) => Ok((link, code)),
            other => Err(format!("expected a CONNACK, got {other:?}")),
        }
    }

    /// Publish one QoS 1 reading and wait for its PUBACK, whoever sends it: the broker, or the
    /// gateway when it discarded the reading (on MQTT 3.1.1 the two look the same).
    pub async fn publish(
        &mut self,
        topic: &str,
        packet_id: u16,
        payload: &str,
    ) -> Result<(), LinkError> {
        self.transport
            .send(wire::publish(topic, 1, packet_id, payload.as_bytes(), V))
            .await?;
        // Nothing but this PUBACK is expected on a publish-only session; skip anything else.
        loop {
            let packet = self.recv().await?;
            if wire::parse(&packet, V) == Ok(Incoming::PubAck { packet_id }) {
                return Ok(());
            }
        }
    }

    /// The next MQTT packet from the broker, within the reply timeout.
    async fn recv(&mut self) -> Result<BytesMut, LinkError> {
        tokio::time::timeout(REPLY_TIMEOUT, self.next_packet())
            .await
            .map_err(|_| {
                LinkError::Failed(format!("no reply from the broker within {REPLY_TIMEOUT:?}"))
            })?
    }

    /// The next MQTT packet, however long it takes. Cancel-safe: a partial packet stays
    /// buffered, so this can wait in a `select!` next to a timer.
    pub async fn next_packet(&mut self) -> Result<BytesMut, LinkError> {
        loop {
            let len = wire::packet_len(&self.buf, MAX_PACKET)
                .map_err(|e| LinkError::Failed(e.to_string()))?;
            if let Some(n) = len {
                return Ok(self.buf.split_to(n));
            }
            self.transport.receive(&mut self.buf).await?;
        }
    }

    /// MQTT DISCONNECT, then close. Best effort: the device is leaving anyway.
    pub async fn close(mut self) {
        let _ = self.transport.send(wire::disconnect(V)).await;
        // Wait (briefly) for the gateway to end the connection: by then it has released this
        // client ID's connection slot, so a reconnect right after is not "one too many".
        let _ = tokio::time::timeout(Duration::from_secs(1), self.transport.close()).await;
    }
}
