//! Classes swapped while devices are connected: an admin's override and a reload apply at the
//! next publish, and every device keeps its state.

use super::*;
use crate::config::policy::DeviceClass;

/// "default": T = 60 s ± 5 s, generous rates; "slow": T = 600 s ± 60 s; "tight": 1 message/s,
/// burst 1.
fn config() -> PolicyConfig {
    let mut cfg = rhythm_config();
    cfg.classes.insert(
        "slow".into(),
        DeviceClass {
            push_interval_secs: Some(600.0),
            tolerance_secs: 60.0,
            ..cfg.classes["default"].clone()
        },
    );
    cfg.classes.insert(
        "tight".into(),
        DeviceClass {
            push_interval_secs: None,
            messages_per_sec: 1,
            message_burst: 1,
            ..cfg.classes["default"].clone()
        },
    );
    cfg
}

#[test]
fn an_override_applies_to_the_next_publish_of_a_live_session() {
    let h = Harness::new(config());
    let mut s = h.connect("meter-1");
    assert_eq!(h.verdict(&mut s), Verdict::Forward, "arms the rhythm");
    h.advance(60.0);
    assert_eq!(h.verdict(&mut s), Verdict::Forward, "in rhythm for default");

    h.policy.set_override("meter-1", "slow").unwrap();
    let view = h.policy.class_of("meter-1").unwrap();
    assert_eq!((view.class.as_str(), view.overridden), ("slow", true));
    assert_eq!(view.settings.push_interval_secs, Some(600.0));
    // 60 s after the last accepted one is early for "slow": the rhythm state was kept.
    h.advance(60.0);
    assert_eq!(h.verdict(&mut s), Verdict::Discard(Reason::Early));
    assert_eq!(s.class(), "slow");

    assert!(h.policy.clear_override("meter-1"));
    assert!(!h.policy.clear_override("meter-1"), "nothing left to clear");
    // Still 60 s after the last accepted publish (the early one was not): in rhythm again.
    assert_eq!(h.verdict(&mut s), Verdict::Forward, "back to default");
    assert!(!h.policy.class_of("meter-1").unwrap().overridden);
}

#[test]
fn an_override_must_name_a_class() {
    let h = Harness::new(config());
    let e = h.policy.set_override("meter-1", "nonesuch").unwrap_err();
    assert!(e.starts_with("class: no class \"nonesuch\""), "{e}");
    assert_eq!(h.policy.class_of("meter-1").unwrap().class, "default");
}

#[test]
fn a_reload_keeps_rate_cells_of_unchanged_classes_and_refills_changed_ones() {
    let h = Harness::new(config());
    let mut t = h.connect("t-1");
    h.policy.set_override("t-1", "tight").unwrap();
    let facts = facts("x", 1);
    assert_eq!(
        h.policy.on_publish(&mut t, &facts).verdict,
        Verdict::Forward
    );
    let over = Verdict::Discard(Reason::MessageRate);
    assert_eq!(h.policy.on_publish(&mut t, &facts).verdict, over);

    // The same config again: nothing changed for "tight", its spent cell stays spent.
    let same = h.policy.prepare_classes(&config()).unwrap();
    assert!(h.policy.apply_classes(same).is_empty());
    assert_eq!(h.policy.on_publish(&mut t, &facts).verdict, over);

    // "tight" loosened: fresh cells with the new quotas at the next publish.
    let mut looser = config();
    looser.classes.get_mut("tight").unwrap().message_burst = 3;
    let looser = h.policy.prepare_classes(&looser).unwrap();
    h.policy.apply_classes(looser);
    for _ in 0..3 {
        assert_eq!(
            h.policy.on_publish(&mut t, &facts).verdict,
            Verdict::Forward
        );
    }
}

#[test]
fn a_reload_that_removes_an_overridden_class_drops_the_override() {
    let h = Harness::new(config());
    h.policy.set_override("m", "slow").unwrap();
    let mut cfg = config();
    cfg.classes.remove("slow");
    let prepared = h.policy.prepare_classes(&cfg).unwrap();
    let dropped = h.policy.apply_classes(prepared);
    assert_eq!(dropped, [Arc::<str>::from("m")]);
    assert_eq!(h.policy.class_of("m").unwrap().class, "default");
    // A bad config is refused before anything changes, naming the key.
    let mut bad = config();
    bad.devices.insert("x".into(), "gone".into());
    let e = h.policy.prepare_classes(&bad).err().unwrap();
    assert!(e.contains("policy.devices.x"), "{e}");
}
