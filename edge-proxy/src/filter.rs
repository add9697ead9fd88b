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
//!
//! Filters see the request head (they may change its headers and path) and may answer it
//! themselves; the body is never buffered for them. What authentication learns about the
//! caller is passed to later filters in [`Metadata`], as Envoy passes dynamic metadata.

pub mod api_key;
pub mod cors;
pub mod jwt;
pub mod rbac;

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::config::filters::api_key::Consumer;
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
    pub jwt: Vec<(&'c str, serde_json::Value)>,
    /// Namespace `envoy.filters.http.ext_authz`: the consumer the API key belongs to
    /// (`consumer`, `tier`, `groups`, as the control plane's ext_authz service answers Envoy).
    pub consumer: Option<&'c Consumer>,
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
