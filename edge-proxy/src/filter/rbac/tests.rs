//! RBAC decisions: principals (nested and/or/not, addresses, metadata), value matchers, actions,
//! and which rules apply.

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt as _;
use serde_json::json;
use tollgate_proto::envoy::config::rbac::v3 as rbac_pb;
use tollgate_proto::envoy::extensions::filters::http::rbac::v3 as rbac_filter_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
use tollgate_proto::pack_any;

use super::*;
use crate::config::filters::api_key::tests::table;
use crate::config::filters::rbac::tests::{cidr, exact, id, metadata as md, rules};
use crate::config::filters::rbac::{EXT_AUTHZ_NAMESPACE, JWT_AUTHN_NAMESPACE};
use crate::config::filters::{HttpFilterKind, http_filter_kind};
use crate::proxy::headers::Addresses;
use rbac_pb::principal::{Identifier, Set};

fn and(ids: Vec<rbac_pb::Principal>) -> rbac_pb::Principal {
    id(Identifier::AndIds(Set { ids }))
}

fn or(ids: Vec<rbac_pb::Principal>) -> rbac_pb::Principal {
    id(Identifier::OrIds(Set { ids }))
}

fn not(p: rbac_pb::Principal) -> rbac_pb::Principal {
    id(Identifier::NotId(Box::new(p)))
}

fn list_one_of(v: matcher_pb::ValueMatcher) -> matcher_pb::ValueMatcher {
    matcher_pb::ValueMatcher {
        match_pattern: Some(matcher_pb::value_matcher::MatchPattern::ListMatch(
            Box::new(matcher_pb::ListMatcher {
                match_pattern: Some(matcher_pb::list_matcher::MatchPattern::OneOf(Box::new(v))),
            }),
        )),
    }
}

fn pattern(p: matcher_pb::value_matcher::MatchPattern) -> matcher_pb::ValueMatcher {
    matcher_pb::ValueMatcher {
        match_pattern: Some(p),
    }
}

fn string(
    p: matcher_pb::string_matcher::MatchPattern,
    ignore_case: bool,
) -> matcher_pb::ValueMatcher {
    pattern(matcher_pb::value_matcher::MatchPattern::StringMatch(
        matcher_pb::StringMatcher {
            match_pattern: Some(p),
            ignore_case,
        },
    ))
}

fn build(action: rbac_pb::rbac::Action, principals: Vec<rbac_pb::Principal>) -> Rules {
    let proto = rbac_filter_pb::Rbac {
        rules: Some(rules(action, principals)),
        ..Default::default()
    };
    match http_filter_kind("rbac", &pack_any(&proto), |_| Ok(())).unwrap() {
        HttpFilterKind::Rbac(rbac) => std::sync::Arc::into_inner(rbac).unwrap().rules.unwrap(),
        _ => unreachable!(),
    }
}

fn allow(principal: rbac_pb::Principal) -> Rules {
    build(rbac_pb::rbac::Action::Allow, vec![principal])
}

/// The JWT metadata of a token with these claims, `scope` split as the control plane asks.
fn jwt(claims: serde_json::Value) -> Vec<(&'static str, std::sync::Arc<serde_json::Value>)> {
    vec![("jwt_payload", claims.into())]
}

fn input<'a>(metadata: &'a Metadata<'a>, client: &str) -> Input<'a> {
    Input {
        client: Some(client.parse().unwrap()),
        peer: "127.0.0.1".parse().unwrap(),
        metadata,
    }
}

#[test]
fn claims_scopes_and_nested_combinations() {
    // The control plane's shape for `require_claims: {role: [admin, ops], org.id: [acme]}` and
    // `require_scopes: [orders:write]`.
    let claim = |path: &[&str], value: &str| {
        or(vec![
            md(JWT_AUTHN_NAMESPACE, path, exact(value)),
            md(JWT_AUTHN_NAMESPACE, path, list_one_of(exact(value))),
        ])
    };
    let rules = allow(and(vec![
        or(vec![
            claim(&["jwt_payload", "role"], "admin"),
            claim(&["jwt_payload", "role"], "ops"),
        ]),
        claim(&["jwt_payload", "org", "id"], "acme"),
        or(vec![
            md(
                JWT_AUTHN_NAMESPACE,
                &["jwt_payload", "scope"],
                list_one_of(exact("orders:write")),
            ),
            md(
                JWT_AUTHN_NAMESPACE,
                &["jwt_payload", "scp"],
                list_one_of(exact("orders:write")),
            ),
        ]),
    ]));
    let cases = [
        (
            json!({"role": "admin", "org": {"id": "acme"}, "scope": ["orders:read", "orders:write"]}),
            true,
        ),
        (
            json!({"role": ["viewer", "ops"], "org": {"id": "acme"}, "scp": ["orders:write"]}),
            true,
        ),
        (
            json!({"role": "user", "org": {"id": "acme"}, "scope": ["orders:write"]}),
            false,
        ),
        (
            json!({"role": "admin", "org": {"id": "acme"}, "scope": ["orders:read"]}),
            false,
        ),
        (
            json!({"role": "admin", "org": {"id": "globex"}, "scope": ["orders:write"]}),
            false,
        ),
        // A flat claim is not a nested one; a string is not a list.
        (
            json!({"role": "admin", "org.id": "acme", "scope": ["orders:write"]}),
            false,
        ),
        (
            json!({"role": "admin", "org": {"id": "acme"}, "scope": "orders:write"}),
            false,
        ),
        // Numbers are never strings.
        (
            json!({"role": "admin", "org": {"id": 1}, "scope": ["orders:write"]}),
            false,
        ),
    ];
    for (claims, expected) in cases {
        let metadata = Metadata {
            jwt: jwt(claims.clone()),
            consumer: None,
            api_key: None,
            quota: None,
        };
        assert_eq!(
            allowed(&rules, &input(&metadata, "10.0.0.1")),
            expected,
            "{claims}"
        );
    }
    // Without a verified token, nothing is there to match.
    assert!(!allowed(&rules, &input(&Metadata::default(), "10.0.0.1")));
}

#[test]
fn consumers_and_groups_from_the_api_key() {
    let table = table();
    let rules = allow(or(vec![
        md(
            EXT_AUTHZ_NAMESPACE,
            &["groups"],
            list_one_of(exact("partners")),
        ),
        md(EXT_AUTHZ_NAMESPACE, &["consumer"], exact("beta")),
    ]));
    for (key, expected) in [("acme-key-1", true), ("beta/key+1", true)] {
        let metadata = Metadata {
            jwt: Vec::new(),
            consumer: table.lookup(key.as_bytes()).map(|(c, _)| c),
            api_key: None,
            quota: None,
        };
        assert_eq!(allowed(&rules, &input(&metadata, "10.0.0.1")), expected);
    }
    assert!(!allowed(&rules, &input(&Metadata::default(), "10.0.0.1")));

    // `tier` is there only when the consumer has one; deeper paths lead nowhere.
    let present = |path: &[&str]| {
        allow(md(
            EXT_AUTHZ_NAMESPACE,
            path,
            pattern(matcher_pb::value_matcher::MatchPattern::PresentMatch(true)),
        ))
    };
    let acme = Metadata {
        jwt: Vec::new(),
        consumer: table.lookup(b"acme-key-1").map(|(c, _)| c),
        api_key: None,
        quota: None,
    };
    let beta = Metadata {
        jwt: Vec::new(),
        consumer: table.lookup(b"beta/key+1").map(|(c, _)| c),
        api_key: None,
        quota: None,
    };
    assert!(allowed(&present(&["tier"]), &input(&acme, "10.0.0.1")));
    assert!(!allowed(&present(&["tier"]), &input(&beta, "10.0.0.1")));
    assert!(allowed(&present(&["groups"]), &input(&beta, "10.0.0.1")));
    assert!(!allowed(
        &present(&["consumer", "x"]),
        &input(&acme, "10.0.0.1")
    ));
    assert!(!allowed(&present(&["other"]), &input(&acme, "10.0.0.1")));
}

#[test]
fn value_matchers_follow_envoys() {
    use matcher_pb::string_matcher::MatchPattern as S;
    use matcher_pb::value_matcher::MatchPattern as V;
    let metadata = Metadata {
        jwt: jwt(json!({
            "sub": "User-42", "admin": true, "nothing": null, "n": 3,
            "tags": ["a", "b"], "nested": [["x"]],
        })),
        consumer: None,
        api_key: None,
        quota: None,
    };
    let check = |path: &str, matcher: matcher_pb::ValueMatcher, invert: bool| {
        let mut principal = md(JWT_AUTHN_NAMESPACE, &["jwt_payload", path], matcher);
        if let Some(Identifier::SourcedMetadata(s)) = &mut principal.identifier {
            s.metadata_matcher.as_mut().unwrap().invert = invert;
        }
        allowed(&allow(principal), &input(&metadata, "10.0.0.1"))
    };
    let cases: Vec<(&str, matcher_pb::ValueMatcher, bool, bool)> = vec![
        ("sub", string(S::Prefix("User".into()), false), false, true),
        ("sub", string(S::Suffix("-42".into()), false), false, true),
        ("sub", string(S::Contains("r-4".into()), false), false, true),
        ("sub", string(S::Exact("user-42".into()), true), false, true),
        (
            "sub",
            string(S::Exact("user-42".into()), false),
            false,
            false,
        ),
        (
            "sub",
            string(
                S::SafeRegex(matcher_pb::RegexMatcher {
                    regex: "User-[0-9]+".into(),
                    ..Default::default()
                }),
                false,
            ),
            false,
            true,
        ),
        ("admin", pattern(V::BoolMatch(true)), false, true),
        ("admin", pattern(V::BoolMatch(false)), false, false),
        ("sub", pattern(V::BoolMatch(true)), false, false),
        // Present: JSON null is a value; absent is not; `present_match: false` never matches.
        ("nothing", pattern(V::PresentMatch(true)), false, true),
        ("missing", pattern(V::PresentMatch(true)), false, false),
        ("missing", pattern(V::PresentMatch(false)), false, false),
        ("sub", pattern(V::PresentMatch(false)), false, false),
        // `invert` turns an absent value into a match.
        ("missing", exact("x"), true, true),
        ("sub", exact("User-42"), true, false),
        ("n", exact("3"), false, false),
        ("tags", list_one_of(exact("b")), false, true),
        ("tags", list_one_of(exact("c")), false, false),
        ("nested", list_one_of(list_one_of(exact("x"))), false, true),
        (
            "sub",
            pattern(V::OrMatch(matcher_pb::OrMatcher {
                value_matchers: vec![exact("nobody"), string(S::Prefix("User".into()), false)],
            })),
            false,
            true,
        ),
    ];
    for (path, matcher, invert, expected) in cases {
        assert_eq!(
            check(path, matcher.clone(), invert),
            expected,
            "{path} {matcher:?}"
        );
    }

    // A later payload under the same key replaces an earlier one.
    let metadata = Metadata {
        jwt: vec![
            ("jwt_payload", json!({"sub": "a"}).into()),
            ("jwt_payload", json!({"sub": "b"}).into()),
        ],
        consumer: None,
        api_key: None,
        quota: None,
    };
    let rules = allow(md(JWT_AUTHN_NAMESPACE, &["jwt_payload", "sub"], exact("b")));
    assert!(allowed(&rules, &input(&metadata, "10.0.0.1")));
}

#[test]
fn addresses_and_actions() {
    // The control plane's IP filter: allow 10.1.0.0/16 and 2001:db8::/32, except 10.1.2.0/24.
    let office = and(vec![
        or(vec![
            id(Identifier::RemoteIp(cidr("10.1.0.0", 16))),
            id(Identifier::RemoteIp(cidr("2001:db8::", 32))),
        ]),
        not(or(vec![id(Identifier::RemoteIp(cidr("10.1.2.0", 24)))])),
    ]);
    let rules = allow(office.clone());
    let metadata = Metadata::default();
    for (client, expected) in [
        ("10.1.5.5", true),
        ("10.1.2.9", false),
        ("192.0.2.1", false),
        ("2001:db8::7", true),
        ("::ffff:10.1.5.5", false),
    ] {
        assert_eq!(
            allowed(&rules, &input(&metadata, client)),
            expected,
            "{client}"
        );
    }
    // DENY: the same policy refuses what ALLOW lets through.
    let deny = build(rbac_pb::rbac::Action::Deny, vec![office]);
    assert!(!allowed(&deny, &input(&metadata, "10.1.5.5")));
    assert!(allowed(&deny, &input(&metadata, "10.1.2.9")));
    // direct_remote_ip reads the peer, whatever the client address.
    let direct = allow(id(Identifier::DirectRemoteIp(cidr("127.0.0.0", 8))));
    assert!(allowed(&direct, &input(&metadata, "192.0.2.1")));
    // No policies: ALLOW refuses everything, DENY allows everything.
    let empty = |action| Rules {
        action,
        policies: Vec::new(),
        uses_client_address: false,
    };
    assert!(!allowed(
        &empty(Action::Allow),
        &input(&metadata, "10.1.5.5")
    ));
    assert!(allowed(&empty(Action::Deny), &input(&metadata, "10.1.5.5")));
}

async fn decide(
    config: &Rbac,
    per_route: Option<&RbacPerRoute>,
    xff: Option<&str>,
    addresses: Addresses,
) -> Option<(StatusCode, serde_json::Value)> {
    let mut headers = HeaderMap::new();
    if let Some(xff) = xff {
        headers.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
    }
    let mut path = Cow::Borrowed("/");
    let req = crate::filter::Request {
        method: &Method::GET,
        scheme: "http",
        authority: "api",
        path_and_query: &mut path,
        headers: &mut headers,
        addresses,
    };
    let response = on_request(config, per_route, &req, &Metadata::default())?;
    let status = response.status();
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Some((status, serde_json::from_slice(&body).unwrap()))
}

#[tokio::test]
async fn the_routes_rules_replace_the_listeners_and_refusals_are_403() {
    let only_office = rbac_filter_pb::Rbac {
        rules: Some(rules(
            rbac_pb::rbac::Action::Allow,
            vec![id(Identifier::RemoteIp(cidr("10.1.0.0", 16)))],
        )),
        ..Default::default()
    };
    let listener = match http_filter_kind("rbac", &pack_any(&only_office), |_| Ok(())).unwrap() {
        HttpFilterKind::Rbac(rbac) => rbac,
        _ => unreachable!(),
    };
    let open = crate::config::filters::rbac::per_route(&rbac_filter_pb::RbacPerRoute {
        rbac: Some(Default::default()),
    })
    .unwrap();
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let (status, body) = decide(&listener, None, None, Addresses::direct(peer))
        .await
        .expect("refused");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"error": {"code": "forbidden", "message": "RBAC: access denied"}})
    );
    assert!(
        decide(&listener, Some(&open), None, Addresses::direct(peer))
            .await
            .is_none()
    );
    // The client address comes from x-forwarded-for as far as the listener trusts it.
    let trusted = |hops| {
        let mut http = crate::config::listener::tests::default_settings("r");
        http.xff_num_trusted_hops = hops;
        Addresses::new(peer, &http)
    };
    // As `prepare_request` leaves it: the peer appended.
    let xff = "10.1.5.5,192.0.2.1";
    assert!(
        decide(&listener, None, Some(xff), trusted(1))
            .await
            .is_none()
    );
    assert!(
        decide(&listener, None, Some(xff), trusted(0))
            .await
            .is_some()
    );
    assert!(
        decide(&listener, None, Some("192.0.2.1"), trusted(1))
            .await
            .is_some()
    );
}
