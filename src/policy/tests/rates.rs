//! Per-device message and byte rates (governor GCRA).

use super::*;

const MSG: Verdict = Verdict::Discard(Reason::MessageRate);
const BYTES: Verdict = Verdict::Discard(Reason::ByteRate);

/// No rhythm; 10 messages/s with a burst of 5; 100 bytes/s with a burst of 1000.
fn rates_config() -> PolicyConfig {
    let mut cfg = PolicyConfig::default();
    cfg.classes.insert(
        "default".into(),
        DeviceClass {
            messages_per_sec: 10,
            message_burst: 5,
            bytes_per_sec: 100,
            byte_burst: 1_000,
            ..DeviceClass::default()
        },
    );
    cfg
}

fn rates() -> Harness {
    Harness::new(rates_config())
}

fn send(h: &Harness, s: &mut Session, len: usize) -> Decision {
    h.policy.on_publish(s, &facts("t", len))
}

#[test]
fn message_burst_then_the_rate() {
    let h = rates();
    let mut s = h.connect("d");
    for i in 0..5 {
        assert_eq!(send(&h, &mut s, 1).verdict, Verdict::Forward, "burst #{i}");
    }
    let d = send(&h, &mut s, 1);
    assert_eq!(d.verdict, MSG);
    assert_eq!(h.stats().strikes, 1, "over the rate is a strike");
    assert_eq!(h.stats().rate_limited, 1);
    // One cell comes back every 100 ms.
    h.advance_nanos(99_999_999);
    assert_eq!(send(&h, &mut s, 1).verdict, MSG);
    h.advance_nanos(1);
    assert_eq!(send(&h, &mut s, 1).verdict, Verdict::Forward);
    assert_eq!(send(&h, &mut s, 1).verdict, MSG);
    assert_eq!(
        h.policy.stats().device("d").map(|d| d.rate_limited),
        Some(3)
    );
}

#[test]
fn byte_burst_then_the_rate() {
    let h = rates();
    let mut s = h.connect("d");
    assert_eq!(send(&h, &mut s, 600).verdict, Verdict::Forward);
    assert_eq!(send(&h, &mut s, 600).verdict, BYTES, "400 bytes left");
    assert_eq!(send(&h, &mut s, 400).verdict, Verdict::Forward);
    h.advance(2.0); // 200 bytes back
    assert_eq!(send(&h, &mut s, 201).verdict, BYTES);
    assert_eq!(send(&h, &mut s, 200).verdict, Verdict::Forward);
}

#[test]
fn one_publish_larger_than_the_byte_burst_never_passes() {
    let h = rates();
    let mut s = h.connect("d");
    assert_eq!(send(&h, &mut s, 1_001).verdict, BYTES);
    h.advance(3_600.0);
    assert_eq!(send(&h, &mut s, 1_001).verdict, BYTES);
    assert_eq!(send(&h, &mut s, 1_000).verdict, Verdict::Forward);
    assert_eq!(send(&h, &mut s, usize::MAX).verdict, BYTES);
}

#[test]
fn empty_publish_costs_no_bytes() {
    let h = rates();
    let mut s = h.connect("d");
    assert_eq!(send(&h, &mut s, 1_000).verdict, Verdict::Forward);
    assert_eq!(send(&h, &mut s, 0).verdict, Verdict::Forward);
}

#[test]
fn budget_is_per_device_and_survives_reconnects() {
    let h = rates();
    let mut s = h.connect("d");
    for _ in 0..5 {
        send(&h, &mut s, 1);
    }
    drop(s);
    let mut s = h.connect("d");
    assert_eq!(
        send(&h, &mut s, 1).verdict,
        MSG,
        "same client ID, same budget"
    );
    let mut other = h.connect("e");
    assert_eq!(send(&h, &mut other, 1).verdict, Verdict::Forward);
}

#[test]
fn retransmits_cost_nothing() {
    let h = rates();
    let mut s = h.connect("d");
    let dup = PublishFacts {
        retransmit: true,
        ..facts("t", 900)
    };
    for _ in 0..20 {
        assert_eq!(h.policy.on_publish(&mut s, &dup).verdict, Verdict::Forward);
    }
    for _ in 0..5 {
        assert_eq!(send(&h, &mut s, 1).verdict, Verdict::Forward);
    }
}

#[test]
fn early_publishes_do_not_eat_the_budget() {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.messages_per_sec = 1;
        c.message_burst = 2;
        c.rhythm_topics = vec!["data".into()];
    }
    let h = Harness::new(cfg);
    let mut s = h.connect("d");
    assert_eq!(h.publish(&mut s, "data").verdict, Verdict::Forward); // arms: cell 1 of 2
    for _ in 0..3 {
        assert_eq!(
            h.publish(&mut s, "data").verdict,
            Verdict::Discard(Reason::Early)
        );
    }
    assert_eq!(
        h.publish(&mut s, "log").verdict,
        Verdict::Forward,
        "cell 2 is still there"
    );
    assert_eq!(h.publish(&mut s, "log").verdict, MSG);
}

#[test]
fn a_rate_limited_sample_does_not_move_the_clock() {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.bytes_per_sec = 1;
        c.byte_burst = 100;
    }
    let h = Harness::new(cfg);
    let mut s = h.connect("d");
    assert_eq!(
        h.policy.on_publish(&mut s, &facts("t", 100)).verdict,
        Verdict::Forward
    );
    h.advance(60.0); // in rhythm, but only 60 bytes are back
    assert_eq!(h.policy.on_publish(&mut s, &facts("t", 100)).verdict, BYTES);
    h.advance(40.0); // Δ = 100 s from the last *accepted* one: late
    let d = h.policy.on_publish(&mut s, &facts("t", 100));
    assert_eq!(d.verdict, Verdict::Discard(Reason::Late));
}

#[test]
fn classes_have_their_own_quotas() {
    let mut cfg = rates_config();
    cfg.classes.insert(
        "fast".into(),
        DeviceClass {
            messages_per_sec: 1_000,
            message_burst: 1_000,
            ..DeviceClass::default()
        },
    );
    cfg.devices.insert("f".into(), "fast".into());
    let h = Harness::new(cfg);
    let mut f = h.connect("f");
    assert_eq!(f.class(), "fast");
    for _ in 0..100 {
        assert_eq!(send(&h, &mut f, 1).verdict, Verdict::Forward);
    }
}

#[test]
fn a_reconnect_does_not_reset_the_budget_even_after_a_sweep() {
    let h = rates();
    let mut s = h.connect("d");
    for _ in 0..5 {
        assert_eq!(send(&h, &mut s, 1).verdict, Verdict::Forward);
    }
    drop(s);
    h.advance_nanos(150_000_000); // 1.5 cells back
    h.policy.sweep();
    let mut s = h.connect("d");
    assert_eq!(send(&h, &mut s, 1).verdict, Verdict::Forward);
    assert_eq!(
        send(&h, &mut s, 1).verdict,
        MSG,
        "the budget left, not a fresh one"
    );
}

/// A client ID's class cannot change within one policy (the resolver is fixed), so this goes
/// through the CONNECT helper directly: the current connection's class wins, with fresh cells;
/// open sessions keep theirs.
#[test]
fn a_class_change_recreates_the_cells_for_the_new_class() {
    let mut cfg = rates_config();
    cfg.classes.insert(
        "fast".into(),
        DeviceClass {
            messages_per_sec: 1_000,
            message_burst: 1_000,
            ..DeviceClass::default()
        },
    );
    cfg.devices.insert("f".into(), "fast".into());
    let h = Harness::new(cfg);
    let resolved = h
        .policy
        .live
        .resolve("f")
        .unwrap_or_else(|| panic!("no class"));
    let (fast, fast_q) = (resolved.class.index, resolved.quotas);
    let mine = h
        .policy
        .live
        .resolve("d")
        .unwrap_or_else(|| panic!("no class"));
    let mut s = h.connect("d");
    assert_ne!(s.class.index, fast);
    for _ in 0..5 {
        send(&h, &mut s, 1);
    }
    assert_eq!(send(&h, &mut s, 1).verdict, MSG);
    let now = h.policy.now();
    let same = h
        .policy
        .device_rates(&s.device, s.class.index, &mine.quotas, now);
    assert!(Arc::ptr_eq(&same, &s.rates), "same class: same cells");
    let r = h.policy.device_rates(&s.device, fast, &fast_q, now);
    assert!(r.enforces(fast, &fast_q));
    assert!(s
        .device
        .rates()
        .as_ref()
        .is_some_and(|e| Arc::ptr_eq(e, &r)));
    for _ in 0..100 {
        assert_eq!(r.over(now, 1), None, "fresh cells of the new class");
    }
    assert_eq!(
        send(&h, &mut s, 1).verdict,
        MSG,
        "the open session keeps its cells"
    );
}
