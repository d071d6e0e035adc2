//! What the gateways of a cluster write to Redis and announce on its channel.
//!
//! - `{prefix}:ban:{as}:{who}`: `{"node", "ban": Record}`, expiring with the ban (PXAT);
//! - `{prefix}:lifted:{as}:{who}`: when a ban was lifted (ms), kept a day, so that a node that
//!   missed the announcement does not push the ban back at its next resync;
//! - channel `{prefix}:bans`: `{"node", "op": "set", "ban"}` or `{"node", "op": "del", "as", "who"}`.

use serde::{Deserialize, Serialize};

use crate::policy::{Ban, Subject};
use crate::store::Record;

/// A ban as kept in Redis: which node issued it, the record, and when it was made in
/// milliseconds (for the scripts that keep an older ban from replacing a newer one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub node: String,
    pub at_ms: u64,
    pub ban: Record,
}

/// A change announced on the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Announcement {
    Set {
        node: String,
        ban: Record,
    },
    Del {
        node: String,
        #[serde(rename = "as")]
        kind: String,
        who: String,
        /// When it was lifted (ms): a ban made after that is not lifted by this.
        at: u64,
    },
}

impl Announcement {
    pub fn node(&self) -> &str {
        match self {
            Announcement::Set { node, .. } | Announcement::Del { node, .. } => node,
        }
    }
}

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn ban(&self, subject: &Subject) -> String {
        let (kind, who) = words(subject);
        format!("{}:ban:{kind}:{who}", self.prefix)
    }

    pub fn lifted(&self, subject: &Subject) -> String {
        let (kind, who) = words(subject);
        format!("{}:lifted:{kind}:{who}", self.prefix)
    }

    pub fn all_bans(&self) -> String {
        // Redis glob: the prefix is ours and checked to hold no glob characters.
        format!("{}:ban:*", self.prefix)
    }

    pub fn channel(&self) -> String {
        format!("{}:bans", self.prefix)
    }
}

/// `as` and `who` of a subject, as EMQX writes them.
pub fn words(subject: &Subject) -> (String, String) {
    let r = Record::of(&Ban {
        subject: subject.clone(),
        reason: String::new(),
        source: crate::policy::BanSource::File,
        created: std::time::UNIX_EPOCH,
        expires: None,
    });
    (r.kind, r.who)
}

/// The subject named by `as` and `who`, if valid.
pub fn subject(kind: &str, who: &str) -> Option<Subject> {
    let probe = Record {
        kind: kind.to_owned(),
        who: who.to_owned(),
        by: "file".into(),
        reason: String::new(),
        at: "1970-01-01T00:00:00Z".into(),
        until: None,
    };
    probe.to_ban().ok().map(|b| b.subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_read_back_as_written() {
        let del = Announcement::Del {
            node: "gw-1".into(),
            kind: "clientid".into(),
            who: "a/b:c".into(),
            at: 7,
        };
        let text = serde_json::to_string(&del).unwrap();
        assert_eq!(
            text,
            r#"{"op":"del","node":"gw-1","as":"clientid","who":"a/b:c","at":7}"#
        );
        let back: Announcement = serde_json::from_str(&text).unwrap();
        assert_eq!(back.node(), "gw-1");
        let keys = Keys::new("portcullis");
        let s = subject("clientid", "a/b:c").unwrap();
        assert_eq!(keys.ban(&s), "portcullis:ban:clientid:a/b:c");
        assert_eq!(
            subject("peerhost", "::ffff:10.0.0.1"),
            subject("peerhost", "10.0.0.1")
        );
        assert_eq!(subject("peerhost", "nope"), None);
    }
}
