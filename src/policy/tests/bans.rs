//! `MemoryBanList`.

use std::time::{Duration, SystemTime};

use super::*;

fn t0() -> SystemTime {
    FakeWallClock::base()
}

fn ban(subject: Subject, secs: Option<u64>) -> Ban {
    Ban {
        reason: format!("test {subject}"),
        subject,
        source: BanSource::admin("ops"),
        created: t0(),
        expires: secs.map(|s| t0() + Duration::from_secs(s)),
    }
}

fn cidr(s: &str) -> Subject {
    Subject::Cidr(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
}

#[test]
fn exact_subjects() {
    let list = MemoryBanList::new();
    list.insert(ban(client("a"), None), t0()).expect("insert");
    list.insert(ban(Subject::Username("u".into()), Some(10)), t0())
        .expect("insert");
    assert!(list.get(&client("a"), t0()).is_some());
    assert!(list.get(&client("b"), t0()).is_none());
    assert!(list.get(&Subject::Username("u".into()), t0()).is_some());
    assert!(
        list.get(&Subject::ClientId("u".into()), t0()).is_none(),
        "kinds differ"
    );
}

#[test]
fn an_ip_is_banned_by_an_ip_or_a_containing_cidr() {
    let list = MemoryBanList::new();
    list.insert(ban(cidr("10.0.0.0/8"), None), t0())
        .expect("insert");
    list.insert(ban(cidr("10.1.0.0/16"), None), t0())
        .expect("insert");
    list.insert(ban(Subject::Ip(ip("192.0.2.1")), None), t0())
        .expect("insert");
    list.insert(ban(cidr("2001:db8::/32"), None), t0())
        .expect("insert");
    let get = |a: &str| list.get(&Subject::Ip(ip(a)), t0()).map(|b| b.subject);
    assert_eq!(get("10.1.2.3"), Some(cidr("10.1.0.0/16")), "most specific");
    assert_eq!(get("10.2.0.1"), Some(cidr("10.0.0.0/8")));
    assert_eq!(get("11.0.0.1"), None);
    assert_eq!(get("192.0.2.1"), Some(Subject::Ip(ip("192.0.2.1"))));
    assert_eq!(get("192.0.2.2"), None);
    assert_eq!(get("2001:db8:ffff::1"), Some(cidr("2001:db8::/32")));
    assert_eq!(get("2001:db9::1"), None);
    assert_eq!(
        get("::ffff:10.9.9.9"),
        Some(cidr("10.0.0.0/8")),
        "v4-mapped"
    );
}

#[test]
fn cidrs_are_stored_by_network() {
    let list = MemoryBanList::new();
    list.insert(ban(cidr("10.1.2.3/16"), None), t0())
        .expect("insert");
    assert!(list.get(&cidr("10.1.0.0/16"), t0()).is_some());
    assert!(list.remove(&cidr("10.1.99.99/16")).is_some());
    assert!(list.get(&Subject::Ip(ip("10.1.2.3")), t0()).is_none());
    // Removing one address does not lift the CIDR around it.
    list.insert(ban(cidr("10.0.0.0/8"), None), t0())
        .expect("insert");
    assert!(list.remove(&Subject::Ip(ip("10.0.0.1"))).is_none());
    assert!(list.get(&Subject::Ip(ip("10.0.0.1")), t0()).is_some());
}

#[test]
fn inserting_an_expired_ban_is_an_error() {
    let list = MemoryBanList::new();
    let stale = ban(client("a"), Some(10));
    let later = t0() + Duration::from_secs(10);
    assert_eq!(
        list.insert(stale.clone(), later),
        Err(BanError::AlreadyExpired(client("a")))
    );
    assert!(list.is_empty());
    assert!(list.insert(stale, t0()).is_ok());
}

#[test]
fn an_expired_ban_is_no_ban() {
    let list = MemoryBanList::new();
    list.insert(ban(client("a"), Some(10)), t0())
        .expect("insert");
    list.insert(ban(cidr("10.0.0.0/8"), Some(10)), t0())
        .expect("insert");
    let just_before = t0() + Duration::from_nanos(9_999_999_999);
    let at = t0() + Duration::from_secs(10);
    assert!(list.get(&client("a"), just_before).is_some());
    assert!(list.get(&client("a"), at).is_none(), "expiry is exclusive");
    assert!(list.get(&Subject::Ip(ip("10.0.0.1")), at).is_none());
    assert_eq!(list.list(just_before).len(), 2);
    assert!(list.list(at).is_empty());
    assert_eq!(list.len(), 2, "kept until swept");
    assert_eq!(list.sweep(at), 2);
    assert!(list.is_empty());
}

#[test]
fn sweep_keeps_cidr_lookup_consistent() {
    let list = MemoryBanList::new();
    list.insert(ban(cidr("10.0.0.0/8"), Some(10)), t0())
        .expect("insert");
    list.sweep(t0() + Duration::from_secs(10));
    let now = t0() + Duration::from_secs(20);
    list.insert(
        Ban {
            expires: Some(now + Duration::from_secs(5)),
            ..ban(cidr("10.0.0.0/8"), None)
        },
        now,
    )
    .expect("insert");
    assert!(list.get(&Subject::Ip(ip("10.0.0.1")), now).is_some());
}

#[test]
fn replace_remove_and_list_order() {
    let list = MemoryBanList::new();
    let mut a = ban(client("a"), None);
    a.created = t0() + Duration::from_secs(5);
    list.insert(a.clone(), t0()).expect("insert");
    list.insert(ban(client("b"), None), t0()).expect("insert");
    let subjects: Vec<Subject> = list.list(t0()).into_iter().map(|b| b.subject).collect();
    assert_eq!(subjects, [client("b"), client("a")], "oldest first");
    a.reason = "replaced".into();
    list.insert(a.clone(), t0()).expect("insert");
    assert_eq!(
        list.get(&client("a"), t0()).map(|b| b.reason),
        Some("replaced".into())
    );
    assert_eq!(list.len(), 2);
    assert_eq!(list.remove(&client("a")), Some(a));
    assert_eq!(list.remove(&client("a")), None);
}

#[test]
fn subjects_display_for_logs() {
    assert_eq!(client("x/y").to_string(), "client_id:x/y");
    assert_eq!(cidr("10.0.0.0/8").to_string(), "cidr:10.0.0.0/8");
    assert_eq!(Subject::Ip(ip("::1")).to_string(), "ip:::1");
}

#[test]
fn by_reads_back_as_written_and_old_records_still_load() {
    for source in [
        BanSource::Rhythm,
        BanSource::Rate,
        BanSource::Flapping,
        BanSource::admin("ops"),
        BanSource::File,
        BanSource::Peer("gw-2".into()),
    ] {
        assert_eq!(BanSource::parse(&source.by()), source, "{}", source.by());
    }
    // Earlier releases and EMQX exports.
    assert_eq!(BanSource::parse("portcullis:policy"), BanSource::Rate);
    assert_eq!(BanSource::parse("admin").by(), "admin");
    assert_eq!(BanSource::parse("mgmt_api"), BanSource::admin("mgmt_api"));
}

#[test]
fn a_tally_counts_bans_in_force_by_kind_and_issuer() {
    let list = MemoryBanList::new();
    list.insert(ban(client("a"), None), t0()).unwrap();
    list.insert(ban(client("b"), Some(10)), t0()).unwrap();
    let mut by_policy = ban(cidr("10.0.0.0/8"), None);
    by_policy.source = BanSource::Rate;
    list.insert(by_policy, t0()).unwrap();
    let t = list.tally(t0() + Duration::from_secs(10));
    assert_eq!(t.active, 2, "b has expired");
    assert_eq!(t.by_kind.get("clientid"), Some(&1));
    assert_eq!(t.by_kind.get("peerhost_net"), Some(&1));
    assert_eq!(t.by_source.get("admin:ops"), Some(&1));
    assert_eq!(t.by_source.get("portcullis:rate"), Some(&1));
}

#[test]
fn insert_new_refuses_to_replace_a_ban_in_force() {
    let list = MemoryBanList::new();
    assert_eq!(
        list.insert_new(ban(client("a"), Some(10)), t0()),
        Ok(Ok(()))
    );
    let mut other = ban(client("a"), None);
    other.reason = "other".into();
    let existing = list.insert_new(other.clone(), t0()).unwrap().unwrap_err();
    assert_eq!(existing.expires, Some(t0() + Duration::from_secs(10)));
    // Once that one has expired, the new one goes in.
    let later = t0() + Duration::from_secs(10);
    other.created = later;
    assert_eq!(list.insert_new(other, later), Ok(Ok(())));
}

#[test]
fn regex_bans_match_values_and_are_capped() {
    let list = MemoryBanList::with_max_patterns(2);
    let re = |p: &str| Subject::ClientIdRe(p.into());
    list.insert(ban(re("^rogue-\\d+$"), Some(10)), t0())
        .unwrap();
    list.insert(ban(Subject::UsernameRe("evil".into()), None), t0())
        .unwrap();
    assert_eq!(
        list.get(&client("rogue-17"), t0()).map(|b| b.subject),
        Some(re("^rogue-\\d+$"))
    );
    assert!(list.get(&client("rogue-x"), t0()).is_none());
    assert!(
        list.get(&client("meter-rogue-1"), t0()).is_none(),
        "anchored"
    );
    assert!(list
        .get(&Subject::Username("the-evil-one".into()), t0())
        .is_some());
    // An exact ban is found first (its reason is the one a device is told).
    list.insert(ban(client("rogue-17"), None), t0()).unwrap();
    assert_eq!(
        list.get(&client("rogue-17"), t0()).map(|b| b.subject),
        Some(client("rogue-17"))
    );

    // The cap counts regex bans only; replacing one is not a new one.
    assert_eq!(
        list.insert(ban(re("third"), None), t0()),
        Err(BanError::TooManyPatterns(2))
    );
    list.insert(ban(re("^rogue-\\d+$"), None), t0()).unwrap();
    let bad = list.insert(ban(Subject::UsernameRe("(".into()), None), t0());
    assert!(matches!(bad, Err(BanError::BadPattern(_))), "{bad:?}");

    // Expired, then swept, then removed: the set follows.
    assert!(list
        .get(&client("rogue-1"), t0() + Duration::from_secs(20))
        .is_some());
    assert!(list.remove(&re("^rogue-\\d+$")).is_some());
    assert!(list.get(&client("rogue-1"), t0()).is_none());
    list.insert(ban(re("^x"), Some(10)), t0()).unwrap();
    list.sweep(t0() + Duration::from_secs(10));
    assert!(list.get(&client("xyz"), t0()).is_none(), "swept");
}

#[test]
fn a_list_has_one_order_even_for_bans_of_the_same_instant() {
    let list = MemoryBanList::new();
    let names = ["m-3", "m-1", "m-2", "a", "z"];
    for n in names {
        list.insert(ban(Subject::ClientId(n.into()), None), t0())
            .unwrap();
    }
    list.insert(ban(Subject::Username("u".into()), None), t0())
        .unwrap();
    let order = |l: &MemoryBanList| -> Vec<String> {
        l.list(t0()).iter().map(|b| b.subject.to_string()).collect()
    };
    let first = order(&list);
    assert_eq!(first.len(), 6);
    // Same time for all: by kind, then value; the map's order (which changes as it grows and
    // shrinks) plays no part, so a page never repeats or skips a ban.
    assert_eq!(
        first[..5],
        [
            "client_id:a",
            "client_id:m-1",
            "client_id:m-2",
            "client_id:m-3",
            "client_id:z"
        ]
    );
    list.remove(&Subject::ClientId("m-2".into()));
    list.insert(ban(Subject::ClientId("m-2".into()), None), t0())
        .unwrap();
    assert_eq!(order(&list), first);
}
