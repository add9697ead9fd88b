//! Policies: what the proxies enforce on a request before it reaches the upstream (CORS, JWT
//! authentication…), attached to routes or to listeners for all their routes.
//!
//! A policy is declared once and named by routes and listeners (`policies[]`); the translator
//! turns the policies in force on each route into Envoy's own filter configs, which Envoy and
//! the edge proxy both obey.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ValidationError;
use super::route::HeaderMutations;

/// A named policy; its `type` says which fields it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Policy {
    /// Requests must carry a JWT signed by the issuer's keys.
    Jwt(JwtPolicy),
    /// Cross-origin resource sharing: which browser origins may call the route.
    Cors(CorsPolicy),
    /// Requests must carry the API key of a consumer.
    ApiKey(ApiKeyPolicy),
    /// Who may call the route, once authenticated: claims, scopes, consumers.
    Authorization(AuthorizationPolicy),
    /// Which client addresses may call the route.
    IpFilter(IpFilterPolicy),
    /// Changes to the request and the response: headers from claims, the consumer or the
    /// request; the path; JSON and XML bodies (edge proxies).
    Transform(TransformPolicy),
    /// A quota: how many requests per window each API key, consumer, client address… may make.
    RateLimit(RateLimitPolicy),
}

/// The kinds of policy, as named in `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyType {
    /// [`JwtPolicy`].
    Jwt,
    /// [`CorsPolicy`].
    Cors,
    /// [`ApiKeyPolicy`].
    ApiKey,
    /// [`AuthorizationPolicy`].
    Authorization,
    /// [`IpFilterPolicy`].
    IpFilter,
    /// [`TransformPolicy`].
    Transform,
    /// [`RateLimitPolicy`].
    RateLimit,
}

impl PolicyType {
    /// The name used in `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Cors => "cors",
            Self::ApiKey => "api_key",
            Self::Authorization => "authorization",
            Self::IpFilter => "ip_filter",
            Self::Transform => "transform",
            Self::RateLimit => "rate_limit",
        }
    }
}

impl Policy {
    /// The policy's unique name.
    pub fn name(&self) -> &str {
        match self {
            Self::Jwt(p) => &p.name,
            Self::Cors(p) => &p.name,
            Self::ApiKey(p) => &p.name,
            Self::Authorization(p) => &p.name,
            Self::IpFilter(p) => &p.name,
            Self::Transform(p) => &p.name,
            Self::RateLimit(p) => &p.name,
        }
    }

    /// Sets the name (from the URL, on a PUT).
    pub fn set_name(&mut self, name: String) {
        match self {
            Self::Jwt(p) => p.name = name,
            Self::Cors(p) => p.name = name,
            Self::ApiKey(p) => p.name = name,
            Self::Authorization(p) => p.name = name,
            Self::IpFilter(p) => p.name = name,
            Self::Transform(p) => p.name = name,
            Self::RateLimit(p) => p.name = name,
        }
    }

    /// The policy's type.
    pub fn policy_type(&self) -> PolicyType {
        match self {
            Self::Jwt(_) => PolicyType::Jwt,
            Self::Cors(_) => PolicyType::Cors,
            Self::ApiKey(_) => PolicyType::ApiKey,
            Self::Authorization(_) => PolicyType::Authorization,
            Self::IpFilter(_) => PolicyType::IpFilter,
            Self::Transform(_) => PolicyType::Transform,
            Self::RateLimit(_) => PolicyType::RateLimit,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Self::Jwt(p) => p.validate(),
            Self::Cors(p) => p.validate(),
            Self::ApiKey(p) => p.validate(),
            Self::Authorization(p) => p.validate(),
            Self::IpFilter(p) => p.validate(),
            Self::Transform(p) => p.validate(),
            Self::RateLimit(p) => p.validate(),
        }
    }
}

/// JWT authentication, as Envoy's `jwt_authn` provider: a token is taken from the request,
/// its signature checked against the issuer's keys (JWKS), then its issuer, audience and
/// validity period. A route with several JWT policies accepts a token valid for any of them.
///
/// Failures answer 401 with `WWW-Authenticate: Bearer …` and never reach the upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtPolicy {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// The `iss` claim tokens must carry.
    pub issuer: String,
    /// Tokens must carry one of these in `aud`; any audience when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys (JWKS), `http://` or `https://`. Fetched by the
    /// proxies, cached for `jwks_cache_duration_s`. Exactly one of `jwks_uri` and `jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The issuer's keys inline, as a JWKS document (`{"keys": [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// PEM bundle of the CA certificates an `https` `jwks_uri` must chain to (required then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_trusted_ca: Option<String>,
    /// How long fetched keys are kept, in seconds (default 600).
    #[serde(default = "default_jwks_cache_duration_s")]
    #[schema(default = 600, minimum = 1, maximum = 86400)]
    pub jwks_cache_duration_s: u32,
    /// Leeway for `exp` and `nbf`, in seconds (default 60).
    #[serde(default = "default_clock_skew_s")]
    #[schema(default = 60, maximum = 600)]
    pub clock_skew_s: u32,
    /// Where the token is looked for, in order. Default: `Authorization: Bearer <token>`, then
    /// the `access_token` query parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_from: Vec<TokenSource>,
    /// Claims copied to request headers for the upstream: claim name (nested claims as
    /// `a.b`) → header name. Client-sent values of these headers are replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Pass the token on to the upstream; by default it is removed from the request.
    #[serde(default)]
    pub forward_token: bool,
    /// Let requests without a token through (a token that is present must still be valid).
    #[serde(default)]
    pub optional: bool,
}

fn default_jwks_cache_duration_s() -> u32 {
    600
}

fn default_clock_skew_s() -> u32 {
    60
}

/// Where a token is looked for: exactly one of `header`, `query` and `cookie`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// A request header (lower case), e.g. `authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// With `header`: the text before the token, e.g. `Bearer `.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// The largest inline JWKS accepted, serialized.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

impl JwtPolicy {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.issuer.is_empty() || self.issuer.len() > 1024 {
            return Err(ValidationError::new(
                "issuer",
                "must be 1 to 1024 characters",
            ));
        }
        for (i, audience) in self.audiences.iter().enumerate() {
            if audience.is_empty() || audience.len() > 1024 {
                return Err(ValidationError::new(
                    format!("audiences[{i}]"),
                    "must be 1 to 1024 characters",
                ));
            }
        }
        match (&self.jwks_uri, &self.jwks) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "jwks",
                    "give either jwks_uri or jwks, not both",
                ));
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "jwks_uri",
                    "one of jwks_uri and jwks is required",
                ));
            }
            (Some(uri), None) => {
                let uri = JwksUri::parse(uri).map_err(|m| ValidationError::new("jwks_uri", m))?;
                match (uri.tls, &self.jwks_trusted_ca) {
                    (true, None) => {
                        return Err(ValidationError::new(
                            "jwks_trusted_ca",
                            "an https jwks_uri needs the CA bundle its certificate chains to",
                        ));
                    }
                    (false, Some(_)) => {
                        return Err(ValidationError::new(
                            "jwks_trusted_ca",
                            "only applies to an https jwks_uri",
                        ));
                    }
                    (true, Some(pem)) => {
                        super::cluster::validate_ca_bundle(pem)
                            .map_err(|m| ValidationError::new("jwks_trusted_ca", m))?;
                    }
                    (false, None) => {}
                }
            }
            (None, Some(jwks)) => {
                if self.jwks_trusted_ca.is_some() {
                    return Err(ValidationError::new(
                        "jwks_trusted_ca",
                        "only applies to an https jwks_uri",
                    ));
                }
                validate_jwks(jwks).map_err(|m| ValidationError::new("jwks", m))?;
            }
        }
        if !(1..=86_400).contains(&self.jwks_cache_duration_s) {
            return Err(ValidationError::new(
                "jwks_cache_duration_s",
                "must be between 1 and 86400",
            ));
        }
        if self.clock_skew_s > 600 {
            return Err(ValidationError::new("clock_skew_s", "must be at most 600"));
        }
        for (i, source) in self.token_from.iter().enumerate() {
            source
                .validate()
                .map_err(|e| e.within(&format!("token_from[{i}]")))?;
        }
        let mut headers = std::collections::HashSet::new();
        for (claim, header) in &self.claims_to_headers {
            let field = format!("claims_to_headers.{claim}");
            if claim.is_empty() || claim.len() > 256 || claim.split('.').any(str::is_empty) {
                return Err(ValidationError::new(
                    field,
                    "claim names are 1 to 256 characters, nested ones as a.b",
                ));
            }
            super::route::validate_header_name(header)
                .and_then(|()| super::route::validate_mutable_header(header))
                .map_err(|m| ValidationError::new(&field, m))?;
            if !headers.insert(header) {
                return Err(ValidationError::new(
                    field,
                    format!("header {header} is already filled from another claim"),
                ));
            }
        }
        Ok(())
    }

    /// The JWKS URI, parsed; `None` for inline keys. Valid after validation.
    pub fn jwks_uri(&self) -> Option<JwksUri> {
        self.jwks_uri
            .as_deref()
            .and_then(|u| JwksUri::parse(u).ok())
    }
}

impl TokenSource {
    fn validate(&self) -> Result<(), ValidationError> {
        let set = [
            self.header.is_some(),
            self.query.is_some(),
            self.cookie.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(ValidationError::new(
                "",
                "give exactly one of header, query and cookie",
            ));
        }
        if self.prefix.is_some() && self.header.is_none() {
            return Err(ValidationError::new("prefix", "only applies to a header"));
        }
        if let Some(header) = &self.header {
            super::route::validate_header_name(header)
                .map_err(|m| ValidationError::new("header", m))?;
        }
        if let Some(prefix) = &self.prefix
            && (prefix.len() > 64 || prefix.chars().any(char::is_control))
        {
            return Err(ValidationError::new(
                "prefix",
                "must be at most 64 characters, without control characters",
            ));
        }
        for (field, value) in [("query", &self.query), ("cookie", &self.cookie)] {
            if let Some(value) = value
                && (value.is_empty()
                    || value.len() > 256
                    || !value.bytes().all(|b| b.is_ascii_graphic())
                    || value.contains(['=', '&', ';', ',', '"']))
            {
                return Err(ValidationError::new(
                    field,
                    "must be 1 to 256 printable characters, without = & ; , or \"",
                ));
            }
        }
        Ok(())
    }
}

/// A parsed `jwks_uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUri {
    /// Whether it is `https`.
    pub tls: bool,
    /// The host: a DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The port, defaulted from the scheme.
    pub port: u16,
}

impl JwksUri {
    fn parse(uri: &str) -> Result<JwksUri, String> {
        if uri.len() > 2048 {
            return Err("must be at most 2048 characters".to_owned());
        }
        let parsed: http::Uri = uri
            .parse()
            .map_err(|e| format!("{uri:?} is not a URL: {e}"))?;
        let tls = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{uri:?} must be an http:// or https:// URL")),
        };
        let authority = parsed
            .authority()
            .ok_or_else(|| format!("{uri:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{uri:?} must not carry credentials"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_err() && !super::cluster::is_dns_name(host) {
            return Err(format!("{host:?} is not a host name or an IP address"));
        }
        let port = match authority.port_u16() {
            Some(0) => return Err("port must be between 1 and 65535".to_owned()),
            Some(port) => port,
            None if tls => 443,
            None => 80,
        };
        Ok(JwksUri {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

/// A JWKS document: `{"keys": [...]}` with at least one key naming its `kty`.
fn validate_jwks(jwks: &serde_json::Value) -> Result<(), String> {
    if jwks.to_string().len() > MAX_JWKS_BYTES {
        return Err(format!("must be at most {} KiB", MAX_JWKS_BYTES / 1024));
    }
    let keys = jwks
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("must be a JWKS document: {\"keys\": [...]}")?;
    if keys.is_empty() {
        return Err("must hold at least one key".to_owned());
    }
    for (i, key) in keys.iter().enumerate() {
        match key.get("kty").and_then(serde_json::Value::as_str) {
            Some("RSA" | "EC" | "OKP" | "oct") => {}
            _ => {
                return Err(format!(
                    "keys[{i}]: kty must be one of RSA, EC, OKP and oct"
                ));
            }
        }
        if key.get("d").is_some() {
            return Err(format!(
                "keys[{i}]: is a private key; publish only public keys"
            ));
        }
    }
    Ok(())
}

/// Cross-origin resource sharing, with Envoy's `CorsPolicy` semantics: the proxy answers
/// preflight requests itself and adds the `Access-Control-*` headers to responses for allowed
/// origins. A route has at most one CORS policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsPolicy {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Origins allowed, exactly as browsers send them (`https://app.example.com`); `*` for
    /// any origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<String>,
    /// Origins allowed, as regular expressions matched against the whole origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin_regexes: Vec<String>,
    /// Methods allowed (`access-control-allow-methods`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed (`access-control-allow-headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers browsers may read (`access-control-expose-headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long browsers may cache a preflight answer, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 86400)]
    pub max_age_s: Option<u32>,
    /// Whether browsers may send credentials (cookies, `Authorization`).
    #[serde(default)]
    pub allow_credentials: bool,
}

impl CorsPolicy {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.allow_origins.is_empty() && self.allow_origin_regexes.is_empty() {
            return Err(ValidationError::new(
                "allow_origins",
                "give at least one origin or origin regex",
            ));
        }
        for (i, origin) in self.allow_origins.iter().enumerate() {
            if origin != "*" && !is_origin(origin) {
                return Err(ValidationError::new(
                    format!("allow_origins[{i}]"),
                    format!("{origin:?} is not an origin (scheme://host[:port]) or *"),
                ));
            }
        }
        for (i, regex) in self.allow_origin_regexes.iter().enumerate() {
            super::validate_regex(&format!("allow_origin_regexes[{i}]"), regex)?;
        }
        for (i, method) in self.allow_methods.iter().enumerate() {
            if method.is_empty()
                || method.len() > 32
                || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
            {
                return Err(ValidationError::new(
                    format!("allow_methods[{i}]"),
                    format!("{method:?} is not an upper-case method name"),
                ));
            }
        }
        for (field, names) in [
            ("allow_headers", &self.allow_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            for (i, name) in names.iter().enumerate() {
                if name != "*" {
                    super::route::validate_header_name(name)
                        .map_err(|m| ValidationError::new(format!("{field}[{i}]"), m))?;
                }
            }
        }
        if self.max_age_s.is_some_and(|s| s > 86_400) {
            return Err(ValidationError::new("max_age_s", "must be at most 86400"));
        }
        Ok(())
    }
}

/// `scheme://host[:port]`, as the `Origin` header carries it.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host_ok = host.parse::<std::net::IpAddr>().is_ok()
        || (super::cluster::is_dns_name(host) && !host.bytes().any(|b| b.is_ascii_uppercase()));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    scheme_ok && host_ok && port_ok
}

/// API-key authentication: a request must present the key of a consumer, in a header or a
/// query parameter. Keys are looked up by their keyed hash; the consumer's name and tier go to
/// the upstream as `x-consumer-name` and `x-consumer-tier` (client-sent values are replaced).
/// A route with several API-key policies accepts a key found by any of them.
///
/// Failures answer 401 with `WWW-Authenticate: ApiKey …` and never reach the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyPolicy {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// The request header holding the key (default `x-api-key`).
    #[serde(default = "default_api_key_header")]
    #[schema(default = "x-api-key")]
    pub header: String,
    /// A query parameter holding the key, looked at when the header is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Pass the key on to the upstream; by default it is removed from the request.
    #[serde(default)]
    pub forward_key: bool,
}

fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}

/// The request header naming the consumer an API key identified.
pub const CONSUMER_NAME_HEADER: &str = "x-consumer-name";
/// The request header carrying that consumer's tier (absent when it has none).
pub const CONSUMER_TIER_HEADER: &str = "x-consumer-tier";

impl ApiKeyPolicy {
    fn validate(&self) -> Result<(), ValidationError> {
        super::route::validate_header_name(&self.header)
            .and_then(|()| super::route::validate_mutable_header(&self.header))
            .map_err(|m| ValidationError::new("header", m))?;
        if [CONSUMER_NAME_HEADER, CONSUMER_TIER_HEADER].contains(&self.header.as_str()) {
            return Err(ValidationError::new(
                "header",
                format!("{} is set by the proxy", self.header),
            ));
        }
        if let Some(query) = &self.query
            && (query.is_empty()
                || query.len() > 256
                || !query.bytes().all(|b| b.is_ascii_graphic())
                || query.contains(['=', '&', '#', '?']))
        {
            return Err(ValidationError::new(
                "query",
                "must be 1 to 256 printable characters, without = & # or ?",
            ));
        }
        Ok(())
    }
}

/// Authorization: who may call the route once authentication (a JWT or an API key policy on
/// the same route) has said who the caller is. Every requirement given must hold; a route with
/// several authorization policies needs all of them. Failures answer 403.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// JWT claims and the values accepted for each (any of them); a claim holding a list
    /// matches when the list contains one. Nested claims as `a.b`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub require_claims: BTreeMap<String, Vec<String>>,
    /// OAuth scopes the JWT must grant, all of them: in `scope` (space-separated) or `scp`
    /// (a list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_scopes: Vec<String>,
    /// The API key's consumer must be in one of these groups, or be named in
    /// `allow_consumers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_consumer_groups: Vec<String>,
    /// Consumers (names) allowed whatever their groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_consumers: Vec<String>,
}

impl AuthorizationPolicy {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.require_claims.is_empty()
            && self.require_scopes.is_empty()
            && self.allow_consumer_groups.is_empty()
            && self.allow_consumers.is_empty()
        {
            return Err(ValidationError::new(
                "require_claims",
                "give at least one of require_claims, require_scopes, allow_consumer_groups \
                 and allow_consumers",
            ));
        }
        for (claim, values) in &self.require_claims {
            let field = format!("require_claims.{claim}");
            if claim.is_empty() || claim.len() > 256 || claim.split('.').any(str::is_empty) {
                return Err(ValidationError::new(
                    field,
                    "claim names are 1 to 256 characters, nested ones as a.b",
                ));
            }
            if values.is_empty() || values.len() > 64 {
                return Err(ValidationError::new(field, "give 1 to 64 accepted values"));
            }
            if values.iter().any(|v| v.len() > 1024) {
                return Err(ValidationError::new(
                    field,
                    "values are at most 1024 characters",
                ));
            }
        }
        for (i, scope) in self.require_scopes.iter().enumerate() {
            if scope.is_empty() || scope.len() > 256 || !scope.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ValidationError::new(
                    format!("require_scopes[{i}]"),
                    "scopes are 1 to 256 printable characters without spaces",
                ));
            }
        }
        for (field, names) in [
            ("allow_consumer_groups", &self.allow_consumer_groups),
            ("allow_consumers", &self.allow_consumers),
        ] {
            for (i, name) in names.iter().enumerate() {
                super::validate_name(name)
                    .map_err(|e| ValidationError::new(format!("{field}[{i}]"), e.message))?;
            }
        }
        Ok(())
    }
}

/// IP filtering: a request is refused (403) when its client address is in `deny`, or when
/// `allow` is given and the address is not in it. The client address is the peer's, or, on a
/// listener with `trusted_proxy_hops`, the one `x-forwarded-for` names that many hops back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpFilterPolicy {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Address ranges allowed (`10.0.0.0/8`, `2001:db8::/32`, or one address); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Address ranges refused, even when `allow` covers them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// An address range: the network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The first address of the range.
    pub address: std::net::IpAddr,
    /// How many leading bits are fixed.
    pub prefix_len: u8,
}

impl Cidr {
    /// Parses `ADDRESS/LEN` or a single `ADDRESS`. Host bits must be zero, so a typo such as
    /// `10.0.0.1/8` (meant `/32`?) is refused rather than silently widened.
    pub fn parse(value: &str) -> Result<Cidr, String> {
        let (address, prefix) = match value.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (value, None),
        };
        let address: std::net::IpAddr = address
            .parse()
            .map_err(|_| format!("{value:?} is not an IP address or CIDR range"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{value:?}: the prefix length must be 0 to {max}"))?,
        };
        let bits = match address {
            std::net::IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
            std::net::IpAddr::V6(a) => u128::from(a),
        };
        let host_bits = if prefix_len == 0 {
            bits
        } else {
            bits & (u128::MAX >> prefix_len)
        };
        if host_bits != 0 {
            return Err(format!(
                "{value:?} has host bits set; the range starts at a network address"
            ));
        }
        Ok(Cidr {
            address,
            prefix_len,
        })
    }
}

impl IpFilterPolicy {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.allow.is_empty() && self.deny.is_empty() {
            return Err(ValidationError::new("allow", "give allow or deny ranges"));
        }
        for (field, ranges) in [("allow", &self.allow), ("deny", &self.deny)] {
            if ranges.len() > 1024 {
                return Err(ValidationError::new(field, "at most 1024 ranges"));
            }
            for (i, range) in ranges.iter().enumerate() {
                Cidr::parse(range).map_err(|m| ValidationError::new(format!("{field}[{i}]"), m))?;
            }
        }
        Ok(())
    }
}

/// Transforms of the request on its way to the upstream and of the response on its way back.
///
/// Header values are templates: `{claim.sub}` (a claim of the verified JWT, nested as
/// `{claim.org.id}`), `{consumer.name}`, `{consumer.tier}` (the API key's consumer),
/// `{header.x-name}` (a request header), `{client_ip}`; `{{` and `}}` are literal braces. A
/// value whose parts are all missing is not sent. Bodies are transformed by edge proxies only:
/// Envoy nodes apply the header and path changes and leave bodies alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformPolicy {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Changes to the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestTransform>,
    /// Changes to the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<MessageTransform>,
}

/// Changes to a request: a message transform and a path rewrite.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestTransform {
    /// Header changes; values are templates (see [`TransformPolicy`]).
    #[serde(default, skip_serializing_if = "HeaderMutations::is_empty")]
    pub headers: HeaderMutations,
    /// Body changes (edge proxies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyTransform>,
    /// Rewrite the path: matches of `regex` are replaced by `substitution` (`\1` for groups).
    /// A route with its own path rewrite cannot take one from a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// Changes to a response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageTransform {
    /// Header changes; values are templates (see [`TransformPolicy`]).
    #[serde(default, skip_serializing_if = "HeaderMutations::is_empty")]
    pub headers: HeaderMutations,
    /// Body changes (edge proxies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyTransform>,
}

/// A path rewrite by regular expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PathRewrite {
    /// RE2 syntax, matched against the path without the query.
    pub regex: String,
    /// The replacement.
    pub substitution: String,
}

/// Body changes, made by edge proxies on bodies up to 1 MiB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyTransform {
    /// Convert the body between formats first: `xml_to_json` or `json_to_xml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert: Option<BodyConversion>,
    /// Rename every object key of the JSON body to this case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rename_keys: Option<KeyCase>,
    /// Fields removed from the JSON body, as dotted paths (`user.password`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Fields set in the JSON body (dotted path → JSON value), after renaming.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub add: BTreeMap<String, serde_json::Value>,
    /// What to do with a body that is not valid JSON (or XML, to convert): `pass` it on
    /// unchanged (default) or `reject` it (400 for a request, 502 for a response).
    #[serde(default)]
    pub on_invalid: OnInvalidBody,
}

/// A body format conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BodyConversion {
    /// XML in, JSON out (`content-type: application/json`).
    XmlToJson,
    /// JSON in, XML out (`content-type: application/xml`).
    JsonToXml,
}

/// A naming convention for JSON keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyCase {
    /// `userId` → `user_id`.
    SnakeCase,
    /// `user_id` → `userId`.
    CamelCase,
}

/// What a body transform does with a body it cannot parse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalidBody {
    /// Pass it on unchanged.
    #[default]
    Pass,
    /// Refuse it: 400 for a request, 502 for a response.
    Reject,
}

/// One piece of a header template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Literal text.
    Literal(String),
    /// A claim of the verified JWT, as a path (`["org", "id"]`).
    Claim(Vec<String>),
    /// The consumer's name.
    ConsumerName,
    /// The consumer's tier.
    ConsumerTier,
    /// A request header.
    Header(String),
    /// The client address.
    ClientIp,
}

/// Parses a header template (see [`TransformPolicy`]).
pub fn parse_template(template: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        literal.push_str(&rest[..i]);
        let brace = &rest[i..i + 1];
        if rest[i + 1..].starts_with(brace) {
            literal.push_str(brace);
            rest = &rest[i + 2..];
            continue;
        }
        if brace == "}" {
            return Err(format!(
                "unmatched }} in {template:?} (write }}}} for a literal one)"
            ));
        }
        let end = rest[i..]
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in {template:?} (write {{{{ for a literal one)"))?;
        let name = &rest[i + 1..i + end];
        let part = match name.split_once('.') {
            _ if name == "client_ip" => TemplatePart::ClientIp,
            _ if name == "consumer.name" => TemplatePart::ConsumerName,
            _ if name == "consumer.tier" => TemplatePart::ConsumerTier,
            Some(("claim", path)) if !path.is_empty() && !path.split('.').any(str::is_empty) => {
                TemplatePart::Claim(path.split('.').map(str::to_owned).collect())
            }
            Some(("header", header)) => {
                super::route::validate_header_name(header)?;
                TemplatePart::Header(header.to_owned())
            }
            _ => {
                return Err(format!(
                    "{{{name}}} is not a known value: use claim.NAME, consumer.name, \
                     consumer.tier, header.NAME or client_ip"
                ));
            }
        };
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(part);
        rest = &rest[i + end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    Ok(parts)
}

impl TransformPolicy {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.request.is_none() && self.response.is_none() {
            return Err(ValidationError::new(
                "request",
                "give request or response changes",
            ));
        }
        if let Some(request) = &self.request {
            validate_headers(&request.headers).map_err(|e| e.within("request.headers"))?;
            if let Some(body) = &request.body {
                validate_body(body).map_err(|e| e.within("request.body"))?;
            }
            if let Some(path) = &request.path {
                super::validate_regex("request.path.regex", &path.regex)?;
                if path.substitution.len() > 1024 || path.substitution.chars().any(char::is_control)
                {
                    return Err(ValidationError::new(
                        "request.path.substitution",
                        "must be at most 1024 characters, without control characters",
                    ));
                }
            }
        }
        if let Some(response) = &self.response {
            validate_headers(&response.headers).map_err(|e| e.within("response.headers"))?;
            if let Some(body) = &response.body {
                validate_body(body).map_err(|e| e.within("response.body"))?;
            }
        }
        Ok(())
    }
}

fn validate_headers(headers: &HeaderMutations) -> Result<(), ValidationError> {
    for (field, map) in [("set", &headers.set), ("add", &headers.add)] {
        for (name, template) in map {
            let field = format!("{field}.{name}");
            super::route::validate_header_name(name)
                .and_then(|()| super::route::validate_mutable_header(name))
                .map_err(|m| ValidationError::new(&field, m))?;
            if template.len() > 1024 || template.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    field,
                    "must be at most 1024 characters, without control characters",
                ));
            }
            parse_template(template).map_err(|m| ValidationError::new(field, m))?;
        }
    }
    for (i, name) in headers.remove.iter().enumerate() {
        super::route::validate_header_name(name)
            .and_then(|()| super::route::validate_mutable_header(name))
            .map_err(|m| ValidationError::new(format!("remove[{i}]"), m))?;
    }
    Ok(())
}

fn validate_body(body: &BodyTransform) -> Result<(), ValidationError> {
    if body.convert.is_none()
        && body.rename_keys.is_none()
        && body.remove.is_empty()
        && body.add.is_empty()
    {
        return Err(ValidationError::new(
            "convert",
            "give convert, rename_keys, remove or add",
        ));
    }
    let json_changes =
        body.rename_keys.is_some() || !body.remove.is_empty() || !body.add.is_empty();
    if body.convert == Some(BodyConversion::JsonToXml) && json_changes {
        // JSON changes apply to the JSON form; with json_to_xml that is the input, which
        // the policy could name as well: keep one meaning.
        return Err(ValidationError::new(
            "convert",
            "json_to_xml cannot be combined with rename_keys, remove or add",
        ));
    }
    for (field, paths) in [
        ("remove", body.remove.iter().collect::<Vec<_>>()),
        ("add", body.add.keys().collect()),
    ] {
        for (i, path) in paths.iter().enumerate() {
            if path.is_empty() || path.len() > 256 || path.split('.').any(str::is_empty) {
                return Err(ValidationError::new(
                    format!("{field}[{i}]"),
                    "paths are 1 to 256 characters, nested fields as a.b",
                ));
            }
        }
    }
    Ok(())
}

/// A quota: each partition of requests (by `key`) may make `limit.requests` per
/// `limit.window_s`. Counted by the proxies' quota filter (edge proxies) or by the control
/// plane's rate-limit service (Envoy), on one set of counters: in Redis when the control plane
/// and proxies are given `--redis` (`mode: global`), or in each process (`mode: local`).
///
/// A request whose key cannot be formed (a header, a claim or the API key's consumer is
/// missing) is not counted by the policy, as Envoy skips a rate-limit descriptor when one of
/// its actions yields nothing. Every policy on a route counts the request, even when another
/// one refuses it. Only forwarding routes count: redirects and direct responses do not (Envoy's
/// filter has no route entry for them). Refusals answer 429 with `RateLimit-Policy`,
/// `RateLimit` and `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Unique name; clients see it in `RateLimit-Policy`.
    #[serde(default)]
    pub name: String,
    /// What requests are counted by, in order: `api_key`, `consumer`, `consumer_tier`,
    /// `claim:<dotted path>` (a string claim of the verified JWT), `client_ip`,
    /// `header:<name>`, `route`. Empty: everyone shares one counter.
    #[schema(example = json!(["consumer", "header:x-tenant"]))]
    pub key: Vec<String>,
    /// The limit, for consumers whose tier has none in `tiers`. Required without `tiers`;
    /// with `tiers` and no `limit`, requests from other tiers are not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<QuotaLimit>,
    /// How requests are counted (default `token_bucket`).
    #[serde(default)]
    pub algorithm: QuotaAlgorithm,
    /// Limits by the API key consumer's `tier`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, QuotaLimit>,
    /// `global` (default): one counter for the whole fleet, in Redis; `local`: each edge
    /// proxy counts on its own (for Envoy, the control plane's rate-limit service counts in
    /// its memory).
    #[serde(default)]
    pub mode: QuotaMode,
    /// Count, and report in metrics, but never refuse: for trying a limit out.
    #[serde(default)]
    pub shadow: bool,
    /// When the counters cannot be reached (Redis down): `open` (default) lets requests
    /// through uncounted, `closed` refuses them with 503.
    #[serde(default)]
    pub failure_mode: QuotaFailureMode,
    /// Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.
    #[serde(default)]
    pub legacy_headers: bool,
    /// Batched mode for keys too hot for one Redis call per request (global policies): each
    /// edge proxy (and the control plane's rate-limit service) takes this many tokens per call
    /// and spends them locally. Windows never admit more than without it; a token bucket
    /// admits at most `lease` more over any interval, fleet-wide. Each proxy may leave up to
    /// `lease - 1` tokens unspent when a lease ends. From 2 to the smallest limit's capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2)]
    pub lease: Option<u64>,
}

/// `requests` per `window_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimit {
    /// Requests allowed per window (the sustained rate, for a token bucket).
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub requests: u64,
    /// The window, in seconds.
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub window_s: u32,
    /// Token bucket only: how many requests may come at once (default `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub burst: Option<u64>,
}

/// How requests are counted against a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaAlgorithm {
    /// A token bucket (GCRA): refills continuously, allows `burst` at once.
    #[default]
    TokenBucket,
    /// An approximate sliding window: the previous window weighted by its overlap.
    SlidingWindow,
    /// A counter that resets every window.
    FixedWindow,
}

/// Where a quota's counters live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaMode {
    /// In Redis, shared by every proxy (in process when no Redis is configured).
    #[default]
    Global,
    /// In each proxy's memory.
    Local,
}

/// What a quota does when its counters cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaFailureMode {
    /// Let requests through, uncounted.
    #[default]
    Open,
    /// Refuse requests with 503.
    Closed,
}

/// One part of a rate-limit key, parsed from its string form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The API key (as a keyed hash, never the key).
    ApiKey,
    /// The API key's consumer.
    Consumer,
    /// The consumer's tier.
    ConsumerTier,
    /// A claim of the verified JWT, as a path (`["org", "id"]`).
    Claim(Vec<String>),
    /// The client address.
    ClientIp,
    /// A request header.
    Header(String),
    /// The route's name.
    Route,
}

/// Headers that carry credentials: keying on them would put secrets into counter keys.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// The most key parts a policy may have.
pub const MAX_KEY_PARTS: usize = 8;
/// The most tiers a policy may name.
pub const MAX_TIERS: usize = 64;

impl KeyPart {
    /// Parses a key part as written in a policy.
    pub fn parse(part: &str) -> Result<KeyPart, String> {
        Ok(match part {
            "api_key" => KeyPart::ApiKey,
            "consumer" => KeyPart::Consumer,
            "consumer_tier" => KeyPart::ConsumerTier,
            "client_ip" => KeyPart::ClientIp,
            "route" => KeyPart::Route,
            _ => match part.split_once(':') {
                Some(("claim", path)) => {
                    if path.is_empty() || path.len() > 256 || path.split('.').any(str::is_empty) {
                        return Err(
                            "claim names are 1 to 256 characters, nested ones as a.b".to_owned()
                        );
                    }
                    KeyPart::Claim(path.split('.').map(str::to_owned).collect())
                }
                Some(("header", name)) => {
                    super::route::validate_header_name(name)?;
                    if CREDENTIAL_HEADERS.contains(&name) {
                        return Err(format!(
                            "{name} carries credentials, which must not end up in counter keys; \
                             key on api_key, consumer or a claim instead"
                        ));
                    }
                    if name == "host" {
                        return Err(
                            "the host is not a header on HTTP/2; use routes per host instead"
                                .to_owned(),
                        );
                    }
                    KeyPart::Header(name.to_owned())
                }
                _ => {
                    return Err(format!(
                        "{part:?} is not a key part: use api_key, consumer, consumer_tier, \
                         claim:NAME, client_ip, header:NAME or route"
                    ));
                }
            },
        })
    }

    /// The part's label in identities ([`tollgate_quota::identity()`]): its written form.
    pub fn label(&self) -> String {
        use tollgate_quota::identity::{Label, label};
        match self {
            KeyPart::ApiKey => label(Label::ApiKey),
            KeyPart::Consumer => label(Label::Consumer),
            KeyPart::ConsumerTier => label(Label::ConsumerTier),
            KeyPart::Claim(path) => label(Label::Claim(&path.join("."))),
            KeyPart::ClientIp => label(Label::ClientIp),
            KeyPart::Header(name) => label(Label::Header(name)),
            KeyPart::Route => label(Label::Route),
        }
    }

    /// Whether the part is read from what an API-key policy found.
    pub fn needs_api_key(&self) -> bool {
        matches!(
            self,
            KeyPart::ApiKey | KeyPart::Consumer | KeyPart::ConsumerTier
        )
    }
}

impl RateLimitPolicy {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.key.len() > MAX_KEY_PARTS {
            return Err(ValidationError::new(
                "key",
                format!("at most {MAX_KEY_PARTS} parts"),
            ));
        }
        for (i, part) in self.key.iter().enumerate() {
            let field = format!("key[{i}]");
            KeyPart::parse(part).map_err(|m| ValidationError::new(&field, m))?;
            if self.key[..i].contains(part) {
                return Err(ValidationError::new(
                    field,
                    format!("{part} is listed twice"),
                ));
            }
        }
        match &self.limit {
            Some(limit) => self.validate_limit(limit).map_err(|e| e.within("limit"))?,
            None if self.tiers.is_empty() => {
                return Err(ValidationError::new("limit", "give a limit or tiers"));
            }
            None => {}
        }
        if self.tiers.len() > MAX_TIERS {
            return Err(ValidationError::new(
                "tiers",
                format!("at most {MAX_TIERS} tiers"),
            ));
        }
        for (tier, limit) in &self.tiers {
            let field = format!("tiers.{tier}");
            super::validate_name(tier).map_err(|e| ValidationError::new(&field, e.message))?;
            self.validate_limit(limit).map_err(|e| e.within(&field))?;
        }
        if let Some(lease) = self.lease {
            if self.mode != QuotaMode::Global {
                return Err(ValidationError::new(
                    "lease",
                    "only global policies count in Redis; a local one needs no lease",
                ));
            }
            let smallest = self
                .limit
                .iter()
                .chain(self.tiers.values())
                .map(|l| self.quota_limit(l).capacity())
                .min()
                .unwrap_or_default();
            if lease < 2 || lease > smallest {
                return Err(ValidationError::new(
                    "lease",
                    format!("must be between 2 and the smallest limit's capacity ({smallest})"),
                ));
            }
        }
        Ok(())
    }

    fn validate_limit(&self, limit: &QuotaLimit) -> Result<(), ValidationError> {
        use tollgate_quota::{MAX_REQUESTS, PolicyError};
        if limit.burst.is_some() && self.algorithm != QuotaAlgorithm::TokenBucket {
            return Err(ValidationError::new(
                "burst",
                "only applies to the token_bucket algorithm",
            ));
        }
        let max_window_s = tollgate_quota::MAX_WINDOW.as_secs();
        if limit.window_s == 0 || u64::from(limit.window_s) > max_window_s {
            return Err(ValidationError::new(
                "window_s",
                format!("must be between 1 and {max_window_s} (366 days)"),
            ));
        }
        self.quota_limit(limit).validate().map_err(|e| match e {
            PolicyError::Burst(_) => {
                ValidationError::new("burst", format!("must be between 1 and {MAX_REQUESTS}"))
            }
            PolicyError::RateTooHigh { .. } => ValidationError::new(
                "requests",
                "at most one request per microsecond for a token bucket",
            ),
            other => ValidationError::new("requests", other.to_string()),
        })
    }

    /// The key parts, parsed. Valid after validation (unparsable parts are left out).
    pub fn key_parts(&self) -> Vec<KeyPart> {
        self.key
            .iter()
            .filter_map(|p| KeyPart::parse(p).ok())
            .collect()
    }

    /// Whether the policy reads what an API-key policy found: an `api_key`, `consumer` or
    /// `consumer_tier` part, or limits by tier.
    pub fn needs_api_key(&self) -> bool {
        !self.tiers.is_empty() || self.key_parts().iter().any(KeyPart::needs_api_key)
    }

    /// Whether the policy reads claims of a verified JWT.
    pub fn needs_jwt(&self) -> bool {
        self.key_parts()
            .iter()
            .any(|p| matches!(p, KeyPart::Claim(_)))
    }

    /// The quota engine's form of `limit` under this policy's algorithm.
    pub fn quota_limit(&self, limit: &QuotaLimit) -> tollgate_quota::Limit {
        let window = std::time::Duration::from_secs(u64::from(limit.window_s));
        match self.algorithm {
            QuotaAlgorithm::TokenBucket => tollgate_quota::Limit::token_bucket(
                limit.requests,
                window,
                limit.burst.unwrap_or(limit.requests),
            ),
            QuotaAlgorithm::SlidingWindow => {
                tollgate_quota::Limit::sliding_window(limit.requests, window)
            }
            QuotaAlgorithm::FixedWindow => {
                tollgate_quota::Limit::fixed_window(limit.requests, window)
            }
        }
    }

    /// Whether requests are refused when the counters cannot be reached.
    pub fn fails_closed(&self) -> bool {
        self.failure_mode == QuotaFailureMode::Closed
    }

    /// The quota engine's policy for `limit`: this policy's name, algorithm, failure mode,
    /// shadow mode and lease. Valid after validation.
    pub fn quota_policy(
        &self,
        limit: &QuotaLimit,
    ) -> Result<tollgate_quota::Policy, tollgate_quota::PolicyError> {
        let policy = tollgate_quota::Policy::new(
            self.name.clone(),
            self.quota_limit(limit),
            self.quota_failure_mode(),
        )?;
        let policy = policy.with_shadow(self.shadow);
        match self.lease {
            Some(tokens) => policy.with_lease(tokens),
            None => Ok(policy),
        }
    }

    /// The quota engine's failure mode.
    pub fn quota_failure_mode(&self) -> tollgate_quota::FailureMode {
        match self.failure_mode {
            QuotaFailureMode::Open => tollgate_quota::FailureMode::Open,
            QuotaFailureMode::Closed => tollgate_quota::FailureMode::Closed,
        }
    }
}

/// Checks a `policies[]` list of a route or listener on its own: names well formed, none twice.
pub(super) fn validate_policy_names(names: &[String]) -> Result<(), ValidationError> {
    if names.len() > 32 {
        return Err(ValidationError::new("policies", "at most 32 policies"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.iter().enumerate() {
        let field = format!("policies[{i}]");
        super::validate_name(name).map_err(|e| ValidationError::new(&field, e.message))?;
        if !seen.insert(name) {
            return Err(ValidationError::new(
                field,
                format!("policy {name} is listed twice"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(json: serde_json::Value) -> Result<(), ValidationError> {
        let policy: Policy = serde_json::from_value(json).expect("parses");
        policy.validate()
    }

    #[test]
    fn a_jwt_policy_names_its_keys_once() {
        let ok = serde_json::json!({"type": "jwt", "issuer": "https://issuer", "jwks_uri": "http://127.0.0.1:8000/jwks"});
        assert_eq!(jwt(ok), Ok(()));
        let both = serde_json::json!({"type": "jwt", "issuer": "i", "jwks_uri": "http://a/jwks", "jwks": {"keys": [{"kty": "RSA"}]}});
        assert_eq!(jwt(both).unwrap_err().field, "jwks");
        let none = serde_json::json!({"type": "jwt", "issuer": "i"});
        assert_eq!(jwt(none).unwrap_err().field, "jwks_uri");
        let https = serde_json::json!({"type": "jwt", "issuer": "i", "jwks_uri": "https://idp.example.com/jwks"});
        assert_eq!(jwt(https).unwrap_err().field, "jwks_trusted_ca");
        let ftp = serde_json::json!({"type": "jwt", "issuer": "i", "jwks_uri": "ftp://idp/jwks"});
        assert_eq!(jwt(ftp).unwrap_err().field, "jwks_uri");
        let private = serde_json::json!({"type": "jwt", "issuer": "i", "jwks": {"keys": [{"kty": "EC", "d": "secret"}]}});
        let err = jwt(private).unwrap_err();
        assert_eq!(err.field, "jwks");
        assert!(err.message.contains("private"), "{err}");
    }

    #[test]
    fn token_sources_and_claim_headers_are_checked() {
        let two = serde_json::json!({"type": "jwt", "issuer": "i", "jwks_uri": "http://a/j",
            "token_from": [{"header": "authorization", "query": "t"}]});
        assert_eq!(jwt(two).unwrap_err().field, "token_from[0]");
        let prefix = serde_json::json!({"type": "jwt", "issuer": "i", "jwks_uri": "http://a/j",
            "token_from": [{"cookie": "s", "prefix": "Bearer "}]});
        assert_eq!(jwt(prefix).unwrap_err().field, "token_from[0].prefix");
        let host = serde_json::json!({"type": "jwt", "issuer": "i", "jwks_uri": "http://a/j",
            "claims_to_headers": {"sub": "host"}});
        assert_eq!(jwt(host).unwrap_err().field, "claims_to_headers.sub");
        let twice = serde_json::json!({"type": "jwt", "issuer": "i", "jwks_uri": "http://a/j",
            "claims_to_headers": {"sub": "x-user", "email": "x-user"}});
        assert_eq!(jwt(twice).unwrap_err().field, "claims_to_headers.sub");
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let extra = serde_json::json!({"type": "jwt", "issuer": "i", "jwks_uri": "http://a/j", "isuer": "typo"});
        assert!(serde_json::from_value::<Policy>(extra).is_err());
        let unknown = serde_json::json!({"type": "magic"});
        assert!(serde_json::from_value::<Policy>(unknown).is_err());
    }

    #[test]
    fn cidr_ranges_start_at_their_network_address() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().prefix_len, 8);
        assert_eq!(Cidr::parse("192.0.2.7").unwrap().prefix_len, 32);
        assert_eq!(Cidr::parse("2001:db8::/32").unwrap().prefix_len, 32);
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().prefix_len, 0);
        assert!(Cidr::parse("10.0.0.1/8").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("2001:db8::1/32").is_err());
    }

    #[test]
    fn authorization_needs_a_requirement() {
        let empty = serde_json::json!({"type": "authorization"});
        assert_eq!(jwt(empty).unwrap_err().field, "require_claims");
        let claims = serde_json::json!({"type": "authorization", "require_claims": {"role": []}});
        assert_eq!(jwt(claims).unwrap_err().field, "require_claims.role");
        let ok = serde_json::json!({"type": "authorization", "require_scopes": ["orders:read"],
            "allow_consumer_groups": ["partners"]});
        assert_eq!(jwt(ok), Ok(()));
    }

    #[test]
    fn templates_name_known_values() {
        assert_eq!(
            parse_template("Bearer {claim.org.id}/{consumer.name} {{x}}").unwrap(),
            [
                TemplatePart::Literal("Bearer ".into()),
                TemplatePart::Claim(vec!["org".into(), "id".into()]),
                TemplatePart::Literal("/".into()),
                TemplatePart::ConsumerName,
                TemplatePart::Literal(" {x}".into()),
            ]
        );
        assert_eq!(
            parse_template("{header.x-a}{client_ip}").unwrap(),
            [TemplatePart::Header("x-a".into()), TemplatePart::ClientIp]
        );
        assert!(parse_template("{claim}").is_err());
        assert!(parse_template("{claim.a..b}").is_err());
        assert!(parse_template("{header.X-A}").is_err());
        assert!(parse_template("{secret}").is_err());
        assert!(parse_template("{claim.sub").is_err());
        assert!(parse_template("a}b").is_err());
    }

    #[test]
    fn transforms_are_checked_where_they_are_written() {
        let bad_template = serde_json::json!({"type": "transform",
            "request": {"headers": {"set": {"x-user": "{claims.sub}"}}}});
        assert_eq!(
            jwt(bad_template).unwrap_err().field,
            "request.headers.set.x-user"
        );
        let both = serde_json::json!({"type": "transform",
            "response": {"body": {"convert": "json_to_xml", "rename_keys": "camel_case"}}});
        assert_eq!(jwt(both).unwrap_err().field, "response.body.convert");
        let ok = serde_json::json!({"type": "transform",
            "request": {"headers": {"set": {"x-user": "{claim.sub}"}, "remove": ["x-debug"]},
                        "body": {"rename_keys": "snake_case", "remove": ["password"], "add": {"via": "gw"}},
                        "path": {"regex": "^/v1/(.*)", "substitution": "/\\1"}},
            "response": {"body": {"convert": "json_to_xml"}}});
        assert_eq!(jwt(ok), Ok(()));
    }

    #[test]
    fn rate_limits_parse_with_their_defaults() {
        let policy: Policy = serde_json::from_value(serde_json::json!({"type": "rate_limit",
            "key": ["api_key", "claim:org.id", "header:x-tenant", "client_ip", "route"],
            "limit": {"requests": 100, "window_s": 60}}))
        .unwrap();
        assert_eq!(policy.validate(), Ok(()));
        let Policy::RateLimit(limit) = &policy else {
            panic!("rate_limit expected")
        };
        assert_eq!(limit.algorithm, QuotaAlgorithm::TokenBucket);
        assert_eq!(limit.mode, QuotaMode::Global);
        assert_eq!(limit.failure_mode, QuotaFailureMode::Open);
        assert!(!limit.shadow && !limit.legacy_headers);
        assert_eq!(
            limit.key_parts(),
            [
                KeyPart::ApiKey,
                KeyPart::Claim(vec!["org".into(), "id".into()]),
                KeyPart::Header("x-tenant".into()),
                KeyPart::ClientIp,
                KeyPart::Route,
            ]
        );
        let labels: Vec<String> = limit.key_parts().iter().map(KeyPart::label).collect();
        assert_eq!(labels, limit.key, "labels are the written form");
        assert!(limit.needs_api_key() && limit.needs_jwt());
        // A token bucket's burst defaults to the rate.
        assert_eq!(
            limit.quota_limit(limit.limit.as_ref().unwrap()),
            tollgate_quota::Limit::token_bucket(100, std::time::Duration::from_secs(60), 100)
        );
        // The key is required (an empty one is one shared counter).
        let no_key =
            serde_json::json!({"type": "rate_limit", "limit": {"requests": 1, "window_s": 1}});
        assert!(serde_json::from_value::<Policy>(no_key).is_err());
        let shared = serde_json::json!({"type": "rate_limit", "key": [],
            "tiers": {"pro": {"requests": 1, "window_s": 1}}});
        assert_eq!(jwt(shared), Ok(()));
    }

    #[test]
    fn rate_limit_errors_name_the_field() {
        let base = || {
            serde_json::json!({"type": "rate_limit", "key": ["consumer"],
                "limit": {"requests": 10, "window_s": 60}})
        };
        let with = |patch: serde_json::Value| {
            let mut json = base();
            for (k, v) in patch.as_object().unwrap() {
                json[k] = v.clone();
            }
            jwt(json).unwrap_err().field
        };
        let cases = [
            (serde_json::json!({"key": ["consumer", "user"]}), "key[1]"),
            (serde_json::json!({"key": ["claim:"]}), "key[0]"),
            (serde_json::json!({"key": ["claim:a..b"]}), "key[0]"),
            (serde_json::json!({"key": ["header:X-Tenant"]}), "key[0]"),
            (
                serde_json::json!({"key": ["header:authorization"]}),
                "key[0]",
            ),
            (serde_json::json!({"key": ["header:cookie"]}), "key[0]"),
            (serde_json::json!({"key": ["header:host"]}), "key[0]"),
            (serde_json::json!({"key": ["route", "route"]}), "key[1]"),
            (serde_json::json!({"key": vec!["route"; 9]}), "key"),
            (serde_json::json!({"limit": null}), "limit"),
            (
                serde_json::json!({"limit": {"requests": 0, "window_s": 60}}),
                "limit.requests",
            ),
            (
                serde_json::json!({"limit": {"requests": 1_000_000_001u64, "window_s": 60}}),
                "limit.requests",
            ),
            (
                serde_json::json!({"limit": {"requests": 10, "window_s": 0}}),
                "limit.window_s",
            ),
            (
                serde_json::json!({"limit": {"requests": 10, "window_s": 31_622_401}}),
                "limit.window_s",
            ),
            (
                serde_json::json!({"limit": {"requests": 10, "window_s": 1, "burst": 0}}),
                "limit.burst",
            ),
            (
                serde_json::json!({"algorithm": "fixed_window",
                    "limit": {"requests": 10, "window_s": 1, "burst": 20}}),
                "limit.burst",
            ),
            (serde_json::json!({"lease": 1}), "lease"),
            (serde_json::json!({"lease": 101}), "lease"),
            (serde_json::json!({"lease": 10, "mode": "local"}), "lease"),
            (
                serde_json::json!({"limit": {"requests": 2_000_000, "window_s": 1}}),
                "limit.requests",
            ),
            (
                serde_json::json!({"tiers": {"pro plan": {"requests": 1, "window_s": 1}}}),
                "tiers.pro plan",
            ),
            (
                serde_json::json!({"tiers": {"pro": {"requests": 1, "window_s": 0}}}),
                "tiers.pro.window_s",
            ),
        ];
        for (patch, field) in cases {
            assert_eq!(with(patch.clone()), field, "{patch}");
        }
        // Batched mode: from 2 tokens to the limit's capacity, for global policies.
        for lease in [2, 10] {
            let mut json = base();
            json["lease"] = lease.into();
            let policy: Policy = serde_json::from_value(json).unwrap();
            assert_eq!(policy.validate(), Ok(()), "lease {lease}");
        }
        // Unknown fields and values are refused, not ignored.
        for patch in [
            serde_json::json!({"mode": "regional"}),
            serde_json::json!({"failure_mode": "half"}),
            serde_json::json!({"algorithm": "leaky_bucket"}),
            serde_json::json!({"limit": {"requests": 1, "window": "1m"}}),
        ] {
            let mut json = base();
            for (k, v) in patch.as_object().unwrap() {
                json[k] = v.clone();
            }
            assert!(serde_json::from_value::<Policy>(json).is_err(), "{patch}");
        }
    }

    #[test]
    fn cors_origins_are_origins() {
        let cors =
            |origins: &[&str]| jwt(serde_json::json!({"type": "cors", "allow_origins": origins}));
        assert_eq!(
            cors(&["https://app.example.com", "http://127.0.0.1:3000", "*"]),
            Ok(())
        );
        assert_eq!(cors(&[]).unwrap_err().field, "allow_origins");
        assert_eq!(
            cors(&["https://app.example.com/"]).unwrap_err().field,
            "allow_origins[0]"
        );
        assert_eq!(
            cors(&["app.example.com"]).unwrap_err().field,
            "allow_origins[0]"
        );
    }
}
