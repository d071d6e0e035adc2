//! What the policy says about authenticated devices: whether a client ID is the identity a
//! device proved, failed attempts as strikes against the address, revocation as a ban.

use std::net::IpAddr;

use governor::clock::Clock;

use super::bans::{Ban, BanSource, Subject};
use super::strikes::ip_key;
use super::Policy;
use crate::config::Binding;

/// Is `client_id` one the device that proved `identity` may use? `prefix`: the identity
/// itself, or the identity, `/` and more (`dev-1/pump`): never `dev-10`, which is another
/// device's. An identity holding `/` itself only gets its own ID, so `a` and `a/b` cannot
/// be each other.
pub fn client_id_bound(binding: Binding, identity: &str, client_id: &str) -> bool {
    match binding {
        Binding::Equal => client_id == identity,
        Binding::Prefix => {
            client_id == identity
                || (!identity.contains('/')
                    && client_id
                        .strip_prefix(identity)
                        .is_some_and(|rest| rest.starts_with('/')))
        }
        Binding::Off => true,
    }
}

impl<C: Clock + Clone> Policy<C> {
    /// A failed authentication from `ip`: a strike against its address (IPv6 by /64), which
    /// at the threshold bans it like a connect flood does. Not during a reconnect storm, when
    /// a fleet's expired tokens would otherwise ban whole sites.
    pub fn on_auth_failure(&self, ip: IpAddr) -> Option<Ban> {
        let now = self.now();
        if self.storm_on(now) {
            return None;
        }
        let r = &self.rules;
        let reason = format!(
            "{} failed device authentications within {}s",
            r.threshold,
            r.window / 1_000_000_000
        );
        self.strike_address(ip_key(ip), now, BanSource::Auth, reason)
    }

    /// A ban on a proven identity, as a client ID or as a serial: a revoked device.
    pub fn revoked(&self, identity: &str) -> Option<Ban> {
        let wall = self.wall.now();
        self.bans
            .get(&Subject::ClientId(identity.into()), wall)
            .or_else(|| self.bans.get(&Subject::Serial(identity.into()), wall))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_modes() {
        let cases = [
            (Binding::Equal, "dev-1", "dev-1", true),
            (Binding::Equal, "dev-1", "dev-10", false),
            (Binding::Equal, "dev-1", "dev", false),
            (Binding::Equal, "dev-1", "", false),
            (Binding::Prefix, "dev-1", "dev-1", true),
            (Binding::Prefix, "dev-1", "dev-1/sensor", true),
            (Binding::Prefix, "dev-1", "dev-10", false),
            (Binding::Prefix, "dev-1", "dev-1-x", false),
            (Binding::Prefix, "dev-1", "dev-", false),
            (Binding::Prefix, "dev-1", "xdev-1", false),
            (Binding::Prefix, "a", "a/b", true),
            (Binding::Prefix, "a/b", "a/b", true),
            (Binding::Prefix, "a/b", "a/b/c", false),
            (Binding::Off, "dev-1", "anything", true),
        ];
        for (b, identity, client_id, want) in cases {
            assert_eq!(
                client_id_bound(b, identity, client_id),
                want,
                "{b:?} {identity} {client_id}"
            );
        }
    }
}
