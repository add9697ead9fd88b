//! Domain model: the resources people manage through the admin API, and their validation.
//!
//! Everything the store accepts passes through [`Resource::validate`] first, and the whole
//! resulting configuration through [`check_references`]; the translator can then rely on a
//! model that is internally consistent.

mod certificate;
mod cluster;
mod consumer;
mod listener;
mod policy;
mod route;

pub use certificate::{Certificate, CertificateInfo};
pub use cluster::{
    CircuitBreakers, Cluster, Endpoint, HealthCheck, LbPolicy, MAX_ENDPOINT_WEIGHT, MAX_ENDPOINTS,
    MAX_TRUSTED_CA_BYTES, OutlierDetection, UpstreamTls,
};
pub use consumer::{ApiKeyHasher, Consumer, ConsumerSpec, MIN_API_KEY_LEN};
pub use listener::{AccessLog, Listener, ListenerTls};
pub use policy::{
    ApiKeyPolicy, AuthorizationPolicy, BodyConversion, BodyTransform, CONSUMER_NAME_HEADER,
    CONSUMER_TIER_HEADER, Cidr, CorsPolicy, IpFilterPolicy, JwksUri, JwtPolicy, KeyCase, KeyPart,
    MAX_JWKS_BYTES, MAX_KEY_PARTS, MAX_TIERS, MessageTransform, OnInvalidBody, PathRewrite, Policy,
    PolicyType, QuotaAlgorithm, QuotaFailureMode, QuotaLimit, QuotaMode, RateLimitPolicy,
    RequestTransform, TemplatePart, TokenSource, TransformPolicy, parse_template,
};
pub use route::{
    DirectResponse, HeaderMatch, HeaderMutations, MAX_DIRECT_RESPONSE_BODY, QueryMatch,
    RETRY_CONDITIONS, Redirect, Retries, Rewrite, Route, RouteMatch, WeightedCluster,
};

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of resource the store keeps.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// An upstream cluster.
    Cluster,
    /// A route.
    Route,
    /// A listener.
    Listener,
    /// A TLS certificate.
    Certificate,
    /// A consumer of the APIs.
    Consumer,
    /// A policy routes and listeners name.
    Policy,
}

impl ResourceKind {
    /// All kinds, in the order the store loads them.
    pub const ALL: [ResourceKind; 6] = [
        Self::Cluster,
        Self::Route,
        Self::Listener,
        Self::Certificate,
        Self::Consumer,
        Self::Policy,
    ];

    /// The singular name used in the store and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::Route => "route",
            Self::Listener => "listener",
            Self::Certificate => "certificate",
            Self::Consumer => "consumer",
            Self::Policy => "policy",
        }
    }

    /// Parses the singular name stored in the database.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named resource of any kind.
// Resources are few and short-lived (one write, one list); boxing the larger variant would only
// add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// An upstream cluster.
    Cluster(Cluster),
    /// A route.
    Route(Route),
    /// A listener.
    Listener(Listener),
    /// A TLS certificate.
    Certificate(Certificate),
    /// A consumer.
    Consumer(Consumer),
    /// A policy.
    Policy(Policy),
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Cluster(_) => ResourceKind::Cluster,
            Self::Route(_) => ResourceKind::Route,
            Self::Listener(_) => ResourceKind::Listener,
            Self::Certificate(_) => ResourceKind::Certificate,
            Self::Consumer(_) => ResourceKind::Consumer,
            Self::Policy(_) => ResourceKind::Policy,
        }
    }

    /// The resource's name, unique within its kind.
    pub fn name(&self) -> &str {
        match self {
            Self::Cluster(c) => &c.name,
            Self::Route(r) => &r.name,
            Self::Listener(l) => &l.name,
            Self::Certificate(c) => &c.name,
            Self::Consumer(c) => &c.name,
            Self::Policy(p) => p.name(),
        }
    }

    /// Checks the resource on its own (references to other resources are checked by
    /// [`check_references`]).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(self.name())?;
        match self {
            Self::Cluster(c) => c.validate(),
            Self::Route(r) => r.validate(),
            Self::Listener(l) => l.validate(),
            Self::Certificate(c) => c.validate(),
            Self::Consumer(c) => c.validate(),
            Self::Policy(p) => p.validate(),
        }
    }

    /// The resource as stored: its JSON document.
    pub fn to_json(&self) -> String {
        match self {
            Self::Cluster(c) => serde_json::to_string(c),
            Self::Route(r) => serde_json::to_string(r),
            Self::Listener(l) => serde_json::to_string(l),
            Self::Certificate(c) => serde_json::to_string(c),
            Self::Consumer(c) => serde_json::to_string(c),
            Self::Policy(p) => serde_json::to_string(p),
        }
        .expect("model types always serialize")
    }

    /// Reads a stored JSON document of the given kind.
    pub fn from_json(kind: ResourceKind, json: &str) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            ResourceKind::Cluster => Self::Cluster(serde_json::from_str(json)?),
            ResourceKind::Route => Self::Route(serde_json::from_str(json)?),
            ResourceKind::Listener => Self::Listener(serde_json::from_str(json)?),
            ResourceKind::Certificate => Self::Certificate(serde_json::from_str(json)?),
            ResourceKind::Consumer => Self::Consumer(serde_json::from_str(json)?),
            ResourceKind::Policy => Self::Policy(serde_json::from_str(json)?),
        })
    }

    /// The resource as it may be shown to people: private keys removed.
    pub fn redacted(&self) -> Resource {
        match self {
            Self::Certificate(c) => Self::Certificate(c.without_key()),
            Self::Consumer(c) => Self::Consumer(Consumer {
                api_key_hashes: None,
                ..c.clone()
            }),
            other => other.clone(),
        }
    }
}

/// A rejected resource: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the offending field, e.g. `endpoints[0].port`.
    pub field: String,
    /// What is wrong with it, in lowercase.
    pub message: String,
}

impl ValidationError {
    /// A validation error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, for errors found in a nested part.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// The longest resource name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Names address resources in URLs and become xDS resource names, so they are kept to a
/// conservative alphabet: no slashes, no dots-only names, nothing that needs escaping.
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    let err = |m: &str| Err(ValidationError::new("name", m));
    if name.is_empty() {
        return err("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return err(&format!("must be at most {MAX_NAME_LEN} characters"));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return err("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return err("may contain only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// A reference from one resource to another that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {field}: {message}")]
pub struct ReferenceError {
    /// Kind of the resource holding the reference.
    pub kind: ResourceKind,
    /// Name of the resource holding the reference.
    pub name: String,
    /// Field holding the reference, e.g. `weighted_clusters[1].cluster`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Confirms that every route names clusters and policies that exist, every listener
/// certificates and policies that exist, and that no two listeners would bind the same port on
/// the same proxies.
pub fn check_references(
    clusters: &BTreeMap<String, Cluster>,
    routes: &BTreeMap<String, Route>,
    listeners: &BTreeMap<String, Listener>,
    certificates: &BTreeMap<String, Certificate>,
    policies: &BTreeMap<String, Policy>,
) -> Result<(), ReferenceError> {
    let mut bound: Vec<&Listener> = Vec::new();
    for listener in listeners.values() {
        check_policy_refs(
            ResourceKind::Listener,
            &listener.name,
            &listener.policies,
            policies,
            None,
        )?;
        for (i, name) in listener
            .tls
            .iter()
            .flat_map(|t| &t.certificates)
            .enumerate()
        {
            if !certificates.contains_key(name) {
                return Err(ReferenceError {
                    kind: ResourceKind::Listener,
                    name: listener.name.clone(),
                    field: format!("tls.certificates[{i}]"),
                    message: format!("unknown certificate {name}"),
                });
            }
        }
        if let Some(other) = bound.iter().find(|o| listener.binds_same_as(o)) {
            return Err(ReferenceError {
                kind: ResourceKind::Listener,
                name: listener.name.clone(),
                field: "port".to_owned(),
                message: format!(
                    "{}:{} conflicts with listener {} on {}:{}",
                    listener.address, listener.port, other.name, other.address, other.port
                ),
            });
        }
        bound.push(listener);
    }
    for route in routes.values() {
        let own_path_rewrite = route
            .rewrite
            .as_ref()
            .is_some_and(|r| r.path_prefix.is_some() || r.path_regex.is_some());
        check_policy_refs(
            ResourceKind::Route,
            &route.name,
            &route.policies,
            policies,
            Some(own_path_rewrite),
        )?;
        for (field, cluster) in route.cluster_refs() {
            if !clusters.contains_key(cluster) {
                return Err(ReferenceError {
                    kind: ResourceKind::Route,
                    name: route.name.clone(),
                    field,
                    message: format!("unknown cluster {cluster}"),
                });
            }
        }
    }
    check_rate_limits(routes, listeners, policies)
}

/// Confirms that rate-limit policies can form their keys where they apply:
///
/// - a policy keyed on the API key, its consumer or tier (or with `tiers`) needs an API-key
///   policy in force on every route it applies to, and one keyed on a claim a JWT policy;
///   without one, no request would ever be counted. A route's policies apply on every
///   listener, together with the listener's own, so each pair is checked (none while there is
///   no listener, since nothing is served then).
/// - no key part reads a header an API-key or JWT policy takes credentials from: counter keys
///   are stored in clear text.
fn check_rate_limits(
    routes: &BTreeMap<String, Route>,
    listeners: &BTreeMap<String, Listener>,
    policies: &BTreeMap<String, Policy>,
) -> Result<(), ReferenceError> {
    let credential_headers: Vec<(&str, &str)> = policies
        .values()
        .flat_map(|p| match p {
            Policy::ApiKey(key) => vec![(key.name.as_str(), key.header.as_str())],
            Policy::Jwt(jwt) => jwt
                .token_from
                .iter()
                .filter_map(|s| s.header.as_deref())
                .chain(jwt.token_from.is_empty().then_some("authorization"))
                .map(|h| (jwt.name.as_str(), h))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    let mut needy = false;
    for policy in policies.values() {
        let Policy::RateLimit(limit) = policy else {
            continue;
        };
        needy |= limit.needs_api_key() || limit.needs_jwt();
        for (i, part) in limit.key_parts().iter().enumerate() {
            let KeyPart::Header(header) = part else {
                continue;
            };
            if let Some((owner, _)) = credential_headers.iter().find(|(_, h)| h == header) {
                return Err(ReferenceError {
                    kind: ResourceKind::Policy,
                    name: limit.name.clone(),
                    field: format!("key[{i}]"),
                    message: format!(
                        "policy {owner} reads credentials from {header}, which must not end up                          in counter keys; key on api_key or consumer instead"
                    ),
                });
            }
        }
    }
    if !needy {
        return Ok(());
    }
    for listener in listeners.values() {
        for route in routes.values() {
            let in_force = listener
                .policies
                .iter()
                .map(|n| (ResourceKind::Listener, n))
                .enumerate()
                .chain(
                    route
                        .policies
                        .iter()
                        .map(|n| (ResourceKind::Route, n))
                        .enumerate(),
                );
            let found = |ty: PolicyType| {
                listener
                    .policies
                    .iter()
                    .chain(&route.policies)
                    .any(|n| policies.get(n).is_some_and(|p| p.policy_type() == ty))
            };
            let (has_api_key, has_jwt) = (found(PolicyType::ApiKey), found(PolicyType::Jwt));
            for (i, (kind, name)) in in_force {
                let Some(Policy::RateLimit(limit)) = policies.get(name) else {
                    continue;
                };
                let missing = if limit.needs_api_key() && !has_api_key {
                    "api_key"
                } else if limit.needs_jwt() && !has_jwt {
                    "jwt"
                } else {
                    continue;
                };
                let (holder, other) = match kind {
                    ResourceKind::Listener => (&listener.name, format!("route {}", route.name)),
                    _ => (&route.name, format!("listener {}", listener.name)),
                };
                return Err(ReferenceError {
                    kind,
                    name: holder.clone(),
                    field: format!("policies[{i}]"),
                    message: format!(
                        "rate_limit policy {name} counts by what a {missing} policy finds, but                          no {missing} policy applies with {other}: no request would be counted"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Confirms that a `policies[]` list names policies that exist, at most one CORS policy, and
/// at most one path rewrite: none on a listener (`route_rewrites_path` is `None`), none from a
/// policy on a route that rewrites its path itself.
fn check_policy_refs(
    kind: ResourceKind,
    name: &str,
    names: &[String],
    policies: &BTreeMap<String, Policy>,
    route_rewrites_path: Option<bool>,
) -> Result<(), ReferenceError> {
    let mut cors: Option<&str> = None;
    let mut path_rewrite: Option<&str> = None;
    for (i, policy_name) in names.iter().enumerate() {
        let error = |message: String| ReferenceError {
            kind,
            name: name.to_owned(),
            field: format!("policies[{i}]"),
            message,
        };
        let Some(policy) = policies.get(policy_name) else {
            return Err(error(format!("unknown policy {policy_name}")));
        };
        if policy.policy_type() == PolicyType::Cors {
            if let Some(first) = cors {
                return Err(error(format!(
                    "only one cors policy applies: {first} is already listed"
                )));
            }
            cors = Some(policy_name);
        }
        if let Policy::Transform(transform) = policy
            && transform.request.as_ref().is_some_and(|r| r.path.is_some())
        {
            match (route_rewrites_path, path_rewrite) {
                (None, _) => {
                    return Err(error(
                        "a transform that rewrites the path applies to routes, not listeners"
                            .to_owned(),
                    ));
                }
                (Some(true), _) => {
                    return Err(error(
                        "the route rewrites its path itself (rewrite); one rewrite only".to_owned(),
                    ));
                }
                (Some(false), Some(first)) => {
                    return Err(error(format!(
                        "only one path rewrite applies: {first} already rewrites the path"
                    )));
                }
                (Some(false), None) => path_rewrite = Some(policy_name),
            }
        }
    }
    Ok(())
}

/// Confirms that no API key belongs to two consumers: a presented key must identify one.
pub fn check_unique_api_keys(consumers: &BTreeMap<String, Consumer>) -> Result<(), ReferenceError> {
    let mut owners: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for consumer in consumers.values() {
        for (i, hash) in consumer.api_key_hashes.iter().flatten().enumerate() {
            if let Some(owner) = owners.insert(hash, &consumer.name) {
                return Err(ReferenceError {
                    kind: ResourceKind::Consumer,
                    name: consumer.name.clone(),
                    field: format!("api_keys[{i}]"),
                    message: format!("this API key already belongs to consumer {owner}"),
                });
            }
        }
    }
    Ok(())
}

/// Validates a regular expression the way the proxies will compile it.
///
/// Envoy uses RE2 and the edge proxy the `regex` crate; both reject backreferences and
/// look-around, so a regex this accepts is accepted by both syntaxes.
pub(crate) fn validate_regex(field: &str, pattern: &str) -> Result<(), ValidationError> {
    if pattern.is_empty() {
        return Err(ValidationError::new(field, "regex must not be empty"));
    }
    if pattern.len() > 1024 {
        return Err(ValidationError::new(
            field,
            "regex must be at most 1024 characters",
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| ValidationError::new(field, format!("invalid regex: {e}")))
}

#[cfg(test)]
mod tests;
