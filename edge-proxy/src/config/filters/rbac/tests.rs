//! The RBAC filter's configs: what is accepted (everything the control plane emits), and the
//! field path of each NACK.

use std::collections::HashMap;

use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::google::protobuf::UInt32Value;
use tollgate_proto::pack_any;

use super::*;
use crate::config::Resource;
use crate::config::filters::{HttpFilterKind, http_filter_kind};

pub(crate) fn id(identifier: rbac_pb::principal::Identifier) -> rbac_pb::Principal {
    rbac_pb::Principal {
        identifier: Some(identifier),
    }
}

pub(crate) fn cidr(prefix: &str, len: u32) -> core_pb::CidrRange {
    core_pb::CidrRange {
        address_prefix: prefix.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

pub(crate) fn exact(value: &str) -> matcher_pb::ValueMatcher {
    matcher_pb::ValueMatcher {
        match_pattern: Some(matcher_pb::value_matcher::MatchPattern::StringMatch(
            matcher_pb::StringMatcher {
                match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(
                    value.into(),
                )),
                ignore_case: false,
            },
        )),
    }
}

pub(crate) fn metadata(
    namespace: &str,
    path: &[&str],
    value: matcher_pb::ValueMatcher,
) -> rbac_pb::Principal {
    use matcher_pb::metadata_matcher::{PathSegment, path_segment::Segment};
    id(rbac_pb::principal::Identifier::SourcedMetadata(
        rbac_pb::SourcedMetadata {
            metadata_matcher: Some(matcher_pb::MetadataMatcher {
                filter: namespace.into(),
                path: path
                    .iter()
                    .map(|k| PathSegment {
                        segment: Some(Segment::Key((*k).into())),
                    })
                    .collect(),
                value: Some(value),
                invert: false,
            }),
            metadata_source: rbac_pb::MetadataSource::Dynamic as i32,
        },
    ))
}

pub(crate) fn rules(
    action: rbac_pb::rbac::Action,
    principals: Vec<rbac_pb::Principal>,
) -> rbac_pb::Rbac {
    rbac_pb::Rbac {
        action: action as i32,
        policies: HashMap::from([(
            "p".to_owned(),
            rbac_pb::Policy {
                permissions: vec![rbac_pb::Permission {
                    rule: Some(rbac_pb::permission::Rule::Any(true)),
                }],
                principals,
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

fn build(proto: &rbac_filter_pb::Rbac) -> Result<std::sync::Arc<Rbac>, String> {
    match http_filter_kind("rbac", &pack_any(proto), |_| Ok(())) {
        Ok(HttpFilterKind::Rbac(rbac)) => Ok(rbac),
        Ok(other) => panic!("not RBAC: {other:?}"),
        Err(r) => Err(r.into_error(Resource::Listener("l".into())).field),
    }
}

#[test]
fn the_control_planes_rbac_configs_are_accepted() {
    use tollgate_control_plane::model::{Policy as ModelPolicy, Route as ModelRoute};
    use tollgate_control_plane::store::StoreSnapshot;
    use tollgate_control_plane::translate::{NodeGroup, NodeKind, ResourceType, translate};
    use tollgate_proto::envoy::config::route::v3 as route_pb;

    let policies: Vec<ModelPolicy> = serde_json::from_value(serde_json::json!([
        {"type": "authorization", "name": "admins",
         "require_claims": {"role": ["admin", "ops"], "org.id": ["acme"]},
         "require_scopes": ["orders:write"]},
        {"type": "authorization", "name": "partners",
         "allow_consumer_groups": ["partners"], "allow_consumers": ["vip"]},
        {"type": "ip_filter", "name": "office",
         "allow": ["10.1.0.0/16", "2001:db8::/32"], "deny": ["10.1.2.0/24"]},
        {"type": "jwt", "name": "idp", "issuer": "https://idp.example",
         "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
        {"type": "api_key", "name": "keys"},
    ]))
    .unwrap();
    let route: ModelRoute = serde_json::from_value(serde_json::json!({"name": "r",
        "match": {"path_prefix": "/"}, "cluster": "a",
        "policies": ["idp", "keys", "admins", "partners", "office"]}))
    .unwrap();
    let mut store = StoreSnapshot {
        revision: 1,
        ..Default::default()
    };
    store.clusters.insert(
        "a".into(),
        serde_json::from_value(serde_json::json!({"name": "a",
            "endpoints": [{"address": "127.0.0.1", "port": 8080}]}))
        .unwrap(),
    );
    store.routes.insert("r".into(), route);
    store.listeners.insert(
        "l".into(),
        serde_json::from_value(serde_json::json!({"name": "l", "port": 8080,
            "trusted_proxy_hops": 1}))
        .unwrap(),
    );
    for policy in policies {
        store.policies.insert(policy.name().to_owned(), policy);
    }
    let node = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let snapshot = translate(&store, &node, &Default::default()).unwrap();
    let routes = snapshot.resources(ResourceType::Route);
    let proto = <route_pb::RouteConfiguration as prost::Message>::decode(
        routes.values().next().unwrap().body.value.as_slice(),
    )
    .unwrap();
    let table =
        crate::config::route::RouteTable::try_from(&proto).unwrap_or_else(|e| panic!("{e}"));
    let route = &table.virtual_hosts()[0].routes[0];
    let rbac = route
        .filter_overrides
        .config("envoy.filters.http.rbac")
        .and_then(crate::config::filters::PerFilterConfig::as_rbac)
        .unwrap();
    let rules = rbac.rules.as_ref().unwrap();
    assert_eq!(rules.action, Action::Allow);
    assert!(rules.uses_client_address);
    assert!(
        route
            .filter_overrides
            .config("tollgate.filters.http.api_key")
            .and_then(crate::config::filters::PerFilterConfig::as_api_key)
            .is_some()
    );
    // The listener's filters, in the control plane's order, are all accepted.
    let listeners = snapshot.resources(ResourceType::Listener);
    let proto = <tollgate_proto::envoy::config::listener::v3::Listener as prost::Message>::decode(
        listeners.values().next().unwrap().body.value.as_slice(),
    )
    .unwrap();
    let listener =
        crate::config::listener::Listener::try_from(&proto).unwrap_or_else(|e| panic!("{e}"));
    let http = &listener.chains()[0].http;
    let names: Vec<&str> = http.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.jwt_authn",
            "tollgate.filters.http.api_key",
            "envoy.filters.http.rbac",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(http.xff_num_trusted_hops, 1);
    assert_eq!(
        listener.references().key_tables,
        ["tollgate:api-keys"].into()
    );
}

#[test]
#[allow(deprecated)] // `source_ip` is refused
fn rbac_configs_are_accepted_or_nacked_naming_the_field() {
    use rbac_pb::principal::Identifier;
    // No rules at all (the control plane's connection manager config) is fine.
    assert!(build(&Default::default()).unwrap().rules.is_none());
    let good = rbac_filter_pb::Rbac {
        rules: Some(rules(
            rbac_pb::rbac::Action::Deny,
            vec![id(Identifier::OrIds(rbac_pb::principal::Set {
                ids: vec![
                    id(Identifier::RemoteIp(cidr("10.1.5.5", 16))),
                    id(Identifier::DirectRemoteIp(cidr("::1", 200 - 72))),
                    metadata(JWT_AUTHN_NAMESPACE, &["jwt_payload", "sub"], exact("u1")),
                ],
            }))],
        )),
        rules_stat_prefix: "stats".into(),
        ..Default::default()
    };
    let rbac = build(&good).unwrap();
    let rules = rbac.rules.as_ref().unwrap();
    assert_eq!(rules.action, Action::Deny);
    let Principal::Or(ids) = &rules.policies[0].principals[0] else {
        panic!("or_ids")
    };
    // The range is masked to its prefix; a v6 prefix beyond 128 bits is the whole address.
    let Principal::RemoteIp(range) = &ids[0] else {
        panic!("remote_ip")
    };
    assert!(range.contains("10.1.200.1".parse().unwrap()));
    assert!(!range.contains("10.2.0.1".parse().unwrap()));
    assert!(!range.contains("::ffff:10.1.0.1".parse().unwrap()));

    type Edit = Box<dyn FnOnce(&mut rbac_filter_pb::Rbac)>;
    let principal = |p: rbac_pb::Principal| -> Edit {
        Box::new(move |c: &mut rbac_filter_pb::Rbac| {
            c.rules
                .as_mut()
                .unwrap()
                .policies
                .get_mut("p")
                .unwrap()
                .principals = vec![p];
        })
    };
    let policy = |f: fn(&mut rbac_pb::Policy)| -> Edit {
        Box::new(move |c: &mut rbac_filter_pb::Rbac| {
            f(c.rules.as_mut().unwrap().policies.get_mut("p").unwrap())
        })
    };
    let value =
        |v: matcher_pb::ValueMatcher| principal(metadata(EXT_AUTHZ_NAMESPACE, &["groups"], v));
    use matcher_pb::value_matcher::MatchPattern;
    let p = "typed_config.rules.policies.p";
    let m = "principals[0].sourced_metadata.metadata_matcher";
    let cases: Vec<(String, Edit)> = vec![
        (
            "typed_config.shadow_rules".into(),
            Box::new(|c| c.shadow_rules = Some(Default::default())),
        ),
        (
            "typed_config.matcher".into(),
            Box::new(|c| c.matcher = Some(Default::default())),
        ),
        (
            "typed_config.rules.action".into(),
            Box::new(|c| c.rules.as_mut().unwrap().action = rbac_pb::rbac::Action::Log as i32),
        ),
        (
            "typed_config.rules.audit_logging_options".into(),
            Box::new(|c| {
                c.rules.as_mut().unwrap().audit_logging_options = Some(Default::default())
            }),
        ),
        (
            format!("{p}.condition"),
            policy(|p| p.condition = Some(Default::default())),
        ),
        (
            format!("{p}.permissions"),
            policy(|p| p.permissions.clear()),
        ),
        (format!("{p}.principals"), policy(|p| p.principals.clear())),
        (
            format!("{p}.permissions[0].header"),
            policy(|p| {
                p.permissions[0].rule = Some(rbac_pb::permission::Rule::Header(Default::default()))
            }),
        ),
        (
            format!("{p}.permissions[0].any"),
            policy(|p| p.permissions[0].rule = Some(rbac_pb::permission::Rule::Any(false))),
        ),
        (
            format!("{p}.principals[0].any"),
            principal(id(Identifier::Any(false))),
        ),
        (
            format!("{p}.principals[0].header"),
            principal(id(Identifier::Header(Default::default()))),
        ),
        (
            format!("{p}.principals[0].source_ip"),
            principal(id(Identifier::SourceIp(cidr("10.0.0.0", 8)))),
        ),
        (
            format!("{p}.principals[0].and_ids.ids"),
            principal(id(Identifier::AndIds(Default::default()))),
        ),
        (
            format!("{p}.principals[0].not_id.or_ids.ids[1].identifier"),
            principal(id(Identifier::NotId(Box::new(id(Identifier::OrIds(
                rbac_pb::principal::Set {
                    ids: vec![id(Identifier::Any(true)), rbac_pb::Principal::default()],
                },
            )))))),
        ),
        (
            format!("{p}.principals[0].remote_ip.address_prefix"),
            principal(id(Identifier::RemoteIp(cidr("10.0.0", 8)))),
        ),
        (
            format!("{p}.principals[0].direct_remote_ip.prefix_len"),
            principal(id(Identifier::DirectRemoteIp(cidr("::", 129)))),
        ),
        (
            format!("{p}.principals[0].sourced_metadata.metadata_source"),
            principal({
                let mut m = metadata(JWT_AUTHN_NAMESPACE, &["a"], exact("x"));
                if let Some(Identifier::SourcedMetadata(s)) = &mut m.identifier {
                    s.metadata_source = rbac_pb::MetadataSource::Route as i32;
                }
                m
            }),
        ),
        (
            format!("{p}.{m}.filter"),
            principal(metadata("envoy.filters.http.other", &["a"], exact("x"))),
        ),
        (
            format!("{p}.{m}.path"),
            principal(metadata(JWT_AUTHN_NAMESPACE, &[], exact("x"))),
        ),
        (
            format!("{p}.{m}.path[1].key"),
            principal(metadata(JWT_AUTHN_NAMESPACE, &["a", ""], exact("x"))),
        ),
        (
            format!("{p}.{m}.value.double_match"),
            value(matcher_pb::ValueMatcher {
                match_pattern: Some(MatchPattern::DoubleMatch(Default::default())),
            }),
        ),
        (
            format!("{p}.{m}.value.null_match"),
            value(matcher_pb::ValueMatcher {
                match_pattern: Some(MatchPattern::NullMatch(Default::default())),
            }),
        ),
        (
            format!("{p}.{m}.value.or_match.value_matchers"),
            value(matcher_pb::ValueMatcher {
                match_pattern: Some(MatchPattern::OrMatch(matcher_pb::OrMatcher {
                    value_matchers: vec![exact("a")],
                })),
            }),
        ),
        (
            format!("{p}.{m}.value.list_match.one_of.string_match.safe_regex"),
            value(matcher_pb::ValueMatcher {
                match_pattern: Some(MatchPattern::ListMatch(Box::new(matcher_pb::ListMatcher {
                    match_pattern: Some(matcher_pb::list_matcher::MatchPattern::OneOf(Box::new(
                        matcher_pb::ValueMatcher {
                            match_pattern: Some(MatchPattern::StringMatch(
                                matcher_pb::StringMatcher {
                                    match_pattern: Some(
                                        matcher_pb::string_matcher::MatchPattern::SafeRegex(
                                            matcher_pb::RegexMatcher {
                                                regex: "(".into(),
                                                ..Default::default()
                                            },
                                        ),
                                    ),
                                    ignore_case: false,
                                },
                            )),
                        },
                    ))),
                }))),
            }),
        ),
        (
            format!("{p}.{m}.value.match_pattern"),
            value(matcher_pb::ValueMatcher::default()),
        ),
    ];
    for (field, edit) in cases {
        let mut proto = good.clone();
        edit(&mut proto);
        assert_eq!(build(&proto).unwrap_err(), field);
    }
}

#[test]
fn per_route_configs_replace_the_listeners_rules() {
    // No `rbac`, or an `rbac` without rules: the route allows everything.
    for proto in [
        rbac_filter_pb::RbacPerRoute { rbac: None },
        rbac_filter_pb::RbacPerRoute {
            rbac: Some(Default::default()),
        },
    ] {
        assert!(per_route(&proto).unwrap().rules.is_none());
    }
    let proto = rbac_filter_pb::RbacPerRoute {
        rbac: Some(rbac_filter_pb::Rbac {
            shadow_rules: Some(Default::default()),
            ..Default::default()
        }),
    };
    let err = per_route(&proto)
        .unwrap_err()
        .into_error(Resource::RouteConfig("r".into()));
    assert_eq!(err.field, "rbac.shadow_rules");
}
