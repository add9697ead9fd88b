//! The counter key scheme, shared by every user of the quota engine (edge proxies, the control
//! plane's RLS for Envoy, `tollgate dev`), so one client's quota is one counter wherever it is
//! checked:
//!
//! ```text
//! tollgate:rl:v1:{<policy>\x1f<identity>}:<algorithm>
//! ```
//!
//! - `v1` versions the scheme: a change to the layout or to what a key stores gets a new
//!   version, so old and new proxies never misread each other's counters.
//! - The part in braces is the Redis Cluster hash tag: everything one (policy, identity) pair
//!   stores hashes to one slot, whatever the suffix, so a script may touch several of them.
//!   Different identities spread over all slots.
//! - `\x1f` (ASCII unit separator) cannot appear in a raw component, so `a` + `b:c` and
//!   `a:b` + `c` never collide.
//! - `<algorithm>` is `tb`, `sw` or `fw` (see [`crate::Algorithm::short_name`]): changing a
//!   policy's algorithm starts fresh counters instead of misreading the old ones.
//!
//! Components (policy names and identities) are used as they are when they are at most 64
//! printable ASCII characters without `{`, `}`, spaces or a leading `#`. Anything else is
//! replaced by `#` and the first 32 hex digits of its SHA-256, so keys stay short, printable
//! and well-formed hash tags.
//!
//! **Identities are opaque to the engine; callers build them** (a consumer name, a client IP,
//! a JWT subject, a route name, or a combination). They end up in Redis in clear text, visible
//! to anyone who can run `SCAN`: never pass a secret such as a raw API key or a token. Pass
//! the consumer the key belongs to, or a hash of the key.

use std::borrow::Cow;

use sha2::{Digest as _, Sha256};

use crate::policy::Policy;

/// The default key prefix; the version is part of it.
pub const DEFAULT_PREFIX: &str = "tollgate:rl:v1";
/// Components longer than this are hashed.
pub const MAX_RAW_COMPONENT_LEN: usize = 64;
/// Separates the policy from the identity inside the hash tag.
pub const SEPARATOR: char = '\x1f';

/// Builds counter keys: a prefix (by default [`DEFAULT_PREFIX`]) plus the scheme above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyScheme {
    prefix: String,
}

impl Default for KeyScheme {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// A key prefix that would break the hash tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key prefix {0:?}: must be non-empty printable ASCII without '{{' or '}}'")]
pub struct InvalidPrefix(pub String);

impl KeyScheme {
    /// A scheme with another prefix, e.g. `staging:tollgate:rl:v1` for two environments sharing
    /// one Redis. Every proxy and RLS of one environment must use the same prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Result<Self, InvalidPrefix> {
        let prefix = prefix.into();
        let valid = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'{' && b != b'}');
        if valid {
            Ok(Self { prefix })
        } else {
            Err(InvalidPrefix(prefix))
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The counter key of `identity` under `policy`.
    pub fn key(&self, policy: &Policy, identity: &str) -> String {
        // Built for every request a global policy counts: one allocation, no formatting.
        let identity = component(identity);
        let (prefix, part) = (self.prefix.as_str(), policy.key_part());
        let suffix = policy.limit().algorithm.short_name();
        let mut key =
            String::with_capacity(prefix.len() + part.len() + identity.len() + suffix.len() + 6);
        key.push_str(prefix);
        key.push_str(":{");
        key.push_str(part);
        key.push(SEPARATOR);
        key.push_str(&identity);
        key.push_str("}:");
        key.push_str(suffix);
        key
    }
}

/// `raw` as it appears in a key: itself when safe, else `#` + 32 hex digits of its SHA-256.
pub fn component(raw: &str) -> Cow<'_, str> {
    let safe = !raw.is_empty()
        && raw.len() <= MAX_RAW_COMPONENT_LEN
        && !raw.starts_with('#')
        && raw
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'{' && b != b'}');
    if safe {
        Cow::Borrowed(raw)
    } else {
        let digest = Sha256::digest(raw.as_bytes());
        Cow::Owned(format!("#{}", hex::encode(&digest[..16])))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::{FailureMode, Limit};

    fn policy(name: &str) -> Policy {
        Policy::new(
            name,
            Limit::fixed_window(10, Duration::from_secs(60)),
            FailureMode::Open,
        )
        .unwrap()
    }

    #[test]
    fn layout() {
        let keys = KeyScheme::default();
        assert_eq!(
            keys.key(&policy("per-minute"), "consumer-42"),
            "tollgate:rl:v1:{per-minute\x1fconsumer-42}:fw"
        );
        let tb = Policy::new(
            "burst",
            Limit::token_bucket(1, Duration::from_secs(1), 5),
            FailureMode::Open,
        )
        .unwrap();
        assert_eq!(
            keys.key(&tb, "10.0.0.1"),
            "tollgate:rl:v1:{burst\x1f10.0.0.1}:tb"
        );
    }

    #[test]
    fn unsafe_components_are_hashed() {
        // Braces would end the hash tag early; spaces and long values are hashed too.
        for raw in [
            "a}b",
            "{x",
            "with space",
            "#looks-hashed",
            "",
            &"x".repeat(65),
        ] {
            let c = component(raw);
            assert!(c.starts_with('#'), "{raw:?} -> {c}");
            assert_eq!(c.len(), 33);
        }
        assert_eq!(component("x".repeat(64).as_str()), "x".repeat(64));
        // Deterministic, and different inputs give different hashes.
        assert_eq!(component("a b"), component("a b"));
        assert_ne!(component("a b"), component("a c"));
        let key = KeyScheme::default().key(&policy("p q"), "id}");
        assert_eq!(key.matches('{').count(), 1);
        assert_eq!(key.matches('}').count(), 1);
    }

    #[test]
    fn prefix_validation() {
        assert!(KeyScheme::with_prefix("staging:tollgate:rl:v1").is_ok());
        assert!(KeyScheme::with_prefix("").is_err());
        assert!(KeyScheme::with_prefix("a{b").is_err());
        assert!(KeyScheme::with_prefix("a b").is_err());
    }
}
