//! Validation of the HTTP filters' configs: what is accepted, and the field path of each NACK.

use std::collections::HashMap;

use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
use tollgate_proto::envoy::r#type::v3 as type_pb;
use tollgate_proto::google::protobuf::{self as pb, BoolValue};
use tollgate_proto::pack_any;

use super::*;
use crate::config::route::RouteTable;
use crate::config::{ConfigError, Resource};

const JWKS: &str = r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#;

fn provider() -> jwt_pb::JwtProvider {
    jwt_pb::JwtProvider {
        issuer: "https://issuer.example".into(),
        jwks_source_specifier: Some(jwt_pb::jwt_provider::JwksSourceSpecifier::LocalJwks(
            core_pb::DataSource {
                specifier: Some(core_pb::data_source::Specifier::InlineString(JWKS.into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn requires(name: &str) -> jwt_pb::JwtRequirement {
    jwt_pb::JwtRequirement {
        requires_type: Some(jwt_pb::jwt_requirement::RequiresType::ProviderName(
            name.into(),
        )),
    }
}

fn jwt(edit: impl FnOnce(&mut jwt_pb::JwtAuthentication)) -> Result<HttpFilterKind, String> {
    let mut proto = jwt_pb::JwtAuthentication {
        providers: HashMap::from([("p".to_owned(), provider())]),
        requirement_map: HashMap::from([("r".to_owned(), requires("p"))]),
        ..Default::default()
    };
    edit(&mut proto);
    http_filter_kind("jwt", &pack_any(&proto), |_| Ok(()))
        .map_err(|r| r.into_error(Resource::Listener("l".into())).field)
}

#[test]
fn jwt_authn_configs_are_accepted_or_nacked_naming_the_field() {
    let HttpFilterKind::JwtAuthn(config) = jwt(|_| {}).unwrap() else {
        panic!("not jwt_authn")
    };
    assert_eq!(config.providers[0].name, "p");
    assert_eq!(config.providers[0].clock_skew_seconds, 60);

    let remote = |uri: &str| {
        jwt_pb::jwt_provider::JwksSourceSpecifier::RemoteJwks(jwt_pb::RemoteJwks {
            http_uri: Some(core_pb::HttpUri {
                uri: uri.into(),
                timeout: Some(pb::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                http_upstream_type: Some(core_pb::http_uri::HttpUpstreamType::Cluster(
                    "jwks".into(),
                )),
            }),
            ..Default::default()
        })
    };
    let p = |f: fn(&mut jwt_pb::JwtProvider)| {
        move |c: &mut jwt_pb::JwtAuthentication| f(c.providers.get_mut("p").unwrap())
    };
    type Edit = Box<dyn FnOnce(&mut jwt_pb::JwtAuthentication)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "typed_config.providers.p.subjects",
            Box::new(p(|p| p.subjects = Some(Default::default()))),
        ),
        (
            "typed_config.providers.p.require_expiration",
            Box::new(p(|p| p.require_expiration = true)),
        ),
        (
            "typed_config.providers.p.max_lifetime",
            Box::new(p(|p| p.max_lifetime = Some(Default::default()))),
        ),
        (
            "typed_config.providers.p.clear_route_cache",
            Box::new(p(|p| p.clear_route_cache = true)),
        ),
        (
            "typed_config.providers.p.failed_status_in_metadata",
            Box::new(p(|p| p.failed_status_in_metadata = "status".into())),
        ),
        (
            "typed_config.providers.p.jwks_source_specifier",
            Box::new(p(|p| p.jwks_source_specifier = None)),
        ),
        (
            "typed_config.providers.p.local_jwks.inline_string",
            Box::new(p(|p| {
                p.jwks_source_specifier = Some(
                    jwt_pb::jwt_provider::JwksSourceSpecifier::LocalJwks(core_pb::DataSource {
                        specifier: Some(core_pb::data_source::Specifier::InlineString(
                            r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#.into(),
                        )),
                        ..Default::default()
                    }),
                )
            })),
        ),
        (
            "typed_config.providers.p.remote_jwks.http_uri.uri",
            Box::new(move |c: &mut jwt_pb::JwtAuthentication| {
                c.providers.get_mut("p").unwrap().jwks_source_specifier = Some(remote("jwks"))
            }),
        ),
        (
            "typed_config.providers.p.remote_jwks.retry_policy",
            Box::new(move |c: &mut jwt_pb::JwtAuthentication| {
                let mut source = remote("https://keys.example/jwks.json");
                if let jwt_pb::jwt_provider::JwksSourceSpecifier::RemoteJwks(r) = &mut source {
                    r.retry_policy = Some(Default::default());
                }
                c.providers.get_mut("p").unwrap().jwks_source_specifier = Some(source)
            }),
        ),
        (
            "typed_config.providers.p.claim_to_headers[0].claim_name",
            Box::new(p(|p| {
                p.claim_to_headers = vec![jwt_pb::JwtClaimToHeader {
                    header_name: "x-sub".into(),
                    ..Default::default()
                }]
            })),
        ),
        (
            "typed_config.providers.p.from_headers[0].name",
            Box::new(p(|p| p.from_headers = vec![Default::default()])),
        ),
        (
            "typed_config.requirement_map.r.provider_name",
            Box::new(|c| {
                c.requirement_map.insert("r".into(), requires("nobody"));
            }),
        ),
        (
            "typed_config.requirement_map.r.requires_any.requirements",
            Box::new(|c| {
                c.requirement_map.insert(
                    "r".into(),
                    jwt_pb::JwtRequirement {
                        requires_type: Some(jwt_pb::jwt_requirement::RequiresType::RequiresAny(
                            jwt_pb::JwtRequirementOrList {
                                requirements: vec![requires("p")],
                            },
                        )),
                    },
                );
            }),
        ),
        (
            "typed_config.requirement_map.r.extract_only_without_validation",
            Box::new(|c| {
                c.requirement_map.insert(
                    "r".into(),
                    jwt_pb::JwtRequirement {
                        requires_type: Some(
                            jwt_pb::jwt_requirement::RequiresType::ExtractOnlyWithoutValidation(
                                Default::default(),
                            ),
                        ),
                    },
                );
            }),
        ),
        (
            "typed_config.rules[0].requirement_name",
            Box::new(|c| {
                c.rules = vec![jwt_pb::RequirementRule {
                    r#match: Some(route_pb::RouteMatch {
                        path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix(
                            "/".into(),
                        )),
                        ..Default::default()
                    }),
                    requirement_type: Some(
                        jwt_pb::requirement_rule::RequirementType::RequirementName("x".into()),
                    ),
                }]
            }),
        ),
        (
            "typed_config.rules[0].match.runtime_fraction",
            Box::new(|c| {
                c.rules = vec![jwt_pb::RequirementRule {
                    r#match: Some(route_pb::RouteMatch {
                        path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix(
                            "/".into(),
                        )),
                        runtime_fraction: Some(Default::default()),
                        ..Default::default()
                    }),
                    requirement_type: None,
                }]
            }),
        ),
        (
            "typed_config.filter_state_rules",
            Box::new(|c| c.filter_state_rules = Some(Default::default())),
        ),
    ];
    for (field, edit) in cases {
        assert_eq!(jwt(edit).map(|_| ()), Err(field.to_owned()), "{field}");
    }

    // Envoy's own texts for the refusals it shares.
    let err = http_filter_kind(
        "jwt",
        &pack_any(&jwt_pb::JwtAuthentication {
            providers: HashMap::from([("p".to_owned(), provider())]),
            requirement_map: HashMap::from([("r".to_owned(), requires("q"))]),
            ..Default::default()
        }),
        |_| Ok(()),
    )
    .unwrap_err()
    .into_error(Resource::Listener("l".into()));
    assert_eq!(
        err.to_string(),
        "listener l: typed_config.requirement_map.r.provider_name: Required provider ['q'] is \
         not configured."
    );
}

fn route_config(route_overrides: HashMap<String, pb::Any>) -> route_pb::RouteConfiguration {
    route_pb::RouteConfiguration {
        name: "public".into(),
        virtual_hosts: vec![route_pb::VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            typed_per_filter_config: HashMap::from([(
                "envoy.filters.http.cors".to_owned(),
                pack_any(&cors_pb::CorsPolicy {
                    allow_origin_string_match: vec![matcher_pb::StringMatcher {
                        match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(
                            "https://app.example".into(),
                        )),
                        ignore_case: false,
                    }],
                    max_age: "600".into(),
                    ..Default::default()
                }),
            )]),
            routes: vec![route_pb::Route {
                r#match: Some(route_pb::RouteMatch {
                    path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                typed_per_filter_config: route_overrides,
                action: Some(route_pb::route::Action::DirectResponse(
                    route_pb::DirectResponseAction {
                        status: 200,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn table(route_overrides: HashMap<String, pb::Any>) -> Result<RouteTable, ConfigError> {
    RouteTable::try_from(&route_config(route_overrides))
}

#[test]
fn per_filter_configs_are_read_by_filter_name() {
    let jwt_route = pack_any(&jwt_pb::PerRouteConfig {
        requirement_specifier: Some(jwt_pb::per_route_config::RequirementSpecifier::Disabled(
            true,
        )),
    });
    let disabled_cors = pack_any(&route_pb::FilterConfig {
        disabled: true,
        ..Default::default()
    });
    let optional_unknown = pack_any(&route_pb::FilterConfig {
        config: Some(pb::Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
                .into(),
            value: Vec::new(),
        }),
        is_optional: true,
        disabled: false,
    });
    let table = table(HashMap::from([
        ("my-jwt".to_owned(), jwt_route),
        ("envoy.filters.http.cors".to_owned(), disabled_cors),
        ("envoy.filters.http.buffer".to_owned(), optional_unknown),
    ]))
    .unwrap();
    let vhost = &table.virtual_hosts()[0];
    let route = &vhost.routes[0];
    assert_eq!(
        route
            .filter_overrides
            .config("my-jwt")
            .and_then(PerFilterConfig::as_jwt_authn),
        Some(&jwt_authn::PerRoute::Disabled)
    );
    assert_eq!(
        route.filter_overrides.disabled("envoy.filters.http.cors"),
        Some(true)
    );
    assert!(
        route
            .filter_overrides
            .config("envoy.filters.http.buffer")
            .is_none()
    );
    let cors = vhost
        .filter_overrides
        .config("envoy.filters.http.cors")
        .and_then(PerFilterConfig::as_cors)
        .unwrap();
    assert_eq!(cors.max_age.as_ref().unwrap(), "600");
    assert!(cors.enabled);
    assert_eq!(cors.allow_credentials, None);
}

#[test]
fn per_filter_configs_nack_naming_the_key() {
    let cases: Vec<(pb::Any, &str)> = vec![
        (
            pb::Any {
                type_url:
                    "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
                        .into(),
                value: Vec::new(),
            },
            "virtual_hosts[0].routes[0].typed_per_filter_config[\"f.x\"]",
        ),
        (
            pack_any(&jwt_pb::PerRouteConfig::default()),
            "virtual_hosts[0].routes[0].typed_per_filter_config[\"f.x\"].requirement_specifier",
        ),
        (
            pack_any(&cors_pb::CorsPolicy {
                filter_enabled: Some(core_pb::RuntimeFractionalPercent {
                    default_value: Some(type_pb::FractionalPercent {
                        numerator: 50,
                        denominator: 0,
                    }),
                    runtime_key: String::new(),
                }),
                ..Default::default()
            }),
            "virtual_hosts[0].routes[0].typed_per_filter_config[\"f.x\"].filter_enabled\
             .default_value.numerator",
        ),
        (
            pack_any(&cors_pb::CorsPolicy {
                allow_methods: "GET\r\nX: y".into(),
                ..Default::default()
            }),
            "virtual_hosts[0].routes[0].typed_per_filter_config[\"f.x\"].allow_methods",
        ),
        (
            pack_any(&route_pb::FilterConfig {
                config: Some(pack_any(&jwt_pb::PerRouteConfig::default())),
                ..Default::default()
            }),
            "virtual_hosts[0].routes[0].typed_per_filter_config[\"f.x\"].config\
             .requirement_specifier",
        ),
    ];
    for (any, field) in cases {
        let err = table(HashMap::from([("f.x".to_owned(), any)])).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
    // Full 0 % and 100 % are fine; so is a policy that only sets credentials.
    for numerator in [0, 100] {
        let policy = pack_any(&cors_pb::CorsPolicy {
            filter_enabled: Some(core_pb::RuntimeFractionalPercent {
                default_value: Some(type_pb::FractionalPercent {
                    numerator,
                    denominator: 0,
                }),
                runtime_key: "cors.enabled".into(),
            }),
            allow_credentials: Some(BoolValue { value: true }),
            ..Default::default()
        });
        assert!(table(HashMap::from([("c".to_owned(), policy)])).is_ok());
    }
    // Bytes that are not the type they claim to be.
    let garbage = pb::Any {
        type_url: pack_any(&cors_pb::CorsPolicy::default()).type_url,
        value: vec![0xff, 0xff],
    };
    let err = table(HashMap::from([("c".to_owned(), garbage)])).unwrap_err();
    assert_eq!(
        err.field,
        "virtual_hosts[0].routes[0].typed_per_filter_config.c.value"
    );
}
