//! Topic permissions: the filters a class may publish to, with `{clientid}` and `{username}`
//! standing for the device's own, each a whole level.
//!
//! A placeholder is compared with the device's value, never substituted into the filter: a
//! client ID of `+` or `#` is then just text, and cannot widen its own permissions.

use super::topic::TopicFilter;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(Box<str>),
    Plus,
    Hash,
    ClientId,
    Username,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    levels: Vec<Level>,
}

/// A class's publish permissions; empty allows every topic.
#[derive(Debug, Clone, Default)]
pub(crate) struct Acl(Vec<Filter>);

impl Acl {
    /// `key` names the config list in errors.
    pub(crate) fn compile(key: &str, filters: &[String]) -> Result<Acl, String> {
        let mut out = Vec::with_capacity(filters.len());
        for (i, f) in filters.iter().enumerate() {
            let err = |e: String| format!("{key}[{i}]: {e}");
            // The wildcard rules are the topic filters' own; placeholders are checked here.
            let plain = f.replace("{clientid}", "x").replace("{username}", "x");
            TopicFilter::parse(&plain).map_err(err)?;
            let mut levels = Vec::new();
            for part in f.split('/') {
                levels.push(match part {
                    "+" => Level::Plus,
                    "#" => Level::Hash,
                    "{clientid}" => Level::ClientId,
                    "{username}" => Level::Username,
                    p if p.contains(['{', '}']) => {
                        return Err(err(format!(
                            "{f:?}: a placeholder ({{clientid}}, {{username}}) must fill its whole level"
                        )))
                    }
                    p => Level::Exact(p.into()),
                });
            }
            out.push(Filter { levels });
        }
        Ok(Acl(out))
    }

    pub(crate) fn allows(&self, topic: &str, client_id: &str, username: Option<&str>) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(topic, client_id, username))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// May a device subscribe to `filter`: does one permission match every topic the filter
    /// can match? A shared subscription (`$share/{group}/{filter}`) is judged by its filter.
    pub(crate) fn covers(&self, filter: &str, client_id: &str, username: Option<&str>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let filter = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, f)) if !group.is_empty() && !f.is_empty() => f,
                _ => return false,
            },
            None => filter,
        };
        self.0.iter().any(|p| p.covers(filter, client_id, username))
    }
}

impl Filter {
    fn matches(&self, topic: &str, client_id: &str, username: Option<&str>) -> bool {
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return false;
        }
        let mut parts = topic.split('/');
        for level in &self.levels {
            let Some(got) = parts.next() else {
                return matches!(level, Level::Hash);
            };
            let ok = match level {
                Level::Hash => return true,
                Level::Plus => true,
                Level::Exact(want) => **want == *got,
                Level::ClientId => got == client_id,
                Level::Username => username == Some(got),
            };
            if !ok {
                return false;
            }
        }
        parts.next().is_none()
    }

    /// Every topic `filter` matches is matched by this permission. Level by level: `#` here
    /// covers whatever is left (the parent level too, as `a/#` matches `a`); `+` covers one
    /// level of anything but `#`; an exact level or a placeholder covers only that literal
    /// text (a requested `+` or `#` could be anything).
    fn covers(&self, filter: &str, client_id: &str, username: Option<&str>) -> bool {
        // Wildcards at the first level never match `$` topics; the same goes for permissions.
        if filter.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return false;
        }
        let literal = |got: &str| got != "+" && got != "#";
        let mut parts = filter.split('/');
        for level in &self.levels {
            if matches!(level, Level::Hash) {
                return true;
            }
            let Some(got) = parts.next() else {
                return false;
            };
            let ok = match level {
                Level::Hash => true,
                Level::Plus => got != "#",
                Level::Exact(want) => **want == *got,
                Level::ClientId => literal(got) && got == client_id,
                Level::Username => literal(got) && username == Some(got),
            };
            if !ok {
                return false;
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(filters: &[&str]) -> Acl {
        let v: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Acl::compile("t", &v).unwrap()
    }

    #[test]
    fn placeholders_match_the_devices_own_level_only() {
        let a = acl(&["plant/{clientid}/#", "fleet/{username}/status"]);
        assert!(a.allows("plant/m1/temp", "m1", None));
        assert!(a.allows("plant/m1", "m1", None));
        assert!(!a.allows("plant/m2/temp", "m1", None));
        assert!(!a.allows("plant", "m1", None));
        assert!(a.allows("fleet/acme/status", "m1", Some("acme")));
        assert!(!a.allows("fleet/acme/status", "m1", None));
        assert!(!a.allows("fleet/other/status", "m1", Some("acme")));
        assert!(!a.allows("other/m1", "m1", None));
    }

    #[test]
    fn a_client_id_made_of_wildcards_is_just_text() {
        let a = acl(&["plant/{clientid}/data"]);
        assert!(!a.allows("plant/m1/data", "+", None));
        assert!(!a.allows("plant/m1/data", "#", None));
        assert!(a.allows("plant/+/data", "+", None), "its own literal level");
        assert!(
            !a.allows("plant/a/b/data", "a/b", None),
            "a client ID with / is one level"
        );
    }

    #[test]
    fn empty_allows_everything_and_dollar_topics_need_an_exact_first_level() {
        assert!(acl(&[]).allows("any/thing", "x", None));
        assert!(!acl(&["#"]).allows("$SYS/x", "x", None));
        assert!(acl(&["$SYS/#"]).allows("$SYS/x", "x", None));
    }

    #[test]
    fn a_subscription_must_lie_wholly_inside_a_permission() {
        let a = acl(&["cmd/{clientid}/#", "fleet/+/status", "news"]);
        let yes = |f: &str| a.covers(f, "m1", Some("acme"));
        for f in [
            "cmd/m1/#",
            "cmd/m1",
            "cmd/m1/reboot",
            "cmd/m1/+/x",
            "fleet/acme/status",
            "fleet/+/status",
            "news",
            "$share/g1/cmd/m1/#",
        ] {
            assert!(yes(f), "{f} is inside");
        }
        for f in [
            "#",
            "+",
            "cmd/#",
            "cmd/+/reboot",
            "cmd/m2/reboot",
            "fleet/#",
            "fleet/acme/#",
            "fleet/acme/status/x",
            "news/#",
            "news/x",
            "$SYS/#",
            "$share/g1/#",
            "$share//cmd/m1",
            "$share/g1",
        ] {
            assert!(!yes(f), "{f} is outside");
        }
        // A client ID of `+` does not turn its placeholder into a wildcard.
        assert!(!a.covers("cmd/+/#", "+", None));
        assert!(acl(&[]).covers("#", "m1", None), "empty: anything");
        assert!(acl(&["#"]).covers("a/#", "m1", None));
        assert!(!acl(&["#"]).covers("$SYS/x", "m1", None));
    }

    /// Fuzz target: over a small alphabet (so that matches happen), a filter a permission
    /// covers never matches a topic the permission does not allow.
    #[test]
    fn fuzz_a_covered_filter_only_matches_allowed_topics() {
        const LEVELS: [&str; 6] = ["a", "b", "m1", "+", "#", "{clientid}"];
        let pick = |ix: &[u8], wild: bool| -> Option<String> {
            let parts: Vec<&str> = ix
                .iter()
                .take(4)
                .map(|i| LEVELS[usize::from(*i) % LEVELS.len()])
                .filter(|l| wild || !matches!(*l, "+" | "#" | "{clientid}"))
                .collect();
            (!parts.is_empty()).then(|| parts.join("/"))
        };
        bolero::check!()
            .with_type::<(Vec<u8>, Vec<u8>, Vec<u8>)>()
            .for_each(|(p, f, t)| {
                let Some(permission) = pick(p, true) else {
                    return;
                };
                let Ok(a) = Acl::compile("p", std::slice::from_ref(&permission)) else {
                    return;
                };
                let Some(filter) = pick(f, true).map(|f| f.replace("{clientid}", "m1")) else {
                    return;
                };
                let Ok(parsed) = TopicFilter::parse(&filter) else {
                    return;
                };
                let Some(topic) = pick(t, false) else {
                    return;
                };
                if a.covers(&filter, "m1", None) && parsed.matches(&topic) {
                    assert!(
                        a.allows(&topic, "m1", None),
                        "{permission} covers {filter}, which matches {topic}, which it does not allow"
                    );
                }
            });
    }

    #[test]
    fn bad_filters_are_config_errors_naming_the_entry() {
        let bad = |f: &str| Acl::compile("k", &[f.to_string()]).unwrap_err();
        assert!(bad("a/#/b").starts_with("k[0]"));
        assert!(bad("a/x{clientid}").contains("whole level"));
        assert!(bad("a/b+").contains("whole level"));
        assert!(bad("").starts_with("k[0]"));
    }
}
