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

    /// A publish outside its permissions closes the connection (`on_publish_denied`).
    pub fn disconnects_when_denied(&self) -> bool {
        self.class.disconnect_when_denied
    }

    /// The rhythm clock now: taken before an upload is judged, so that an upload judged and
    /// then not delivered (a collector failure) can give its sample back.
    pub fn rhythm_mark(&self) -> RhythmMark {
        RhythmMark(self.last_accepted)
    }

    /// Undo the sample taken since `before` (whose judgement left the clock at `after`),
    /// unless a later sample moved the clock again meanwhile. Its retry is then judged
    /// against the last upload that was delivered, not against itself.
    pub fn give_back_sample(&mut self, before: RhythmMark, after: RhythmMark) {
        if self.last_accepted == after.0 {
            self.last_accepted = before.0;
        }
    }
}

/// The rhythm clock of a session at one moment (see [`Session::rhythm_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RhythmMark(Option<u64>);

impl Drop for Session {
    fn drop(&mut self) {
        // Paired with the increment in `on_connect`, the only place a Session is built.
        self.device.connections.fetch_sub(1, Relaxed);
    }
}
