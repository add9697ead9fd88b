//! Policies → Envoy's HTTP filters: the connection manager gets one filter per policy type in
//! use on the listener (CORS before authentication, as the request flows), and each route its
//! own settings in `typed_per_filter_config`. Envoy and the edge proxy read the same configs.

use std::collections::BTreeMap;

use tollgate_proto::api_key as api_key_pb;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
use tollgate_proto::envoy::extensions::filters::http::ext_authz::v3 as ext_authz_pb;
use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
use tollgate_proto::google::protobuf::{Any, BoolValue};
use tollgate_proto::transform as transform_pb;

use super::{NodeKind, TranslateContext};
use crate::model::{
    ApiKeyPolicy, AuthorizationPolicy, BodyConversion, BodyTransform, Cluster, CorsPolicy,
    Endpoint, IpFilterPolicy, JwtPolicy, KeyCase, Listener, Policy, RateLimitPolicy, Route,
    TemplatePart, TransformPolicy, UpstreamTls, parse_template,
};

/// The connection manager's name for the CORS filter; routes key their `CorsPolicy` by it.
pub(super) const CORS_FILTER: &str = "envoy.filters.http.cors";
/// The connection manager's name for the JWT filter; routes key their requirement by it.
pub(super) const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

/// The edge proxy's API-key filter; routes key their requirement by it.
pub(super) const API_KEY_FILTER: &str = "tollgate.filters.http.api_key";
/// Envoy's external authorization filter, calling the control plane for API keys.
pub(super) const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
/// The edge proxy's body transform filter; routes key their body changes by it.
pub(super) const TRANSFORM_FILTER: &str = "tollgate.filters.http.transform";
/// The SDS secret holding the API-key table for edge proxies. `:` keeps it apart from
/// certificate names.
pub(super) const API_KEY_TABLE_SECRET: &str = "tollgate:api-keys";
/// The cluster Envoy reaches the control plane's gRPC services (ext_authz) through.
pub(super) const CONTROL_PLANE_CLUSTER: &str = "tollgate:control-plane";
/// The ext_authz context extension naming a route's API-key policies (comma-separated).
pub(crate) const API_KEY_POLICIES_EXTENSION: &str = "tollgate.api_key_policies";
/// How long Envoy waits for the control plane's API-key check.
const EXT_AUTHZ_TIMEOUT_MS: u32 = 1_000;

/// How long a proxy waits for a JWKS fetch.
const JWKS_FETCH_TIMEOUT_MS: u32 = 5_000;

/// The policies in force on one route served by one listener: the listener's, then the
/// route's; a route's CORS policy replaces the listener's.
#[derive(Debug, Default)]
pub(super) struct RoutePolicies<'a> {
    cors: Option<&'a CorsPolicy>,
    jwt: Vec<&'a JwtPolicy>,
    api_key: Vec<&'a ApiKeyPolicy>,
    authorization: Vec<&'a AuthorizationPolicy>,
    ip_filter: Vec<&'a IpFilterPolicy>,
    transform: Vec<&'a TransformPolicy>,
    rate_limit: Vec<&'a RateLimitPolicy>,
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
                Some(Policy::ApiKey(key)) if !out.api_key.iter().any(|p| p.name == key.name) => {
                    out.api_key.push(key);
                }
                Some(Policy::Authorization(authz))
                    if !out.authorization.iter().any(|p| p.name == authz.name) =>
                {
                    out.authorization.push(authz);
                }
                Some(Policy::IpFilter(ip)) if !out.ip_filter.iter().any(|p| p.name == ip.name) => {
                    out.ip_filter.push(ip);
                }
                Some(Policy::Transform(t)) if !out.transform.iter().any(|p| p.name == t.name) => {
                    out.transform.push(t);
                }
                // Envoy counts only requests it forwards: a redirect or a direct response has no
                // route entry for its rate-limit filter to read. Edge proxies get the same
                // configs, so they do not count them either.
                Some(Policy::RateLimit(r))
                    if route.forwards() && !out.rate_limit.iter().any(|p| p.name == r.name) =>
                {
                    out.rate_limit.push(r);
                }
                Some(
                    Policy::Jwt(_)
                    | Policy::ApiKey(_)
                    | Policy::Authorization(_)
                    | Policy::IpFilter(_)
                    | Policy::Transform(_)
                    | Policy::RateLimit(_),
                )
                | None => {}
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

    /// Whether IP filters or authorization policies apply (the RBAC filter's job).
    fn restricts_callers(&self) -> bool {
        !self.ip_filter.is_empty() || !self.authorization.is_empty()
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

    /// Adds what the route's policies need to its translated form, for a node of kind `node`
    /// on a listener whose filters are `filters`: per-filter configs, and the header and path
    /// changes of transforms (appended after the route's own).
    pub(super) fn decorate(
        &self,
        node: NodeKind,
        filters: &ListenerFilters<'_>,
        route: &mut route_pb::Route,
    ) {
        route.typed_per_filter_config = self.per_filter_config(node, filters, &route.name);
        for transform in &self.transform {
            if let Some(request) = &transform.request {
                append_templated(
                    &request.headers,
                    &mut route.request_headers_to_add,
                    &mut route.request_headers_to_remove,
                );
                if let (Some(path), Some(route_pb::route::Action::Route(action))) =
                    (&request.path, route.action.as_mut())
                {
                    action.regex_rewrite =
                        Some(super::route::regex_rewrite(&path.regex, &path.substitution));
                }
            }
            if let Some(response) = &transform.response {
                append_templated(
                    &response.headers,
                    &mut route.response_headers_to_add,
                    &mut route.response_headers_to_remove,
                );
            }
        }
    }

    /// The body changes of the route's transforms, for edge proxies.
    fn body_transforms(&self) -> Option<transform_pb::TransformPerRoute> {
        let mut out = transform_pb::TransformPerRoute::default();
        for transform in &self.transform {
            let request = transform.request.as_ref().and_then(|r| r.body.as_ref());
            let response = transform.response.as_ref().and_then(|r| r.body.as_ref());
            out.request.extend(request.map(body_transform));
            out.response.extend(response.map(body_transform));
        }
        (!out.request.is_empty() || !out.response.is_empty()).then_some(out)
    }

    /// The route's `typed_per_filter_config` for a node of kind `node` on a listener whose
    /// filters are `filters`.
    fn per_filter_config(
        &self,
        node: NodeKind,
        filters: &ListenerFilters<'_>,
        route_name: &str,
    ) -> std::collections::HashMap<String, Any> {
        let mut out = BTreeMap::new();
        let key_policies: Vec<String> = self.api_key.iter().map(|p| p.name.clone()).collect();
        match node {
            NodeKind::Tollgate if !key_policies.is_empty() => {
                let per_route = api_key_pb::ApiKeyPerRoute {
                    providers: key_policies,
                };
                out.insert(
                    API_KEY_FILTER.to_owned(),
                    tollgate_proto::pack_any(&per_route),
                );
            }
            NodeKind::Tollgate => {}
            // Envoy's ext_authz checks every route unless told otherwise.
            NodeKind::Envoy | NodeKind::Other if !filters.api_key_providers.is_empty() => {
                use ext_authz_pb::ext_authz_per_route::Override;
                let setting = if key_policies.is_empty() {
                    Override::Disabled(true)
                } else {
                    Override::CheckSettings(ext_authz_pb::CheckSettings {
                        context_extensions: [(
                            API_KEY_POLICIES_EXTENSION.to_owned(),
                            key_policies.join(","),
                        )]
                        .into(),
                        ..Default::default()
                    })
                };
                let per_route = ext_authz_pb::ExtAuthzPerRoute {
                    r#override: Some(setting),
                };
                out.insert(
                    EXT_AUTHZ_FILTER.to_owned(),
                    tollgate_proto::pack_any(&per_route),
                );
            }
            NodeKind::Envoy | NodeKind::Other => {}
        }
        if let Some(cors) = self.cors {
            out.insert(
                CORS_FILTER.to_owned(),
                tollgate_proto::pack_any(&cors_policy(cors)),
            );
        }
        if let (NodeKind::Tollgate, Some(bodies)) = (node, self.body_transforms()) {
            out.insert(
                TRANSFORM_FILTER.to_owned(),
                tollgate_proto::pack_any(&bodies),
            );
        }
        if self.restricts_callers() {
            out.insert(
                super::rbac::RBAC_FILTER.to_owned(),
                tollgate_proto::pack_any(&super::rbac::per_route(
                    &self.ip_filter,
                    &self.authorization,
                )),
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
        if !self.rate_limit.is_empty() {
            match node {
                NodeKind::Tollgate => {
                    out.insert(
                        super::rate_limit::RATE_LIMIT_FILTER.to_owned(),
                        tollgate_proto::pack_any(&super::rate_limit::edge_per_route(
                            &self.rate_limit,
                        )),
                    );
                }
                // Each of Envoy's two rate-limit filters asks for its failure mode's policies.
                NodeKind::Envoy | NodeKind::Other => {
                    for fail_closed in [false, true] {
                        let policies: Vec<&RateLimitPolicy> = self
                            .rate_limit
                            .iter()
                            .copied()
                            .filter(|p| p.fails_closed() == fail_closed)
                            .collect();
                        if !policies.is_empty() {
                            out.insert(
                                super::rate_limit::envoy_filter_name(fail_closed).to_owned(),
                                tollgate_proto::pack_any(&super::rate_limit::envoy_per_route(
                                    &policies, route_name,
                                )),
                            );
                        }
                    }
                }
            }
        }
        super::stable_map(out)
    }
}

/// Collects what one listener's connection manager needs from the policies of its routes.
#[derive(Debug, Default)]
pub(super) struct ListenerFilters<'a> {
    cors: bool,
    providers: BTreeMap<&'a str, &'a JwtPolicy>,
    requirements: BTreeMap<String, jwt_pb::JwtRequirement>,
    api_key_providers: BTreeMap<&'a str, &'a ApiKeyPolicy>,
    rbac: bool,
    body_transforms: bool,
    rate_limits: BTreeMap<&'a str, &'a RateLimitPolicy>,
}

impl<'a> ListenerFilters<'a> {
    /// Records a route's policies.
    pub(super) fn add(&mut self, route: &RoutePolicies<'a>) {
        self.cors |= route.cors.is_some();
        self.rbac |= route.restricts_callers();
        self.body_transforms |= route.body_transforms().is_some();
        for jwt in &route.jwt {
            self.providers.insert(&jwt.name, jwt);
        }
        for key in &route.api_key {
            self.api_key_providers.insert(&key.name, key);
        }
        for limit in &route.rate_limit {
            self.rate_limits.insert(&limit.name, limit);
        }
        if let Some(name) = route.jwt_requirement_name() {
            self.requirements
                .entry(name)
                .or_insert_with(|| route.jwt_requirement());
        }
    }

    /// Whether a route on the listener checks API keys.
    pub(super) fn uses_api_keys(&self) -> bool {
        !self.api_key_providers.is_empty()
    }

    /// Whether a route on the listener has rate limits.
    pub(super) fn uses_rate_limits(&self) -> bool {
        !self.rate_limits.is_empty()
    }

    /// The connection manager's filters, router last: CORS, then authentication (JWT, then
    /// API keys), then authorization (RBAC), then quotas, then body transforms. A filter is present only
    /// when a route uses it, so listeners without policies cost nothing extra.
    pub(super) fn http_filters(
        &self,
        node: NodeKind,
        router: hcm_pb::HttpFilter,
    ) -> Vec<hcm_pb::HttpFilter> {
        let mut filters = Vec::new();
        if self.cors {
            filters.push(http_filter(CORS_FILTER, &cors_pb::Cors::default()));
        }
        if !self.providers.is_empty() {
            let config = jwt_pb::JwtAuthentication {
                providers: super::stable_map(
                    self.providers
                        .iter()
                        .map(|(name, policy)| ((*name).to_owned(), jwt_provider(policy))),
                ),
                requirement_map: super::stable_map(
                    self.requirements
                        .iter()
                        .map(|(name, requirement)| (name.clone(), requirement.clone())),
                ),
                ..Default::default()
            };
            filters.push(http_filter(JWT_FILTER, &config));
        }
        if self.uses_api_keys() {
            filters.push(match node {
                NodeKind::Tollgate => {
                    http_filter(
                        API_KEY_FILTER,
                        &api_key_pb::ApiKeyAuth {
                            providers: super::stable_map(self.api_key_providers.iter().map(
                                |(name, policy)| ((*name).to_owned(), api_key_provider(policy)),
                            )),
                            key_table: API_KEY_TABLE_SECRET.to_owned(),
                        },
                    )
                }
                NodeKind::Envoy | NodeKind::Other => http_filter(EXT_AUTHZ_FILTER, &ext_authz()),
            });
        }
        // Authorization reads what authentication found, so it comes after it.
        if self.rbac {
            filters.push(http_filter(
                super::rbac::RBAC_FILTER,
                &super::rbac::filter(),
            ));
        }
        // Quotas count requests that may pass, by the identity authentication found.
        if self.uses_rate_limits() {
            match node {
                NodeKind::Tollgate => filters.push(http_filter(
                    super::rate_limit::RATE_LIMIT_FILTER,
                    &super::rate_limit::edge_filter(self.rate_limits.values().copied()),
                )),
                // One filter per failure mode: Envoy's is the filter's, not the descriptor's.
                NodeKind::Envoy | NodeKind::Other => {
                    for fail_closed in [false, true] {
                        if self
                            .rate_limits
                            .values()
                            .any(|p| p.fails_closed() == fail_closed)
                        {
                            filters.push(http_filter(
                                super::rate_limit::envoy_filter_name(fail_closed),
                                &super::rate_limit::envoy_filter(fail_closed),
                            ));
                        }
                    }
                }
            }
        }
        // Bodies are transformed for requests that got through; Envoy has no such filter.
        if self.body_transforms && node == NodeKind::Tollgate {
            filters.push(http_filter(TRANSFORM_FILTER, &transform_pb::Transform {}));
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

/// Appends a transform's header changes, values as templates, after the route's own.
fn append_templated(
    headers: &crate::model::HeaderMutations,
    to_add: &mut Vec<core_pb::HeaderValueOption>,
    to_remove: &mut Vec<String>,
) {
    to_add.extend(super::route::header_options(
        &headers.set,
        &headers.add,
        envoy_format,
    ));
    to_remove.extend(headers.remove.iter().cloned());
}

/// A header template in Envoy's substitution format, which the edge proxy reads too.
fn envoy_format(template: &str) -> String {
    // Validated by the store.
    let parts = parse_template(template).unwrap_or_default();
    let mut out = String::new();
    for part in parts {
        match part {
            TemplatePart::Literal(text) => out.push_str(&text.replace('%', "%%")),
            TemplatePart::Claim(path) => out.push_str(&format!(
                "%DYNAMIC_METADATA({JWT_FILTER}:{}:{})%",
                super::rbac::JWT_PAYLOAD_KEY,
                path.join(":")
            )),
            TemplatePart::ConsumerName => out.push_str(&format!(
                "%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:{})%",
                super::rbac::CONSUMER_KEY
            )),
            TemplatePart::ConsumerTier => out.push_str(&format!(
                "%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:{})%",
                super::rbac::TIER_KEY
            )),
            TemplatePart::Header(name) => out.push_str(&format!("%REQ({name})%")),
            TemplatePart::ClientIp => out.push_str("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        }
    }
    out
}

fn body_transform(body: &BodyTransform) -> transform_pb::BodyTransform {
    transform_pb::BodyTransform {
        convert: match body.convert {
            None => transform_pb::Conversion::None,
            Some(BodyConversion::XmlToJson) => transform_pb::Conversion::XmlToJson,
            Some(BodyConversion::JsonToXml) => transform_pb::Conversion::JsonToXml,
        } as i32,
        rename_keys: match body.rename_keys {
            None => transform_pb::KeyCase::Unchanged,
            Some(KeyCase::SnakeCase) => transform_pb::KeyCase::SnakeCase,
            Some(KeyCase::CamelCase) => transform_pb::KeyCase::CamelCase,
        } as i32,
        remove: body.remove.clone(),
        add: super::stable_map(
            body.add
                .iter()
                .map(|(path, value)| (path.clone(), value.to_string())),
        ),
        reject_invalid: body.on_invalid == crate::model::OnInvalidBody::Reject,
    }
}

fn api_key_provider(policy: &ApiKeyPolicy) -> api_key_pb::ApiKeyProvider {
    api_key_pb::ApiKeyProvider {
        header: policy.header.clone(),
        query: policy.query.clone().unwrap_or_default(),
        forward_key: policy.forward_key,
    }
}

/// Envoy's ext_authz filter, asking the control plane's `Authorization` service. If the
/// control plane cannot answer, requests fail closed with 503: an API key that cannot be
/// checked is not accepted.
fn ext_authz() -> ext_authz_pb::ExtAuthz {
    use tollgate_proto::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
    ext_authz_pb::ExtAuthz {
        services: Some(ext_authz_pb::ext_authz::Services::GrpcService(
            core_pb::GrpcService {
                timeout: Some(super::duration_ms(EXT_AUTHZ_TIMEOUT_MS)),
                target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                    cluster_name: CONTROL_PLANE_CLUSTER.to_owned(),
                    ..Default::default()
                })),
                ..Default::default()
            },
        )),
        transport_api_version: core_pb::ApiVersion::V3 as i32,
        status_on_error: Some(tollgate_proto::envoy::r#type::v3::HttpStatus {
            code: tollgate_proto::envoy::r#type::v3::StatusCode::ServiceUnavailable as i32,
        }),
        ..Default::default()
    }
}

/// The cluster Envoy reaches the control plane's gRPC services through (HTTP/2).
pub(super) fn control_plane_cluster(context: &TranslateContext) -> Cluster {
    Cluster {
        name: CONTROL_PLANE_CLUSTER.to_owned(),
        endpoints: vec![Endpoint {
            address: context.grpc_host.clone(),
            port: context.grpc_port,
            weight: 1,
        }],
        lb_policy: Default::default(),
        connect_timeout_ms: EXT_AUTHZ_TIMEOUT_MS,
        http2: true,
        health_check: None,
        outlier_detection: None,
        circuit_breakers: None,
        tls: None,
    }
}

/// The SDS secret carrying every consumer's key hashes, and the key they are made with, to
/// edge proxies.
pub(super) fn api_key_table(
    consumers: &BTreeMap<String, crate::model::Consumer>,
    context: &TranslateContext,
) -> tls_pb::Secret {
    use prost::Message as _;
    let table = api_key_pb::ApiKeyTable {
        hmac_secret: context.api_key_secret.to_vec(),
        consumers: consumers
            .values()
            .filter(|c| c.api_key_hashes.as_ref().is_some_and(|h| !h.is_empty()))
            .map(|c| api_key_pb::ApiKeyConsumer {
                name: c.name.clone(),
                tier: c.tier.clone().unwrap_or_default(),
                key_hashes: c.api_key_hashes.clone().unwrap_or_default(),
                groups: c.groups.clone(),
            })
            .collect(),
    };
    tls_pb::Secret {
        name: API_KEY_TABLE_SECRET.to_owned(),
        r#type: Some(tls_pb::secret::Type::GenericSecret(tls_pb::GenericSecret {
            secret: Some(core_pb::DataSource {
                specifier: Some(core_pb::data_source::Specifier::InlineBytes(
                    table.encode_to_vec(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        })),
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
        // Authorization policies match claims in the verified payload, with `scope` split
        // into a list as OAuth defines it.
        payload_in_metadata: super::rbac::JWT_PAYLOAD_KEY.to_owned(),
        normalize_payload_in_metadata: Some(jwt_pb::jwt_provider::NormalizePayload {
            space_delimited_claims: vec!["scope".to_owned()],
        }),
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
