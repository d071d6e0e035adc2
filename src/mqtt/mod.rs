//! MQTT wire helpers (client side subset): just enough to play a device or a platform
//! subscriber against a broker, in the demo, the benchmarks and the tests.
//!
//! The gateway itself never parses MQTT: it relays bytes. These helpers live in the library so
//! that every tool that needs a scripted client uses the same, tested encoder.

#[cfg(feature = "gateway")]
pub mod server;
/// Also in the agent-only build: its tests play MQTT clients through the agent.
pub mod wire;
