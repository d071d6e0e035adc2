//! MQTT topic filters (`+` one level, `#` the rest), parsed once at config load.

/// A parsed filter. `#` may only be last, and wildcards must fill their whole level, as in
/// MQTT 3.1.1 §4.7.1; a filter that breaks this is a config error, not a silent non-match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicFilter {
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(Box<str>),
    Plus,
    Hash,
}

impl TopicFilter {
    pub(crate) fn parse(filter: &str) -> Result<TopicFilter, String> {
        if filter.is_empty() {
            return Err("empty topic filter".into());
        }
        let parts: Vec<&str> = filter.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Plus,
                "#" if i + 1 == parts.len() => Level::Hash,
                "#" => return Err(format!("{filter:?}: '#' must be the last level")),
                p if p.contains(['+', '#']) => {
                    return Err(format!("{filter:?}: a wildcard must fill its whole level"))
                }
                p => Level::Exact(p.into()),
            };
            levels.push(level);
        }
        Ok(TopicFilter { levels })
    }

    pub(crate) fn matches(&self, topic: &str) -> bool {
        // Wildcards at the first level do not match `$SYS`-style topics (MQTT §4.7.2).
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return false;
        }
        let mut parts = topic.split('/');
        for level in &self.levels {
            match (level, parts.next()) {
                // `a/#` also matches `a`: `#` includes the parent level.
                (Level::Hash, _) => return true,
                (Level::Plus, Some(_)) => {}
                (Level::Exact(want), Some(got)) if **want == *got => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

/// The rhythm topics of a class: empty means every topic.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicFilters(Vec<TopicFilter>);

impl TopicFilters {
    pub(crate) fn new(filters: Vec<TopicFilter>) -> Self {
        TopicFilters(filters)
    }

    pub(crate) fn matches(&self, topic: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, topic: &str) -> bool {
        TopicFilter::parse(filter).map(|f| f.matches(topic)) == Ok(true)
    }

    #[test]
    fn exact() {
        assert!(m("a/b", "a/b"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("a/b", "a"));
        assert!(!m("a/b", "a/c"));
        assert!(m("/a", "/a"));
        assert!(!m("a", "a/"));
    }

    #[test]
    fn plus_is_one_level() {
        assert!(m("a/+/c", "a/b/c"));
        assert!(m("a/+/c", "a//c"));
        assert!(!m("a/+/c", "a/b/x/c"));
        assert!(!m("a/+", "a/b/c"));
        assert!(m("+/+", "/x"));
        assert!(!m("+", "a/b"));
    }

    #[test]
    fn hash_is_the_rest_including_parent() {
        assert!(m("a/#", "a/b/c"));
        assert!(m("a/#", "a"));
        assert!(m("#", "anything/at/all"));
        assert!(!m("a/#", "b/c"));
        assert!(m("a/+/#", "a/b"));
    }

    #[test]
    fn dollar_topics_need_an_explicit_first_level() {
        assert!(!m("#", "$SYS/x"));
        assert!(!m("+/x", "$SYS/x"));
        assert!(m("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn malformed_filters_are_refused() {
        assert!(TopicFilter::parse("a/#/b").is_err());
        assert!(TopicFilter::parse("a/b+").is_err());
        assert!(TopicFilter::parse("a#").is_err());
        assert!(TopicFilter::parse("").is_err());
    }

    #[test]
    fn empty_set_matches_all() {
        assert!(TopicFilters::default().matches("x/y"));
        let set = TopicFilters::new(vec![TopicFilter::parse("t/+").expect("valid")]);
        assert!(set.matches("t/1"));
        assert!(!set.matches("u/1"));
    }
}
