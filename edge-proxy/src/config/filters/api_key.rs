//! Tollgate's API-key filter (`tollgate.filters.http.api_key`, protos in
//! `tollgate_proto::api_key`): the connection manager's [`ApiKeyAuth`] (where each policy finds
//! the key), a route's [`ApiKeyPerRoute`] (which policies it requires), and the key table that
//! arrives over SDS as a generic secret ([`ApiKeyTable`]), validated and indexed once per
//! version of the secret. [`crate::filter::api_key`] checks requests against them.
//!
//! These protos are Tollgate's own, so a field this proxy does not know is NACKed (prost would
//! drop it silently): a newer control plane must not see an older proxy ignore, say, a change
//! in how keys are hashed.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use http::{HeaderName, HeaderValue};
use prost::Message as _;
use tollgate_proto::api_key as api_key_pb;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use tollgate_proto::google::protobuf as pb;

use super::Schema;
use crate::config::{Reason, Rejection, Within as _, reject_if};

/// The request header naming the consumer a key belongs to; set on success, whatever the
/// client sent.
pub const CONSUMER_NAME_HEADER: HeaderName = HeaderName::from_static("x-consumer-name");
/// The request header with the consumer's tier; set, or removed when the consumer has none.
pub const CONSUMER_TIER_HEADER: HeaderName = HeaderName::from_static("x-consumer-tier");

/// A validated `ApiKeyAuth`.
#[derive(Debug)]
pub struct ApiKeyAuth {
    /// The policies, sorted by name.
    pub providers: Vec<ApiKeyProvider>,
    /// The SDS secret holding the [`ApiKeyTable`].
    pub key_table: String,
    /// The config as received: only to compare two configs.
    proto: api_key_pb::ApiKeyAuth,
}

impl PartialEq for ApiKeyAuth {
    fn eq(&self, other: &Self) -> bool {
        self.proto == other.proto
    }
}

impl Eq for ApiKeyAuth {}

impl ApiKeyAuth {
    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Option<&ApiKeyProvider> {
        self.providers.iter().find(|p| p.name == name)
    }
}

/// One API-key policy: where the key is, and whether it goes on upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyProvider {
    /// Its name, which routes require it by.
    pub name: String,
    /// The header holding the key.
    pub header: HeaderName,
    /// The query parameter holding the key when the header is absent, compared as sent
    /// (not decoded).
    pub query: Option<String>,
    /// Whether the key is left in the request.
    pub forward_key: bool,
}

/// A validated `ApiKeyPerRoute`: the route needs a key of one of these providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyPerRoute {
    /// Provider names, in the order they are tried. A name the listener's filter does not
    /// have finds no key (routes are validated apart from listeners, so it cannot be NACKed),
    /// as the control plane's ext_authz service treats a policy it does not know.
    pub providers: Vec<String>,
}

/// Reads the filter's config from its `Any`.
pub(crate) fn filter_config(any: &pb::Any) -> Result<ApiKeyAuth, Rejection> {
    known_fields(&any.value, &API_KEY_AUTH)?;
    let proto = api_key_pb::ApiKeyAuth::decode(any.value.as_slice()).map_err(undecodable)?;
    let api_key_pb::ApiKeyAuth {
        providers,
        key_table,
    } = &proto;
    if key_table.is_empty() {
        return Err(Rejection::new("key_table", Reason::Missing));
    }
    if providers.is_empty() {
        return Err(Rejection::new("providers", Reason::Missing));
    }
    let mut built = Vec::with_capacity(providers.len());
    for (name, provider) in providers {
        let within = |r: Rejection| r.key(name).within("providers");
        if name.is_empty() {
            return Err(within(Rejection::here(Reason::Invalid(
                "provider names must not be empty".into(),
            ))));
        }
        built.push(self::provider(name, provider).map_err(within)?);
    }
    built.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ApiKeyAuth {
        providers: built,
        key_table: key_table.clone(),
        proto,
    })
}

fn provider(name: &str, proto: &api_key_pb::ApiKeyProvider) -> Result<ApiKeyProvider, Rejection> {
    let api_key_pb::ApiKeyProvider {
        header,
        query,
        forward_key,
    } = proto;
    if header.is_empty() {
        return Err(Rejection::new("header", Reason::Missing));
    }
    let invalid =
        |why: &str| Rejection::new("header", Reason::Invalid(format!("{header:?} {why}")));
    if header.starts_with(':') {
        return Err(invalid("is a pseudo-header"));
    }
    let header_name = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
        .map_err(|_| invalid("is not a header name"))?;
    if header_name == CONSUMER_NAME_HEADER
        || header_name == CONSUMER_TIER_HEADER
        || header_name == http::header::HOST
    {
        return Err(invalid("is set by the proxy"));
    }
    // Parameters are compared as sent: a name holding a separator could never be found.
    if !query
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"=&#?".contains(&b))
    {
        return Err(Rejection::new(
            "query",
            Reason::Invalid(format!(
                "{query:?} must be printable ASCII without = & # or ?"
            )),
        ));
    }
    Ok(ApiKeyProvider {
        name: name.to_owned(),
        header: header_name,
        query: (!query.is_empty()).then(|| query.clone()),
        forward_key: *forward_key,
    })
}

/// Reads a route's `ApiKeyPerRoute`.
pub(crate) fn per_route(any: &pb::Any) -> Result<ApiKeyPerRoute, Rejection> {
    known_fields(&any.value, &API_KEY_PER_ROUTE)?;
    let api_key_pb::ApiKeyPerRoute { providers } =
        api_key_pb::ApiKeyPerRoute::decode(any.value.as_slice()).map_err(undecodable)?;
    // An empty list would check nothing on a route that asks for keys.
    if providers.is_empty() {
        return Err(Rejection::new("providers", Reason::Missing));
    }
    if let Some(i) = providers.iter().position(String::is_empty) {
        return Err(Rejection::new_at("providers", i, Reason::Missing));
    }
    Ok(ApiKeyPerRoute { providers })
}

fn undecodable(e: prost::DecodeError) -> Rejection {
    Rejection::new("value", Reason::Invalid(format!("undecodable: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The key table (SDS)

/// The consumers' keys from the key-table secret, indexed by keyed hash.
///
/// Its `Debug` output and [`ApiKeyTable::summary`] show counts only: never the HMAC key, the
/// hashes or the keys.
pub struct ApiKeyTable {
    /// The HMAC-SHA-256 key, prepared once.
    hmac: ring::hmac::Key,
    consumers: Vec<Consumer>,
    /// Digest of a key → index into `consumers`.
    by_digest: HashMap<[u8; 32], usize, BuildHasherDefault<DigestHasher>>,
}

/// The start of a key's keyed hash: what quotas per API key count by (as hex, the control
/// plane's ext_authz `api_key_hash`), never the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub [u8; 16]);

/// Who a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// The consumer's name.
    pub name: String,
    /// Its tier, when it has one.
    pub tier: Option<String>,
    /// Its groups, for authorization policies.
    pub groups: Vec<String>,
    /// `name` as a header value, made once.
    pub name_header: HeaderValue,
    /// `tier` as a header value, made once.
    pub tier_header: Option<HeaderValue>,
}

impl ApiKeyTable {
    /// The consumer whose key this is, and the key's [`KeyId`]: one HMAC, one hash-map lookup,
    /// no allocation.
    pub fn lookup(&self, key: &[u8]) -> Option<(&Consumer, KeyId)> {
        let tag = ring::hmac::sign(&self.hmac, key);
        let digest: &[u8; 32] = tag.as_ref().try_into().ok()?;
        let consumer = self.by_digest.get(digest).map(|&i| &self.consumers[i])?;
        let mut id = [0; 16];
        id.copy_from_slice(&digest[..16]);
        Some((consumer, KeyId(id)))
    }

    /// How many consumers, and how many keys, the table holds.
    pub fn summary(&self) -> (usize, usize) {
        (self.consumers.len(), self.by_digest.len())
    }
}

impl fmt::Debug for ApiKeyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (consumers, keys) = self.summary();
        f.debug_struct("ApiKeyTable")
            .field("consumers", &consumers)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

/// HMAC outputs are uniformly distributed and cannot be chosen without the key, so their
/// first bytes are a hash already; SipHash would only add work to every lookup.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length, then its bytes: keep the first 8 bytes of content.
        if bytes.len() >= 8 {
            let mut first = [0; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_le_bytes(first);
        }
    }

    fn write_usize(&mut self, _len: usize) {}
}

/// Reads a `GenericSecret` holding an encoded `ApiKeyTable` in `secret.inline_bytes`.
pub(crate) fn key_table(proto: &tls_pb::GenericSecret) -> Result<ApiKeyTable, Rejection> {
    use core_pb::data_source::Specifier;
    let tls_pb::GenericSecret { secret, secrets } = proto;
    reject_if(!secrets.is_empty(), "secrets")?;
    let Some(core_pb::DataSource {
        watched_directory,
        specifier,
    }) = secret
    else {
        return Err(Rejection::new("secret", Reason::Missing));
    };
    reject_if(watched_directory.is_some(), "watched_directory").within("secret")?;
    let bytes = match specifier {
        Some(Specifier::InlineBytes(bytes)) => bytes,
        None => return Err(Rejection::new("inline_bytes", Reason::Missing).within("secret")),
        Some(Specifier::InlineString(_)) => {
            return Err(Rejection::unsupported("inline_string").within("secret"));
        }
        Some(Specifier::Filename(_)) => {
            return Err(Rejection::unsupported("filename").within("secret"));
        }
        Some(Specifier::EnvironmentVariable(_)) => {
            return Err(Rejection::unsupported("environment_variable").within("secret"));
        }
    };
    table(bytes).within("inline_bytes").within("secret")
}

fn table(bytes: &[u8]) -> Result<ApiKeyTable, Rejection> {
    known_fields(bytes, &API_KEY_TABLE)?;
    // No error below quotes the bytes: they hold the HMAC key.
    let api_key_pb::ApiKeyTable {
        hmac_secret,
        consumers,
    } = api_key_pb::ApiKeyTable::decode(bytes).map_err(undecodable)?;
    if hmac_secret.is_empty() {
        return Err(Rejection::new("hmac_secret", Reason::Missing));
    }
    let mut built = Vec::with_capacity(consumers.len());
    let mut by_digest = HashMap::default();
    for (i, consumer) in consumers.into_iter().enumerate() {
        let api_key_pb::ApiKeyConsumer {
            name,
            tier,
            key_hashes,
            groups,
        } = consumer;
        let at = |r: Rejection| r.at("consumers", i);
        let header_value = |value: &str, field: &'static str| {
            HeaderValue::from_str(value).map_err(|_| {
                at(Rejection::new(
                    field,
                    Reason::Invalid(format!("{value:?} is not a valid header value")),
                ))
            })
        };
        if name.is_empty() {
            return Err(at(Rejection::new("name", Reason::Missing)));
        }
        let name_header = header_value(&name, "name")?;
        let tier_header = match tier.as_str() {
            "" => None,
            tier => Some(header_value(tier, "tier")?),
        };
        for (j, hash) in key_hashes.iter().enumerate() {
            let digest = hex_digest(hash).ok_or_else(|| {
                at(Rejection::new_at(
                    "key_hashes",
                    j,
                    Reason::Invalid("must be 64 lower-case hex digits (HMAC-SHA-256)".into()),
                ))
            })?;
            // As the control plane's own index: a hash listed twice belongs to the last.
            by_digest.insert(digest, built.len());
        }
        built.push(Consumer {
            name,
            tier: (!tier.is_empty()).then_some(tier),
            groups,
            name_header,
            tier_header,
        });
    }
    Ok(ApiKeyTable {
        hmac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &hmac_secret),
        consumers: built,
        by_digest,
    })
}

/// A lower-case hex SHA-256 digest; the control plane writes them so, and compares them as
/// text, so any other spelling could never match there either.
fn hex_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut digest = [0; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = nibble(hex[2 * i])? << 4 | nibble(hex[2 * i + 1])?;
    }
    Some(digest)
}

// ---------------------------------------------------------------------------------------------
// Unknown fields

const API_KEY_PROVIDER: Schema = Schema {
    message: "ApiKeyProvider",
    fields: &[
        (1, "header", None),
        (2, "query", None),
        (3, "forward_key", None),
    ],
};
/// A `map<string, ApiKeyProvider>` entry.
const PROVIDER_ENTRY: Schema = Schema {
    message: "ApiKeyAuth.ProvidersEntry",
    fields: &[(1, "key", None), (2, "value", Some(&API_KEY_PROVIDER))],
};
const API_KEY_AUTH: Schema = Schema {
    message: "ApiKeyAuth",
    fields: &[
        (1, "providers", Some(&PROVIDER_ENTRY)),
        (2, "key_table", None),
    ],
};
const API_KEY_PER_ROUTE: Schema = Schema {
    message: "ApiKeyPerRoute",
    fields: &[(1, "providers", None)],
};
const API_KEY_CONSUMER: Schema = Schema {
    message: "ApiKeyConsumer",
    fields: &[
        (1, "name", None),
        (2, "tier", None),
        (3, "key_hashes", None),
        (4, "groups", None),
    ],
};
const API_KEY_TABLE: Schema = Schema {
    message: "ApiKeyTable",
    fields: &[
        (1, "hmac_secret", None),
        (2, "consumers", Some(&API_KEY_CONSUMER)),
    ],
};

/// Tollgate's API-key protos' package, for [`known_fields`]'s errors.
const PACKAGE: &str = "tollgate.filters.http.api_key.v1";

fn known_fields(bytes: &[u8], schema: &Schema) -> Result<(), Rejection> {
    super::known_fields(bytes, PACKAGE, schema)
}

#[cfg(test)]
pub(crate) mod tests;
