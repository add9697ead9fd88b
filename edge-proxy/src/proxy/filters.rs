//! The HTTP filter chain on the request path: after route matching, before the route's action
//! (forward, redirect or direct response, as Envoy's decoder filters run before the router),
//! and on the response in reverse.
//!
//! [`on_request`] runs the listener's filters in order, skipping those the route disables. A
//! filter may change the request head, or answer it ([`Outcome::Respond`]); later filters and
//! the route's action then do not run. What authentication finds (JWT payloads, the API key's
//! consumer) is kept for the request in a [`Metadata`] that RBAC, and later the route's
//! header templates, read. Response work ([`ResponseWork`]) is collected from the
//! filters that ran and applied by [`on_response`] to whatever answers the request: the
//! upstream's response, a redirect or direct response, the router's own errors, or a filter's
//! answer.
//!
//! A listener whose only filter is the router costs nothing here: [`has_request_filters`] is
//! false and the caller skips the chain; no allocation is made either way unless a filter has
//! work for the response.

use http::{HeaderMap, Response};

use super::DataPlane;
use super::body::DownstreamBody;
use crate::config::filters::transform::TransformPerRoute;
use crate::config::filters::{HttpFilter, HttpFilterKind};
use crate::config::route::{Matched, RouteAction};
use crate::filter::{self, Metadata, cors};

/// Whether the chain has any filter besides the router.
pub(crate) fn has_request_filters(filters: &[HttpFilter]) -> bool {
    filters.iter().any(|f| !f.is_router())
}

/// What the filters that ran want done to the body and the response.
#[derive(Debug, Default)]
pub(crate) struct ResponseWork<'t> {
    /// CORS latches, in filter order.
    cors: Vec<cors::CorsLatch>,
    /// The quota filter's `RateLimit-Policy`, `RateLimit` (and legacy) fields.
    rate_limit: filter::rate_limit::ResponseHeaders,
    /// The route's body transforms, when the transform filter ran: the caller transforms the
    /// request body before forwarding and the response body as it comes back.
    pub(crate) transform: Option<&'t TransformPerRoute>,
}

/// How the request goes on after the filters.
// Returned once per request and consumed at once: boxing the answer would only add an
// allocation to every filter answer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Outcome {
    /// To the route's action.
    Continue,
    /// A filter answered.
    Respond {
        /// The answer.
        response: Response<DownstreamBody>,
        /// Whether it is an Envoy "local reply" (jwt_authn's 401/403, ext_authz's 401 for API
        /// keys, RBAC's 403), which gets the route's
        /// response headers on forwarding routes; the CORS preflight answer is written
        /// directly by Envoy's filter and does not (both checked against Envoy 1.40).
        local_reply: bool,
    },
}

/// Runs the request side of every filter up to the router.
pub(crate) async fn on_request<'c>(
    plane: &'c DataPlane,
    filters: &'c [HttpFilter],
    matched: &Matched<'c>,
    req: &mut filter::Request<'_, '_>,
    work: &mut ResponseWork<'c>,
    metadata: &mut Metadata<'c>,
) -> Outcome {
    for filter in filters {
        if filter.is_router() {
            break;
        }
        if matched.filter_disabled(&filter.name) {
            continue;
        }
        match &filter.kind {
            HttpFilterKind::Router => break,
            HttpFilterKind::Cors => {
                let [route, vhost] = matched.filter_configs(&filter.name);
                let policies = [
                    route.and_then(|c| c.as_cors()),
                    vhost.and_then(|c| c.as_cors()),
                ];
                let forwarding = matches!(matched.route.action, RouteAction::Forward(_));
                match cors::on_request(policies, forwarding, req.method, req.headers) {
                    cors::Outcome::Skip => {}
                    cors::Outcome::Continue(latch) => work.cors.extend(latch),
                    cors::Outcome::Respond(response, latch) => {
                        work.cors.extend(latch);
                        return Outcome::Respond {
                            response,
                            local_reply: false,
                        };
                    }
                }
            }
            HttpFilterKind::JwtAuthn(config) => {
                let per_route = matched
                    .filter_config(&filter.name)
                    .and_then(|c| c.as_jwt_authn());
                let answer =
                    filter::jwt::on_request(config, per_route, &plane.upstreams, req, metadata);
                if let Some(response) = answer.await {
                    return Outcome::Respond {
                        response,
                        local_reply: true,
                    };
                }
            }
            HttpFilterKind::ApiKey(config) => {
                let per_route = matched
                    .filter_config(&filter.name)
                    .and_then(|c| c.as_api_key());
                let table = plane
                    .snapshot
                    .api_key_tables
                    .get(&config.key_table)
                    .map(|t| &**t);
                if let Some(response) =
                    filter::api_key::on_request(config, per_route, table, req, metadata)
                {
                    return Outcome::Respond {
                        response,
                        local_reply: true,
                    };
                }
            }
            HttpFilterKind::Rbac(config) => {
                // The most specific per-route config replaces the listener's rules, whichever
                // it holds.
                let per_route = matched
                    .filter_config(&filter.name)
                    .and_then(|c| c.as_rbac());
                if let Some(response) = filter::rbac::on_request(config, per_route, req, metadata) {
                    return Outcome::Respond {
                        response,
                        local_reply: true,
                    };
                }
            }
            HttpFilterKind::RateLimit(config) => {
                let per_route = matched
                    .filter_config(&filter.name)
                    .and_then(|c| c.as_rate_limit());
                let checked = filter::rate_limit::on_request(
                    config,
                    per_route,
                    &plane.quotas,
                    &matched.route.name,
                    req,
                    metadata,
                );
                match checked.await {
                    Ok(headers) => work.rate_limit.extend(headers),
                    // Envoy's ratelimit filter answers with a local reply too.
                    Err(response) => {
                        return Outcome::Respond {
                            response,
                            local_reply: true,
                        };
                    }
                }
            }
            HttpFilterKind::Transform => {
                // Bodies are read later, once the request is through every filter.
                work.transform = matched
                    .filter_config(&filter.name)
                    .and_then(|c| c.as_transform());
            }
        }
    }
    Outcome::Continue
}

/// Applies the filters' response work, last filter first. The quota filter's fields are
/// moved into the response, once.
pub(crate) fn on_response(work: &mut ResponseWork<'_>, headers: &mut HeaderMap) {
    for (name, value) in work.rate_limit.drain(..) {
        headers.insert(name, value);
    }
    for latch in work.cors.iter().rev() {
        latch.apply(headers);
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;

    use http::{HeaderValue, Method, StatusCode};
    use tollgate_proto::envoy::config::core::v3 as core_pb;
    use tollgate_proto::envoy::config::route::v3 as route_pb;
    use tollgate_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
    use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;
    use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
    use tollgate_proto::google::protobuf as pb;
    use tollgate_proto::pack_any;

    use super::*;
    use crate::config::filters::jwt_authn::JwtAuthn;
    use crate::config::route::{RequestHead, RouteTable};
    use crate::snapshot::Snapshot;
    use crate::upstream::Upstreams;

    const CORS: &str = "envoy.filters.http.cors";
    const JWT: &str = "envoy.filters.http.jwt_authn";

    fn jwt_filter() -> HttpFilter {
        let provider = jwt_pb::JwtProvider {
            jwks_source_specifier: Some(jwt_pb::jwt_provider::JwksSourceSpecifier::LocalJwks(
                core_pb::DataSource {
                    specifier: Some(core_pb::data_source::Specifier::InlineString(
                        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into(),
                    )),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let config = JwtAuthn::try_from_proto(jwt_pb::JwtAuthentication {
            providers: HashMap::from([("p".to_owned(), provider)]),
            rules: vec![jwt_pb::RequirementRule {
                r#match: Some(route_pb::RouteMatch {
                    path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                requirement_type: Some(jwt_pb::requirement_rule::RequirementType::Requires(
                    jwt_pb::JwtRequirement {
                        requires_type: Some(jwt_pb::jwt_requirement::RequiresType::ProviderName(
                            "p".into(),
                        )),
                    },
                )),
            }],
            ..Default::default()
        })
        .unwrap();
        HttpFilter {
            name: JWT.into(),
            kind: HttpFilterKind::JwtAuthn(Arc::new(config)),
        }
    }

    fn chain(jwt_first: bool) -> Vec<HttpFilter> {
        let cors = HttpFilter {
            name: CORS.into(),
            kind: HttpFilterKind::Cors,
        };
        let router = HttpFilter {
            name: "envoy.filters.http.router".into(),
            kind: HttpFilterKind::Router,
        };
        if jwt_first {
            vec![jwt_filter(), cors, router]
        } else {
            vec![cors, jwt_filter(), router]
        }
    }

    fn route(prefix: &str, overrides: HashMap<String, pb::Any>) -> route_pb::Route {
        route_pb::Route {
            r#match: Some(route_pb::RouteMatch {
                path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix(prefix.into())),
                ..Default::default()
            }),
            typed_per_filter_config: overrides,
            action: Some(route_pb::route::Action::Route(route_pb::RouteAction {
                cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::Cluster(
                    "app".into(),
                )),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn table() -> RouteTable {
        let no_jwt = pack_any(&jwt_pb::PerRouteConfig {
            requirement_specifier: Some(jwt_pb::per_route_config::RequirementSpecifier::Disabled(
                true,
            )),
        });
        let jwt_filter_off = pack_any(&route_pb::FilterConfig {
            disabled: true,
            ..Default::default()
        });
        let proto = route_pb::RouteConfiguration {
            name: "public".into(),
            virtual_hosts: vec![route_pb::VirtualHost {
                name: "vh".into(),
                domains: vec!["*".into()],
                typed_per_filter_config: HashMap::from([(
                    CORS.to_owned(),
                    pack_any(&cors_pb::CorsPolicy {
                        allow_origin_string_match: vec![matcher_pb::StringMatcher {
                            match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Suffix(
                                ".example".into(),
                            )),
                            ignore_case: false,
                        }],
                        allow_methods: "GET".into(),
                        ..Default::default()
                    }),
                )]),
                routes: vec![
                    route("/public", HashMap::from([(JWT.to_owned(), no_jwt)])),
                    route("/open", HashMap::from([(JWT.to_owned(), jwt_filter_off)])),
                    route("/", HashMap::new()),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        RouteTable::try_from(&proto).unwrap()
    }

    fn plane() -> DataPlane {
        DataPlane {
            snapshot: Arc::new(Snapshot {
                version: "1".into(),
                versions: BTreeMap::new(),
                listeners: BTreeMap::new(),
                route_tables: BTreeMap::new(),
                clusters: BTreeMap::new(),
                endpoints: BTreeMap::new(),
                certificates: BTreeMap::new(),
                api_key_tables: BTreeMap::new(),
            }),
            upstreams: Arc::new(Upstreams::default()),
            quotas: filter::rate_limit::Quotas::in_process(),
        }
    }

    /// Runs the chain for a request; the answer (a filter's, or a stand-in 200 for the route's
    /// action) after the response side.
    async fn serve(filters: &[HttpFilter], method: Method, path: &str) -> Response<DownstreamBody> {
        let table = table();
        let plane = plane();
        let mut headers = HeaderMap::new();
        headers.insert("origin", HeaderValue::from_static("https://app.example"));
        headers.insert(
            "access-control-request-method",
            HeaderValue::from_static("GET"),
        );
        let head = RequestHead {
            method: method.as_str(),
            scheme: "http",
            authority: "api",
            path_and_query: path,
            headers: &headers,
        };
        let matched = table.find(&head).unwrap();
        let mut path_and_query = Cow::Borrowed(path);
        let mut req = filter::Request {
            method: &method,
            scheme: "http",
            authority: "api",
            path_and_query: &mut path_and_query,
            headers: &mut headers,
            addresses: crate::proxy::headers::Addresses::direct([192, 0, 2, 1].into()),
        };
        let mut work = ResponseWork::default();
        let mut metadata = Metadata::default();
        let outcome = on_request(
            &plane,
            filters,
            &matched,
            &mut req,
            &mut work,
            &mut metadata,
        );
        let mut response = match outcome.await {
            Outcome::Respond { response, .. } => response,
            Outcome::Continue => Response::new(super::super::body::full("upstream")),
        };
        on_response(&mut work, response.headers_mut());
        response
    }

    #[tokio::test]
    async fn filters_run_in_order_and_cors_decorates_later_answers() {
        assert!(!has_request_filters(&chain(false)[2..]));
        assert!(has_request_filters(&chain(false)));

        // CORS first: the preflight is answered before authentication.
        let response = serve(&chain(false), Method::OPTIONS, "/private").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["access-control-allow-methods"], "GET");

        // CORS first: JWT's 401 carries the CORS headers, so browsers can read it.
        let response = serve(&chain(false), Method::GET, "/private").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "https://app.example"
        );

        // JWT first: the preflight itself needs a token, and the 401 has no CORS headers.
        let response = serve(&chain(true), Method::OPTIONS, "/private").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    }

    #[tokio::test]
    async fn routes_turn_filters_off_by_name() {
        // jwt_authn's PerRouteConfig `disabled`, and a FilterConfig `disabled` for the filter.
        for path in ["/public/x", "/open/x"] {
            let response = serve(&chain(true), Method::GET, path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(
                response.headers()["access-control-allow-origin"],
                "https://app.example"
            );
        }
    }
}
