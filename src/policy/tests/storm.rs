//! Reconnect storms must not mass-ban; floods and flappers alone must still be banned.
//! Shipped defaults: 50 distinct devices within 10 s → storm for 60 s; per IP 50/s, burst 200;
//! per client 15/min.

use super::*;

const NAT: &str = "192.0.2.10";

/// `devices` devices behind one NAT address all reconnect every second for `rounds` seconds
/// (a broker that keeps bouncing). Returns how many CONNECTs completed.
fn fleet_reconnects(h: &Harness, devices: usize, rounds: usize) -> usize {
    let ids: Vec<Identity> = (0..devices)
        .map(|i| ident_full(&format!("dev-{i}"), Some("fleet"), NAT))
        .collect();
    let mut connected = 0;
    for _ in 0..rounds {
        for id in &ids {
            if h.policy.admit_ip(id.ip) == Admit::Ok && h.policy.on_connect(id).is_ok() {
                connected += 1;
            }
        }
        h.advance(1.0);
    }
    connected
}

#[test]
fn two_hundred_devices_behind_one_nat_ban_nobody() {
    let h = Harness::rhythm();
    let connected = fleet_reconnects(&h, 200, 30);
    let st = h.stats();
    // The limits still refused plenty (the storm damps strikes, not limits)…
    assert!(st.accept_rate_limited > 1_000, "{st:?}");
    assert!(st.refused_connect_rate > 100, "{st:?}");
    assert!(connected >= 200, "every device got in at least once");
    // …but nothing was struck and nobody was banned.
    assert_eq!(st.strikes, 0, "{st:?}");
    assert_eq!(st.bans_issued, 0);
    assert!(h.bans.list(h.wall()).is_empty());
    assert!(st.storm_active);
    assert!(st.storms >= 1);
}

#[test]
fn without_storm_damping_the_same_fleet_gets_its_nat_banned() {
    // The control for the test above: proves the scenario would ban.
    let mut cfg = rhythm_config();
    cfg.storm.min_devices = 1_000;
    let h = Harness::new(cfg);
    fleet_reconnects(&h, 200, 30);
    assert!(h.ban_on(Subject::Ip(ip(NAT))).is_some());
}

#[test]
fn the_storm_ends_after_hold() {
    let h = Harness::rhythm();
    fleet_reconnects(&h, 50, 1);
    assert!(h.policy.storm_active());
    h.advance(58.0); // 59 s after the storm began
    assert!(h.policy.storm_active());
    h.advance(1.0);
    assert!(!h.policy.storm_active());
    assert!(!h.stats().storm_active);
}

#[test]
fn fewer_devices_than_the_threshold_is_no_storm() {
    let h = Harness::rhythm();
    fleet_reconnects(&h, 49, 1);
    assert!(!h.policy.storm_active());
    // The window is tumbling: 49 now and one more 10 s later do not add up.
    h.advance(9.0);
    drop(h.connect("late-one"));
    assert!(!h.policy.storm_active());
}

#[test]
fn one_flapper_alone_is_banned_and_starts_no_storm() {
    let h = Harness::rhythm();
    let id = ident_full("flapper", None, "198.51.100.7");
    for _ in 0..100 {
        if h.policy.admit_ip(id.ip) == Admit::Ok {
            let _ = h.policy.on_connect(&id);
        }
        h.advance(0.1);
    }
    assert!(h.ban_on(client("flapper")).is_some());
    assert_eq!(
        h.ban_on(Subject::Ip(id.ip)),
        None,
        "one client ID is not an IP ban"
    );
    assert!(!h.policy.storm_active());
    assert_eq!(h.stats().storms, 0);
}

#[test]
fn a_connect_flood_without_connect_bans_the_ip() {
    let h = Harness::rhythm();
    let attacker = ip("203.0.113.5");
    let outcomes: Vec<Admit> = (0..300).map(|_| h.policy.admit_ip(attacker)).collect();
    assert!(outcomes[..200].iter().all(|a| *a == Admit::Ok), "the burst");
    assert!(outcomes[200..205].iter().all(|a| *a == Admit::RateLimited));
    let ban = h
        .ban_on(Subject::Ip(attacker))
        .expect("banned after 5 strikes");
    assert!(ban.reason.contains("connect flood"), "{}", ban.reason);
    assert!(outcomes[205..]
        .iter()
        .all(|a| *a == Admit::Banned(ban.clone())));
}

#[test]
fn a_flood_during_a_storm_is_refused_then_banned_after_it() {
    let h = Harness::rhythm();
    for i in 0..50 {
        drop(h.connect_as(&ident_full(&format!("d{i}"), None, &format!("10.2.0.{i}"))));
    }
    assert!(h.policy.storm_active());
    let attacker = ip("203.0.113.9");
    let limited = (0..300)
        .filter(|_| h.policy.admit_ip(attacker) == Admit::RateLimited)
        .count();
    assert_eq!(limited, 100, "still refused");
    assert_eq!(h.ban_on(Subject::Ip(attacker)), None, "but not struck");
    h.advance(60.0);
    assert!(!h.policy.storm_active());
    for _ in 0..300 {
        h.policy.admit_ip(attacker);
    }
    assert!(h.ban_on(Subject::Ip(attacker)).is_some());
}

#[test]
fn a_storm_does_not_excuse_publish_abuse() {
    let h = Harness::rhythm();
    fleet_reconnects(&h, 50, 1);
    assert!(h.policy.storm_active());
    let mut s = h.connect("abuser");
    assert!(h.strike_early(&mut s, 5).ban.is_some());
}
