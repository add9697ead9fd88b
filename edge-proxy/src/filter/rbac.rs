//! Envoy's RBAC filter (`envoy.filters.http.rbac`), after authentication.
//!
//! The rules are the route's (`RBACPerRoute`, most specific level, even when it has none:
//! then every request passes), else the connection manager's; without rules every request
//! passes. A request matches a policy when one of its principals matches (the permissions are
//! all `any`); with `ALLOW` only matching requests pass, with `DENY` only the others do.
//!
//! Principals read the client's address ([`Addresses::client`](crate::proxy::headers::Addresses::client): `x-forwarded-for` as far as
//! `xff_num_trusted_hops` trusts it), the peer's, and [`Metadata`]: the verified JWT payloads
//! and the API key's consumer. Values are matched as Envoy matches `google.protobuf.Value`s:
//! a path that leads nowhere is absent (only `invert` or a `not_id` turns that into a match);
//! JSON `null` is present; numbers are never strings.
//!
//! A refused request gets 403 with `{"error":{"code":"forbidden","message":"RBAC: access
//! denied"}}` (Envoy sends the message as text).

use std::net::IpAddr;

use http::{Response, StatusCode};
use serde_json::Value;

use super::Metadata;
use crate::config::filters::rbac::{
    Action, MetadataMatcher, Namespace, Principal, Rbac, RbacPerRoute, Rules, ValueMatcher,
};
use crate::proxy::body::DownstreamBody;

/// Envoy's text for a refused request.
pub const ACCESS_DENIED: &str = "RBAC: access denied";

/// The request side. `None`: continue; `Some`: the 403.
pub(crate) fn on_request(
    config: &Rbac,
    per_route: Option<&RbacPerRoute>,
    req: &super::Request<'_, '_>,
    metadata: &Metadata<'_>,
) -> Option<Response<DownstreamBody>> {
    let rules = match per_route {
        Some(per_route) => per_route.rules.as_ref(),
        None => config.rules.as_ref(),
    }?;
    let client = rules
        .uses_client_address
        .then(|| req.addresses.client(req.headers));
    let input = Input {
        client,
        peer: req.addresses.peer,
        metadata,
    };
    if allowed(rules, &input) {
        None
    } else {
        let mut response = super::json_error(StatusCode::FORBIDDEN, "forbidden", ACCESS_DENIED);
        super::Rejection {
            filter: "rbac",
            reason: "denied",
        }
        .attach(&mut response);
        Some(response)
    }
}

/// What principals are matched against.
#[derive(Debug)]
pub(crate) struct Input<'a> {
    /// The client's address; worked out only when a principal needs it.
    pub(crate) client: Option<IpAddr>,
    /// The peer's address.
    pub(crate) peer: IpAddr,
    /// What authentication found.
    pub(crate) metadata: &'a Metadata<'a>,
}

/// Whether the rules let the request through.
pub(crate) fn allowed(rules: &Rules, input: &Input<'_>) -> bool {
    let matched = rules
        .policies
        .iter()
        .any(|policy| policy.principals.iter().any(|p| principal(p, input)));
    match rules.action {
        Action::Allow => matched,
        Action::Deny => !matched,
    }
}

fn principal(principal: &Principal, input: &Input<'_>) -> bool {
    match principal {
        Principal::Any => true,
        Principal::And(ids) => ids.iter().all(|p| self::principal(p, input)),
        Principal::Or(ids) => ids.iter().any(|p| self::principal(p, input)),
        Principal::Not(id) => !self::principal(id, input),
        Principal::RemoteIp(range) => range.contains(input.client.unwrap_or(input.peer)),
        Principal::DirectRemoteIp(range) => range.contains(input.peer),
        Principal::Metadata(matcher) => metadata(matcher, input.metadata),
    }
}

/// A value found in the metadata, borrowed from where it lives.
#[derive(Debug, Clone, Copy)]
enum Found<'a> {
    /// Nothing at the path (Envoy's empty `Value`).
    Absent,
    /// A JSON value (a JWT payload's).
    Json(&'a Value),
    /// A string (the consumer's name or tier).
    Str(&'a str),
    /// A list of strings (the consumer's groups).
    List(&'a [String]),
}

fn metadata(matcher: &MetadataMatcher, metadata: &Metadata<'_>) -> bool {
    let found = lookup(matcher.namespace, &matcher.path, metadata);
    value(&matcher.value, found) != matcher.invert
}

/// Envoy's `Metadata::metadataValue`: the path's keys, each into an object.
fn lookup<'a>(namespace: Namespace, path: &[String], metadata: &'a Metadata<'_>) -> Found<'a> {
    let Some((first, rest)) = path.split_first() else {
        return Found::Absent;
    };
    match namespace {
        Namespace::JwtAuthn => {
            // The last entry under a key is the one that counts.
            let Some((_, value)) = metadata.jwt.iter().rev().find(|(key, _)| key == first) else {
                return Found::Absent;
            };
            let mut value: &serde_json::Value = value;
            for key in rest {
                match value.as_object().and_then(|object| object.get(key)) {
                    Some(next) => value = next,
                    None => return Found::Absent,
                }
            }
            Found::Json(value)
        }
        Namespace::ExtAuthz => {
            let Some(consumer) = metadata.consumer else {
                return Found::Absent;
            };
            // The service's metadata is flat: a longer path leads into a string or a list.
            if !rest.is_empty() {
                return Found::Absent;
            }
            match first.as_str() {
                "consumer" => Found::Str(&consumer.name),
                "tier" => consumer.tier.as_deref().map_or(Found::Absent, Found::Str),
                "groups" => Found::List(&consumer.groups),
                _ => Found::Absent,
            }
        }
    }
}

/// Envoy's `ValueMatcher`s.
fn value(matcher: &ValueMatcher, found: Found<'_>) -> bool {
    match matcher {
        ValueMatcher::String(m) => match found {
            Found::Str(s) => m.matches(s),
            Found::Json(Value::String(s)) => m.matches(s),
            _ => false,
        },
        ValueMatcher::Bool(b) => matches!(found, Found::Json(Value::Bool(v)) if v == b),
        ValueMatcher::Present(present) => *present && !matches!(found, Found::Absent),
        ValueMatcher::List(one_of) => match found {
            Found::Json(Value::Array(items)) => items.iter().any(|v| value(one_of, Found::Json(v))),
            Found::List(items) => items.iter().any(|s| value(one_of, Found::Str(s))),
            _ => false,
        },
        ValueMatcher::Or(matchers) => matchers.iter().any(|m| value(m, found)),
    }
}

#[cfg(test)]
mod tests;
