//! A provider's cache of tokens whose signature it has verified, so that a client presenting
//! the same token again costs a lookup instead of a signature check (for RS256, about as much
//! CPU as the rest of the request). Envoy's `jwt_authn` keeps such a cache too
//! (`jwt_cache_config`).
//!
//! Only the signature is cached: every request still parses the token and checks its issuer,
//! audiences and validity period. An entry is the exact token text, so a hit means these very
//! bytes were verified with this provider's keys; it lasts until the token expires, and at most
//! [`MAX_AGE_SECS`], so a key the issuer withdraws stops being trusted within that time.

use std::collections::HashMap;
use std::sync::Mutex;

/// Tokens kept per provider; when full, the cache starts over (cheap, and a client's next
/// request re-verifies once).
pub const CAPACITY: usize = 4096;

/// How long, at most, a verification is trusted without checking the signature again.
pub const MAX_AGE_SECS: u64 = 300;

/// Verified tokens and until when (Unix seconds) they may skip the signature check.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    tokens: Mutex<HashMap<Box<str>, u64>>,
}

impl VerifiedTokens {
    /// Whether `token` was verified and the entry is still good at `now`.
    pub fn contains(&self, token: &str, now: u64) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(token).is_some_and(|until| now < *until)
    }

    /// Records that `token`, expiring at `exp` (0: no `exp`), was verified at `now`.
    pub fn insert(&self, token: &str, exp: u64, now: u64) {
        let mut until = now.saturating_add(MAX_AGE_SECS);
        if exp != 0 {
            until = until.min(exp);
        }
        if until <= now {
            return;
        }
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= CAPACITY && !tokens.contains_key(token) {
            tokens.clear();
        }
        tokens.insert(token.into(), until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_last_until_expiry_or_max_age() {
        let cache = VerifiedTokens::default();
        cache.insert("a.b.c", 1_000 + 60, 1_000);
        assert!(cache.contains("a.b.c", 1_059));
        assert!(!cache.contains("a.b.c", 1_060), "expired with the token");
        assert!(!cache.contains("a.b.x", 1_001), "only the exact token");
        cache.insert("d.e.f", 0, 1_000);
        assert!(cache.contains("d.e.f", 1_000 + MAX_AGE_SECS - 1));
        assert!(!cache.contains("d.e.f", 1_000 + MAX_AGE_SECS));
        cache.insert("g.h.i", 900, 1_000);
        assert!(
            !cache.contains("g.h.i", 1_000),
            "an expired token is not kept"
        );
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = VerifiedTokens::default();
        for i in 0..CAPACITY {
            cache.insert(&format!("t{i}"), 0, 1);
        }
        assert!(cache.contains("t0", 2));
        cache.insert("one-more", 0, 1);
        assert!(!cache.contains("t0", 2));
        assert!(cache.contains("one-more", 2));
    }
}
