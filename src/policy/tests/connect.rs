//! CONNECT and accept: device rules, concurrency, connect rates, listeners.

use super::*;
use crate::config::policy::{PrefixRule, UnknownDevices};

fn classes() -> PolicyConfig {
    let mut cfg = rhythm_config();
    for name in ["meter", "camera", "legacy"] {
        cfg.classes.insert(name.into(), DeviceClass::default());
    }
    cfg.devices.insert("meter-special".into(), "legacy".into());
    cfg.device_prefixes = vec![
        PrefixRule {
            prefix: "meter-".into(),
            class: "meter".into(),
        },
        PrefixRule {
            prefix: "me".into(),
            class: "camera".into(),
        },
    ];
    cfg
}

fn class_of(h: &Harness, id: &str) -> Result<String, Refusal> {
    h.policy
        .on_connect(&ident(id))
        .map(|s| s.class().to_string())
}

#[test]
fn exact_device_then_prefixes_in_order_then_default() {
    let h = Harness::new(classes());
    assert_eq!(class_of(&h, "meter-special").as_deref(), Ok("legacy"));
    assert_eq!(class_of(&h, "meter-42").as_deref(), Ok("meter"));
    assert_eq!(class_of(&h, "mex").as_deref(), Ok("camera"));
    assert_eq!(class_of(&h, "other").as_deref(), Ok("default"));
}

#[test]
fn unknown_devices_can_be_refused() {
    let mut cfg = classes();
    cfg.unknown_devices = UnknownDevices::Refuse;
    let h = Harness::new(cfg);
    assert_eq!(class_of(&h, "other"), Err(Refusal::UnknownDevice));
    assert_eq!(class_of(&h, "meter-1").as_deref(), Ok("meter"));
    assert_eq!(h.stats().refused_unknown, 1);
    // A refused unknown device leaves nothing behind.
    assert_eq!(h.policy.footprint().client_limiter_keys, 1);
    assert_eq!(h.policy.footprint().devices, 1);
}

#[test]
fn max_connections_and_drop_releases() {
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.max_connections = 2;
    }
    let h = Harness::new(cfg);
    let a = h.connect("d");
    let b = h.connect("d");
    assert_eq!(
        h.policy.on_connect(&ident("d")).err(),
        Some(Refusal::TooManyConnections)
    );
    assert_eq!(h.policy.stats().device("d").map(|d| d.connections), Some(2));
    drop(a);
    let c = h.connect("d");
    drop((b, c));
    assert_eq!(h.policy.stats().device("d").map(|d| d.connections), Some(0));
    assert_eq!(h.stats().refused_too_many, 1);
    // Another device is not affected by d's slots.
    let _e = h.connect("e");
}

#[test]
fn flapping_is_refused_then_struck_then_banned() {
    let h = Harness::rhythm();
    // 15 CONNECTs per minute are fine, however fast.
    for _ in 0..15 {
        drop(h.connect("d"));
    }
    for i in 0..4 {
        assert_eq!(
            h.policy.on_connect(&ident("d")).err(),
            Some(Refusal::ConnectRate),
            "#{i}"
        );
    }
    assert_eq!(h.ban_on(client("d")), None);
    assert_eq!(
        h.policy.on_connect(&ident("d")).err(),
        Some(Refusal::ConnectRate),
        "the fifth violation is refused too, and bans"
    );
    assert!(h.ban_on(client("d")).is_some());
    assert!(matches!(
        h.policy.on_connect(&ident("d")),
        Err(Refusal::Banned(_))
    ));
    let st = h.stats();
    assert_eq!(
        (st.refused_connect_rate, st.strikes, st.bans_issued),
        (5, 5, 1)
    );
}

#[test]
fn connect_rate_refills_at_the_per_minute_rate() {
    let h = Harness::rhythm();
    for _ in 0..15 {
        drop(h.connect("d"));
    }
    h.advance(4.0); // 60 s / 15
    drop(h.connect("d"));
    assert_eq!(
        h.policy.on_connect(&ident("d")).err(),
        Some(Refusal::ConnectRate)
    );
}

#[test]
fn per_ip_connect_attempts() {
    let mut cfg = rhythm_config();
    cfg.connects.per_ip_per_sec = 2;
    cfg.connects.per_ip_burst = 3;
    let h = Harness::new(cfg);
    let a = ip("192.0.2.1");
    for _ in 0..3 {
        assert_eq!(h.policy.admit_ip(a), Admit::Ok);
    }
    assert_eq!(h.policy.admit_ip(a), Admit::RateLimited);
    assert_eq!(h.policy.admit_ip(ip("192.0.2.2")), Admit::Ok);
    assert_eq!(
        h.policy.admit_ip(ip("::ffff:192.0.2.1")),
        Admit::RateLimited
    );
    h.advance(0.5);
    assert_eq!(h.policy.admit_ip(a), Admit::Ok);
    assert_eq!(h.stats().accept_rate_limited, 2);
}

#[test]
fn listeners_have_their_own_accept_rate() {
    let mut cfg = rhythm_config();
    cfg.connects.per_listener_per_sec = 10;
    cfg.connects.per_listener_burst = 3;
    let h = Harness::new(cfg);
    for _ in 0..3 {
        assert!(h.policy.admit_listener("wss"));
    }
    assert!(!h.policy.admit_listener("wss"));
    assert!(h.policy.admit_listener("mqtts"));
    h.advance(0.1);
    assert!(h.policy.admit_listener("wss"));
    assert!(!h.policy.admit_listener("wss"));
    assert_eq!(h.stats().listener_rate_limited, 2);
}

#[test]
fn session_exposes_its_identity() {
    let h = Harness::new(classes());
    let id = ident_full("meter-7", Some("u"), "10.1.2.3");
    let s = h.connect_as(&id);
    assert_eq!(s.identity(), &id);
    assert_eq!(&**s.client_id(), "meter-7");
    assert_eq!(s.class(), "meter");
}

#[test]
fn concurrent_publishers_share_nothing_but_counters() {
    let h = Harness::new(classes());
    let policy = &h.policy;
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                let mut s = policy
                    .on_connect(&ident(&format!("meter-{t}")))
                    .expect("admitted");
                for _ in 0..100 {
                    assert_eq!(
                        policy.on_publish(&mut s, &facts("t", 1)).verdict,
                        Verdict::Forward
                    );
                }
            });
        }
    });
    assert_eq!(h.stats().forwarded, 400);
}

#[test]
fn a_client_id_at_its_max_connections_takes_over_unless_its_class_refuses() {
    let h = Harness::rhythm();
    assert_eq!(
        h.policy.takeover_needed(&ident("d")),
        None,
        "nothing to take over"
    );
    let _first = h.connect("d");
    assert_eq!(h.policy.takeover_needed(&ident("d")), Some(1));
    let mut cfg = rhythm_config();
    if let Some(c) = cfg.classes.get_mut("default") {
        c.on_duplicate = crate::config::policy::OnDuplicate::Refuse;
    }
    let h = Harness::new(cfg);
    let _first = h.connect("d");
    assert_eq!(h.policy.takeover_needed(&ident("d")), None);
}

#[test]
fn a_banned_identity_takes_nothing_over() {
    let h = Harness::rhythm();
    let _first = h.connect("d");
    let banned = ident_full("d", Some("evil"), "10.0.0.1");
    h.ban_forever(Subject::Username("evil".into()));
    assert_eq!(h.policy.takeover_needed(&banned), None);
}
