//! Dashboard sign-in, pure: one-time login secrets, sessions and their CSRF tokens, over plain
//! maps with the time passed in (the caller draws the random secrets and reads the clock).
//!
//! Secrets are kept as SHA-256 digests, so a lookup compares digests, never the secret itself,
//! and a memory dump does not hold a usable cookie; the CSRF token is compared in constant time.
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// How long a printed one-time URL stays usable (`scaleset dashboard url` mints another).
pub const ONCE_TTL_MS: u64 = 60 * 60 * 1000;
/// How long a session lasts after sign-in (no sliding renewal: sign in again).
pub const SESSION_TTL_MS: u64 = 12 * 60 * 60 * 1000;
/// Unused one-time secrets kept at most; the oldest goes first.
pub const MAX_ONCE: usize = 16;
/// Sessions kept at most; the oldest goes first.
pub const MAX_SESSIONS: usize = 32;
/// Longest secret accepted from a request (ours are 64 hex digits).
pub const MAX_SECRET_LEN: usize = 128;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this sign-in link is unknown, expired or already used: run `scaleset dashboard url` for a new one")]
    UnknownOnce,
    #[error("sign in first: open the one-time URL that `scaleset serve`, `scaleset up` or `scaleset dashboard url` printed")]
    NoSession,
    #[error("the request has no CSRF token (header X-CSRF-Token)")]
    MissingCsrf,
    #[error("the CSRF token does not match the session")]
    BadCsrf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Sent by the page in `X-CSRF-Token` with every mutating request.
    pub csrf: String,
    pub created_ms: u64,
}

#[derive(Debug, Default)]
pub struct Sessions {
    /// Digest of a one-time secret → when it was minted.
    once: HashMap<String, u64>,
    /// Digest of a session id → the session.
    live: HashMap<String, Session>,
}

fn digest(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Drops the oldest entries of `m` until it has room for one more under `max`.
fn make_room<V>(m: &mut HashMap<String, V>, max: usize, age: impl Fn(&V) -> u64) {
    while m.len() >= max {
        let Some(oldest) = m.iter().min_by_key(|(_, v)| age(v)).map(|(k, _)| k.clone()) else {
            return;
        };
        m.remove(&oldest);
    }
}

impl Sessions {
    fn expire(&mut self, now_ms: u64) {
        self.once
            .retain(|_, at| now_ms.saturating_sub(*at) < ONCE_TTL_MS);
        self.live
            .retain(|_, s| now_ms.saturating_sub(s.created_ms) < SESSION_TTL_MS);
    }

    /// Records a freshly drawn one-time secret.
    pub fn add_once(&mut self, secret: &str, now_ms: u64) {
        self.expire(now_ms);
        make_room(&mut self.once, MAX_ONCE, |at| *at);
        self.once.insert(digest(secret), now_ms);
    }

    /// Consumes one-time secret `once` (gone whatever the outcome) and opens session `id` with
    /// CSRF token `csrf` (both freshly drawn by the caller).
    pub fn sign_in(&mut self, once: &str, id: &str, csrf: &str, now_ms: u64) -> Result<(), Denied> {
        self.expire(now_ms);
        if once.is_empty()
            || once.len() > MAX_SECRET_LEN
            || self.once.remove(&digest(once)).is_none()
        {
            return Err(Denied::UnknownOnce);
        }
        make_room(&mut self.live, MAX_SESSIONS, |s| s.created_ms);
        let s = Session {
            csrf: csrf.to_string(),
            created_ms: now_ms,
        };
        self.live.insert(digest(id), s);
        Ok(())
    }

    /// The live session whose id is `id`.
    pub fn session(&self, id: Option<&str>, now_ms: u64) -> Result<&Session, Denied> {
        let id = id.filter(|i| !i.is_empty() && i.len() <= MAX_SECRET_LEN);
        let s = id
            .and_then(|i| self.live.get(&digest(i)))
            .ok_or(Denied::NoSession)?;
        if now_ms.saturating_sub(s.created_ms) >= SESSION_TTL_MS {
            return Err(Denied::NoSession);
        }
        Ok(s)
    }

    /// A mutating request: a live session and its CSRF token, compared in constant time.
    pub fn check_mutation(
        &self,
        id: Option<&str>,
        csrf: Option<&str>,
        now_ms: u64,
    ) -> Result<(), Denied> {
        let s = self.session(id, now_ms)?;
        let csrf = csrf.filter(|c| !c.is_empty()).ok_or(Denied::MissingCsrf)?;
        if !control::ct_eq(csrf.as_bytes(), s.csrf.as_bytes()) {
            return Err(Denied::BadCsrf);
        }
        Ok(())
    }

    /// Ends session `id` (sign-out).
    pub fn sign_out(&mut self, id: &str) {
        self.live.remove(&digest(id));
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_in() -> Sessions {
        let mut s = Sessions::default();
        s.add_once("once1", 0);
        s.sign_in("once1", "sid", "csrf-tok", 10).unwrap();
        s
    }

    #[test]
    fn a_one_time_secret_signs_in_once() {
        let mut s = Sessions::default();
        s.add_once("once1", 0);
        assert_eq!(s.sign_in("once1", "a", "c", 1), Ok(()));
        assert_eq!(s.sign_in("once1", "b", "c", 2), Err(Denied::UnknownOnce));
        assert_eq!(s.sign_in("never", "b", "c", 2), Err(Denied::UnknownOnce));
        assert_eq!(s.sign_in("", "b", "c", 2), Err(Denied::UnknownOnce));
        assert!(s.session(Some("a"), 3).is_ok());
        assert_eq!(s.session(Some("b"), 3), Err(Denied::NoSession));
    }

    #[test]
    fn one_time_secrets_expire_and_are_bounded() {
        let mut s = Sessions::default();
        s.add_once("old", 0);
        assert_eq!(
            s.sign_in("old", "a", "c", ONCE_TTL_MS),
            Err(Denied::UnknownOnce)
        );
        for i in 0..=MAX_ONCE {
            s.add_once(&format!("o{i}"), 100 + i as u64);
        }
        assert_eq!(s.once.len(), MAX_ONCE);
        // The oldest was dropped, the newest kept.
        assert_eq!(s.sign_in("o0", "a", "c", 200), Err(Denied::UnknownOnce));
        assert_eq!(s.sign_in(&format!("o{MAX_ONCE}"), "a", "c", 200), Ok(()));
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = signed_in();
        assert!(s.session(Some("sid"), 10 + SESSION_TTL_MS - 1).is_ok());
        assert_eq!(
            s.session(Some("sid"), 10 + SESSION_TTL_MS),
            Err(Denied::NoSession)
        );
        let mut s = Sessions::default();
        for i in 0..MAX_SESSIONS + 3 {
            s.add_once(&format!("o{i}"), i as u64);
            s.sign_in(&format!("o{i}"), &format!("s{i}"), "c", i as u64)
                .unwrap();
        }
        assert_eq!(s.live.len(), MAX_SESSIONS);
        assert_eq!(s.session(Some("s0"), 50), Err(Denied::NoSession));
        assert!(s
            .session(Some(&format!("s{}", MAX_SESSIONS + 2)), 50)
            .is_ok());
    }

    #[test]
    fn mutations_need_the_sessions_csrf_token() {
        let mut s = signed_in();
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Result<(), Denied>);
        let cases: [Case; 7] = [
            (Some("sid"), Some("csrf-tok"), Ok(())),
            (Some("sid"), None, Err(Denied::MissingCsrf)),
            (Some("sid"), Some(""), Err(Denied::MissingCsrf)),
            (Some("sid"), Some("csrf-toK"), Err(Denied::BadCsrf)),
            (Some("sid"), Some("csrf-tok-longer"), Err(Denied::BadCsrf)),
            (None, Some("csrf-tok"), Err(Denied::NoSession)),
            (Some("other"), Some("csrf-tok"), Err(Denied::NoSession)),
        ];
        for (id, csrf, want) in cases {
            assert_eq!(s.check_mutation(id, csrf, 20), want, "{id:?} {csrf:?}");
        }
        // Another session's token is not this one's.
        s.add_once("once2", 20);
        s.sign_in("once2", "sid2", "csrf-2", 20).unwrap();
        assert_eq!(
            s.check_mutation(Some("sid"), Some("csrf-2"), 21),
            Err(Denied::BadCsrf)
        );
        s.sign_out("sid");
        assert_eq!(
            s.check_mutation(Some("sid"), Some("csrf-tok"), 22),
            Err(Denied::NoSession)
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = "a=1; scaleset_session_7150=abc; scaleset_session_71500=zzz";
        assert_eq!(cookie(h, "scaleset_session_7150"), Some("abc"));
        assert_eq!(cookie(h, "scaleset_session_71500"), Some("zzz"));
        assert_eq!(cookie(h, "scaleset"), None);
        assert_eq!(cookie("", "a"), None);
    }
}
