//! Policies → Envoy's HTTP filters: the connection manager gets one filter per policy type in
//! use on the listener (CORS before authentication, as the request flows), and each route its
//! own settings in `typed_per_filter_config`. Envoy and the edge proxy read the same configs.

use std::collections::BTreeMap;

use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
use tollgate_proto::google::protobuf::{Any, BoolValue};

use crate::model::{
    Cluster, CorsPolicy, Endpoint, JwtPolicy, Listener, Policy, Route, UpstreamTls,
};

/// The connection manager's name for the CORS filter; routes key their `CorsPolicy` by it.
pub(super) const CORS_FILTER: &str = "envoy.filters.http.cors";
/// The connection manager's name for the JWT filter; routes key their requirement by it.
pub(super) const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

/// How long a proxy waits for a JWKS fetch.
const JWKS_FETCH_TIMEOUT_MS: u32 = 5_000;

/// The policies in force on one route served by one listener: the listener's, then the
/// route's; a route's CORS policy replaces the listener's.
#[derive(Debug, Default)]
pub(super) struct RoutePolicies<'a> {
    cors: Option<&'a CorsPolicy>,
    jwt: Vec<&'a JwtPolicy>,
}

impl<'a> RoutePolicies<'a> {
    /// Resolves the names a listener and a route list (the store has checked they exist).
    pub(super) fn resolve(
        listener: &Listener,
        route: &Route,
        policies: &'a BTreeMap<String, Policy>,
    ) -> Self {
        let mut out = RoutePolicies::default();
        let mut listener_cors = None;
        for (from_route, name) in listener
            .policies
            .iter()
            .map(|n| (false, n))
            .chain(route.policies.iter().map(|n| (true, n)))
        {
            match policies.get(name) {
                Some(Policy::Cors(cors)) if from_route => out.cors = Some(cors),
                Some(Policy::Cors(cors)) => listener_cors = Some(cors),
                Some(Policy::Jwt(jwt)) if !out.jwt.iter().any(|p| p.name == jwt.name) => {
                    out.jwt.push(jwt);
                }
                Some(Policy::Jwt(_)) | None => {}
            }
        }
        out.cors = out.cors.or(listener_cors);
        out
    }

    /// The name of this route's JWT requirement in the filter's `requirement_map`: the same
    /// set of providers shares one entry.
    fn jwt_requirement_name(&self) -> Option<String> {
        if self.jwt.is_empty() {
            return None;
        }
        let mut names: Vec<&str> = self.jwt.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        let optional = if self.all_jwt_optional() {
            "?optional"
        } else {
            ""
        };
        Some(format!("{}{optional}", names.join("|")))
    }

    /// A route lets requests without a token through only if every JWT policy on it does.
    fn all_jwt_optional(&self) -> bool {
        self.jwt.iter().all(|p| p.optional)
    }

    fn jwt_requirement(&self) -> jwt_pb::JwtRequirement {
        use jwt_pb::jwt_requirement::RequiresType;
        let provider = |p: &&JwtPolicy| jwt_pb::JwtRequirement {
            requires_type: Some(RequiresType::ProviderName(p.name.clone())),
        };
        let mut any: Vec<jwt_pb::JwtRequirement> = self.jwt.iter().map(provider).collect();
        if self.all_jwt_optional() {
            any.push(jwt_pb::JwtRequirement {
                requires_type: Some(RequiresType::AllowMissing(Default::default())),
            });
        }
        if any.len() == 1 {
            return any.pop().expect("one requirement");
        }
        jwt_pb::JwtRequirement {
            requires_type: Some(RequiresType::RequiresAny(jwt_pb::JwtRequirementOrList {
                requirements: any,
            })),
        }
    }

    /// The route's `typed_per_filter_config`.
    pub(super) fn per_filter_config(&self) -> std::collections::HashMap<String, Any> {
        let mut out = std::collections::HashMap::new();
        if let Some(cors) = self.cors {
            out.insert(
                CORS_FILTER.to_owned(),
                tollgate_proto::pack_any(&cors_policy(cors)),
            );
        }
        if let Some(requirement_name) = self.jwt_requirement_name() {
            let per_route = jwt_pb::PerRouteConfig {
                requirement_specifier: Some(
                    jwt_pb::per_route_config::RequirementSpecifier::RequirementName(
                        requirement_name,
                    ),
                ),
            };
            out.insert(JWT_FILTER.to_owned(), tollgate_proto::pack_any(&per_route));
        }
        out
    }
}

/// Collects what one listener's connection manager needs from the policies of its routes.
#[derive(Debug, Default)]
pub(super) struct ListenerFilters<'a> {
    cors: bool,
    providers: BTreeMap<&'a str, &'a JwtPolicy>,
    requirements: BTreeMap<String, jwt_pb::JwtRequirement>,
}

impl<'a> ListenerFilters<'a> {
    /// Records a route's policies.
    pub(super) fn add(&mut self, route: &RoutePolicies<'a>) {
        self.cors |= route.cors.is_some();
        for jwt in &route.jwt {
            self.providers.insert(&jwt.name, jwt);
        }
        if let Some(name) = route.jwt_requirement_name() {
            self.requirements
                .entry(name)
                .or_insert_with(|| route.jwt_requirement());
        }
    }

    /// The connection manager's filters, router last. A filter is present only when a route
    /// uses it, so listeners without policies cost nothing extra.
    pub(super) fn http_filters(&self, router: hcm_pb::HttpFilter) -> Vec<hcm_pb::HttpFilter> {
        let mut filters = Vec::new();
        if self.cors {
            filters.push(http_filter(CORS_FILTER, &cors_pb::Cors::default()));
        }
        if !self.providers.is_empty() {
            let config = jwt_pb::JwtAuthentication {
                providers: self
                    .providers
                    .iter()
                    .map(|(name, policy)| ((*name).to_owned(), jwt_provider(policy)))
                    .collect(),
                requirement_map: self
                    .requirements
                    .iter()
                    .map(|(name, requirement)| (name.clone(), requirement.clone()))
                    .collect(),
                ..Default::default()
            };
            filters.push(http_filter(JWT_FILTER, &config));
        }
        filters.push(router);
        filters
    }
}

fn http_filter<M: prost::Name>(name: &str, config: &M) -> hcm_pb::HttpFilter {
    hcm_pb::HttpFilter {
        name: name.to_owned(),
        config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(
            tollgate_proto::pack_any(config),
        )),
        ..Default::default()
    }
}

fn jwt_provider(policy: &JwtPolicy) -> jwt_pb::JwtProvider {
    use jwt_pb::jwt_provider::JwksSourceSpecifier;
    let jwks = match (&policy.jwks_uri, &policy.jwks) {
        (Some(uri), _) => JwksSourceSpecifier::RemoteJwks(jwt_pb::RemoteJwks {
            http_uri: Some(core_pb::HttpUri {
                uri: uri.clone(),
                timeout: Some(super::duration_ms(JWKS_FETCH_TIMEOUT_MS)),
                http_upstream_type: Some(core_pb::http_uri::HttpUpstreamType::Cluster(
                    jwks_cluster_name(&policy.name),
                )),
            }),
            cache_duration: Some(tollgate_proto::google::protobuf::Duration {
                seconds: i64::from(policy.jwks_cache_duration_s),
                nanos: 0,
            }),
            // Fetch when the config arrives rather than on the first request, so the first
            // request is not slowed down and a bad JWKS shows up early.
            async_fetch: Some(jwt_pb::JwksAsyncFetch::default()),
            ..Default::default()
        }),
        (None, jwks) => JwksSourceSpecifier::LocalJwks(core_pb::DataSource {
            specifier: Some(core_pb::data_source::Specifier::InlineString(
                jwks.as_ref().map(ToString::to_string).unwrap_or_default(),
            )),
            ..Default::default()
        }),
    };
    let mut provider = jwt_pb::JwtProvider {
        issuer: policy.issuer.clone(),
        audiences: policy.audiences.clone(),
        forward: policy.forward_token,
        clock_skew_seconds: policy.clock_skew_s,
        claim_to_headers: policy
            .claims_to_headers
            .iter()
            .map(|(claim, header)| jwt_pb::JwtClaimToHeader {
                header_name: header.clone(),
                claim_name: claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(jwks),
        ..Default::default()
    };
    for source in &policy.token_from {
        if let Some(header) = &source.header {
            provider.from_headers.push(jwt_pb::JwtHeader {
                name: header.clone(),
                value_prefix: source.prefix.clone().unwrap_or_default(),
            });
        } else if let Some(query) = &source.query {
            provider.from_params.push(query.clone());
        } else if let Some(cookie) = &source.cookie {
            provider.from_cookies.push(cookie.clone());
        }
    }
    provider
}

/// The cluster proxies fetch a policy's JWKS through. `:` cannot appear in resource names, so
/// it never collides with a user's cluster.
pub(super) fn jwks_cluster_name(policy: &str) -> String {
    format!("tollgate:jwks:{policy}")
}

/// The cluster for a JWT policy's `jwks_uri`, as a model cluster the cluster translator turns
/// into CDS (and EDS for an IP address, a DNS cluster for a host name).
pub(super) fn jwks_cluster(policy: &JwtPolicy) -> Option<Cluster> {
    let uri = policy.jwks_uri()?;
    let tls = uri.tls.then(|| UpstreamTls {
        sni: uri
            .host
            .parse::<std::net::IpAddr>()
            .is_err()
            .then(|| uri.host.clone()),
        trusted_ca: policy.jwks_trusted_ca.clone(),
        verify: true,
    });
    Some(Cluster {
        name: jwks_cluster_name(&policy.name),
        endpoints: vec![Endpoint {
            address: uri.host,
            port: uri.port,
            weight: 1,
        }],
        lb_policy: Default::default(),
        connect_timeout_ms: JWKS_FETCH_TIMEOUT_MS,
        http2: false,
        health_check: None,
        outlier_detection: None,
        circuit_breakers: None,
        tls,
    })
}

fn cors_policy(policy: &CorsPolicy) -> cors_pb::CorsPolicy {
    use matcher_pb::string_matcher::MatchPattern;
    let origins = policy
        .allow_origins
        .iter()
        .map(|origin| MatchPattern::Exact(origin.clone()))
        .chain(policy.allow_origin_regexes.iter().map(|regex| {
            MatchPattern::SafeRegex(matcher_pb::RegexMatcher {
                regex: regex.clone(),
                ..Default::default()
            })
        }))
        .map(|pattern| matcher_pb::StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        })
        .collect();
    cors_pb::CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: policy.allow_methods.join(","),
        allow_headers: policy.allow_headers.join(","),
        expose_headers: policy.expose_headers.join(","),
        max_age: policy.max_age_s.map(|s| s.to_string()).unwrap_or_default(),
        allow_credentials: policy
            .allow_credentials
            .then_some(BoolValue { value: true }),
        ..Default::default()
    }
}
