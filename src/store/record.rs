//! One ban as it is written down: EMQX's fields (`as`, `who`, `by`, `reason`, `at`, `until`),
//! so that an EMQX export reads as our bootstrap file and our records read as EMQX's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::policy::{Ban, BanSource, Subject};

/// A ban on disk and in the bootstrap file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    #[serde(rename = "as")]
    pub kind: String,
    pub who: String,
    pub by: String,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
    /// RFC 3339; absent: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

impl Record {
    pub fn of(ban: &Ban) -> Record {
        let (kind, who) = subject_words(&ban.subject.clone().canonical());
        Record {
            kind: kind.into(),
            who,
            by: ban.source.by(),
            reason: ban.reason.clone(),
            at: time_text(ban.created),
            until: ban.expires.map(time_text),
        }
    }

    /// The ban, or what is wrong with the record (in words naming the field).
    pub fn to_ban(&self) -> Result<Ban, String> {
        let subject = subject(&self.kind, &self.who)?;
        let created = parse_time(&self.at).map_err(|e| format!("at: {e}"))?;
        let expires = match self.until.as_deref().map(str::trim) {
            None | Some("") | Some("infinity") => None,
            Some(t) => Some(parse_time(t).map_err(|e| format!("until: {e}"))?),
        };
        Ok(Ban {
            subject,
            reason: self.reason.clone(),
            source: BanSource::parse(&self.by),
            created,
            expires,
        })
    }
}

/// The store's key for a subject: one ban per subject, as in memory.
pub fn key(subject: &Subject) -> String {
    let (kind, who) = subject_words(&subject.clone().canonical());
    format!("{kind}\u{0}{who}")
}

/// Every `as`, in EMQX's words.
pub const KINDS: [&str; 7] = [
    "clientid",
    "username",
    "peerhost",
    "peerhost_net",
    "clientid_re",
    "username_re",
    "serial",
];

/// `as` and `who` of a subject, as EMQX writes them.
pub fn subject_words(s: &Subject) -> (&'static str, String) {
    let who = match s {
        Subject::ClientId(v) | Subject::Username(v) | Subject::Serial(v) => v.to_string(),
        Subject::ClientIdRe(p) | Subject::UsernameRe(p) => p.to_string(),
        Subject::Ip(ip) => ip.to_string(),
        Subject::Cidr(net) => net.to_string(),
    };
    (s.kind(), who)
}

/// The subject `as` and `who` name, canonical, or what is wrong (in words naming the field).
pub fn subject(kind: &str, who: &str) -> Result<Subject, String> {
    let bad = |what: &str| format!("who: {who:?} is not {what}");
    let s = match kind {
        "clientid" if !who.is_empty() => Subject::ClientId(who.into()),
        "username" if !who.is_empty() => Subject::Username(who.into()),
        "serial" if !who.is_empty() => Subject::Serial(who.into()),
        "clientid" | "username" | "serial" => return Err("who: empty".into()),
        "peerhost" => Subject::Ip(who.trim().parse().map_err(|_| bad("an IP address"))?),
        "peerhost_net" => Subject::Cidr(who.trim().parse().map_err(|_| bad("a CIDR"))?),
        "clientid_re" | "username_re" => {
            crate::policy::patterns::compile(who).map_err(|e| format!("who: {e}"))?;
            match kind {
                "clientid_re" => Subject::ClientIdRe(who.into()),
                _ => Subject::UsernameRe(who.into()),
            }
        }
        other => return Err(format!("as: {other:?} is not one of {}", KINDS.join(", "))),
    };
    Ok(s.canonical())
}

/// RFC 3339 in UTC; a time RFC 3339 cannot hold (beyond year 9999) as epoch seconds, which
/// reads back the same: never an empty field, which would not load.
fn time_text(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let rfc = i64::try_from(since.as_secs())
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, since.subsec_nanos()))
        .filter(|d| d.timestamp() < 253_402_300_800) // 10000-01-01
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    rfc.unwrap_or_else(|| since.as_secs().to_string())
}

/// RFC 3339 (with any offset), or seconds since the epoch as EMQX also accepts.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    let out_of_range = || format!("{text:?} is out of range");
    if let Ok(secs) = text.parse::<u64>() {
        return UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(out_of_range);
    }
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e})"))?;
    let secs = u64::try_from(t.timestamp()).map_err(|_| format!("{text:?} is before 1970"))?;
    UNIX_EPOCH
        .checked_add(Duration::new(secs, t.timestamp_subsec_nanos()))
        .ok_or_else(out_of_range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_round_trips_through_its_record() {
        let now = UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        for subject in [
            Subject::ClientId("plant/7/meter-1".into()),
            Subject::Username("ops".into()),
            Subject::Ip("192.0.2.7".parse().unwrap()),
            Subject::Cidr("198.51.100.0/24".parse().unwrap()),
        ] {
            let ban = Ban {
                subject,
                reason: "too fast".into(),
                source: BanSource::Rate,
                created: now,
                expires: Some(now + Duration::from_secs(300)),
            };
            let record = Record::of(&ban);
            assert_eq!(record.to_ban().unwrap(), ban);
            let json = serde_json::to_string(&record).unwrap();
            assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), record);
        }
    }

    #[test]
    fn bad_records_name_the_field() {
        let r = |kind: &str, who: &str, at: &str| Record {
            kind: kind.into(),
            who: who.into(),
            by: "x".into(),
            reason: String::new(),
            at: at.into(),
            until: None,
        };
        let ok = "2026-12-02T05:00:00+01:00";
        assert!(r("peerhost", "not-an-ip", ok)
            .to_ban()
            .unwrap_err()
            .starts_with("who:"));
        assert!(r("peerhost_net", "10.0.0.0/33", ok)
            .to_ban()
            .unwrap_err()
            .starts_with("who:"));
        assert!(r("mac", "x", ok).to_ban().unwrap_err().starts_with("as:"));
        assert!(r("clientid_re", "(^x", ok)
            .to_ban()
            .unwrap_err()
            .starts_with("who: not a usable regex"));
        let re = r("username_re", "^fleet-\\d+$", ok).to_ban().unwrap();
        assert_eq!(re.subject, Subject::UsernameRe("^fleet-\\d+$".into()));
        assert_eq!(Record::of(&re).who, "^fleet-\\d+$");
        assert!(r("clientid", "a", "yesterday")
            .to_ban()
            .unwrap_err()
            .starts_with("at:"));
        assert!(r("clientid", "", ok)
            .to_ban()
            .unwrap_err()
            .starts_with("who:"));
        // Offsets and epoch seconds are both understood.
        let a = r("clientid", "a", ok).to_ban().unwrap().created;
        let b = r("clientid", "a", "1796184000").to_ban().unwrap().created;
        assert_eq!(a, b);
    }

    #[test]
    fn far_times_neither_panic_nor_make_an_unloadable_record() {
        let rec = |until: &str| Record {
            kind: "clientid".into(),
            who: "a".into(),
            by: "admin".into(),
            reason: String::new(),
            at: "2026-12-02T05:00:00Z".into(),
            until: Some(until.into()),
        };
        assert!(rec(&u64::MAX.to_string())
            .to_ban()
            .unwrap_err()
            .contains("out of range"));
        for far in [
            "9999-12-31T23:59:59Z",
            "2300-01-01T00:00:00Z",
            "99999999999",
        ] {
            let ban = rec(far).to_ban().unwrap();
            // Written back, it loads again to the same time.
            assert_eq!(Record::of(&ban).to_ban().unwrap(), ban, "{far}");
        }
        // A mapped IPv6 address is written as the IPv4 address its key names.
        let ban = Ban {
            subject: Subject::Ip("::ffff:192.0.2.1".parse().unwrap()),
            reason: String::new(),
            source: BanSource::admin("ops"),
            created: UNIX_EPOCH,
            expires: None,
        };
        assert_eq!(Record::of(&ban).who, "192.0.2.1");
    }
}
