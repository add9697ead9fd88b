//! A provider's cache of tokens it has verified, so that a client presenting the same token
//! again costs a lookup instead of a parse and a signature check (for RS256, about as much CPU
//! as the rest of the request). Envoy's `jwt_authn` keeps such a cache too
//! (`jwt_cache_config`), and, like this one, keeps the parsed token in it.
//!
//! An entry is keyed by the exact token text, so a hit means these very bytes were parsed and
//! verified with this provider's keys. Every request still checks the issuer, the audiences and
//! the validity period against the cached claims. An entry lasts until the token expires, and
//! at most [`MAX_AGE_SECS`], so a key the issuer withdraws stops being trusted within that time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::token::Jwt;

/// Tokens kept per provider; when full, the cache starts over (cheap, and a client's next
/// request re-verifies once).
pub const CAPACITY: usize = 4096;

/// How long, at most, a verification is trusted without checking the signature again.
pub const MAX_AGE_SECS: u64 = 300;

/// A token a provider verified, with what every later request presenting it needs.
#[derive(Debug)]
pub struct VerifiedJwt {
    /// The parsed token (its signature no longer needed).
    pub jwt: Jwt,
    /// The header as `header_in_metadata` publishes it.
    pub header_metadata: Arc<Value>,
    /// The payload as `payload_in_metadata` publishes it, `space_delimited_claims` split.
    pub payload_metadata: Arc<Value>,
}

impl VerifiedJwt {
    /// Prepares a verified `jwt` for reuse: the metadata values are built once, here.
    pub fn new(mut jwt: Jwt, space_delimited_claims: &[String]) -> VerifiedJwt {
        jwt.signature = Vec::new();
        let mut payload = jwt.payload.clone();
        super::split_claims(&mut payload, space_delimited_claims);
        VerifiedJwt {
            header_metadata: Arc::new(Value::Object(jwt.header.clone())),
            payload_metadata: Arc::new(Value::Object(payload)),
            jwt,
        }
    }
}

/// Verified tokens and until when (Unix seconds) they may skip the parse and signature check.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    tokens: Mutex<HashMap<Box<str>, Entry>>,
}

/// Until when (Unix seconds) the token may skip the checks, and what they gave.
type Entry = (u64, Arc<VerifiedJwt>);

impl VerifiedTokens {
    /// The verified `token`, if the entry is still good at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<VerifiedJwt>> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match tokens.get(token) {
            Some((until, verified)) if now < *until => Some(Arc::clone(verified)),
            _ => None,
        }
    }

    /// Records that `token` was verified at `now`, as `verified`; kept until its `exp` (none:
    /// [`MAX_AGE_SECS`]).
    pub fn insert(&self, token: &str, verified: Arc<VerifiedJwt>, now: u64) {
        let mut until = now.saturating_add(MAX_AGE_SECS);
        if verified.jwt.exp != 0 {
            until = until.min(verified.jwt.exp);
        }
        if until <= now {
            return;
        }
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= CAPACITY && !tokens.contains_key(token) {
            tokens.clear();
        }
        tokens.insert(token.into(), (until, verified));
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    /// A parsed (unsigned) token whose `exp` is `exp` (0: none) and whose `sub` is `sub`.
    fn parsed(sub: &str, exp: u64) -> (String, Arc<VerifiedJwt>) {
        let b64 =
            |json: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string());
        let mut payload = serde_json::json!({"sub": sub, "scope": "read write"});
        if exp != 0 {
            payload["exp"] = exp.into();
        }
        let token = format!(
            "{}.{}.c2ln",
            b64(serde_json::json!({"alg": "RS256"})),
            b64(payload)
        );
        let jwt = Jwt::parse(&token).expect("parses");
        (
            token,
            Arc::new(VerifiedJwt::new(jwt, &["scope".to_owned()])),
        )
    }

    #[test]
    fn entries_last_until_expiry_or_max_age() {
        let cache = VerifiedTokens::default();
        let (a, verified) = parsed("a", 1_000 + 60);
        cache.insert(&a, verified, 1_000);
        assert!(cache.get(&a, 1_059).is_some());
        assert!(cache.get(&a, 1_060).is_none(), "expired with the token");
        assert!(
            cache.get(&a[..a.len() - 1], 1_001).is_none(),
            "only the exact token"
        );
        let (d, verified) = parsed("d", 0);
        cache.insert(&d, verified, 1_000);
        assert!(cache.get(&d, 1_000 + MAX_AGE_SECS - 1).is_some());
        assert!(cache.get(&d, 1_000 + MAX_AGE_SECS).is_none());
        let (g, verified) = parsed("g", 900);
        cache.insert(&g, verified, 1_000);
        assert!(
            cache.get(&g, 1_000).is_none(),
            "an expired token is not kept"
        );
    }

    #[test]
    fn a_hit_gives_back_the_parsed_token_and_its_metadata() {
        let cache = VerifiedTokens::default();
        let (token, verified) = parsed("alice", 0);
        cache.insert(&token, verified, 1);
        let hit = cache.get(&token, 2).expect("cached");
        assert_eq!(hit.jwt.payload["sub"], "alice");
        assert!(hit.jwt.signature.is_empty(), "the signature is not kept");
        assert_eq!(
            *hit.payload_metadata,
            serde_json::json!({"sub": "alice", "scope": ["read", "write"]}),
            "space-delimited claims split once, for every later request"
        );
        assert_eq!(*hit.header_metadata, serde_json::json!({"alg": "RS256"}));
        assert_eq!(
            hit.jwt.signed_data().rsplit('.').next(),
            Some(hit.jwt.payload_b64())
        );
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = VerifiedTokens::default();
        let (first, verified) = parsed("first", 0);
        cache.insert(&first, Arc::clone(&verified), 1);
        for i in 1..CAPACITY {
            cache.insert(&format!("{first}{i}"), Arc::clone(&verified), 1);
        }
        assert!(cache.get(&first, 2).is_some());
        let (one_more, verified) = parsed("one-more", 0);
        cache.insert(&one_more, verified, 1);
        assert!(cache.get(&first, 2).is_none());
        assert!(cache.get(&one_more, 2).is_some());
    }
}
