//! Redirection by serial: a "main site" gateway moves devices without touching them. Rules
//! are tried in config order; the first whose serial pattern (or customer tag) matches answers
//! 307 with `Location` = a target + the device's own path and query, round robin among targets.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use regex::{Regex, RegexSet};

use crate::config::PushSettings;

enum Matcher {
    Serials(Regex),
    Customer(RegexSet),
}

struct Rule {
    matcher: Matcher,
    to: Vec<String>,
    next: AtomicUsize,
}

pub struct Redirects {
    rules: Vec<Rule>,
}

impl Redirects {
    pub fn compile(settings: &PushSettings) -> Result<Redirects, String> {
        let mut rules = Vec::with_capacity(settings.redirect.len());
        for (i, r) in settings.redirect.iter().enumerate() {
            let key = |k: &str| format!("push.redirect[{i}].{k}");
            let matcher = match (&r.serials, &r.customer) {
                (Some(p), _) => {
                    Matcher::Serials(Regex::new(p).map_err(|e| format!("{}: {e}", key("serials")))?)
                }
                (None, Some(c)) => {
                    let patterns = settings
                        .customers
                        .get(c)
                        .ok_or_else(|| format!("{}: no customer {c:?}", key("customer")))?;
                    Matcher::Customer(
                        RegexSet::new(patterns).map_err(|e| format!("push.customers.{c}: {e}"))?,
                    )
                }
                (None, None) => {
                    return Err(format!("{}: name serials or a customer", key("serials")))
                }
            };
            rules.push(Rule {
                matcher,
                to: r
                    .to
                    .iter()
                    .map(|t| t.trim_end_matches('/').to_string())
                    .collect(),
                next: AtomicUsize::new(0),
            });
        }
        Ok(Redirects { rules })
    }

    /// Where to send this serial, given the request's path and query: `None` to serve it here.
    pub fn location(&self, serial: &str, path_and_query: &str) -> Option<String> {
        let rule = self.rules.iter().find(|r| match &r.matcher {
            Matcher::Serials(re) => re.is_match(serial),
            Matcher::Customer(set) => set.is_match(serial),
        })?;
        let i = rule.next.fetch_add(1, Relaxed) % rule.to.len().max(1);
        let base = rule.to.get(i)?;
        Some(format!("{base}{path_and_query}"))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> PushSettings {
        toml::from_str(toml_text).expect("settings")
    }

    #[test]
    fn first_matching_rule_wins_and_targets_rotate() {
        let s = settings(
            r#"
            route = "c"
            [customers]
            acme = ["^AC-", "^ACME"]
            [[redirect]]
            serials = "^OLD-"
            to = ["https://old.example"]
            [[redirect]]
            customer = "acme"
            to = ["https://a1.example/", "https://a2.example"]
            "#,
        );
        let r = Redirects::compile(&s).unwrap();
        assert_eq!(
            r.location("OLD-1", "/push/OLD-1?x=1").as_deref(),
            Some("https://old.example/push/OLD-1?x=1")
        );
        assert_eq!(
            r.location("AC-7", "/push/AC-7").as_deref(),
            Some("https://a1.example/push/AC-7")
        );
        assert_eq!(
            r.location("ACME9", "/push/ACME9").as_deref(),
            Some("https://a2.example/push/ACME9")
        );
        assert_eq!(r.location("ZZ-1", "/push/ZZ-1"), None);
    }
}
