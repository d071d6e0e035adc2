//! One ban as it is written down: EMQX's fields (`as`, `who`, `by`, `reason`, `at`, `until`),
//! so that an EMQX export reads as our bootstrap file and our records read as EMQX's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::policy::{Ban, BanSource, Subject};

/// A ban on disk and in the bootstrap file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        let (kind, who) = subject_words(&ban.subject);
        Record {
            kind: kind.into(),
            who,
            by: source_word(ban.source).into(),
            reason: ban.reason.clone(),
            at: rfc3339(ban.created),
            until: ban.expires.map(rfc3339),
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
            source: source(&self.by),
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

fn subject_words(s: &Subject) -> (&'static str, String) {
    match s {
        Subject::ClientId(id) => ("clientid", id.to_string()),
        Subject::Username(u) => ("username", u.to_string()),
        Subject::Ip(ip) => ("peerhost", ip.to_string()),
        Subject::Cidr(net) => ("peerhost_net", net.to_string()),
    }
}

fn subject(kind: &str, who: &str) -> Result<Subject, String> {
    let bad = |what: &str| format!("who: {who:?} is not {what}");
    let s = match kind {
        "clientid" if !who.is_empty() => Subject::ClientId(who.into()),
        "username" if !who.is_empty() => Subject::Username(who.into()),
        "clientid" | "username" => return Err("who: empty".into()),
        "peerhost" => Subject::Ip(who.trim().parse().map_err(|_| bad("an IP address"))?),
        "peerhost_net" => Subject::Cidr(who.trim().parse().map_err(|_| bad("a CIDR"))?),
        "clientid_re" | "username_re" => {
            return Err(format!("as: {kind} bans are not supported by this release"))
        }
        other => {
            return Err(format!(
                "as: {other:?} is not one of clientid, username, peerhost, peerhost_net"
            ))
        }
    };
    Ok(s.canonical())
}

/// `by`, EMQX style: who issued the ban.
fn source_word(s: BanSource) -> &'static str {
    match s {
        BanSource::Auto => "portcullis:policy",
        BanSource::Admin => "admin",
        BanSource::File => "file",
        BanSource::Peer => "peer",
    }
}

fn source(by: &str) -> BanSource {
    match by.split(':').next().unwrap_or_default() {
        "portcullis" => BanSource::Auto,
        "file" => BanSource::File,
        "peer" => BanSource::Peer,
        // EMQX's own exports say `mgmt_api` or a user name: an administrator.
        _ => BanSource::Admin,
    }
}

fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, since.subsec_nanos())
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// RFC 3339 (with any offset), or seconds since the epoch as EMQX also accepts.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e})"))?;
    let nanos = t.timestamp_nanos_opt().ok_or("out of range")?;
    let nanos = u64::try_from(nanos).map_err(|_| format!("{text:?} is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::from_nanos(nanos))
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
                source: BanSource::Auto,
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
        assert!(r("clientid_re", "^x", ok)
            .to_ban()
            .unwrap_err()
            .contains("not supported"));
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
}
