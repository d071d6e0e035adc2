//! Stage 5, forward: `Session` + route → an upstream connection and the relay between them.
//!
//! Upstreams come from the config's route pools only. The relay is bounded: at most
//! `max_frame_size` (device → upstream) and one read chunk (upstream → device) in flight per
//! direction, with backpressure from whichever side is slow.

#[cfg(feature = "gateway")]
pub mod mqtt;
#[cfg(feature = "gateway")]
mod pool;
#[cfg(feature = "gateway")]
pub mod probe;
#[cfg(feature = "gateway")]
pub mod push;
pub(crate) mod relay;
pub mod resume;

#[cfg(feature = "gateway")]
pub use pool::{Pool, Routes};
pub use relay::{relay_opaque, relay_websocket, Ending, RelaySettings, Traffic};
