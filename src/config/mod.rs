//! Configuration: TOML, unknown keys refused, one `validate()` whose messages name the key.
//!
//! Durations are plain integers with the unit in the key name (`_secs`, `_ms`) so that a config
//! reads unambiguously without a duration grammar. The error type (with the key and line at
//! fault) is shared with the agent's config; the gateway's settings build only with the gateway.

#[cfg(feature = "gateway")]
mod admin;
#[cfg(feature = "gateway")]
mod auth;
#[cfg(feature = "gateway")]
mod gateway;
mod locate;
#[cfg(feature = "gateway")]
pub mod policy;
#[cfg(feature = "gateway")]
mod push;
#[cfg(feature = "gateway")]
mod resume;

#[cfg(feature = "gateway")]
pub use admin::{AdminSettings, ClusterSettings};
#[cfg(feature = "gateway")]
pub use auth::{AuthMode, AuthSettings, Binding, CertField, TokenAlg, TokenKey};
#[cfg(feature = "gateway")]
pub use gateway::*;
pub use locate::ConfigError;
#[cfg(feature = "gateway")]
pub use push::{PushSettings, RedirectRule};
#[cfg(feature = "gateway")]
pub use resume::ResumeSettings;
