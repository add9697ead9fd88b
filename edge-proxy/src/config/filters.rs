//! HTTP filters: a connection manager's `http_filters`, and the per-route config that routes
//! and virtual hosts give them (`typed_per_filter_config`).
//!
//! In the request flow the filters run right after route matching and before the router
//! (see [`crate::proxy`]), in the order the listener lists them; Tollgate's control plane
//! sends CORS, then JWT authentication, then API keys, then RBAC (authorization reads what
//! authentication found), then quotas (counted per what authentication found, only for
//! requests authorization let through), then the body transforms (last before the router).
//! The listener says which filters run ([`HttpFilter`]); the matched route and its virtual host
//! say how, per filter name ([`FilterOverrides`]). As in Envoy, per-filter config is found by
//! the filter's configured `name`, the most specific level first.
//!
//! A per-filter config whose key names no filter of the listener is accepted and unused, as in
//! Envoy: route tables are validated on their own, and Envoy only checks that it knows the
//! config's type. A type the proxy does not implement is NACKed, unless wrapped in a
//! `FilterConfig` marked `is_optional`.

pub mod api_key;
pub mod cors;
pub mod jwt_authn;
pub mod rate_limit;
pub mod rbac;
pub mod transform;

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_proto::api_key as api_key_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;
use tollgate_proto::envoy::extensions::filters::http::rbac::v3 as rbac_pb;
use tollgate_proto::envoy::extensions::filters::http::router::v3 as router_pb;
use tollgate_proto::google::protobuf as pb;
use tollgate_proto::rate_limit as rate_limit_pb;
use tollgate_proto::transform as transform_pb;

use super::listener::{decode, is_type, unsupported_extension};
use super::{Reason, Rejection, Within as _};

/// One HTTP filter of a connection manager, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFilter {
    /// The filter's `name`; per-route config is looked up by it.
    pub name: String,
    /// What the filter does.
    pub kind: HttpFilterKind,
}

/// The HTTP filters the proxy implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFilterKind {
    /// `envoy.filters.http.router` with its default config: forward as the route says. Always
    /// the last filter.
    Router,
    /// `envoy.filters.http.cors`: its policy comes from the route's per-filter config.
    Cors,
    /// `envoy.filters.http.jwt_authn`.
    JwtAuthn(Arc<jwt_authn::JwtAuthn>),
    /// `tollgate.filters.http.api_key`: its routes say which policies they require.
    ApiKey(Arc<api_key::ApiKeyAuth>),
    /// `envoy.filters.http.rbac`.
    Rbac(Arc<rbac::Rbac>),
    /// `tollgate.filters.http.rate_limit`: the policies; routes say which count them.
    RateLimit(Arc<rate_limit::RateLimit>),
    /// `tollgate.filters.http.transform`: its body changes come from the route's per-filter
    /// config.
    Transform,
}

impl HttpFilter {
    /// Whether this is the router.
    pub fn is_router(&self) -> bool {
        matches!(self.kind, HttpFilterKind::Router)
    }
}

/// Reads an HTTP filter's `typed_config` into its kind. `name` is only for messages. The
/// router's own config is validated by the caller, which knows the listener's rules for it.
pub(crate) fn http_filter_kind(
    name: &str,
    any: &pb::Any,
    router: impl FnOnce(&router_pb::Router) -> Result<(), Rejection>,
) -> Result<HttpFilterKind, Rejection> {
    if is_type::<router_pb::Router>(any) {
        let config = decode(any).within("typed_config")?;
        router(&config).within("typed_config")?;
        Ok(HttpFilterKind::Router)
    } else if is_type::<cors_pb::Cors>(any) {
        // `Cors` has no fields: decoding only checks the bytes.
        let cors_pb::Cors {} = decode(any).within("typed_config")?;
        Ok(HttpFilterKind::Cors)
    } else if is_type::<jwt_pb::JwtAuthentication>(any) {
        let config: jwt_pb::JwtAuthentication = decode(any).within("typed_config")?;
        let config = jwt_authn::JwtAuthn::try_from_proto(config).within("typed_config")?;
        Ok(HttpFilterKind::JwtAuthn(Arc::new(config)))
    } else if is_type::<api_key_pb::ApiKeyAuth>(any) {
        let config = api_key::filter_config(any).within("typed_config")?;
        Ok(HttpFilterKind::ApiKey(Arc::new(config)))
    } else if is_type::<rbac_pb::Rbac>(any) {
        let config: rbac_pb::Rbac = decode(any).within("typed_config")?;
        let config = rbac::filter_config(config).within("typed_config")?;
        Ok(HttpFilterKind::Rbac(Arc::new(config)))
    } else if is_type::<rate_limit_pb::RateLimit>(any) {
        let config = rate_limit::filter_config(any).within("typed_config")?;
        Ok(HttpFilterKind::RateLimit(Arc::new(config)))
    } else if is_type::<transform_pb::Transform>(any) {
        transform::filter_config(any).within("typed_config")?;
        Ok(HttpFilterKind::Transform)
    } else {
        Err(unsupported_extension("http filter", name, any))
    }
}

/// The per-filter config of one level (a virtual host or a route), by filter name.
#[derive(Debug, Default)]
pub struct FilterOverrides {
    /// Few entries: a scan is faster than hashing, and needs no allocation per request.
    entries: Vec<FilterOverride>,
}

#[derive(Debug)]
struct FilterOverride {
    name: String,
    /// From a `FilterConfig` wrapper: `Some(true)` disables the filter here.
    disabled: Option<bool>,
    config: Option<PerFilterConfig>,
}

/// A filter's config for one route or virtual host.
#[derive(Debug)]
pub enum PerFilterConfig {
    /// `envoy.extensions.filters.http.cors.v3.CorsPolicy`.
    Cors(cors::CorsPolicy),
    /// `envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig`.
    JwtAuthn(jwt_authn::PerRoute),
    /// `tollgate.filters.http.api_key.v1.ApiKeyPerRoute`.
    ApiKey(api_key::ApiKeyPerRoute),
    /// `envoy.extensions.filters.http.rbac.v3.RBACPerRoute`.
    Rbac(rbac::RbacPerRoute),
    /// `tollgate.filters.http.rate_limit.v1.RateLimitPerRoute`.
    RateLimit(rate_limit::RateLimitPerRoute),
    /// `tollgate.filters.http.transform.v1.TransformPerRoute`.
    Transform(transform::TransformPerRoute),
}

impl PerFilterConfig {
    /// The CORS policy, when this is one. A filter ignores a config of another filter's type,
    /// as Envoy's typed lookup does.
    pub fn as_cors(&self) -> Option<&cors::CorsPolicy> {
        match self {
            Self::Cors(policy) => Some(policy),
            _ => None,
        }
    }

    /// The jwt_authn per-route config, when this is one.
    pub fn as_jwt_authn(&self) -> Option<&jwt_authn::PerRoute> {
        match self {
            Self::JwtAuthn(per_route) => Some(per_route),
            _ => None,
        }
    }

    /// The API-key per-route config, when this is one.
    pub fn as_api_key(&self) -> Option<&api_key::ApiKeyPerRoute> {
        match self {
            Self::ApiKey(per_route) => Some(per_route),
            _ => None,
        }
    }

    /// The RBAC per-route config, when this is one.
    pub fn as_rbac(&self) -> Option<&rbac::RbacPerRoute> {
        match self {
            Self::Rbac(per_route) => Some(per_route),
            _ => None,
        }
    }

    /// The route's rate-limit policies, when this is a rate-limit config.
    pub fn as_rate_limit(&self) -> Option<&rate_limit::RateLimitPerRoute> {
        match self {
            Self::RateLimit(per_route) => Some(per_route),
            _ => None,
        }
    }

    /// The body transforms, when this is a transform config.
    pub fn as_transform(&self) -> Option<&transform::TransformPerRoute> {
        match self {
            Self::Transform(per_route) => Some(per_route),
            _ => None,
        }
    }
}

impl FilterOverrides {
    /// Whether nothing is configured at this level.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The config for the filter named `filter`, if this level has one.
    pub fn config(&self, filter: &str) -> Option<&PerFilterConfig> {
        self.entries
            .iter()
            .find(|e| e.name == filter)
            .and_then(|e| e.config.as_ref())
    }

    /// Whether this level disables (`Some(true)`) or explicitly enables (`Some(false)`) the
    /// filter named `filter`.
    pub fn disabled(&self, filter: &str) -> Option<bool> {
        self.entries
            .iter()
            .find(|e| e.name == filter)
            .and_then(|e| e.disabled)
    }
}

/// Reads a `typed_per_filter_config` map. Errors carry the map key in their path.
pub(super) fn filter_overrides(
    map: &HashMap<String, pb::Any>,
) -> Result<FilterOverrides, Rejection> {
    // Sorted, so that the first error reported does not depend on hash order.
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        if let Some(entry) = filter_override(name, &map[name]).map_err(|r| r.key(name))? {
            entries.push(entry);
        }
    }
    Ok(FilterOverrides { entries })
}

/// One entry; `None` when it is an optional config of a type the proxy does not know, which
/// Envoy skips.
fn filter_override(name: &str, any: &pb::Any) -> Result<Option<FilterOverride>, Rejection> {
    if name.is_empty() {
        return Err(Rejection::new("name", Reason::Missing));
    }
    if !is_type::<route_pb::FilterConfig>(any) {
        return Ok(Some(FilterOverride {
            name: name.to_owned(),
            disabled: None,
            config: Some(per_filter_config(name, any)?),
        }));
    }
    let route_pb::FilterConfig {
        config,
        is_optional,
        disabled,
    } = decode(any)?;
    if disabled {
        // Envoy ignores the config of a disabled filter.
        return Ok(Some(FilterOverride {
            name: name.to_owned(),
            disabled: Some(true),
            config: None,
        }));
    }
    let config = match &config {
        None => None,
        Some(inner) if is_optional && !known_per_filter_type(inner) => return Ok(None),
        Some(inner) => Some(per_filter_config(name, inner).within("config")?),
    };
    Ok(Some(FilterOverride {
        name: name.to_owned(),
        disabled: Some(false),
        config,
    }))
}

fn known_per_filter_type(any: &pb::Any) -> bool {
    is_type::<cors_pb::CorsPolicy>(any)
        || is_type::<jwt_pb::PerRouteConfig>(any)
        || is_type::<api_key_pb::ApiKeyPerRoute>(any)
        || is_type::<rbac_pb::RbacPerRoute>(any)
        || is_type::<rate_limit_pb::RateLimitPerRoute>(any)
        || is_type::<transform_pb::TransformPerRoute>(any)
}

fn per_filter_config(name: &str, any: &pb::Any) -> Result<PerFilterConfig, Rejection> {
    if is_type::<cors_pb::CorsPolicy>(any) {
        let proto = decode(any)?;
        Ok(PerFilterConfig::Cors(cors::policy(&proto)?))
    } else if is_type::<jwt_pb::PerRouteConfig>(any) {
        let proto = decode(any)?;
        Ok(PerFilterConfig::JwtAuthn(jwt_authn::per_route(&proto)?))
    } else if is_type::<api_key_pb::ApiKeyPerRoute>(any) {
        Ok(PerFilterConfig::ApiKey(api_key::per_route(any)?))
    } else if is_type::<rbac_pb::RbacPerRoute>(any) {
        let proto = decode(any)?;
        Ok(PerFilterConfig::Rbac(rbac::per_route(&proto)?))
    } else if is_type::<rate_limit_pb::RateLimitPerRoute>(any) {
        Ok(PerFilterConfig::RateLimit(rate_limit::per_route(any)?))
    } else if is_type::<transform_pb::TransformPerRoute>(any) {
        Ok(PerFilterConfig::Transform(transform::per_route(any)?))
    } else {
        // The path ends at the map key: the value is the `Any` itself.
        Err(Rejection::here(Reason::UnsupportedValue(format!(
            "per-filter config for {name:?} ({})",
            any.type_url
        ))))
    }
}

// ---------------------------------------------------------------------------------------------
// Unknown fields of Tollgate's own protos

/// A message's field numbers, for [`known_fields`]; a message-typed field names its schema.
#[derive(Debug)]
pub(crate) struct Schema {
    /// The message's name within its package, for messages.
    pub(crate) message: &'static str,
    /// Field number, name (for the error path), and the schema of a message-typed field.
    pub(crate) fields: &'static [(u32, &'static str, Option<&'static Schema>)],
}

/// Refuses a field number `schema` does not list, at any depth: Tollgate's own protos are
/// NACKed rather than half-understood when a newer control plane adds a field (prost would
/// drop it silently). Only numbers are read: the values are prost's to decode. `package`
/// names the messages' package in the error.
pub(crate) fn known_fields(
    mut bytes: &[u8],
    package: &str,
    schema: &Schema,
) -> Result<(), Rejection> {
    let malformed = || Rejection::new("value", Reason::Invalid("malformed protobuf".into()));
    while !bytes.is_empty() {
        let key = varint(&mut bytes).ok_or_else(malformed)?;
        let tag = key >> 3;
        let Some(&(_, name, nested)) = schema.fields.iter().find(|f| u64::from(f.0) == tag) else {
            return Err(Rejection::here(Reason::UnsupportedValue(format!(
                "unknown field {tag} of {package}.{}",
                schema.message
            ))));
        };
        let skip = match key & 7 {
            0 => {
                varint(&mut bytes).ok_or_else(malformed)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = varint(&mut bytes).ok_or_else(malformed)?;
                let len = usize::try_from(len).map_err(|_| malformed())?;
                if len > bytes.len() {
                    return Err(malformed());
                }
                if let Some(nested) = nested {
                    known_fields(&bytes[..len], package, nested).within(name)?;
                }
                len
            }
            _ => return Err(malformed()),
        };
        bytes = bytes.get(skip..).ok_or_else(malformed)?;
    }
    Ok(())
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests;
