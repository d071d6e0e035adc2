//! `[admin]`: the admin API's own listener. Absent: no admin API at all.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Loopback by default: the API bans and kicks devices, it is not for the internet.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// `NAME:TOKEN` per line (`#` comments); re-read on SIGHUP. Required: there is no
    /// admin API without tokens.
    pub tokens_file: PathBuf,
    /// The dashboard at `/` (a login with one of the tokens, then pages over this API).
    #[serde(default = "default_dashboard")]
    pub dashboard: bool,
    /// How often `/api/v1/monitor` (and the dashboard's charts) takes a sample; an hour of
    /// samples is kept.
    #[serde(default = "default_monitor_interval_secs")]
    pub monitor_interval_secs: u64,
}

fn default_dashboard() -> bool {
    true
}

fn default_monitor_interval_secs() -> u64 {
    10
}

impl AdminSettings {
    /// The keys that differ from `running` and only take effect at a restart (all but the
    /// tokens file, which a reload re-reads).
    pub fn changed_needing_restart(&self, running: &AdminSettings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.bind != running.bind {
            changed.push("bind");
        }
        if self.dashboard != running.dashboard {
            changed.push("dashboard");
        }
        if self.monitor_interval_secs != running.monitor_interval_secs {
            changed.push("monitor_interval_secs");
        }
        changed
    }

    /// The error is `(key, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if !(1..=60).contains(&self.monitor_interval_secs) {
            return Err((
                "admin.monitor_interval_secs".into(),
                "must be between 1 and 60".into(),
            ));
        }
        Ok(())
    }
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// `[cluster]`: bans shared with the other gateways through Redis. Absent: this node alone.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// `redis://[:password@]host:port[/db]`.
    pub redis: String,
    /// This gateway's name in the cluster (`by = "peer:<node>"` on the others), unique per
    /// gateway. Absent: the host name (a container's or pod's is its own).
    #[serde(default)]
    pub node: Option<String>,
    /// A full resync this often, besides every (re)connect: pub/sub loses what is sent while
    /// a subscriber is away.
    #[serde(default = "default_resync_secs")]
    pub resync_secs: u64,
    /// Every key and the channel start with this, so clusters can share a Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

fn default_resync_secs() -> u64 {
    30
}

fn default_key_prefix() -> String {
    "portcullis".into()
}

impl ClusterSettings {
    /// `node`, or the host name; the error names the key.
    pub fn node_name(&self) -> Result<String, String> {
        if let Some(n) = &self.node {
            return Ok(n.clone());
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let ok = (1..=64).contains(&host.len())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if ok {
            Ok(host)
        } else {
            Err("cluster.node: not set, and the host name cannot serve (set node)".into())
        }
    }

    /// The error is `(key, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("cluster.{k}"), m.to_owned()));
        if !self.redis.starts_with("redis://") {
            return bad(
                "redis",
                "must be a redis:// URL (rediss:// is not built in)",
            );
        }
        let name_ok = |s: &str| {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if let Some(node) = &self.node {
            if !name_ok(node) {
                return bad("node", "must be 1-64 of A-Z a-z 0-9 - _ .");
            }
        }
        if !name_ok(&self.key_prefix) {
            return bad("key_prefix", "must be 1-64 of A-Z a-z 0-9 - _ .");
        }
        if !(1..=3600).contains(&self.resync_secs) {
            return bad("resync_secs", "must be between 1 and 3600");
        }
        Ok(())
    }
}

/// The URL's password never reaches a log.
impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = match (self.redis.find("://"), self.redis.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &self.redis[..scheme + 3], &self.redis[at..])
            }
            _ => self.redis.clone(),
        };
        f.debug_struct("ClusterSettings")
            .field("redis", &redacted)
            .field("node", &self.node)
            .field("resync_secs", &self.resync_secs)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}
