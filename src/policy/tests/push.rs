//! HTTP push devices: named by serial (bans `as = serial`), the rhythm spanning uploads on one
//! session, every upload a sample whatever the class's topics, check-ins counted but never
//! samples.

use super::*;
use crate::config::policy::DeviceClass;

const EARLY: Verdict = Verdict::Discard(Reason::Early);

fn serial(s: &str) -> Identity {
    Identity::serial(s.into(), ip("10.0.0.9"))
}

#[test]
fn uploads_follow_the_rhythm_inclusively() {
    let h = Harness::rhythm();
    let mut s = h.connect_as(&serial("SN-1"));
    assert_eq!(h.policy.on_upload(&mut s).verdict, Verdict::Forward, "arms");
    h.advance_nanos(55_000_000_000 - 1);
    assert_eq!(h.policy.on_upload(&mut s).verdict, EARLY);
    h.advance_nanos(1);
    assert_eq!(
        h.policy.on_upload(&mut s).verdict,
        Verdict::Forward,
        "T − E"
    );
    h.advance(65.0);
    assert_eq!(
        h.policy.on_upload(&mut s).verdict,
        Verdict::Forward,
        "T + E"
    );
    h.advance_nanos(65_000_000_001);
    assert_eq!(
        h.policy.on_upload(&mut s).verdict,
        Verdict::Discard(Reason::Late)
    );
}

#[test]
fn every_upload_is_a_sample_even_when_the_class_names_topics() {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.rhythm_topics = vec!["tele/#".into()];
    }
    let h = Harness::new(cfg);
    let mut s = h.connect_as(&serial("SN-2"));
    h.policy.on_upload(&mut s);
    assert_eq!(h.policy.on_upload(&mut s).verdict, EARLY);
}

#[test]
fn checkins_are_counted_against_the_rate_but_never_samples() {
    let mut cfg = rhythm_config();
    cfg.classes.insert(
        "default".into(),
        DeviceClass {
            push_interval_secs: Some(60.0),
            tolerance_secs: 5.0,
            messages_per_sec: 1,
            message_burst: 2,
            ..DeviceClass::default()
        },
    );
    let h = Harness::new(cfg);
    let mut s = h.connect_as(&serial("SN-3"));
    assert_eq!(h.policy.on_checkin(&mut s).verdict, Verdict::Forward);
    // Not armed by the check-in: the first upload arms, it is not early.
    assert_eq!(h.policy.on_upload(&mut s).verdict, Verdict::Forward);
    // The burst of 2 is spent: the next check-in is over the rate.
    assert_eq!(
        h.policy.on_checkin(&mut s).verdict,
        Verdict::Discard(Reason::MessageRate)
    );
}

#[test]
fn strikes_ban_the_serial_not_a_client_id() {
    let h = Harness::rhythm();
    let mut s = h.connect_as(&serial("SN-4"));
    let last = {
        h.policy.on_upload(&mut s);
        let mut d = h.policy.on_upload(&mut s);
        for _ in 0..4 {
            d = h.policy.on_upload(&mut s);
        }
        d
    };
    let ban = last.ban.expect("five strikes ban");
    assert_eq!(ban.subject, Subject::Serial("SN-4".into()));
    assert_eq!(ban.source, BanSource::Rhythm);
    assert!(h.ban_on(Subject::ClientId("SN-4".into())).is_none());
    // The serial is refused at its next admission, and its live session is reported banned.
    assert!(matches!(
        h.policy.on_connect(&serial("SN-4")),
        Err(Refusal::Banned(_))
    ));
    assert!(h.policy.banned(&s).is_some());
}

#[test]
fn a_serial_ban_does_not_touch_an_mqtt_device_of_the_same_name() {
    let h = Harness::rhythm();
    h.ban_forever(Subject::Serial("X-1".into()));
    assert!(h.policy.on_connect(&serial("X-1")).is_err());
    assert!(h.policy.on_connect(&ident("X-1")).is_ok());
}

#[test]
fn a_serial_named_like_a_client_id_shares_none_of_its_state() {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.max_connections = 1;
    }
    let h = Harness::new(cfg);
    let mut push = h.connect_as(&serial("meter-1"));
    // The MQTT device of that name still gets its one connection slot...
    let mut mqtt = h.connect("meter-1");
    // ...and its own rhythm clock and counters.
    h.policy.on_upload(&mut push);
    assert_eq!(h.verdict(&mut mqtt), Verdict::Forward, "arms its own clock");
    let dev = h
        .policy
        .stats()
        .device("meter-1")
        .expect("the MQTT device's counters");
    assert_eq!(dev.forwarded, 1);
    let key = crate::policy::serial_key("meter-1");
    assert_eq!(h.policy.stats().device(&key).map(|d| d.forwarded), Some(1));
}

#[test]
fn a_retry_after_a_failed_delivery_is_judged_against_the_last_delivered_upload() {
    let h = Harness::rhythm();
    let mut s = h.connect_as(&serial("SN-5"));
    h.policy.on_upload(&mut s); // delivered, arms
    h.advance(60.0);
    let before = s.rhythm_mark();
    assert_eq!(h.policy.on_upload(&mut s).verdict, Verdict::Forward);
    let after = s.rhythm_mark();
    s.give_back_sample(before, after); // that one was not delivered
    h.advance(2.0);
    assert_eq!(
        h.policy.on_upload(&mut s).verdict,
        Verdict::Forward,
        "62 s after the last delivered"
    );
}

#[test]
fn a_serial_key_names_its_serial_and_no_client_id_is_one() {
    assert_eq!(serial_of_key(&serial_key("SN-1")), Some("SN-1"));
    assert_eq!(
        serial_of_key("serial:SN-1"),
        None,
        "a client ID that looks like one"
    );
    assert_eq!(serial_of_key("meter-1"), None);
}
