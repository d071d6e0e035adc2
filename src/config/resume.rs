//! `[resume]`: tunnels that survive a dropped WebSocket (the agent and the gateway resume
//! them; see `forward::resume`). On by default; it costs nothing until an agent offers it.
//! Fixed at start.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// This gateway's name, told to the agent (which node holds its tunnel). Absent: the
    /// cluster's node name, else the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// Replay buffer per direction per tunnel: what was sent and not yet acknowledged. The
    /// tunnel reads no more while it is full.
    #[serde(default = "window_bytes")]
    pub window_bytes: usize,
    /// How long a dropped tunnel keeps its upstream connection for a resume. Keep it below the
    /// broker's keep-alive × 1.5, or the broker ends the session first.
    #[serde(default = "grace_secs")]
    pub grace_secs: u64,
    /// Resumable tunnels held at once (live or parked); more are plain tunnels.
    #[serde(default = "max_sessions")]
    pub max_sessions: usize,
}

fn yes() -> bool {
    true
}
fn window_bytes() -> usize {
    crate::forward::resume::DEFAULT_WINDOW
}
fn grace_secs() -> u64 {
    60
}
fn max_sessions() -> usize {
    10_000
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings {
            enabled: true,
            node: None,
            window_bytes: window_bytes(),
            grace_secs: grace_secs(),
            max_sessions: max_sessions(),
        }
    }
}

impl ResumeSettings {
    /// The error is `(key, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("resume.{k}"), m.to_owned()));
        if !(4096..=64 << 20).contains(&self.window_bytes) {
            return bad("window_bytes", "must be between 4096 and 67108864 (64 MiB)");
        }
        if !(1..=3600).contains(&self.grace_secs) {
            return bad("grace_secs", "must be between 1 and 3600");
        }
        if !(1..=1_000_000).contains(&self.max_sessions) {
            return bad("max_sessions", "must be between 1 and 1000000");
        }
        if let Some(n) = &self.node {
            let ok = (1..=64).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return bad("node", "must be 1-64 of A-Z a-z 0-9 - _ .");
            }
        }
        Ok(())
    }
}
