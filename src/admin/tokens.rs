//! Admin API tokens: `[admin] tokens_file`, one `NAME:TOKEN` per line, `#` comments.
//!
//! The name is who made a change (`by = "admin:NAME"` on the bans a token makes); the token is
//! compared in constant time, through its SHA-256 digest so that neither a token's content nor
//! its length shows in how long a refusal takes. Re-read on SIGHUP; a file that no longer
//! parses keeps the tokens in force (an admin locked out by a typo cannot fix it through the API).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;

/// Shorter tokens are refused: an admin API guessable by brute force is an open door.
pub const MIN_TOKEN_LEN: usize = 16;

struct Entry {
    name: Arc<str>,
    digest: [u8; 32],
}

/// The tokens in force, and the file they came from.
pub struct Tokens {
    file: RwLock<PathBuf>,
    entries: RwLock<Arc<Vec<Entry>>>,
}

impl Tokens {
    /// Read `file`; an error names the file and line.
    pub fn load(file: &Path) -> Result<Tokens, String> {
        let entries = read(file)?;
        Ok(Tokens {
            file: RwLock::new(file.to_owned()),
            entries: RwLock::new(Arc::new(entries)),
        })
    }

    /// Re-read the file; on error the tokens in force stay.
    pub fn reload(&self) -> Result<usize, String> {
        let file = self.file.read().unwrap_or_else(|e| e.into_inner()).clone();
        self.reload_from(&file)
    }

    /// Read `file` (the config may name another one now); on error the tokens in force stay.
    pub fn reload_from(&self, file: &Path) -> Result<usize, String> {
        let entries = read(file)?;
        let n = entries.len();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entries);
        *self.file.write().unwrap_or_else(|e| e.into_inner()) = file.to_owned();
        Ok(n)
    }

    /// The name of the token `presented`, if it is one of ours. Every entry is compared, so the
    /// time taken does not say which one (or whether any) matched.
    pub fn check(&self, presented: &str) -> Option<Arc<str>> {
        self.name_of(&Self::digest(presented))
    }

    /// A token's SHA-256: what a dashboard session keeps instead of the token itself.
    pub fn digest(presented: &str) -> [u8; 32] {
        crate::secret::sha256(presented.as_bytes())
    }

    /// The name of the token with this digest, if it is (still) one of ours; compared as in
    /// [`Tokens::check`]. A dashboard session asks on every request, so a token removed from
    /// the file and reloaded ends its sessions too.
    pub fn name_of(&self, wanted: &[u8; 32]) -> Option<Arc<str>> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut found = None;
        for e in entries.iter() {
            if bool::from(wanted[..].ct_eq(&e.digest[..])) {
                found = Some(e.name.clone());
            }
        }
        found
    }
}

fn read(file: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("admin.tokens_file {}: {e}", file.display()))?;
    let at = |n: usize, what: &str| format!("admin.tokens_file {}:{n}: {what}", file.display());
    let mut entries: Vec<Entry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, token)) = line.split_once(':') else {
            return Err(at(i + 1, "expected NAME:TOKEN"));
        };
        let (name, token) = (name.trim(), token.trim());
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
        if !name_ok {
            return Err(at(i + 1, "the name must be 1-64 of A-Z a-z 0-9 - _ . @"));
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(at(
                i + 1,
                &format!("the token of {name:?} is shorter than {MIN_TOKEN_LEN} characters"),
            ));
        }
        if entries.iter().any(|e| &*e.name == name) {
            return Err(at(i + 1, &format!("{name:?} appears twice")));
        }
        entries.push(Entry {
            name: name.into(),
            digest: Tokens::digest(token),
        });
    }
    if entries.is_empty() {
        return Err(format!(
            "admin.tokens_file {}: no tokens (one NAME:TOKEN per line)",
            file.display()
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn a_token_is_known_by_its_name() {
        let f = file("# ops\nops:0123456789abcdef0123\n\nci : fedcba9876543210fedc \n");
        let t = Tokens::load(f.path()).unwrap();
        assert_eq!(t.check("0123456789abcdef0123").as_deref(), Some("ops"));
        assert_eq!(t.check("fedcba9876543210fedc").as_deref(), Some("ci"));
        assert_eq!(t.check("0123456789abcdef012"), None);
        assert_eq!(t.check(""), None);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, says) in [
            ("ops 0123456789abcdef0123\n", ":1: expected NAME:TOKEN"),
            ("ops:short\n", ":1: the token of \"ops\" is shorter"),
            ("\n:0123456789abcdef0123\n", ":2: the name must be"),
            (
                "a:0123456789abcdef0123\na:0123456789abcdef0124\n",
                ":2: \"a\" appears twice",
            ),
            ("# nothing\n", "no tokens"),
        ] {
            let f = file(text);
            let e = Tokens::load(f.path()).err().unwrap();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_reload_that_fails_keeps_the_tokens_in_force() {
        let f = file("ops:0123456789abcdef0123\n");
        let t = Tokens::load(f.path()).unwrap();
        std::fs::write(f.path(), "ops:new-token-0123456789\n").unwrap();
        assert_eq!(t.reload(), Ok(1));
        assert_eq!(t.check("0123456789abcdef0123"), None);
        assert!(t.check("new-token-0123456789").is_some());
        std::fs::write(f.path(), "broken\n").unwrap();
        assert!(t.reload().is_err());
        assert!(t.check("new-token-0123456789").is_some());
    }
}
