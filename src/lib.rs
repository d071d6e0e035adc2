//! portcullis: an edge gateway that lets IoT devices behind corporate firewalls reach an
//! internal MQTT broker and TCP collectors over WebSocket, through whatever WAFs and
//! TLS-terminating load balancers sit on the way.
//!
//! `run(config, shutdown)` is the whole program; `main.rs` only parses arguments. The data
//! path reads top to bottom in [`pipeline`].

#![forbid(unsafe_code)]

// Builds: the default is everything; `--no-default-features --features agent` is the device
// agent (and `probe`) alone, without the gateway's dependencies (pingora, governor, hyper server).
#[cfg(feature = "gateway")]
pub mod admin;
#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "gateway")]
pub mod auth;
#[cfg(feature = "gateway")]
pub mod cluster;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod device_token;
pub mod error;
pub mod forward;
#[cfg(feature = "gateway")]
pub mod gateway;
#[cfg(feature = "gateway")]
pub mod handshake;
pub mod healthcheck;
pub mod http1;
#[cfg(feature = "gateway")]
pub mod identify;
#[cfg(feature = "gateway")]
pub mod listener;
pub mod mqtt;
#[cfg(feature = "gateway")]
pub mod pipeline;
#[cfg(feature = "gateway")]
pub mod policy;
pub mod probe;
pub mod secret;
pub mod shutdown;
#[cfg(feature = "gateway")]
pub mod store;
pub mod stream;
pub mod telemetry;

#[cfg(feature = "gateway")]
pub use config::Config;
#[cfg(feature = "gateway")]
pub use gateway::{run, Gateway};
