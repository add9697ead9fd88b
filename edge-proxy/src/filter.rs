//! The HTTP filters' request and response work: what runs after route matching and before the
//! router, in the order the listener's connection manager lists the filters
//! (the proxy's `filters` module drives them), and on the way back in reverse.
//!
//! - [`cors`]: Envoy's CORS filter: answers preflights, and adds the `access-control-*`
//!   headers to responses for allowed origins.
//! - [`jwt`]: Envoy's jwt_authn filter: finds tokens, verifies them against the providers'
//!   keys (inline or fetched through an upstream cluster), and answers 401/403 when the
//!   requirement is not met.
//! - [`api_key`]: Tollgate's API-key filter: looks keys up by keyed hash in the key table from
//!   SDS, names the consumer to the upstream, and answers 401 for a missing or unknown key.
//! - [`rbac`]: Envoy's RBAC filter: allows or denies (403) by client address and by what
//!   authentication found out.
//! - [`rate_limit`]: Tollgate's quota filter: counts requests per API key, consumer, claim,
//!   client address, header or route, in process or in Redis, and answers 429 over the limit.
//! - [`transform`]: Tollgate's body transform filter: JSON and XML request and response
//!   bodies, buffered up to 1 MiB.
//!
//! Filters see the request head (they may change its headers and path) and may answer it
//! themselves; only the transform filter reads bodies, after the others. What authentication
//! learns about the caller is passed to later filters in [`Metadata`], as Envoy passes dynamic
//! metadata, and read by header templates (`%DYNAMIC_METADATA()%`).

pub mod api_key;
pub mod cors;
pub mod jwt;
pub mod rate_limit;
pub mod rbac;
pub mod transform;

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::config::filters::api_key::{Consumer, KeyId};
use crate::config::route::RequestHead;
use crate::proxy::body::{DownstreamBody, full};
use crate::proxy::headers::Addresses;

/// The request head as filters see it, after routing: they may change headers and the path.
#[derive(Debug)]
pub struct Request<'r, 'p> {
    /// The method.
    pub method: &'r Method,
    /// `http` or `https`.
    pub scheme: &'r str,
    /// `:authority` / `Host`.
    pub authority: &'r str,
    /// The path and query, normalized; jwt_authn removes a token parameter from it.
    pub path_and_query: &'r mut Cow<'p, str>,
    /// The request headers.
    pub headers: &'r mut HeaderMap,
    /// The peer's address, and how far `x-forwarded-for` is trusted.
    pub addresses: Addresses,
}

/// What filters learnt about a request, for the filters after them: the part of Envoy's
/// dynamic metadata that this proxy's filters write and read. Empty, it allocates nothing.
#[derive(Debug, Default)]
pub struct Metadata<'c> {
    /// Namespace `envoy.filters.http.jwt_authn`: each verified token's payload (and header),
    /// under its provider's `payload_in_metadata` (`header_in_metadata`) key, in the order
    /// verified; a later entry under the same key replaces an earlier one, as in Envoy.
    pub jwt: Vec<(&'c str, std::sync::Arc<serde_json::Value>)>,
    /// Namespace `envoy.filters.http.ext_authz`: the consumer the API key belongs to
    /// (`consumer`, `tier`, `groups`, as the control plane's ext_authz service answers Envoy).
    pub consumer: Option<&'c Consumer>,
    /// The same namespace's `api_key_hash`: which of the consumer's keys was presented.
    pub api_key: Option<KeyId>,
    /// Namespace `envoy.filters.http.ratelimit`, `quota`: what the quota filter decided (as
    /// the control plane's rate-limit service tells Envoy), for the access log; `None` when no
    /// policy counted the request.
    pub quota: Option<tollgate_quota::PolicyOutcome>,
}

impl crate::config::format::DynamicMetadata for Metadata<'_> {
    /// What Envoy's filters would hold under the same names: jwt_authn's payloads by
    /// `payload_in_metadata` key (a later one under the same key wins), and the identity
    /// the control plane's ext_authz service sets (`consumer`, `tier` when there is one,
    /// `groups`, `api_key_hash`).
    fn get(&self, namespace: &str, path: &[String]) -> Option<Cow<'_, serde_json::Value>> {
        use crate::config::format::{EXT_AUTHZ_NAMESPACE, JWT_AUTHN_NAMESPACE, lookup};
        match namespace {
            JWT_AUTHN_NAMESPACE => match path.split_first() {
                Some((key, rest)) => {
                    let (_, payload) = self.jwt.iter().rev().find(|(k, _)| k == key)?;
                    lookup(payload, rest).map(Cow::Borrowed)
                }
                None if self.jwt.is_empty() => None,
                None => Some(Cow::Owned(serde_json::Value::Object(
                    self.jwt
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::clone(v)))
                        .collect(),
                ))),
            },
            EXT_AUTHZ_NAMESPACE => {
                let consumer = self.consumer?;
                let mut identity = serde_json::json!({
                    "consumer": consumer.name,
                    "groups": consumer.groups,
                });
                if let Some(tier) = &consumer.tier {
                    identity["tier"] = serde_json::Value::String(tier.clone());
                }
                if let Some(KeyId(id)) = self.api_key {
                    identity["api_key_hash"] = serde_json::Value::String(hex::encode(id));
                }
                lookup(&identity, path).cloned().map(Cow::Owned)
            }
            _ => None,
        }
    }
}

impl Request<'_, '_> {
    /// The head in the form route matchers read.
    pub fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: self.method.as_str(),
            scheme: self.scheme,
            authority: self.authority,
            path_and_query: self.path_and_query,
            headers: self.headers,
        }
    }
}

/// Why an authentication or authorization filter refused a request, attached to its answer
/// (as a response extension) so the request path can count it without parsing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// The filter: `jwt_authn`, `api_key` or `rbac`.
    pub(crate) filter: &'static str,
    /// A short, fixed reason (`missing`, `expired`, `invalid`, `denied`, …): a bounded label.
    pub(crate) reason: &'static str,
}

impl Rejection {
    /// Attaches the rejection to a filter's answer.
    pub(crate) fn attach<B>(self, response: &mut Response<B>) {
        response.extensions_mut().insert(self);
    }
}

/// A filter's own error answer, as Tollgate's product rules shape errors:
/// `{"error":{"code":…,"message":…}}`. Envoy sends the message as `text/plain`; the status and
/// headers are Envoy's, only the body's shape differs.
pub(crate) fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<DownstreamBody> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::config::format::{
        DynamicMetadata, EXT_AUTHZ_NAMESPACE, JWT_AUTHN_NAMESPACE, envoy_json,
    };

    #[test]
    fn metadata_reads_as_envoys_dynamic_metadata() {
        let consumer = Consumer {
            name: "acme".into(),
            tier: Some("gold".into()),
            groups: vec!["partners".into()],
            name_header: HeaderValue::from_static("acme"),
            tier_header: Some(HeaderValue::from_static("gold")),
        };
        let metadata = Metadata {
            jwt: vec![
                ("jwt_payload", json!({"sub": "old"}).into()),
                (
                    "jwt_payload",
                    json!({"sub": "new", "org": {"id": 7}}).into(),
                ),
            ],
            consumer: Some(&consumer),
            api_key: None,
            quota: None,
        };
        let get = |namespace: &str, path: &[&str]| {
            let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
            metadata.get(namespace, &path).map(|v| envoy_json(&v))
        };
        // A later payload under the same key replaces an earlier one, as in Envoy.
        assert_eq!(
            get(JWT_AUTHN_NAMESPACE, &["jwt_payload", "sub"]).as_deref(),
            Some(r#""new""#)
        );
        assert_eq!(
            get(JWT_AUTHN_NAMESPACE, &["jwt_payload", "org", "id"]).as_deref(),
            Some("7")
        );
        assert_eq!(
            get(JWT_AUTHN_NAMESPACE, &[]).as_deref(),
            Some(r#"{"jwt_payload":{"org":{"id":7},"sub":"new"}}"#)
        );
        assert_eq!(get(JWT_AUTHN_NAMESPACE, &["other"]), None);
        assert_eq!(
            get(EXT_AUTHZ_NAMESPACE, &["consumer"]).as_deref(),
            Some(r#""acme""#)
        );
        assert_eq!(
            get(EXT_AUTHZ_NAMESPACE, &["tier"]).as_deref(),
            Some(r#""gold""#)
        );
        assert_eq!(
            get(EXT_AUTHZ_NAMESPACE, &["groups"]).as_deref(),
            Some(r#"["partners"]"#)
        );
        assert_eq!(get("envoy.lb", &["x"]), None);
        let empty = Metadata::default();
        assert!(
            empty
                .get(EXT_AUTHZ_NAMESPACE, &["consumer".into()])
                .is_none()
        );
        assert!(empty.get(JWT_AUTHN_NAMESPACE, &[]).is_none());
    }
}
