//! Routes: which requests go where, and what happens to them on the way.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{ValidationError, validate_regex};

/// A request matcher and the action taken for requests it matches.
///
/// Exactly one action is set: `cluster`, `weighted_clusters`, `redirect` or `direct_response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Which requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Send matched requests to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Split matched requests over clusters by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    /// Answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Answer directly, without an upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Rewrite the path or host before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Whole-request timeout in milliseconds; 0 disables it. Envoy's default (15 s) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Headers changed on the request before it is forwarded.
    #[serde(default, skip_serializing_if = "HeaderMutations::is_empty")]
    pub request_headers: HeaderMutations,
    /// Headers changed on the response before it is returned.
    #[serde(default, skip_serializing_if = "HeaderMutations::is_empty")]
    pub response_headers: HeaderMutations,
    /// Higher priorities are matched first; see [`Route::order_key`] for ties.
    #[serde(default)]
    pub priority: i32,
    /// Policies enforced on this route (names), after the listener's, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// What a request must look like for a route to take it. All given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Host names (exact, `*.suffix` or `prefix.*`); any host when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Path is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// Whole path matches this regex (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// HTTP methods; any method when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryMatch>,
}

/// A condition on one request header. Exactly one of `exact`, `prefix`, `regex`, `present`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name, case-insensitive.
    pub name: String,
    /// Value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Value matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Header is present (true) or absent (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Negate the condition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// A condition on one query parameter. Exactly one of `exact`, `regex`, `present`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// Value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Parameter is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// One target of a weighted split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// Cluster name.
    pub cluster: String,
    /// Relative weight; weights need not add up to 100.
    pub weight: u32,
}

/// An HTTP redirect answered by the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// New scheme (`http` or `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// New path (the query is kept unless `strip_query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Replace the matched prefix with this (only with `match.path_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Status code: 301 (default), 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// Drop the query string.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_query: bool,
}

fn default_redirect_status() -> u16 {
    301
}

/// A response produced by the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// Status code, 200 to 599.
    pub status: u16,
    /// Body, at most 4 KiB (Envoy's limit for inline bodies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Path and host rewrites applied before forwarding. `path_prefix` and `path_regex` exclude
/// each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replace the matched `match.path_prefix` with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Rewrite the path with this regex …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// … replacing matches with this (`\1` refers to groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_substitution: Option<String>,
    /// Replace the Host header with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Retry policy, in Envoy's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt, 1 to 10.
    pub attempts: u32,
    /// Conditions: `5xx`, `gateway-error`, `reset`, `connect-failure`, `retriable-4xx`,
    /// `refused-stream`.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// Timeout of each attempt in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u32>,
    /// Also retry requests with non-idempotent methods (`POST`, `PATCH`, …). Off by default:
    /// only `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE` and `TRACE` are retried, since sending
    /// anything else twice may do its work twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
}

/// The methods RFC 9110 (section 9.2.2) calls idempotent: the only ones retried unless
/// [`Retries::non_idempotent`] is set.
const IDEMPOTENT_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

fn default_retry_on() -> Vec<String> {
    vec!["5xx".to_owned(), "connect-failure".to_owned()]
}

/// The retry conditions accepted in [`Retries::retry_on`].
pub const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
];

/// Header changes: `set` replaces, `add` appends, `remove` deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutations {
    /// Headers set, replacing any existing value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers appended to any existing values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderMutations {
    /// Whether nothing is changed.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Upper bound on a direct response body, as Envoy's default `max_direct_response_body_size_bytes`.
pub const MAX_DIRECT_RESPONSE_BODY: usize = 4096;

impl Route {
    /// Whether the route forwards requests to a cluster (rather than redirecting them or
    /// answering them itself).
    pub fn forwards(&self) -> bool {
        self.redirect.is_none() && self.direct_response.is_none()
    }

    /// Every cluster this route sends traffic to, with the field that names it.
    pub fn cluster_refs(&self) -> impl Iterator<Item = (String, &str)> {
        let single = self.cluster.as_deref().map(|c| ("cluster".to_owned(), c));
        let weighted = self
            .weighted_clusters
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, w)| {
                (
                    format!("weighted_clusters[{i}].cluster"),
                    w.cluster.as_str(),
                )
            });
        single.into_iter().chain(weighted)
    }

    /// The key routes are ordered by within a virtual host (first match wins):
    /// 1. higher `priority` first;
    /// 2. then exact paths, then regexes, then prefixes; among prefixes, longer first;
    /// 3. then, among equal paths, more conditions first: naming hosts counts as one, as do
    ///    methods, and each header and query condition;
    /// 4. then a route naming hosts before one that applies to any host (routes without hosts
    ///    join every virtual host, where the route naming that host is the more specific);
    /// 5. then by name, so the order never depends on insertion.
    pub fn order_key(&self) -> impl Ord + '_ {
        use std::cmp::Reverse;
        let m = &self.matcher;
        let (class, len) = if let Some(p) = &m.path_exact {
            (0u8, p.len())
        } else if let Some(r) = &m.path_regex {
            (1, r.len())
        } else {
            (2, m.path_prefix.as_deref().map_or(0, str::len))
        };
        let any_host = m.hosts.is_empty();
        let conditions = usize::from(!any_host)
            + usize::from(!m.methods.is_empty())
            + m.headers.len()
            + m.query.len();
        (
            Reverse(self.priority),
            class,
            Reverse(len),
            Reverse(conditions),
            any_host,
            &self.name,
        )
    }

    pub(super) fn validate(&self) -> Result<(), ValidationError> {
        self.matcher.validate().map_err(|e| e.within("match"))?;
        super::policy::validate_policy_names(&self.policies)?;
        let actions = [
            self.cluster.is_some(),
            self.weighted_clusters.is_some(),
            self.redirect.is_some(),
            self.direct_response.is_some(),
        ];
        match actions.iter().filter(|a| **a).count() {
            0 => {
                return Err(ValidationError::new(
                    "cluster",
                    "one of cluster, weighted_clusters, redirect or direct_response is required",
                ));
            }
            1 => {}
            _ => {
                return Err(ValidationError::new(
                    "cluster",
                    "only one of cluster, weighted_clusters, redirect or direct_response may be set",
                ));
            }
        }
        if let Some(cluster) = &self.cluster {
            super::validate_name(cluster)
                .map_err(|e| ValidationError::new("cluster", e.message))?;
        }
        if let Some(weighted) = &self.weighted_clusters {
            validate_weighted(weighted).map_err(|e| e.within("weighted_clusters"))?;
        }
        if let Some(redirect) = &self.redirect {
            redirect
                .validate(self.matcher.path_prefix.is_some())
                .map_err(|e| e.within("redirect"))?;
        }
        if let Some(direct) = &self.direct_response {
            direct.validate().map_err(|e| e.within("direct_response"))?;
        }
        let forwards = self.cluster.is_some() || self.weighted_clusters.is_some();
        if let Some(rewrite) = &self.rewrite {
            if !forwards {
                return Err(ValidationError::new(
                    "rewrite",
                    "only applies to routes that forward to a cluster",
                ));
            }
            rewrite
                .validate(self.matcher.path_prefix.is_some())
                .map_err(|e| e.within("rewrite"))?;
        }
        if let Some(timeout) = self.timeout_ms {
            if timeout > 3_600_000 {
                return Err(ValidationError::new(
                    "timeout_ms",
                    "must be at most 3600000 (one hour)",
                ));
            }
            if !forwards {
                return Err(ValidationError::new(
                    "timeout_ms",
                    "only applies to routes that forward to a cluster",
                ));
            }
        }
        if let Some(retries) = &self.retries {
            if !forwards {
                return Err(ValidationError::new(
                    "retries",
                    "only applies to routes that forward to a cluster",
                ));
            }
            retries.validate().map_err(|e| e.within("retries"))?;
        }
        self.request_headers
            .validate()
            .map_err(|e| e.within("request_headers"))?;
        self.response_headers
            .validate()
            .map_err(|e| e.within("response_headers"))?;
        Ok(())
    }
}

impl RouteMatch {
    fn validate(&self) -> Result<(), ValidationError> {
        let mut hosts = HashSet::new();
        for (i, host) in self.hosts.iter().enumerate() {
            validate_host_pattern(host)
                .map_err(|m| ValidationError::new(format!("hosts[{i}]"), m))?;
            if !hosts.insert(host.to_ascii_lowercase()) {
                return Err(ValidationError::new(
                    format!("hosts[{i}]"),
                    format!("duplicate host {host}"),
                ));
            }
        }
        let paths = [
            self.path_prefix.is_some(),
            self.path_exact.is_some(),
            self.path_regex.is_some(),
        ];
        if paths.iter().filter(|p| **p).count() > 1 {
            return Err(ValidationError::new(
                "path_prefix",
                "only one of path_prefix, path_exact or path_regex may be set",
            ));
        }
        for (field, path) in [
            ("path_prefix", &self.path_prefix),
            ("path_exact", &self.path_exact),
        ] {
            if let Some(path) = path {
                validate_path(path).map_err(|m| ValidationError::new(field, m))?;
            }
        }
        if let Some(regex) = &self.path_regex {
            validate_regex("path_regex", regex)?;
        }
        let mut methods = HashSet::new();
        for (i, method) in self.methods.iter().enumerate() {
            let field = format!("methods[{i}]");
            if method.is_empty()
                || method.len() > 32
                || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
            {
                return Err(ValidationError::new(
                    field,
                    format!("{method:?} is not an upper-case HTTP method"),
                ));
            }
            if !methods.insert(method) {
                return Err(ValidationError::new(
                    field,
                    format!("duplicate method {method}"),
                ));
            }
        }
        for (i, header) in self.headers.iter().enumerate() {
            header
                .validate()
                .map_err(|e| e.within(&format!("headers[{i}]")))?;
        }
        for (i, query) in self.query.iter().enumerate() {
            query
                .validate()
                .map_err(|e| e.within(&format!("query[{i}]")))?;
        }
        Ok(())
    }
}

impl HeaderMatch {
    fn validate(&self) -> Result<(), ValidationError> {
        validate_header_name(&self.name).map_err(|m| ValidationError::new("name", m))?;
        let given = [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
            self.present.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(ValidationError::new(
                "exact",
                "exactly one of exact, prefix, regex or present is required",
            ));
        }
        if let Some(prefix) = &self.prefix
            && prefix.is_empty()
        {
            return Err(ValidationError::new("prefix", "must not be empty"));
        }
        if let Some(regex) = &self.regex {
            validate_regex("regex", regex)?;
        }
        Ok(())
    }
}

impl QueryMatch {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.name.is_empty() || self.name.len() > 256 {
            return Err(ValidationError::new("name", "must be 1 to 256 characters"));
        }
        let given = [
            self.exact.is_some(),
            self.regex.is_some(),
            self.present.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(ValidationError::new(
                "exact",
                "exactly one of exact, regex or present is required",
            ));
        }
        if self.present == Some(false) {
            return Err(ValidationError::new(
                "present",
                "only `present: true` is supported (Envoy cannot match an absent parameter)",
            ));
        }
        if let Some(regex) = &self.regex {
            validate_regex("regex", regex)?;
        }
        Ok(())
    }
}

fn validate_weighted(weighted: &[WeightedCluster]) -> Result<(), ValidationError> {
    if weighted.is_empty() {
        return Err(ValidationError::new("", "must name at least one cluster"));
    }
    let mut seen = HashSet::new();
    let mut total: u64 = 0;
    for (i, w) in weighted.iter().enumerate() {
        super::validate_name(&w.cluster)
            .map_err(|e| ValidationError::new(format!("[{i}].cluster"), e.message))?;
        if !seen.insert(&w.cluster) {
            return Err(ValidationError::new(
                format!("[{i}].cluster"),
                format!("duplicate cluster {}", w.cluster),
            ));
        }
        if w.weight > 10_000 {
            return Err(ValidationError::new(
                format!("[{i}].weight"),
                "must be between 0 and 10000",
            ));
        }
        total += u64::from(w.weight);
    }
    if total == 0 {
        return Err(ValidationError::new("", "weights must not all be zero"));
    }
    Ok(())
}

impl Redirect {
    fn validate(&self, has_prefix_match: bool) -> Result<(), ValidationError> {
        if !matches!(self.status, 301 | 302 | 303 | 307 | 308) {
            return Err(ValidationError::new(
                "status",
                "must be one of 301, 302, 303, 307, 308",
            ));
        }
        if let Some(scheme) = &self.scheme
            && scheme != "http"
            && scheme != "https"
        {
            return Err(ValidationError::new("scheme", "must be http or https"));
        }
        if let Some(host) = &self.host
            && !super::cluster::is_dns_name(host)
            && host.parse::<std::net::IpAddr>().is_err()
        {
            return Err(ValidationError::new(
                "host",
                format!("{host:?} is not a host name"),
            ));
        }
        if self.port == Some(0) {
            return Err(ValidationError::new("port", "must be between 1 and 65535"));
        }
        if self.path.is_some() && self.prefix_rewrite.is_some() {
            return Err(ValidationError::new(
                "path",
                "only one of path or prefix_rewrite may be set",
            ));
        }
        if let Some(path) = &self.path {
            validate_path(path).map_err(|m| ValidationError::new("path", m))?;
        }
        if let Some(prefix) = &self.prefix_rewrite {
            if !has_prefix_match {
                return Err(ValidationError::new(
                    "prefix_rewrite",
                    "requires match.path_prefix",
                ));
            }
            validate_path(prefix).map_err(|m| ValidationError::new("prefix_rewrite", m))?;
        }
        Ok(())
    }
}

impl DirectResponse {
    fn validate(&self) -> Result<(), ValidationError> {
        if !(200..=599).contains(&self.status) {
            return Err(ValidationError::new(
                "status",
                "must be between 200 and 599",
            ));
        }
        if self
            .body
            .as_ref()
            .is_some_and(|b| b.len() > MAX_DIRECT_RESPONSE_BODY)
        {
            return Err(ValidationError::new(
                "body",
                format!("must be at most {MAX_DIRECT_RESPONSE_BODY} bytes"),
            ));
        }
        Ok(())
    }
}

impl Rewrite {
    fn validate(&self, has_prefix_match: bool) -> Result<(), ValidationError> {
        if self.path_prefix.is_some() && self.path_regex.is_some() {
            return Err(ValidationError::new(
                "path_prefix",
                "only one of path_prefix or path_regex may be set",
            ));
        }
        if let Some(prefix) = &self.path_prefix {
            if !has_prefix_match {
                return Err(ValidationError::new(
                    "path_prefix",
                    "requires match.path_prefix",
                ));
            }
            validate_path(prefix).map_err(|m| ValidationError::new("path_prefix", m))?;
        }
        match (&self.path_regex, &self.path_substitution) {
            (Some(regex), Some(_)) => validate_regex("path_regex", regex)?,
            (Some(_), None) => {
                return Err(ValidationError::new(
                    "path_substitution",
                    "is required with path_regex",
                ));
            }
            (None, Some(_)) => {
                return Err(ValidationError::new(
                    "path_regex",
                    "is required with path_substitution",
                ));
            }
            (None, None) => {}
        }
        if let Some(host) = &self.host
            && !super::cluster::is_dns_name(host.split(':').next().unwrap_or_default())
        {
            return Err(ValidationError::new(
                "host",
                format!("{host:?} is not a host name"),
            ));
        }
        Ok(())
    }
}

impl Retries {
    /// The methods whose requests may be retried, or `None` when any method may be.
    pub fn retried_methods(&self) -> Option<&'static [&'static str]> {
        (!self.non_idempotent).then_some(IDEMPOTENT_METHODS)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.attempts == 0 || self.attempts > 10 {
            return Err(ValidationError::new("attempts", "must be between 1 and 10"));
        }
        if self.retry_on.is_empty() {
            return Err(ValidationError::new(
                "retry_on",
                "must name at least one condition",
            ));
        }
        for (i, condition) in self.retry_on.iter().enumerate() {
            if !RETRY_CONDITIONS.contains(&condition.as_str()) {
                return Err(ValidationError::new(
                    format!("retry_on[{i}]"),
                    format!(
                        "unknown condition {condition:?}; expected one of {}",
                        RETRY_CONDITIONS.join(", ")
                    ),
                ));
            }
        }
        if self.per_try_timeout_ms == Some(0) {
            return Err(ValidationError::new(
                "per_try_timeout_ms",
                "must be positive",
            ));
        }
        Ok(())
    }
}

impl HeaderMutations {
    fn validate(&self) -> Result<(), ValidationError> {
        for (field, map) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in map {
                validate_header_name(name)
                    .map_err(|m| ValidationError::new(format!("{field}.{name}"), m))?;
                validate_mutable_header(name)
                    .map_err(|m| ValidationError::new(format!("{field}.{name}"), m))?;
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(ValidationError::new(
                        format!("{field}.{name}"),
                        "value must not contain CR, LF or NUL",
                    ));
                }
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            validate_header_name(name)
                .map_err(|m| ValidationError::new(format!("remove[{i}]"), m))?;
            validate_mutable_header(name)
                .map_err(|m| ValidationError::new(format!("remove[{i}]"), m))?;
        }
        Ok(())
    }
}

fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".to_owned());
    }
    if path.len() > 2048 {
        return Err("must be at most 2048 characters".to_owned());
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'#' || b == b'?')
    {
        return Err("must not contain spaces, control characters, '?' or '#'".to_owned());
    }
    Ok(())
}

pub(super) fn validate_header_name(name: &str) -> Result<(), String> {
    // RFC 9110 token characters; lower case, as HTTP/2 requires.
    let valid = !name.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a lower-case HTTP header name"))
    }
}

/// Pseudo-headers and `host` cannot be mutated through header lists (Envoy rejects it too);
/// the host has `rewrite.host`.
pub(super) fn validate_mutable_header(name: &str) -> Result<(), String> {
    if name == "host" || name.starts_with(':') {
        Err(format!("{name} cannot be modified this way"))
    } else {
        Ok(())
    }
}

/// Host patterns as Envoy's virtual host `domains` accept them. Ports are not part of a
/// pattern: the proxies ignore the port of the Host header when matching, as Kong and nginx do.
fn validate_host_pattern(host: &str) -> Result<(), String> {
    if host == "*" {
        return Err("use an empty hosts list to match any host".to_owned());
    }
    if host.contains(':') {
        return Err(format!(
            "{host:?} must not include a port (ports are ignored when matching hosts)"
        ));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{host:?} must be lower case"));
    }
    let bare = host
        .strip_prefix("*.")
        .or_else(|| host.strip_suffix(".*"))
        .unwrap_or(host);
    if !super::cluster::is_dns_name(bare) {
        return Err(format!(
            "{host:?} is not a host name, `*.suffix` or `prefix.*` pattern"
        ));
    }
    Ok(())
}
