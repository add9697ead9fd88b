use super::*;

fn cluster(json: serde_json::Value) -> Cluster {
    serde_json::from_value(json).expect("cluster json")
}

fn route(json: serde_json::Value) -> Route {
    serde_json::from_value(json).expect("route json")
}

fn field_of(resource: Resource) -> String {
    resource.validate().expect_err("must be rejected").field
}

#[test]
fn names_are_restricted_to_a_safe_alphabet() {
    assert!(validate_name("api-v1.users_2").is_ok());
    for bad in ["", "../etc", "a/b", "-x", ".hidden", "a b", "é"] {
        assert_eq!(validate_name(bad).unwrap_err().field, "name", "{bad:?}");
    }
    assert!(validate_name(&"a".repeat(MAX_NAME_LEN)).is_ok());
    assert!(validate_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
}

#[test]
fn cluster_defaults_and_endpoint_errors_name_the_field() {
    let c = cluster(
        serde_json::json!({"name": "b", "endpoints": [{"address": "10.0.0.1", "port": 80}]}),
    );
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.connect_timeout_ms, 5000);
    assert_eq!(c.endpoints[0].weight, 1);
    assert!(c.all_endpoints_are_ips());

    let bad_port = cluster(serde_json::json!({"name": "b", "endpoints": [
        {"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.2", "port": 0}]}));
    assert_eq!(field_of(Resource::Cluster(bad_port)), "endpoints[1].port");

    let dup = cluster(serde_json::json!({"name": "b", "endpoints": [
        {"address": "web", "port": 80}, {"address": "WEB", "port": 80}]}));
    assert_eq!(field_of(Resource::Cluster(dup)), "endpoints[1]");

    let bad_host =
        cluster(serde_json::json!({"name": "b", "endpoints": [{"address": "-bad-", "port": 80}]}));
    assert_eq!(
        field_of(Resource::Cluster(bad_host)),
        "endpoints[0].address"
    );

    let dns = cluster(
        serde_json::json!({"name": "b", "endpoints": [{"address": "api.internal", "port": 80}]}),
    );
    assert!(!dns.all_endpoints_are_ips());
}

#[test]
fn unknown_fields_and_enum_values_are_rejected_not_ignored() {
    let err = serde_json::from_value::<Cluster>(serde_json::json!({"endpoint": []})).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
    let err =
        serde_json::from_value::<Cluster>(serde_json::json!({"lb_policy": "fastest"})).unwrap_err();
    assert!(err.to_string().contains("unknown variant"), "{err}");
}

#[test]
fn route_needs_exactly_one_action() {
    let none = route(serde_json::json!({"name": "r", "match": {"path_prefix": "/"}}));
    assert_eq!(field_of(Resource::Route(none)), "cluster");
    let two = route(serde_json::json!({"name": "r", "match": {}, "cluster": "a",
        "direct_response": {"status": 200}}));
    assert_eq!(field_of(Resource::Route(two)), "cluster");
}

#[test]
fn route_match_errors_name_the_nested_field() {
    let cases = [
        (
            serde_json::json!({"path_regex": "(unclosed"}),
            "match.path_regex",
        ),
        (
            serde_json::json!({"path_prefix": "no-slash"}),
            "match.path_prefix",
        ),
        (
            serde_json::json!({"path_prefix": "/a", "path_exact": "/b"}),
            "match.path_prefix",
        ),
        (
            serde_json::json!({"hosts": ["ok.example", "Bad.Example"]}),
            "match.hosts[1]",
        ),
        (serde_json::json!({"hosts": ["*"]}), "match.hosts[0]"),
        (serde_json::json!({"methods": ["get"]}), "match.methods[0]"),
        (
            serde_json::json!({"headers": [{"name": "x-a"}]}),
            "match.headers[0].exact",
        ),
        (
            serde_json::json!({"headers": [{"name": "X-A", "exact": "1"}]}),
            "match.headers[0].name",
        ),
        (
            serde_json::json!({"query": [{"name": "q", "regex": "(?<=a)b"}]}),
            "match.query[0].regex",
        ),
    ];
    for (matcher, field) in cases {
        let r = route(serde_json::json!({"name": "r", "match": matcher, "cluster": "c"}));
        assert_eq!(field_of(Resource::Route(r)), field, "{matcher}");
    }
}

#[test]
fn route_action_errors_name_the_nested_field() {
    let cases = [
        (
            serde_json::json!({"weighted_clusters": [{"cluster": "a", "weight": 0}]}),
            "weighted_clusters",
        ),
        (
            serde_json::json!({"weighted_clusters": [{"cluster": "a", "weight": 1}, {"cluster": "a", "weight": 1}]}),
            "weighted_clusters[1].cluster",
        ),
        (
            serde_json::json!({"redirect": {"status": 200}}),
            "redirect.status",
        ),
        (
            serde_json::json!({"redirect": {"prefix_rewrite": "/x"}}),
            "redirect.prefix_rewrite",
        ),
        (
            serde_json::json!({"direct_response": {"status": 99}}),
            "direct_response.status",
        ),
        (
            serde_json::json!({"direct_response": {"status": 200, "body": "x".repeat(5000)}}),
            "direct_response.body",
        ),
        (
            serde_json::json!({"cluster": "c", "retries": {"attempts": 2, "retry_on": ["sometimes"]}}),
            "retries.retry_on[0]",
        ),
        (
            serde_json::json!({"cluster": "c", "rewrite": {"path_regex": "^/a"}}),
            "rewrite.path_substitution",
        ),
        (
            serde_json::json!({"cluster": "c", "request_headers": {"set": {"host": "x"}}}),
            "request_headers.set.host",
        ),
        (
            serde_json::json!({"cluster": "c", "response_headers": {"add": {"x-a": "a\r\nb"}}}),
            "response_headers.add.x-a",
        ),
        (
            serde_json::json!({"direct_response": {"status": 200}, "timeout_ms": 10}),
            "timeout_ms",
        ),
    ];
    for (action, field) in cases {
        let mut json = action.clone();
        json["name"] = "r".into();
        json["match"] = serde_json::json!({});
        let r = route(json);
        assert_eq!(field_of(Resource::Route(r)), field, "{action}");
    }
}

#[test]
fn references_to_unknown_clusters_are_reported() {
    let mut clusters = BTreeMap::new();
    clusters.insert("a".to_owned(), cluster(serde_json::json!({"name": "a"})));
    let mut routes = BTreeMap::new();
    routes.insert(
        "r".to_owned(),
        route(serde_json::json!({"name": "r", "match": {},
            "weighted_clusters": [{"cluster": "a", "weight": 1}, {"cluster": "b", "weight": 1}]})),
    );
    let err = check_references(
        &clusters,
        &routes,
        &BTreeMap::new(),
        &BTreeMap::new(),
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert_eq!(err.field, "weighted_clusters[1].cluster");
    assert_eq!(err.message, "unknown cluster b");
}

#[test]
fn listeners_on_the_same_socket_conflict() {
    let listener = |name: &str, address: &str, port: u16, node_cluster: Option<&str>| Listener {
        name: name.to_owned(),
        address: address.to_owned(),
        port,
        node_cluster: node_cluster.map(str::to_owned),
        tls: None,
        access_log: None,
        trusted_proxy_hops: 0,
        policies: Vec::new(),
    };
    let check = |ls: Vec<Listener>| {
        let map = ls.into_iter().map(|l| (l.name.clone(), l)).collect();
        check_references(
            &BTreeMap::new(),
            &BTreeMap::new(),
            &map,
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
    };
    assert!(
        check(vec![
            listener("a", "0.0.0.0", 80, None),
            listener("b", "127.0.0.1", 80, None)
        ])
        .is_err()
    );
    assert!(
        check(vec![
            listener("a", "0.0.0.0", 80, None),
            listener("b", "0.0.0.0", 81, None)
        ])
        .is_ok()
    );
    assert!(
        check(vec![
            listener("a", "0.0.0.0", 80, Some("edge")),
            listener("b", "0.0.0.0", 80, Some("mesh"))
        ])
        .is_ok()
    );
    assert!(
        check(vec![
            listener("a", "0.0.0.0", 80, Some("edge")),
            listener("b", "0.0.0.0", 80, None)
        ])
        .is_err()
    );
    assert!(
        check(vec![
            listener("a", "::", 80, None),
            listener("b", "0.0.0.0", 80, None)
        ])
        .is_ok()
    );
}

#[test]
fn routes_order_by_priority_then_specificity_then_name() {
    let mk = |name: &str, m: serde_json::Value, priority: i32| {
        route(serde_json::json!({"name": name, "match": m, "cluster": "c", "priority": priority}))
    };
    let mut routes = [
        mk("catch-all", serde_json::json!({}), 0),
        mk("prefix-short", serde_json::json!({"path_prefix": "/a"}), 0),
        mk("prefix-long", serde_json::json!({"path_prefix": "/a/b"}), 0),
        mk("exact", serde_json::json!({"path_exact": "/a/b"}), 0),
        mk("regex", serde_json::json!({"path_regex": "/a/.*"}), 0),
        mk("urgent", serde_json::json!({}), 10),
        mk(
            "prefix-long-get",
            serde_json::json!({"path_prefix": "/a/b", "methods": ["GET"]}),
            0,
        ),
    ];
    routes.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "urgent",
            "exact",
            "regex",
            "prefix-long-get",
            "prefix-long",
            "prefix-short",
            "catch-all"
        ]
    );
}

#[test]
fn access_logs_are_optional_and_checked() {
    let read = |json: serde_json::Value| serde_json::from_value::<Listener>(json).unwrap();
    // Unset: the listener reads back exactly as it was written.
    let plain = serde_json::json!({"name": "l", "address": "0.0.0.0", "port": 80});
    assert_eq!(serde_json::to_value(read(plain.clone())).unwrap(), plain);
    let logged = read(serde_json::json!({"port": 80, "access_log": {"path": "stdout"}}));
    let log = logged.access_log.as_ref().unwrap();
    assert!(log.is_stdout() && !log.include_query);
    assert!(logged.validate().is_ok());
    for (path, ok) in [
        ("/var/log/tollgate/access.log", true),
        ("stdout", true),
        ("access.log", false),
        ("STDOUT", false),
        ("", false),
        ("/var/log/a\nb", false),
    ] {
        let listener = read(serde_json::json!({"port": 80, "access_log": {"path": path}}));
        let result = listener.validate();
        assert_eq!(result.is_ok(), ok, "{path:?}");
        if let Err(e) = result {
            assert_eq!(e.field, "access_log.path");
        }
    }
}

#[test]
fn rate_limits_need_the_policy_that_finds_their_key() {
    let policies: BTreeMap<String, Policy> =
        serde_json::from_value::<Vec<Policy>>(serde_json::json!([
            {"type": "api_key", "name": "keys"},
            {"type": "jwt", "name": "idp", "issuer": "i", "jwks_uri": "http://127.0.0.1/jwks",
             "token_from": [{"header": "x-token"}]},
            {"type": "rate_limit", "name": "per-consumer", "key": ["consumer"],
             "limit": {"requests": 1, "window_s": 1}},
            {"type": "rate_limit", "name": "per-plan", "key": ["client_ip"],
             "tiers": {"pro": {"requests": 1, "window_s": 1}}},
            {"type": "rate_limit", "name": "per-user", "key": ["claim:sub"],
             "limit": {"requests": 1, "window_s": 1}},
            {"type": "rate_limit", "name": "per-ip", "key": ["client_ip"],
             "limit": {"requests": 1, "window_s": 1}},
        ]))
        .unwrap()
        .into_iter()
        .map(|p| (p.name().to_owned(), p))
        .collect();
    let listener = |name: &str, port: u16, policies: &[&str]| Listener {
        name: name.to_owned(),
        address: "127.0.0.1".to_owned(),
        port,
        node_cluster: None,
        tls: None,
        access_log: None,
        trusted_proxy_hops: 0,
        policies: policies.iter().map(|p| (*p).to_owned()).collect(),
    };
    let clusters: BTreeMap<String, Cluster> =
        [("a".to_owned(), cluster(serde_json::json!({"name": "a"})))].into();
    let check = |route_policies: &[&str], listeners: Vec<Listener>| {
        let routes: BTreeMap<String, Route> = [(
            "r".to_owned(),
            route(serde_json::json!({"name": "r", "match": {}, "cluster": "a",
                "policies": route_policies})),
        )]
        .into();
        let listeners = listeners.into_iter().map(|l| (l.name.clone(), l)).collect();
        check_references(&clusters, &routes, &listeners, &BTreeMap::new(), &policies)
    };
    // Nothing served, nothing to check; keys that need nothing are fine anywhere.
    assert_eq!(check(&["per-consumer"], vec![]), Ok(()));
    assert_eq!(check(&["per-ip"], vec![listener("l", 80, &[])]), Ok(()));
    // With the authentication on the route or on the listener.
    assert_eq!(
        check(
            &["keys", "per-consumer", "per-plan"],
            vec![listener("l", 80, &[])]
        ),
        Ok(())
    );
    assert_eq!(
        check(&["per-consumer"], vec![listener("l", 80, &["keys"])]),
        Ok(())
    );
    assert_eq!(
        check(&["idp", "per-user"], vec![listener("l", 80, &[])]),
        Ok(())
    );
    // Without it, no request would ever be counted: 409, naming the policy's place.
    let err = check(&["per-consumer"], vec![listener("l", 80, &[])]).unwrap_err();
    assert_eq!(
        (err.kind, err.name.as_str(), err.field.as_str()),
        (ResourceKind::Route, "r", "policies[0]")
    );
    assert!(err.message.contains("api_key"), "{err}");
    let err = check(&["keys", "per-user"], vec![listener("l", 80, &[])]).unwrap_err();
    assert!(err.message.contains("jwt"), "{err}");
    let err = check(&["idp", "per-plan"], vec![listener("l", 80, &[])]).unwrap_err();
    assert_eq!(err.field, "policies[1]");
    // A route is served on every listener: each one must give it the key.
    let err = check(
        &["per-consumer"],
        vec![listener("a", 80, &["keys"]), listener("b", 81, &[])],
    )
    .unwrap_err();
    assert!(err.message.contains("listener b"), "{err}");
    // On a listener, every route must get the key.
    let err = check(&[], vec![listener("l", 80, &["per-consumer"])]).unwrap_err();
    assert_eq!(
        (err.kind, err.field.as_str()),
        (ResourceKind::Listener, "policies[0]")
    );
    assert!(err.message.contains("route r"), "{err}");
}

#[test]
fn rate_limits_never_key_on_credential_headers() {
    let policies = |json: serde_json::Value| -> BTreeMap<String, Policy> {
        serde_json::from_value::<Vec<Policy>>(json)
            .unwrap()
            .into_iter()
            .map(|p| (p.name().to_owned(), p))
            .collect()
    };
    let check = |policies: &BTreeMap<String, Policy>| {
        check_references(
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            policies,
        )
    };
    let limit = serde_json::json!({"type": "rate_limit", "name": "per-header",
        "key": ["header:x-key"], "limit": {"requests": 1, "window_s": 1}});
    assert_eq!(check(&policies(serde_json::json!([limit.clone()]))), Ok(()));
    let err = check(&policies(serde_json::json!([limit.clone(),
        {"type": "api_key", "name": "keys", "header": "x-key"}])))
    .unwrap_err();
    assert_eq!(
        (err.kind, err.name.as_str(), err.field.as_str()),
        (ResourceKind::Policy, "per-header", "key[0]")
    );
    let err = check(&policies(serde_json::json!([limit,
        {"type": "jwt", "name": "idp", "issuer": "i", "jwks_uri": "http://127.0.0.1/jwks",
         "token_from": [{"header": "x-key"}]}])))
    .unwrap_err();
    assert!(err.message.contains("idp"), "{err}");
}
