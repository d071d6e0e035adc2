//! The embedded broker: rumqttd, MQTT 3.1.1 on a free 127.0.0.1 port, on its own threads.
//!
//! rumqttd has no stop: its threads end with the process. `Broker::start()` blocks for as long
//! as the broker serves, so a finished thread means it failed (usually: the port was taken
//! between our pick and its bind) and the caller tries another port.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

pub struct EmbeddedBroker {
    pub addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Start serving in the background; it is up once something can connect to `addr`.
    pub fn spawn() -> Result<EmbeddedBroker, String> {
        let addr = free_port()?;
        let config = config(addr);
        let thread = std::thread::Builder::new()
            .name("demo-broker".into())
            .spawn(move || {
                // An error means no listener could start: `has_stopped()` reports it.
                let _ = rumqttd::Broker::new(config).start();
            })
            .map_err(|e| format!("cannot start the broker thread: {e}"))?;
        Ok(EmbeddedBroker { addr, thread })
    }

    pub fn has_stopped(&self) -> bool {
        self.thread.is_finished()
    }
}

/// A port that was free a moment ago (rumqttd binds by address, not by a listener we hand it).
fn free_port() -> Result<SocketAddr, String> {
    let probe = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    probe.local_addr().map_err(|e| e.to_string())
}

fn config(listen: SocketAddr) -> Config {
    let server = ServerSettings {
        name: "demo-broker".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 5_000,
            max_payload_size: 64 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Config::default()
    }
}
