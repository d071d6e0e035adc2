//! Dashboard sessions: a browser logs in once with an admin token and gets a cookie.
//!
//! The cookie holds 256 random bits, not the token; the session remembers the token's digest
//! and asks [`Tokens`] on every request, so a token taken out of the file (and reloaded) ends
//! its sessions. The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other
//! site's page sends it) and has no expiry (it goes when the browser closes; the session here
//! ends after [`LIFETIME`] regardless). A request that changes something must also carry the
//! session's CSRF token in a header, which only our own pages know.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::admin::tokens::Tokens;

pub const COOKIE: &str = "portcullis_session";
/// The header an unsafe request from a session must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends this long after its login, used or not.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Logins beyond this push out the oldest session (a few operators use a dashboard).
const MAX_SESSIONS: usize = 256;

struct Session {
    token: [u8; 32],
    csrf: Arc<str>,
    opened: Instant,
    /// Login order, for pushing out the oldest.
    seq: u64,
}

/// A live session's caller.
pub struct Caller {
    /// The token's name (`by = "admin:NAME"`).
    pub name: Arc<str>,
    pub csrf: Arc<str>,
}

#[derive(Default)]
pub struct Sessions {
    /// By the SHA-256 of the cookie: a lookup's timing says nothing about live cookies.
    open: Mutex<HashMap<[u8; 32], Session>>,
    logins: std::sync::atomic::AtomicU64,
}

impl Sessions {
    /// A new session for the token with `digest`; the cookie's value, or `None` if the system
    /// has no randomness to give.
    pub fn open(&self, digest: [u8; 32]) -> Option<String> {
        let cookie = crate::secret::random_token()?;
        let csrf: Arc<str> = crate::secret::random_token()?.into();
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| now.duration_since(s.opened) < LIFETIME);
        if open.len() >= MAX_SESSIONS {
            let oldest = open.iter().min_by_key(|(_, s)| s.seq).map(|(k, _)| *k);
            if let Some(k) = oldest {
                open.remove(&k);
            }
        }
        let session = Session {
            token: digest,
            csrf,
            opened: now,
            seq: self
                .logins
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        open.insert(Tokens::digest(&cookie), session);
        Some(cookie)
    }

    /// The caller of the session the request's cookie names, if it is live and its token
    /// still one of ours.
    pub fn caller(&self, headers: &HeaderMap, tokens: &Tokens) -> Option<Caller> {
        let key = Tokens::digest(cookie(headers)?);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let s = open.get(&key)?;
        let name = (s.opened.elapsed() < LIFETIME)
            .then(|| tokens.name_of(&s.token))
            .flatten();
        match name {
            Some(name) => Some(Caller {
                name,
                csrf: Arc::clone(&s.csrf),
            }),
            None => {
                open.remove(&key);
                None
            }
        }
    }

    /// Logout: the request's session ends.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(c) = cookie(headers) {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.remove(&Tokens::digest(c));
        }
    }

    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether the request carries this session's CSRF token.
pub fn csrf_ok(headers: &HeaderMap, caller: &Caller) -> bool {
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(caller.csrf.as_bytes())))
}

/// Our cookie's value from the `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value for a new session.
pub fn set_cookie(value: &str) -> String {
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that removes it.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "ops:ops-token-0123456789abcdef\n").unwrap();
        let t = Tokens::load(&f).unwrap();
        (dir, t)
    }

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("cookie", format!("a=b; {COOKIE}={v}").parse().unwrap());
        h
    }

    #[test]
    fn a_session_names_its_token_until_the_token_goes() {
        let (dir, tokens) = tokens();
        let sessions = Sessions::default();
        let cookie = sessions
            .open(Tokens::digest("ops-token-0123456789abcdef"))
            .unwrap();
        let caller = sessions.caller(&with_cookie(&cookie), &tokens).unwrap();
        assert_eq!(&*caller.name, "ops");
        // Another cookie, or none: no session.
        assert!(sessions.caller(&with_cookie("forged"), &tokens).is_none());
        assert!(sessions.caller(&HeaderMap::new(), &tokens).is_none());
        // CSRF: only the session's own token passes.
        let mut h = with_cookie(&cookie);
        assert!(!csrf_ok(&h, &caller));
        h.insert(CSRF_HEADER, "nope".parse().unwrap());
        assert!(!csrf_ok(&h, &caller));
        h.insert(CSRF_HEADER, caller.csrf.parse().unwrap());
        assert!(csrf_ok(&h, &caller));
        // The token removed from the file: the session ends with it.
        std::fs::write(dir.path().join("tokens"), "ci:ci-token-fedcba9876543210\n").unwrap();
        tokens.reload().unwrap();
        assert!(sessions.caller(&with_cookie(&cookie), &tokens).is_none());
        assert!(sessions.is_empty());
    }

    #[test]
    fn logins_beyond_the_cap_push_out_the_oldest() {
        let (_dir, tokens) = tokens();
        let sessions = Sessions::default();
        let d = Tokens::digest("ops-token-0123456789abcdef");
        let first = sessions.open(d).unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.open(d).unwrap();
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.caller(&with_cookie(&first), &tokens).is_none());
        sessions.close(&with_cookie(&first));
        assert_eq!(sessions.len(), MAX_SESSIONS);
    }
}
