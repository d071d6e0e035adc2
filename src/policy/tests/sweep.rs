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
            named: Naming::ClientId,
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
    assert_eq!(before.device_rate_limiters, n + 1, "{before:?}");
    assert!(before.ip_limiter_keys >= n);
    assert!(before.client_limiter_keys > n);
    assert_eq!(before.client_strikes, n);
    assert_eq!(before.escalations, 10);
    assert_eq!(before.username_sets, 10);
    assert_eq!(before.ip_sets, 10);
    assert_eq!(before.devices, n + 1);
    assert_eq!(h.bans.len(), 10);

    // Right away: more idle devices than the cap, but their rate limiters are not full again
    // (message burst 1000 at 1000/s), so none can go yet.
    h.policy.sweep();
    assert_eq!(h.policy.footprint().devices, n + 1);
    // Once the limiters are full (1.001 s), the idle entries over the cap go; the rest is recent.
    h.advance(1.1);
    h.policy.sweep();
    let now = h.policy.footprint();
    assert!(N as usize > MAX_IDLE_DEVICES);
    assert_eq!(now.devices, 1, "only the connected one");
    assert_eq!(now.device_rate_limiters, 1);
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
            device_rate_limiters: 1,
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

/// 1 message/s with a burst of 3 (limiters full 4 s after the last check); bytes generous.
fn slow_rates() -> Harness {
    let mut cfg = PolicyConfig::default();
    cfg.classes.insert(
        "default".into(),
        DeviceClass {
            messages_per_sec: 1,
            message_burst: 3,
            bytes_per_sec: 1_000_000,
            byte_burst: 1_000_000,
            max_connections: 2,
            ..DeviceClass::default()
        },
    );
    Harness::new(cfg)
}

/// A sweep under pressure (over `MAX_IDLE_DEVICES`) is the most eager one: even it keeps a
/// device's entry until its limiters are full again, so a reconnect after a sweep finds the
/// budget it left, and the entry goes exactly when governor's `retain_recent` would have
/// dropped the device's keys (TAT one interval in the past).
#[test]
fn a_swept_device_does_not_reconnect_to_a_fresh_budget_early() {
    let h = slow_rates();
    let mut s = h.connect("d");
    for _ in 0..3 {
        assert_eq!(h.verdict(&mut s), Verdict::Forward);
    }
    assert_eq!(h.verdict(&mut s), Verdict::Discard(Reason::MessageRate));
    drop(s);
    h.advance(1.5);
    for i in 0..=MAX_IDLE_DEVICES {
        drop(h.connect(&format!("idle{i}")));
    }
    h.policy.sweep();
    assert!(h.policy.stats().device("d").is_some(), "limiters not full");
    let mut s = h.connect("d");
    assert_eq!(h.verdict(&mut s), Verdict::Forward, "1 cell back, not 3");
    assert_eq!(h.verdict(&mut s), Verdict::Discard(Reason::MessageRate));
    drop(s);
    // TAT is now 4 s: the bucket is full from then, and `retain_recent` would drop it at 5 s;
    // the sweep goes by the last activity (1.5 s) + (burst + 1) intervals = 5.5 s.
    h.advance(3.999);
    h.policy.sweep();
    assert!(h.policy.stats().device("d").is_some(), "not yet");
    h.advance(0.001);
    h.policy.sweep();
    let fp = h.policy.footprint();
    assert_eq!(
        (fp.devices, fp.device_rate_limiters),
        (0, 0),
        "all full: all gone"
    );
}

/// An entry with a live session is never swept, however long the device has been quiet.
#[test]
fn a_device_with_a_live_session_keeps_its_limiters() {
    let h = slow_rates();
    let mut s = h.connect("d");
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
    h.advance(3_600.0);
    h.policy.sweep();
    let fp = h.policy.footprint();
    assert_eq!((fp.devices, fp.device_rate_limiters), (1, 1));
    // A second connection shares the (live) entry and its budget.
    let mut t = h.connect("d");
    for _ in 0..3 {
        assert_eq!(h.verdict(&mut t), Verdict::Forward);
    }
    assert_eq!(h.verdict(&mut s), Verdict::Discard(Reason::MessageRate));
}
