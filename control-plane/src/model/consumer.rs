//! Consumers: the clients of the APIs behind Tollgate, identified by API keys.
//!
//! Keys are write-only. They are stored as HMAC-SHA-256 under a server secret (the
//! [`ApiKeyHasher`]), so a presented key can be looked up by its hash without the store ever
//! holding the key itself.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::ValidationError;

/// A consumer as stored: API keys only as keyed hashes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// Unique name.
    pub name: String,
    /// Quota plan (e.g. `free`, `pro`); rate-limit policies may key on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Groups the consumer belongs to; authorization policies may require one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Free-form labels forwarded with the consumer's identity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// HMAC-SHA-256 (hex) of each API key. `None` on a write means "keep the stored ones".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_hashes: Option<Vec<String>>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("tier", &self.tier)
            .field("groups", &self.groups)
            .field("metadata", &self.metadata)
            .field("api_keys", &self.api_key_hashes.as_ref().map(Vec::len))
            .finish()
    }
}

/// A consumer as clients write it: API keys in clear, once. Exports carry it without keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Quota plan (e.g. `free`, `pro`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Groups the consumer belongs to; authorization policies may require one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// API keys (16 to 256 printable characters). Write-only: stored hashed, never returned
    /// (this field is never serialized). Omitted: the stored keys are kept; `[]` removes them.
    #[serde(default, skip_serializing)]
    pub api_keys: Option<Vec<String>>,
}

impl fmt::Debug for ConsumerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerSpec")
            .field("name", &self.name)
            .field("tier", &self.tier)
            .field(
                "api_keys",
                &self
                    .api_keys
                    .as_ref()
                    .map(|k| format!("<{} redacted>", k.len())),
            )
            .finish_non_exhaustive()
    }
}

/// Hashes API keys under the server secret.
#[derive(Clone)]
pub struct ApiKeyHasher {
    secret: Vec<u8>,
}

impl fmt::Debug for ApiKeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyHasher(<secret>)")
    }
}

impl ApiKeyHasher {
    /// A hasher keyed with `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    /// The HMAC key. Proxies that check API keys themselves need it; never log or return it.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// HMAC-SHA-256 of `key`, hex.
    pub fn hash(&self, key: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        mac.update(key.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The shortest API key accepted: shorter ones are guessable.
pub const MIN_API_KEY_LEN: usize = 16;

impl ConsumerSpec {
    /// Validates the spec and hashes its keys.
    pub fn into_consumer(self, hasher: &ApiKeyHasher) -> Result<Consumer, ValidationError> {
        let api_key_hashes = match &self.api_keys {
            None => None,
            Some(keys) => {
                let mut hashes = Vec::with_capacity(keys.len());
                for (i, key) in keys.iter().enumerate() {
                    let field = format!("api_keys[{i}]");
                    if key.len() < MIN_API_KEY_LEN || key.len() > 256 {
                        return Err(ValidationError::new(
                            field,
                            format!("must be {MIN_API_KEY_LEN} to 256 characters"),
                        ));
                    }
                    if !key.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(ValidationError::new(
                            field,
                            "must be printable ASCII without spaces",
                        ));
                    }
                    let hash = hasher.hash(key);
                    if hashes.contains(&hash) {
                        return Err(ValidationError::new(field, "duplicate API key"));
                    }
                    hashes.push(hash);
                }
                Some(hashes)
            }
        };
        Ok(Consumer {
            name: self.name,
            tier: self.tier,
            groups: self.groups,
            metadata: self.metadata,
            api_key_hashes,
        })
    }
}

impl Consumer {
    /// The consumer as exported: everything but its keys.
    pub fn to_spec(&self) -> ConsumerSpec {
        ConsumerSpec {
            name: self.name.clone(),
            tier: self.tier.clone(),
            groups: self.groups.clone(),
            metadata: self.metadata.clone(),
            api_keys: None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ValidationError> {
        if let Some(tier) = &self.tier {
            super::validate_name(tier).map_err(|e| ValidationError::new("tier", e.message))?;
        }
        if self.groups.len() > 64 {
            return Err(ValidationError::new("groups", "at most 64 groups"));
        }
        for (i, group) in self.groups.iter().enumerate() {
            super::validate_name(group)
                .map_err(|e| ValidationError::new(format!("groups[{i}]"), e.message))?;
            if self.groups[..i].contains(group) {
                return Err(ValidationError::new(
                    format!("groups[{i}]"),
                    format!("group {group} is listed twice"),
                ));
            }
        }
        if self.metadata.len() > 64 {
            return Err(ValidationError::new("metadata", "at most 64 entries"));
        }
        for (key, value) in &self.metadata {
            if key.is_empty() || key.len() > 128 || value.len() > 1024 {
                return Err(ValidationError::new(
                    format!("metadata.{key}"),
                    "keys must be 1 to 128 characters, values at most 1024",
                ));
            }
        }
        if self.api_key_hashes.as_ref().is_some_and(|h| h.len() > 100) {
            return Err(ValidationError::new(
                "api_keys",
                "at most 100 keys per consumer",
            ));
        }
        Ok(())
    }

    /// Short identifiers of the consumer's keys (the first 12 hex digits of each keyed hash):
    /// enough to tell keys apart, useless for recovering them.
    pub fn api_key_ids(&self) -> Vec<String> {
        self.api_key_hashes
            .iter()
            .flatten()
            .map(|h| h.chars().take(12).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_under_the_secret_and_checked() {
        let hasher = ApiKeyHasher::new(b"server-secret".to_vec());
        let spec = ConsumerSpec {
            name: "acme".into(),
            tier: Some("pro".into()),
            groups: vec!["partners".into()],
            metadata: BTreeMap::new(),
            api_keys: Some(vec!["k3y-0123456789abcdef".into()]),
        };
        let consumer = spec.clone().into_consumer(&hasher).unwrap();
        let hashes = consumer.api_key_hashes.clone().unwrap();
        assert_eq!(hashes, vec![hasher.hash("k3y-0123456789abcdef")]);
        assert_ne!(
            hashes[0],
            ApiKeyHasher::new(b"other".to_vec()).hash("k3y-0123456789abcdef")
        );
        assert!(!format!("{consumer:?}{spec:?}").contains("k3y-0123456789abcdef"));
        assert_eq!(consumer.api_key_ids(), vec![hashes[0][..12].to_owned()]);

        for (keys, field) in [
            (vec!["short".to_owned()], "api_keys[0]"),
            (vec!["has a space 0123456789".to_owned()], "api_keys[0]"),
            (
                vec![
                    "same-key-0123456789".to_owned(),
                    "same-key-0123456789".to_owned(),
                ],
                "api_keys[1]",
            ),
        ] {
            let spec = ConsumerSpec {
                api_keys: Some(keys),
                ..spec.clone()
            };
            assert_eq!(spec.into_consumer(&hasher).unwrap_err().field, field);
        }
    }
}
