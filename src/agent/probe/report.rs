//! The probe's findings: one line per check with a verdict, and on a problem what to change.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Works, but something an admin should know (e.g. the client IP is the proxy's).
    Warn,
    Fail,
    /// Not run: an earlier check failed, or `--quick`.
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub url: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ok(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, Verdict::Ok, detail.into(), None);
    }

    pub fn warn(&mut self, name: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Verdict::Warn, detail.into(), Some(fix.into()));
    }

    pub fn fail(&mut self, name: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Verdict::Fail, detail.into(), Some(fix.into()));
    }

    pub fn skip(&mut self, name: &'static str, why: impl Into<String>) {
        self.push(name, Verdict::Skip, why.into(), None);
    }

    fn push(&mut self, name: &'static str, verdict: Verdict, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            name,
            verdict,
            detail,
            fix: fix.filter(|f| !f.is_empty()),
        });
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }

    /// The check of this name, whatever its verdict, if it ran.
    pub fn find(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "probe {}", self.url)?;
        for c in &self.checks {
            let verdict = match c.verdict {
                Verdict::Ok => "ok",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            writeln!(f, "{verdict:<5} {:<10} {}", c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "{:<16} fix: {fix}", "")?;
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .count();
        match failed {
            0 => writeln!(f, "every check passed"),
            n => writeln!(f, "{n} check(s) failed"),
        }
    }
}
