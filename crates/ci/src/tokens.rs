//! Credentials of running pipeline runs.
use std::collections::HashMap;
use std::sync::Mutex;

/// The credentials of running pipeline runs (token → run id): the `az` shim's, for the ARM API
/// only, minted when a run starts and revoked when it ends; jobs never see the daemon token.
/// The service mints and revokes them; the HTTP front end checks them.
#[derive(Default)]
pub struct RunTokens(Mutex<HashMap<String, u64>>);

impl RunTokens {
    /// A fresh credential for run `id`.
    pub fn mint(&self, id: u64) -> String {
        let bytes: [u8; 32] = rand::random();
        let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.map().insert(t.clone(), id);
        t
    }

    pub fn revoke(&self, token: &str) {
        self.map().remove(token);
    }

    /// Whether `token` is the credential of a running run.
    pub fn contains(&self, token: &str) -> bool {
        self.map().contains_key(token)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_valid_until_revoked() {
        let t = RunTokens::default();
        let a = t.mint(1);
        let b = t.mint(2);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(t.contains(&a) && t.contains(&b));
        t.revoke(&a);
        assert!(!t.contains(&a) && t.contains(&b));
        assert!(!t.contains(""));
    }
}
