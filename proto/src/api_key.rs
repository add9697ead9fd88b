//! `tollgate.filters.http.api_key.v1`: the edge proxy's API-key filter.
//!
//! Envoy has no filter that looks keys up by keyed hash, so Envoy nodes get `ext_authz` to the
//! control plane instead; the edge proxy checks keys itself, from a key table delivered over
//! SDS (a generic secret), so a request never waits on the control plane.
//!
//! The messages are declared with prost's derive rather than generated from `.proto` files:
//! they are few and small, and this keeps `protoc` out of the build.

use std::borrow::Cow;

const PACKAGE: &str = "tollgate.filters.http.api_key.v1";

/// The first value of query parameter `name` in `query` (names compared as sent), with `%XX`
/// decoded and everything else, a malformed `%` included, kept as it is (`+` stays `+`), read
/// as UTF-8 lossily. The control plane's ext_authz service and the edge proxy's API-key filter
/// both read keys from a query this way, so that both hash the same bytes.
pub fn query_key<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

fn percent_decode(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The filter's config, in the connection manager: the API-key policies its routes use.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiKeyAuth {
    /// Policies by name.
    #[prost(map = "string, message", tag = "1")]
    pub providers: std::collections::HashMap<String, ApiKeyProvider>,
    /// The SDS secret (a generic secret holding an encoded [`ApiKeyTable`]) keys are looked up
    /// in.
    #[prost(string, tag = "2")]
    pub key_table: String,
}

/// Where one policy finds the key, and what it does with it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiKeyProvider {
    /// The request header holding the key.
    #[prost(string, tag = "1")]
    pub header: String,
    /// A query parameter holding the key, looked at when the header is absent; empty for none.
    #[prost(string, tag = "2")]
    pub query: String,
    /// Whether the key goes on to the upstream; it is removed otherwise.
    #[prost(bool, tag = "3")]
    pub forward_key: bool,
}

/// A route's requirement, in its `typed_per_filter_config`: a key found by any of these
/// providers must belong to a consumer. Routes without it are not checked.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiKeyPerRoute {
    /// Provider names.
    #[prost(string, repeated, tag = "1")]
    pub providers: Vec<String>,
}

/// The consumers' keys, as keyed hashes: the content of the key-table secret.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiKeyTable {
    /// The HMAC-SHA-256 key the hashes are made with.
    #[prost(bytes = "vec", tag = "1")]
    pub hmac_secret: Vec<u8>,
    /// Every consumer with at least one key.
    #[prost(message, repeated, tag = "2")]
    pub consumers: Vec<ApiKeyConsumer>,
}

/// One consumer in the key table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiKeyConsumer {
    /// The consumer's name, sent upstream as `x-consumer-name`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its tier, sent upstream as `x-consumer-tier`; empty for none.
    #[prost(string, tag = "2")]
    pub tier: String,
    /// HMAC-SHA-256 (hex) of each of its keys.
    #[prost(string, repeated, tag = "3")]
    pub key_hashes: Vec<String>,
    /// The groups it belongs to, for authorization policies.
    #[prost(string, repeated, tag = "4")]
    pub groups: Vec<String>,
}

named!(PACKAGE; ApiKeyAuth,
    ApiKeyProvider,
    ApiKeyPerRoute,
    ApiKeyTable,
    ApiKeyConsumer);

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn query_keys_are_found_and_decoded() {
        assert_eq!(
            query_key("a=1&key=x%2Fy&key=2", "key").as_deref(),
            Some("x/y")
        );
        assert_eq!(query_key("key", "key").as_deref(), Some(""));
        assert_eq!(query_key("akey=1", "key"), None);
        assert_eq!(query_key("key=%zz%41+", "key").as_deref(), Some("%zzA+"));
        assert_eq!(query_key("key=%ff", "key").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn messages_round_trip_under_their_type_urls() {
        let config = ApiKeyAuth {
            providers: [(
                "keys".to_owned(),
                ApiKeyProvider {
                    header: "x-api-key".to_owned(),
                    query: "apikey".to_owned(),
                    forward_key: false,
                },
            )]
            .into(),
            key_table: "tollgate:api-keys".to_owned(),
        };
        let any = crate::pack_any(&config);
        assert_eq!(
            any.type_url,
            "type.googleapis.com/tollgate.filters.http.api_key.v1.ApiKeyAuth"
        );
        assert_eq!(ApiKeyAuth::decode(any.value.as_slice()).unwrap(), config);
    }
}
