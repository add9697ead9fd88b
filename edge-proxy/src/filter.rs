//! The HTTP filters' request and response work: what runs after route matching and before the
//! router, in the order the listener's connection manager lists the filters
//! (the proxy's `filters` module drives them), and on the way back in reverse.
//!
//! - [`cors`]: Envoy's CORS filter: answers preflights, and adds the `access-control-*`
//!   headers to responses for allowed origins.
//! - [`jwt`]: Envoy's jwt_authn filter: finds tokens, verifies them against the providers'
//!   keys (inline or fetched through an upstream cluster), and answers 401/403 when the
//!   requirement is not met.
//! - [`transform`]: Tollgate's body transform filter: JSON and XML request and response
//!   bodies, buffered up to 1 MiB.
//!
//! Filters see the request head (they may change its headers and path) and may answer it
//! themselves; only the transform filter reads bodies, after the others.

pub mod cors;
pub mod jwt;
pub mod transform;

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::config::route::RequestHead;
use crate::proxy::body::{DownstreamBody, full};

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
