//! Strikes → bans: the sliding window, escalation, and the username and IP subjects.
//! Shipped defaults: 5 strikes within 60 s → 300 s, doubling, capped at 86 400 s;
//! username after 3 distinct client IDs, IP after 5.

use std::time::Duration;

use super::*;

const D: u64 = 300;

/// T = 1 h, so every publish in these tests after the first on a connection is early.
fn strike_config() -> PolicyConfig {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.push_interval_secs = Some(3_600.0);
    }
    cfg
}

fn harness() -> Harness {
    Harness::new(strike_config())
}

fn expires_in(h: &Harness, ban: &Ban) -> Duration {
    let expires = ban.expires.expect("auto bans expire");
    assert_eq!(ban.created, h.wall(), "created now");
    expires.duration_since(ban.created).expect("after created")
}

#[test]
fn threshold_within_the_window_bans_for_exactly_d() {
    let h = harness();
    let mut s = h.connect("d");
    let d = h.strike_early(&mut s, 4);
    assert_eq!(d.ban, None, "four strikes");
    let d = h.publish(&mut s, "t");
    let ban = d.ban.expect("fifth strike bans");
    assert_eq!(ban.subject, client("d"));
    assert_eq!(ban.source, BanSource::Rhythm);
    assert_eq!(expires_in(&h, &ban), Duration::from_secs(D));
    assert_eq!(h.ban_on(client("d")), Some(ban.clone()));
    assert_eq!(h.policy.banned(&s), Some(ban.clone()));
    assert_eq!(
        h.policy.on_connect(&ident("d")).err(),
        Some(Refusal::Banned(ban))
    );
    assert_eq!(h.stats().bans_issued, 1);
}

#[test]
fn strikes_slide_out_of_the_window() {
    let h = harness();
    let mut s = h.connect("d");
    h.strike_early(&mut s, 4);
    h.advance(60.0); // the four expire exactly 60 s after they happened
    assert_eq!(h.publish(&mut s, "t").ban, None);
    assert_eq!(h.ban_on(client("d")), None);
}

#[test]
fn a_strike_just_inside_the_window_still_counts() {
    let h = harness();
    let mut s = h.connect("d");
    h.strike_early(&mut s, 4);
    h.advance_nanos(60_000_000_000 - 1);
    assert!(h.publish(&mut s, "t").ban.is_some());
}

#[test]
fn the_window_slides_rather_than_resets() {
    let h = harness();
    let mut s = h.connect("d");
    h.strike_early(&mut s, 2); // t = 0: two strikes
    h.advance(40.0);
    for _ in 0..2 {
        assert_eq!(h.publish(&mut s, "t").ban, None); // t = 40: four in the window
    }
    h.advance(20.0); // t = 60: the first two leave
    assert_eq!(h.publish(&mut s, "t").ban, None, "three in the window");
    assert!(h.publish(&mut s, "t").ban.is_none(), "four");
    assert!(h.publish(&mut s, "t").ban.is_some(), "five");
}

/// Strikes `id` out once (5 early publishes on a fresh connection) and returns the ban.
fn strike_out(h: &Harness, id: &Identity) -> Option<Ban> {
    let mut s = h.policy.on_connect(id).ok()?;
    h.strike_early(&mut s, 5).ban
}

#[test]
fn repeat_bans_escalate_and_cap() {
    let mut cfg = strike_config();
    cfg.strikes.max_ban_secs = 1_000;
    cfg.connects.per_client_per_minute = 1_000;
    let h = Harness::new(cfg);
    let id = ident("d");
    let mut lengths = Vec::new();
    for _ in 0..5 {
        let ban = strike_out(&h, &id).expect("banned");
        let length = expires_in(&h, &ban);
        lengths.push(length.as_secs());
        // Serve the ban out, so the next one is a repeat rather than an overlap.
        h.clock.advance(length);
    }
    assert_eq!(lengths, [300, 600, 1_000, 1_000, 1_000]);
}

#[test]
fn escalation_is_forgotten_max_ban_after_the_last_ban_ends() {
    let mut cfg = strike_config();
    cfg.strikes.max_ban_secs = 1_000;
    let h = Harness::new(cfg);
    let id = ident("d");
    assert!(strike_out(&h, &id).is_some()); // 300 s
    h.advance(300.0 + 1_000.0 - 1.0);
    assert_eq!(
        strike_out(&h, &id).map(|b| expires_in(&h, &b).as_secs()),
        Some(600)
    );
    h.advance(600.0 + 1_000.0);
    assert_eq!(
        strike_out(&h, &id).map(|b| expires_in(&h, &b).as_secs()),
        Some(300)
    );
}

#[test]
fn a_ban_ends_when_it_expires() {
    let h = harness();
    assert!(strike_out(&h, &ident("d")).is_some());
    h.advance_nanos(D * 1_000_000_000 - 1);
    assert!(matches!(
        h.policy.on_connect(&ident("d")),
        Err(Refusal::Banned(_))
    ));
    h.advance_nanos(1);
    assert!(h.policy.on_connect(&ident("d")).is_ok());
}

#[test]
fn a_longer_ban_in_force_is_not_shortened() {
    let h = harness();
    let admin = Ban {
        subject: client("d"),
        reason: "admin".into(),
        source: BanSource::admin("ops"),
        created: h.wall(),
        expires: None,
    };
    let mut s = h.connect("d");
    h.bans.insert(admin.clone(), h.wall()).expect("insert");
    assert_eq!(h.strike_early(&mut s, 5).ban, None);
    assert_eq!(h.ban_on(client("d")), Some(admin));
    assert_eq!(h.stats().bans_issued, 0);
}

#[test]
fn username_is_banned_after_k_distinct_client_ids() {
    let h = harness();
    let ids: Vec<Identity> = (0..4)
        .map(|i| ident_full(&format!("c{i}"), Some("shared"), &format!("10.0.1.{i}")))
        .collect();
    assert_eq!(
        strike_out(&h, &ids[0]).map(|b| b.subject),
        Some(client("c0"))
    );
    // The same client ID again is not a second distinct ID.
    h.bans.remove(&client("c0"));
    assert_eq!(
        strike_out(&h, &ids[0]).map(|b| b.subject),
        Some(client("c0"))
    );
    assert_eq!(
        strike_out(&h, &ids[1]).map(|b| b.subject),
        Some(client("c1"))
    );
    let ban = strike_out(&h, &ids[2]).expect("banned");
    let user = Subject::Username("shared".into());
    assert_eq!(ban.subject, user, "the widest ban is reported");
    assert!(
        h.ban_on(client("c2")).is_some(),
        "the client ID is banned too"
    );
    assert_eq!(
        h.policy.on_connect(&ids[3]).err(),
        Some(Refusal::Banned(ban)),
        "a fresh client ID under the username"
    );
    assert_eq!(h.ban_on(Subject::Ip(ip("10.0.1.3"))), None);
}

#[test]
fn username_needs_the_k_ids_within_the_window() {
    let h = harness();
    let id = |i: u8| ident_full(&format!("c{i}"), Some("shared"), "10.0.1.1");
    strike_out(&h, &id(0));
    strike_out(&h, &id(1));
    h.advance(60.0);
    strike_out(&h, &id(2));
    assert_eq!(h.ban_on(Subject::Username("shared".into())), None);
}

#[test]
fn ip_is_banned_after_k_distinct_client_ids() {
    let h = harness();
    for i in 0..4 {
        let id = ident_full(&format!("c{i}"), Some(&format!("u{i}")), "192.0.2.7");
        assert_eq!(
            strike_out(&h, &id).map(|b| b.subject),
            Some(client(&format!("c{i}")))
        );
    }
    let ban = strike_out(&h, &ident_full("c4", None, "192.0.2.7")).expect("banned");
    assert_eq!(ban.subject, Subject::Ip(ip("192.0.2.7")));
    assert_eq!(
        h.policy.admit_ip(ip("192.0.2.7")),
        Admit::Banned(ban.clone())
    );
    assert_eq!(
        h.policy
            .on_connect(&ident_full("new", None, "192.0.2.7"))
            .err(),
        Some(Refusal::Banned(ban))
    );
    assert_eq!(h.policy.admit_ip(ip("192.0.2.8")), Admit::Ok);
}

#[test]
fn ipv6_is_struck_and_banned_by_its_64() {
    let h = harness();
    for i in 0..5 {
        let addr = format!("2001:db8:1:2::{i:x}");
        strike_out(&h, &ident_full(&format!("c{i}"), None, &addr));
    }
    let net = Subject::Cidr("2001:db8:1:2::/64".parse().expect("net"));
    assert!(h.ban_on(net).is_some());
    assert!(matches!(
        h.policy.admit_ip(ip("2001:db8:1:2:ffff::1")),
        Admit::Banned(_)
    ));
    assert_eq!(h.policy.admit_ip(ip("2001:db8:1:3::1")), Admit::Ok);
}

#[test]
fn ban_priority_is_client_then_username_then_ip() {
    let h = harness();
    let ban = |s: Subject| Ban {
        reason: s.to_string(),
        subject: s,
        source: BanSource::admin("ops"),
        created: h.wall(),
        expires: None,
    };
    let id = ident_full("c", Some("u"), "10.9.9.9");
    for s in [
        Subject::Cidr("10.9.0.0/16".parse().expect("net")),
        Subject::Username("u".into()),
        client("c"),
    ] {
        h.bans.insert(ban(s.clone()), h.wall()).expect("insert");
        assert_eq!(
            h.policy.on_connect(&id).err(),
            Some(Refusal::Banned(ban(s)))
        );
    }
    assert_eq!(h.stats().refused_banned, 3);
}

#[test]
fn a_ban_added_elsewhere_is_seen_on_a_live_session() {
    let h = harness();
    let s = h.connect_as(&ident_full("c", Some("u"), "10.0.0.2"));
    assert_eq!(h.policy.banned(&s), None);
    let ban = Ban {
        subject: Subject::Cidr("10.0.0.0/24".parse().expect("net")),
        reason: "peer".into(),
        source: BanSource::Peer("gw-2".into()),
        created: h.wall(),
        expires: Some(h.wall() + Duration::from_secs(10)),
    };
    h.bans.insert(ban.clone(), h.wall()).expect("insert");
    assert_eq!(h.policy.banned(&s), Some(ban));
    h.advance(10.0);
    assert_eq!(h.policy.banned(&s), None);
}
