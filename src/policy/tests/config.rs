//! `Policy::new` validates the config; every message names the key.

use governor::clock::FakeRelativeClock;

use super::*;
use crate::config::policy::PrefixRule;

fn error(cfg: PolicyConfig) -> String {
    match Policy::new(
        &cfg,
        Arc::new(MemoryBanList::new()),
        FakeRelativeClock::default(),
    ) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    }
}

fn class(f: impl FnOnce(&mut DeviceClass)) -> String {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        f(c);
    }
    error(cfg)
}

#[test]
fn defaults_are_valid() {
    let cfg = PolicyConfig::default();
    assert!(Policy::new(&cfg, Arc::new(MemoryBanList::new()), MonotonicClock).is_ok());
}

#[test]
fn class_references_must_exist() {
    let mut cfg = rhythm_config();
    cfg.devices.insert("boiler-1".into(), "slow".into());
    assert_eq!(error(cfg), r#"policy.devices.boiler-1: no class "slow""#);

    let mut cfg = rhythm_config();
    cfg.device_prefixes.push(PrefixRule {
        prefix: "x".into(),
        class: "nope".into(),
    });
    assert_eq!(
        error(cfg),
        r#"policy.device_prefixes[0].class: no class "nope""#
    );

    let mut cfg = rhythm_config();
    cfg.default_class = "missing".into();
    assert_eq!(error(cfg), r#"policy.default_class: no class "missing""#);
}

#[test]
fn interval_and_tolerance() {
    let e = class(|c| c.push_interval_secs = Some(0.0));
    assert!(
        e.starts_with("policy.classes.default.push_interval_secs"),
        "{e}"
    );
    let e = class(|c| c.push_interval_secs = Some(f64::NAN));
    assert!(
        e.starts_with("policy.classes.default.push_interval_secs"),
        "{e}"
    );
    let e = class(|c| c.tolerance_secs = 60.0);
    assert!(
        e.starts_with("policy.classes.default.tolerance_secs"),
        "{e}"
    );
    let e = class(|c| c.tolerance_secs = -1.0);
    assert!(
        e.starts_with("policy.classes.default.tolerance_secs"),
        "{e}"
    );
}

#[test]
fn rates_must_be_positive() {
    assert_eq!(
        class(|c| c.messages_per_sec = 0),
        "policy.classes.default.messages_per_sec: must be > 0"
    );
    assert_eq!(
        class(|c| c.byte_burst = 0),
        "policy.classes.default.byte_burst: must be > 0"
    );
    assert_eq!(
        class(|c| c.max_connections = 0),
        "policy.classes.default.max_connections: must be > 0"
    );
    let mut cfg = rhythm_config();
    cfg.connects.per_ip_per_sec = 0;
    assert_eq!(error(cfg), "policy.connects.per_ip_per_sec: must be > 0");
}

#[test]
fn topic_filters_are_checked() {
    let e = class(|c| c.rhythm_topics = vec!["ok/+".into(), "bad/#/x".into()]);
    assert!(
        e.starts_with("policy.classes.default.rhythm_topics[1]: "),
        "{e}"
    );
}

#[test]
fn strike_and_storm_bounds() {
    let mut cfg = rhythm_config();
    cfg.strikes.threshold = 0;
    assert!(error(cfg).starts_with("policy.strikes.threshold"));
    let mut cfg = rhythm_config();
    cfg.strikes.max_ban_secs = 10;
    assert!(error(cfg).starts_with("policy.strikes.max_ban_secs"));
    let mut cfg = rhythm_config();
    cfg.strikes.window_secs = 0;
    assert!(error(cfg).starts_with("policy.strikes.window_secs"));
    // One device alone must never make a storm.
    let mut cfg = rhythm_config();
    cfg.storm.min_devices = 1;
    assert!(error(cfg).starts_with("policy.storm.min_devices"));
}
