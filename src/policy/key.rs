//! The rate limiters' key: a client ID with its hash computed once per connection.
//!
//! Hashing the client ID (SipHash, keyed at random so a device cannot choose colliding IDs) is
//! done once at CONNECT; the per-publish limiter lookups then use that hash as is, through a
//! pass-through hasher. Equality first compares pointers: sessions use the device entry's
//! interned `Arc<str>`, so the common case needs no string compare either.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub(crate) struct DeviceKey {
    hash: u64,
    id: Arc<str>,
}

impl DeviceKey {
    pub(crate) fn new(id: Arc<str>, hasher: &impl BuildHasher) -> Self {
        DeviceKey {
            hash: hasher.hash_one(&*id),
            id,
        }
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}

impl Hash for DeviceKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for DeviceKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.id, &other.id) || (self.hash == other.hash && self.id == other.id)
    }
}

impl Eq for DeviceKey {}

/// Passes a [`DeviceKey`]'s precomputed hash through. Only `DeviceKey`s are hashed with it;
/// anything else still gets a (plain FNV-1a) hash rather than a wrong one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PassThrough;

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;

    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0xcbf2_9ce4_8422_2325)
    }
}

#[derive(Debug)]
pub(crate) struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::RandomState;

    #[test]
    fn equal_ids_are_equal_keys_whatever_the_allocation() {
        let s = RandomState::new();
        let a = DeviceKey::new("dev".into(), &s);
        let b = DeviceKey::new("dev".into(), &s);
        assert_eq!(a, b);
        assert_eq!(PassThrough.hash_one(&a), PassThrough.hash_one(&b));
        assert_ne!(a, DeviceKey::new("dev2".into(), &s));
    }
}
