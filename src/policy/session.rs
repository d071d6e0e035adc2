//! One admitted connection's policy state.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::class::ClassRules;
use super::key::DeviceKey;
use super::rates::DeviceRates;
use super::stats::DeviceCounters;
use super::types::Identity;

/// Returned by [`Policy::on_connect`](super::Policy::on_connect); lives as long as the
/// connection. It holds what a publish needs without any lookup (the class, the device's
/// counters and rate limiters) and the rhythm clock, which is per connection: a reconnect re-arms it, like the
/// first publish after any CONNECT. Dropping it releases the connection's slot in the class's
/// `max_connections`.
///
/// A session belongs to the policy that created it; passing it to another policy is a bug
/// (its class index would point at that policy's classes).
#[derive(Debug)]
pub struct Session {
    pub(crate) id: Identity,
    /// The classes' generation `class` was resolved under (see `live`).
    pub(crate) generation: u64,
    pub(crate) class: Arc<ClassRules>,
    /// The client ID, hashed (strike windows, storms).
    pub(crate) key: DeviceKey,
    pub(crate) device: Arc<DeviceCounters>,
    /// The device's message and byte limiters, shared with its entry in `device` and its other
    /// sessions: a reconnect does not reset the budget.
    pub(crate) rates: Arc<DeviceRates>,
    /// Arrival (policy nanoseconds) of the last accepted rhythm sample; `None` until armed.
    pub(crate) last_accepted: Option<u64>,
}

impl Session {
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.id.client_id
    }

    /// The device class this connection was admitted under.
    pub fn class(&self) -> &str {
        &self.class.name
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Paired with the increment in `on_connect`, the only place a Session is built.
        self.device.connections.fetch_sub(1, Relaxed);
    }
}
