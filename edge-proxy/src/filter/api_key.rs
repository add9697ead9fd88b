//! Tollgate's API-key filter (`tollgate.filters.http.api_key`), after route matching and JWT
//! authentication. Envoy nodes get the same check from the control plane's ext_authz service
//! (`control-plane/src/ext_authz.rs`); this filter answers alike, without a network hop.
//!
//! Only routes with an `ApiKeyPerRoute` are checked. For each provider the route names, in
//! order, the key is the provider's header (several lines joined with `,`), else its query
//! parameter (the first, value percent-decoded); an empty one is no key. It is hashed
//! (HMAC-SHA-256 with the table's key) and looked up in the key table from SDS; the first
//! known key wins. Then `x-consumer-name` is set and `x-consumer-tier` set or removed (what
//! the client sent under these names never reaches the upstream), the key is removed from the
//! request unless the provider has `forward_key`, and the consumer is left in [`Metadata`] for
//! RBAC (namespace `envoy.filters.http.ext_authz`: `consumer`, `tier`, `groups`).
//!
//! Otherwise the answer is 401 with `www-authenticate: ApiKey realm="tollgate"` and
//! `{"error":{"code":"unauthorized","message":"invalid API key"}}` (a key was given) or
//! `"missing API key"`. The key is never logged, and a refused query key is removed from the
//! path too, so that the access log does not record it either.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::Metadata;
use crate::config::filters::api_key::{
    ApiKeyAuth, ApiKeyPerRoute, ApiKeyTable, CONSUMER_NAME_HEADER, CONSUMER_TIER_HEADER,
};
use crate::proxy::body::DownstreamBody;

/// The challenge of a 401, as the control plane's ext_authz service sends it.
pub const CHALLENGE: HeaderValue = HeaderValue::from_static("ApiKey realm=\"tollgate\"");

/// The request side. `None`: continue; `Some`: the answer. `table` is the key table the config
/// names, from the snapshot.
pub(crate) fn on_request<'c>(
    config: &'c ApiKeyAuth,
    per_route: Option<&ApiKeyPerRoute>,
    table: Option<&'c ApiKeyTable>,
    req: &mut super::Request<'_, '_>,
    metadata: &mut Metadata<'c>,
) -> Option<Response<DownstreamBody>> {
    let per_route = per_route?;
    let Some(table) = table else {
        // A complete snapshot holds every table its listeners name; fail closed regardless,
        // as Envoy's ext_authz does when the service cannot answer.
        let mut response = super::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "API key table unavailable",
        );
        super::Rejection {
            filter: "api_key",
            reason: "unavailable",
        }
        .attach(&mut response);
        return Some(response);
    };
    let mut presented = false;
    for name in &per_route.providers {
        let Some(provider) = config.provider(name) else {
            continue;
        };
        let (key, in_query) = match header_key(req.headers, &provider.header) {
            Some(key) => (Some(key), false),
            None => match &provider.query {
                Some(param) => (query_key(req.path_and_query, param), true),
                None => (None, false),
            },
        };
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            continue;
        };
        presented = true;
        let Some((consumer, key_id)) = table.lookup(&key) else {
            continue;
        };
        req.headers
            .insert(CONSUMER_NAME_HEADER, consumer.name_header.clone());
        match &consumer.tier_header {
            Some(tier) => {
                req.headers.insert(CONSUMER_TIER_HEADER, tier.clone());
            }
            None => {
                req.headers.remove(CONSUMER_TIER_HEADER);
            }
        }
        if !provider.forward_key {
            if in_query {
                strip_params(req.path_and_query, provider.query.as_deref());
            } else {
                req.headers.remove(&provider.header);
            }
        }
        metadata.consumer = Some(consumer);
        metadata.api_key = Some(key_id);
        return None;
    }
    if presented {
        // Not forwarded; only so that the access log does not record a key, right or wrong.
        for name in &per_route.providers {
            if let Some(provider) = config.provider(name) {
                strip_params(req.path_and_query, provider.query.as_deref());
            }
        }
    }
    let (message, reason) = if presented {
        ("invalid API key", "invalid")
    } else {
        ("missing API key", "missing")
    };
    let mut response = super::json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    super::Rejection {
        filter: "api_key",
        reason,
    }
    .attach(&mut response);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, CHALLENGE);
    Some(response)
}

/// The header's value; several lines joined with `,`, as Envoy hands headers to ext_authz.
fn header_key<'h>(headers: &'h http::HeaderMap, name: &http::HeaderName) -> Option<Cow<'h, [u8]>> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    if lines.next().is_none() {
        return Some(Cow::Borrowed(first.as_bytes()));
    }
    let all: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    Some(Cow::Owned(all.join(&b","[..])))
}

/// The first value of query parameter `name`, percent-decoded, exactly as the control plane's
/// ext_authz service reads it ([`tollgate_proto::api_key::query_key`]).
fn query_key<'p>(path_and_query: &'p str, name: &str) -> Option<Cow<'p, [u8]>> {
    let (_, query) = path_and_query.split_once('?')?;
    tollgate_proto::api_key::query_key(query, name).map(|key| match key {
        Cow::Borrowed(key) => Cow::Borrowed(key.as_bytes()),
        Cow::Owned(key) => Cow::Owned(key.into_bytes()),
    })
}

/// Removes every `name` parameter as Envoy's ext_authz filter removes
/// `query_parameters_to_remove`: the query is split on `&` and `=` without decoding, and the
/// rest written back sorted by name (values in their order), a bare `flag` as `flag=`; no
/// `?` when nothing is left.
fn strip_params(path_and_query: &mut Cow<'_, str>, name: Option<&str>) {
    let Some(name) = name else {
        return;
    };
    let Some((path, query)) = path_and_query.split_once('?') else {
        return;
    };
    let params = query.split('&').enumerate().map(|(i, pair)| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key, i, value)
    });
    // Envoy's parser stops at the end of the string: a trailing `&` adds nothing, an empty
    // pair anywhere else is a parameter named "".
    let count = query.split('&').count();
    let trailing_empty = query.ends_with('&');
    let mut kept: Vec<(&str, usize, &str)> = params
        .filter(|(key, i, _)| *key != name && !(trailing_empty && *i + 1 == count))
        .collect();
    if kept.len() + usize::from(trailing_empty) == count {
        // Not there: nothing to remove (only the refused-key path asks for absent ones).
        return;
    }
    kept.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    for (i, (key, _, value)) in kept.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    }
    *path_and_query = Cow::Owned(out);
}

#[cfg(test)]
mod tests;
