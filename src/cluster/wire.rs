//! What the gateways of a cluster write to Redis and announce on its channel.
//!
//! - `{prefix}:ban:{as}:{who}`: `{"node", "ban": Record}`, expiring with the ban (PXAT);
//! - `{prefix}:lifted:{as}:{who}`: when a ban was lifted (ms), kept a day, so that a node that
//!   missed the announcement does not push the ban back at its next resync;
//! - channel `{prefix}:bans`: `{"node", "op": "set", "ban"}` or `{"node", "op": "del", "as", "who"}`.

use serde::{Deserialize, Serialize};

use crate::policy::Subject;
use crate::store::{subject_words, Record};

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
        let (kind, who) = subject_words(subject);
        format!("{}:ban:{kind}:{who}", self.prefix)
    }

    pub fn lifted(&self, subject: &Subject) -> String {
        let (kind, who) = subject_words(subject);
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
        let s = crate::store::subject("clientid", "a/b:c").unwrap();
        assert_eq!(keys.ban(&s), "portcullis:ban:clientid:a/b:c");
        // One key per subject, whichever way an address was written.
        let mapped = crate::store::subject("peerhost", "::ffff:10.0.0.1").unwrap();
        assert_eq!(keys.ban(&mapped), "portcullis:ban:peerhost:10.0.0.1");
    }
}
