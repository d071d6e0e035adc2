//! Regex bans (`clientid_re`, `username_re`): each kind's patterns compiled into one
//! `RegexSet`, so a CONNECT costs one pass over the client ID however many patterns there are
//! (EMQX tries each rule in turn). Patterns match anywhere in the value, as EMQX's do; anchor
//! them (`^meter-9\\d+$`) to mean the whole value. Their number is capped
//! (`[policy] max_regex_bans`) and each is size-limited when compiled, so a ban list cannot be
//! made into a slow or huge automaton.

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::bans::Subject;

/// One pattern's compiled size, at most (a generous limit for an ID-shaped pattern).
const PATTERN_BYTES: usize = 256 * 1024;
/// The whole set's compiled size, at most.
const SET_BYTES: usize = 16 << 20;
/// Default for `[policy] max_regex_bans`.
pub const DEFAULT_MAX: usize = 100;

/// `pattern` compiled, or why it cannot be a ban.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err("an empty pattern would match everyone".into());
    }
    RegexBuilder::new(pattern)
        .size_limit(PATTERN_BYTES)
        .build()
        .map_err(|e| format!("not a usable regex: {e}"))
}

/// The patterns of one kind, and their set.
#[derive(Debug, Default)]
pub struct Patterns {
    /// The ban subjects, in the set's order.
    subjects: Vec<Subject>,
    set: Option<RegexSet>,
}

impl Patterns {
    /// Rebuild from `subjects` (the kind's regex ban subjects, any order). Patterns were
    /// checked one by one when their bans were made; the set can still refuse on total size,
    /// which the caller reports.
    pub fn rebuild(&mut self, mut subjects: Vec<Subject>) -> Result<(), String> {
        subjects.sort_by(|a, b| text(a).cmp(text(b)));
        if subjects.is_empty() {
            *self = Patterns::default();
            return Ok(());
        }
        let set = RegexSetBuilder::new(subjects.iter().map(text))
            .size_limit(SET_BYTES)
            .build()
            .map_err(|e| format!("the regex bans together are too large: {e}"))?;
        self.subjects = subjects;
        self.set = Some(set);
        Ok(())
    }

    /// The subjects of the patterns that match `value`, in the set's order.
    pub fn matching<'a>(&'a self, value: &str) -> impl Iterator<Item = &'a Subject> + 'a {
        let hits = self.set.as_ref().map(|s| s.matches(value));
        hits.into_iter()
            .flat_map(|m| m.into_iter())
            .filter_map(|i| self.subjects.get(i))
    }

    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }
}

fn text(s: &Subject) -> &str {
    match s {
        Subject::ClientIdRe(p) | Subject::UsernameRe(p) => p,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str) -> Subject {
        Subject::ClientIdRe(p.into())
    }

    #[test]
    fn one_pass_finds_every_matching_pattern() {
        let mut p = Patterns::default();
        p.rebuild(vec![re("^meter-9"), re("rogue"), re("^x$")])
            .unwrap();
        let hits: Vec<&Subject> = p.matching("meter-9-rogue").collect();
        assert_eq!(hits, [&re("^meter-9"), &re("rogue")]);
        assert_eq!(p.matching("meter-1").count(), 0);
        assert_eq!(
            p.matching("xx").count(),
            0,
            "anchored patterns mean the whole value"
        );
        p.rebuild(Vec::new()).unwrap();
        assert!(p.is_empty() && p.matching("rogue").next().is_none());
    }

    #[test]
    fn patterns_that_cannot_be_bans_are_refused() {
        assert!(compile("").is_err());
        assert!(compile("(unclosed")
            .unwrap_err()
            .contains("not a usable regex"));
        // A pattern that compiles to a huge automaton.
        assert!(compile(r"\w{1000}\w{1000}\w{1000}").is_err());
    }
}
