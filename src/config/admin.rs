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
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
