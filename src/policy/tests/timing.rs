//! The rhythm rule: T − E ≤ Δ ≤ T + E, inclusive, on arrival time.

use super::*;
use crate::config::policy::LateAction;

const EARLY: Verdict = Verdict::Discard(Reason::Early);
const LATE: Verdict = Verdict::Discard(Reason::Late);

#[test]
fn first_publish_only_arms() {
    let h = Harness::rhythm();
    let mut s = h.connect("d");
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
    assert_eq!(h.stats().forwarded, 1);
}

#[test]
fn both_bounds_are_inclusive() {
    let h = Harness::rhythm();
    let mut s = h.connect("d");
    h.verdict(&mut s);
    h.advance(55.0); // T − E exactly
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
    h.advance(65.0); // T + E exactly (the seed's worked example)
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
    h.advance(60.0);
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
}

#[test]
fn one_nanosecond_inside_and_outside() {
    let h = Harness::rhythm();
    let mut s = h.connect("d");
    h.verdict(&mut s);
    h.advance_nanos(55_000_000_000 - 1);
    assert_eq!(h.verdict(&mut s), EARLY, "54.999999999 s");
    h.advance_nanos(1);
    assert_eq!(h.verdict(&mut s), Verdict::Forward, "55 s");
    h.advance_nanos(65_000_000_000 + 1);
    assert_eq!(h.verdict(&mut s), LATE, "65.000000001 s");
}

#[test]
fn early_is_a_strike_and_leaves_the_clock() {
    let h = Harness::rhythm();
    let mut s = h.connect("d");
    h.verdict(&mut s);
    h.advance(30.0);
    let d = h.publish(&mut s, "t");
    assert_eq!(d.verdict, EARLY);
    assert_eq!(d.ban, None);
    assert_eq!(h.stats().strikes, 1);
    assert_eq!(h.stats().discarded_early, 1);
    // Δ is still measured from the accepted publish 30 s before the early one.
    h.advance(30.0);
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
    let dev = h.policy.stats().device("d").expect("device counters");
    assert_eq!((dev.forwarded, dev.early), (2, 1));
    assert_eq!(
        dev.strikes, 1,
        "the device's own strike count (top offenders)"
    );
}

#[test]
fn late_is_discarded_not_struck_and_rearms() {
    let h = Harness::rhythm();
    let mut s = h.connect("d");
    h.verdict(&mut s);
    h.advance(3_600.0); // back from an hour offline
    let d = h.publish(&mut s, "t");
    assert_eq!(d, Decision::discard(Reason::Late, None));
    assert_eq!(h.stats().strikes, 0);
    assert_eq!(h.stats().discarded_late, 1);
    let dev = h.policy.stats().device("d").expect("device counters");
    assert_eq!((dev.late, dev.late_discarded, dev.strikes), (1, 1, 0));
    // Re-armed at the late publish: the next on-time one is in rhythm.
    h.advance(60.0);
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
    // And it is the late one that re-armed (not the earlier accepted one).
    h.advance(10.0);
    assert_eq!(h.verdict(&mut s), EARLY);
}

#[test]
fn late_can_be_forwarded() {
    let mut cfg = rhythm_config();
    cfg.late = LateAction::Forward;
    let h = Harness::new(cfg);
    let mut s = h.connect("d");
    h.verdict(&mut s);
    h.advance(100.0);
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
    let st = h.stats();
    assert_eq!(
        (st.forwarded, st.late_forwarded, st.discarded_late),
        (2, 1, 0)
    );
    let dev = h.policy.stats().device("d").expect("device counters");
    assert_eq!(
        (dev.late, dev.late_discarded),
        (1, 0),
        "forwarded: no discard"
    );
    h.advance(60.0);
    assert_eq!(
        h.verdict(&mut s),
        Verdict::Forward,
        "re-armed by the late one"
    );
}

#[test]
fn retransmit_is_not_a_sample() {
    let h = Harness::rhythm();
    let mut s = h.connect("d");
    h.verdict(&mut s);
    h.advance(1.0);
    let dup = PublishFacts {
        retransmit: true,
        ..facts("t", 10)
    };
    // Would be early (Δ = 1 s), but a retransmission is the same message again.
    assert_eq!(h.policy.on_publish(&mut s, &dup), Decision::FORWARD);
    assert_eq!(h.stats().strikes, 0);
    assert_eq!(h.stats().retransmits, 1);
    // The clock did not move: 59 s later is Δ = 60 s from the original.
    h.advance(59.0);
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
}

#[test]
fn retransmit_before_arming_does_not_arm() {
    let h = Harness::rhythm();
    let mut s = h.connect("d");
    let dup = PublishFacts {
        retransmit: true,
        ..facts("t", 10)
    };
    h.policy.on_publish(&mut s, &dup);
    h.advance(1.0);
    assert_eq!(h.verdict(&mut s), Verdict::Forward, "this one arms");
    h.advance(1.0);
    assert_eq!(h.verdict(&mut s), EARLY);
}

#[test]
fn reconnect_rearms() {
    let h = Harness::rhythm();
    let mut s = h.connect("d");
    h.verdict(&mut s);
    drop(s);
    h.advance(5.0);
    let mut s = h.connect("d");
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
}

#[test]
fn clock_is_per_connection() {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.max_connections = 2;
    }
    let h = Harness::new(cfg);
    let mut a = h.connect("d");
    let mut b = h.connect("d");
    h.verdict(&mut a);
    h.advance(1.0);
    assert_eq!(h.verdict(&mut b), Verdict::Forward, "b arms its own clock");
}

fn with_topics(filters: &[&str]) -> Harness {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.rhythm_topics = filters.iter().map(|f| f.to_string()).collect();
    }
    Harness::new(cfg)
}

/// Arms on `armed`, then publishes `topic` 1 s later: early if it is a rhythm sample.
fn is_sample(h: &Harness, armed: &str, topic: &str) -> bool {
    let mut s = h.connect(&format!("d-{armed}-{topic}"));
    assert_eq!(h.publish(&mut s, armed).verdict, Verdict::Forward);
    h.advance(1.0);
    h.publish(&mut s, topic).verdict == EARLY
}

#[test]
fn topic_filters_select_the_samples() {
    let h = with_topics(&["meter/+/reading", "alarm/#", "status"]);
    assert!(is_sample(&h, "meter/1/reading", "meter/2/reading"));
    assert!(!is_sample(&h, "meter/1/reading", "meter/1/config"));
    assert!(!is_sample(&h, "meter/1/reading", "meter/1/2/reading"));
    assert!(is_sample(&h, "status", "alarm/fire/floor/3"));
    assert!(is_sample(&h, "status", "alarm"));
    assert!(is_sample(&h, "status", "status"));
    assert!(!is_sample(&h, "status", "status/x"));
    assert!(!is_sample(&h, "status", "other"));
}

#[test]
fn non_sample_topics_neither_arm_nor_move_the_clock() {
    let h = with_topics(&["data"]);
    let mut s = h.connect("d");
    assert_eq!(h.publish(&mut s, "log").verdict, Verdict::Forward);
    h.advance(1.0);
    assert_eq!(h.publish(&mut s, "data").verdict, Verdict::Forward, "arms");
    h.advance(30.0);
    assert_eq!(h.publish(&mut s, "log").verdict, Verdict::Forward);
    h.advance(30.0);
    assert_eq!(
        h.publish(&mut s, "data").verdict,
        Verdict::Forward,
        "Δ = 60 s"
    );
}

#[test]
fn empty_topic_list_means_every_topic() {
    let h = with_topics(&[]);
    assert!(is_sample(&h, "a", "b/c"));
}

#[test]
fn class_without_interval_has_no_rhythm() {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.push_interval_secs = None;
    }
    let h = Harness::new(cfg);
    let mut s = h.connect("d");
    for _ in 0..10 {
        assert_eq!(h.verdict(&mut s), Verdict::Forward);
    }
}

#[test]
fn fractional_interval_and_zero_tolerance() {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.push_interval_secs = Some(0.5);
        c.tolerance_secs = 0.0;
    }
    let h = Harness::new(cfg);
    let mut s = h.connect("d");
    h.verdict(&mut s);
    h.advance_nanos(500_000_000);
    assert_eq!(h.verdict(&mut s), Verdict::Forward);
    h.advance_nanos(499_999_999);
    assert_eq!(h.verdict(&mut s), EARLY);
    h.advance_nanos(2);
    assert_eq!(h.verdict(&mut s), LATE);
}

#[test]
fn a_publish_outside_the_permissions_counts_against_the_device() {
    let mut cfg = rhythm_config();
    for c in cfg.classes.values_mut() {
        c.publish_topics = vec!["meters/{clientid}".into()];
    }
    let h = Harness::new(cfg);
    let mut s = h.connect("d");
    let d = h.publish(&mut s, "elsewhere");
    assert_eq!(d.verdict, Verdict::Discard(Reason::NotAuthorized));
    let dev = h.policy.stats().device("d").expect("device counters");
    assert_eq!((dev.not_authorized, dev.strikes), (1, 1));
}
