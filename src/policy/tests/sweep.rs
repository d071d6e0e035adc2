//! `sweep` keeps memory bounded by the active population, not by the keys ever seen.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::policy::stats::MAX_IDLE_DEVICES;

const N: u32 = 100_100;

/// `n` distinct devices, each from its own address: accepted, connected, one publish, one early
/// publish (a strike), disconnected. The first 10 also strike out (bans, escalation, sets).
fn crowd(h: &Harness, n: u32) {
    for i in 0..n {
        let id = Identity {
            client_id: format!("c{i}").into(),
            username: Some(format!("u{i}").into()),
            ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
        };
        assert_eq!(h.policy.admit_ip(id.ip), Admit::Ok);
        let mut s = h.connect_as(&id);
        let strikes = if i < 10 { 5 } else { 1 };
        h.strike_early(&mut s, strikes);
    }
}

#[test]
fn sweep_drops_everything_that_no_longer_matters() {
    let h = Harness::rhythm();
    let mut live = h.connect_as(&ident_full("live", Some("u-live"), "192.0.2.1"));
    h.verdict(&mut live);
    crowd(&h, N);
    let n = N as usize;
    let before = h.policy.footprint();
    assert!(before.message_limiter_keys > n, "{before:?}");
    assert!(before.byte_limiter_keys > n);
    assert!(before.ip_limiter_keys >= n);
    assert!(before.client_limiter_keys > n);
    assert_eq!(before.client_strikes, n);
    assert_eq!(before.escalations, 10);
    assert_eq!(before.username_sets, 10);
    assert_eq!(before.ip_sets, 10);
    assert_eq!(before.devices, n + 1);
    assert_eq!(h.bans.len(), 10);

    // Right away: more idle devices than the cap, so their counters go; the rest is recent.
    h.policy.sweep();
    let now = h.policy.footprint();
    assert!(N as usize > MAX_IDLE_DEVICES);
    assert_eq!(now.devices, 1, "only the connected one");
    assert_eq!(
        now.client_strikes,
        n - 10,
        "struck-out windows were emptied"
    );

    // Two days later (past every window, ban, and the escalation memory).
    h.advance(2.0 * 86_400.0);
    h.policy.sweep();
    let after = h.policy.footprint();
    assert_eq!(
        after,
        Footprint {
            devices: 1,
            ..Footprint::default()
        }
    );
    assert!(h.bans.is_empty());

    // The live connection is intact and still counted.
    assert_eq!(
        h.policy.stats().device("live").map(|d| d.connections),
        Some(1)
    );
    assert_eq!(
        h.publish(&mut live, "t").verdict,
        Verdict::Discard(Reason::Late)
    );
    drop(live);
    h.advance(601.0);
    h.policy.sweep();
    assert_eq!(h.policy.footprint(), Footprint::default());
}

#[test]
fn idle_devices_are_kept_for_a_while() {
    let h = Harness::rhythm();
    crowd(&h, 1_000);
    h.advance(599.0);
    h.policy.sweep();
    assert_eq!(h.policy.footprint().devices, 1_000);
    assert_eq!(h.policy.stats().device("c7").map(|d| d.early), Some(5));
    h.advance(1.0);
    h.policy.sweep();
    assert_eq!(h.policy.footprint().devices, 0);
}
