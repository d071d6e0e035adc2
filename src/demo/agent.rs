//! The device agent, in-process, for the legacy device: a local plain-TCP listener, and each
//! connection to it carried in its own masked WebSocket to the gateway's tunnel route.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::{Agent, AgentConfig, StatusSnapshot};

/// The gateway route the agent tunnels to: opaque to the gateway, so its policy never sees
/// the legacy device's MQTT.
pub const PATH: &str = "/tunnel/telemetry";

pub struct DemoAgent {
    agent: Agent,
    /// Where the legacy device connects.
    pub addr: SocketAddr,
}

/// Listen on a free 127.0.0.1 port, tunnelling to the gateway at `gateway`.
///
/// `ws://`: the demo gateway has no TLS (a deployed agent dials `wss://`). No periodic status
/// lines: the demo prints one at the end. No proxy from the environment: everything here is
/// on 127.0.0.1, and a developer's `http_proxy` must not catch it.
/// `token` is the legacy device's signed device token (sent as `Authorization: Bearer`).
pub async fn start(gateway: SocketAddr, token: &str) -> Result<DemoAgent, String> {
    let config = AgentConfig::parse(
        &format!(
            r#"
status_interval_secs = 0

[[tunnel]]
listen = "127.0.0.1:0"
url = "ws://{gateway}{PATH}"

[proxy]
from_env = false

[device]
token = "{token}"
"#
        ),
        None,
    )
    .map_err(|e| format!("agent config: {e}"))?;
    let agent = Agent::start(config).await?;
    let Some(&addr) = agent.local_addrs().first() else {
        return Err("the agent has no listener".into());
    };
    Ok(DemoAgent { agent, addr })
}

impl DemoAgent {
    /// The status once the legacy device's tunnel has ended, then shut down.
    pub async fn finish(self) -> StatusSnapshot {
        // The device has disconnected, but the agent counts a tunnel's bytes only when the
        // tunnel ends, a moment later: wait (briefly) for that, so the line is complete.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.agent.status().tunnels_up > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = self.agent.status();
        self.agent.shutdown().await;
        status
    }
}
