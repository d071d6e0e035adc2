//! Resume tokens: the gateway's registry of resumable sessions, by token.
//!
//! A token is 256 random bits, given to the agent at the upgrade and good for one resume: the
//! resume takes the session out of the registry, and the session registers again under a new
//! token that goes back in the resume's answer. The registry keys sessions by the token's
//! SHA-256, so a lookup's timing says nothing about live tokens, and it holds the identity the
//! session was opened with: a token presented by another identity ends the session rather
//! than hand it over.

use std::collections::HashMap;

/// Why a resume was refused (a label for metrics and the answer's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No session has that token: a wrong or reused token, a session that ended (its grace
    /// period passed), or a node that never held it (another node, a restart).
    Unknown,
    /// The token is right but the device is not the one the session belongs to; the session
    /// is ended.
    Identity,
    /// The registry is full: this session is not resumable.
    Full,
    /// The system gave no randomness for a token.
    NoRandomness,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::Identity => "identity",
            Refusal::Full => "full",
            Refusal::NoRandomness => "no_randomness",
        }
    }
}

type Key = [u8; 32];

fn key_of(token: &str) -> Key {
    crate::secret::sha256(token.as_bytes())
}

/// Sessions by token: `I` is the identity a session is bound to, `T` what a resume hands over.
pub struct Registry<I, T> {
    sessions: HashMap<Key, (I, T)>,
    max: usize,
}

impl<I: PartialEq, T> Registry<I, T> {
    pub fn new(max: usize) -> Self {
        Registry {
            sessions: HashMap::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// A new token for a session of `identity`; `value` is what its resume will hand over.
    pub fn register(&mut self, identity: I, value: T) -> Result<String, Refusal> {
        if self.sessions.len() >= self.max {
            return Err(Refusal::Full);
        }
        let token = crate::secret::random_token().ok_or(Refusal::NoRandomness)?;
        self.sessions.insert(key_of(&token), (identity, value));
        Ok(token)
    }

    /// A resume: the session of `token`, taken out (the token is spent). A token of another
    /// identity takes the session out too, and returns it with the refusal, to be ended.
    pub fn take(&mut self, token: &str, identity: &I) -> Result<T, (Refusal, Option<T>)> {
        match self.sessions.remove(&key_of(token)) {
            None => Err((Refusal::Unknown, None)),
            Some((owner, value)) if owner == *identity => Ok(value),
            Some((_, value)) => Err((Refusal::Identity, Some(value))),
        }
    }

    /// The session ended (closed, or its grace period passed): its token is worth nothing.
    pub fn forget(&mut self, token: &str) -> Option<T> {
        self.sessions.remove(&key_of(token)).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_resumes_once_and_only_for_its_identity() {
        let mut r: Registry<&str, u32> = Registry::new(10);
        let t = r.register("meter-1", 7).unwrap();
        assert!(t.len() >= 43, "256 bits, base64url");
        assert_eq!(r.take(&t, &"meter-1"), Ok(7));
        assert_eq!(
            r.take(&t, &"meter-1"),
            Err((Refusal::Unknown, None)),
            "spent"
        );
        assert_eq!(r.take("guess", &"meter-1"), Err((Refusal::Unknown, None)));
        // Rotated: the resumed session registers again under a new token.
        let t2 = r.register("meter-1", 7).unwrap();
        assert_ne!(t, t2);
        // Another identity with the right token: refused, and the session is handed back to
        // be ended (a stolen token ends the session rather than hijack it).
        assert_eq!(r.take(&t2, &"meter-2"), Err((Refusal::Identity, Some(7))));
        assert!(r.is_empty());
    }

    #[test]
    fn the_registry_is_bounded_and_forgets_ended_sessions() {
        let mut r: Registry<u8, ()> = Registry::new(2);
        let a = r.register(1, ()).unwrap();
        r.register(2, ()).unwrap();
        assert_eq!(r.register(3, ()), Err(Refusal::Full));
        assert_eq!(r.forget(&a), Some(()));
        assert_eq!(r.forget(&a), None);
        assert_eq!(r.take(&a, &1), Err((Refusal::Unknown, None)), "ended");
        assert!(r.register(3, ()).is_ok());
        assert_eq!(r.len(), 2);
    }
}
