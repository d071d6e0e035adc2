//! portcullis: an edge gateway that lets IoT devices behind corporate firewalls reach an
//! internal MQTT broker and TCP collectors over WebSocket, through whatever WAFs and
//! TLS-terminating load balancers sit on the way.
//!
//! `run(config, shutdown)` is the whole program; `main.rs` only parses arguments. The data
//! path reads top to bottom in [`pipeline`].

#![forbid(unsafe_code)]

pub mod agent;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod handshake;
pub mod identify;
pub mod listener;
pub mod mqtt;
pub mod pipeline;
pub mod policy;
pub mod shutdown;
pub mod stream;
pub mod telemetry;

pub use config::Config;
pub use gateway::{run, Gateway};
