use std::fmt::Write as _;

use prost::Message;
use tollgate_proto::envoy::config::cluster::v3 as cluster_pb;
use tollgate_proto::envoy::config::endpoint::v3 as endpoint_pb;
use tollgate_proto::envoy::config::listener::v3 as listener_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;

use super::*;
use crate::model::{Cluster, Listener, Route};

#[derive(serde::Deserialize)]
struct Fixture {
    clusters: Vec<Cluster>,
    routes: Vec<Route>,
    listeners: Vec<Listener>,
    #[serde(default)]
    policies: Vec<crate::model::Policy>,
}

fn load(name: &str) -> StoreSnapshot {
    let path = format!(
        "{}/src/translate/testdata/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let snapshot = StoreSnapshot {
        revision: 7,
        clusters: fixture
            .clusters
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect(),
        routes: fixture
            .routes
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect(),
        listeners: fixture
            .listeners
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect(),
        certificates: Default::default(),
        consumers: Default::default(),
        policies: fixture
            .policies
            .into_iter()
            .map(|p| (p.name().to_owned(), p))
            .collect(),
        committed_at: None,
    };
    for c in snapshot.clusters.values() {
        crate::model::Resource::Cluster(c.clone())
            .validate()
            .unwrap();
    }
    for r in snapshot.routes.values() {
        crate::model::Resource::Route(r.clone()).validate().unwrap();
    }
    crate::model::check_references(
        &snapshot.clusters,
        &snapshot.routes,
        &snapshot.listeners,
        &snapshot.certificates,
        &snapshot.policies,
    )
    .unwrap();
    snapshot
}

fn edge() -> NodeGroup {
    NodeGroup {
        kind: NodeKind::Envoy,
        cluster: "edge".to_owned(),
    }
}

fn decode<M: Message + Default>(resource: &XdsResource) -> M {
    M::decode(resource.body.value.as_slice()).unwrap()
}

fn hcm(listener: &listener_pb::Listener) -> hcm_pb::HttpConnectionManager {
    let Some(listener_pb::filter::ConfigType::TypedConfig(any)) =
        &listener.filter_chains[0].filters[0].config_type
    else {
        panic!("listener without typed config")
    };
    hcm_pb::HttpConnectionManager::decode(any.value.as_slice()).unwrap()
}

/// Renders a snapshot as text: each resource decoded to its message and debug-printed.
fn render(snapshot: &XdsSnapshot) -> String {
    let mut out = String::new();
    for ty in ResourceType::ALL {
        for r in snapshot.resources(ty).values() {
            writeln!(out, "=== {ty} {} ({})", r.name, r.body.type_url).unwrap();
            let text = match ty {
                ResourceType::Cluster => render_cluster(decode::<cluster_pb::Cluster>(r)),
                ResourceType::Endpoint => {
                    format!("{:#?}", decode::<endpoint_pb::ClusterLoadAssignment>(r))
                }
                ResourceType::Listener => {
                    let listener = decode::<listener_pb::Listener>(r);
                    let mut hcm = hcm(&listener);
                    let logs = render_access_logs(&mut hcm);
                    format!("{listener:#?}\n--- http_connection_manager\n{hcm:#?}{logs}")
                }
                ResourceType::Secret => "<secret: contents not rendered>".to_owned(),
                ResourceType::Route => {
                    format!("{:#?}", decode::<route_pb::RouteConfiguration>(r))
                }
            };
            out.push_str(&text);
            out.push('\n');
        }
    }
    out
}

/// The access loggers' configs, decoded (their `json_format` sorted by key, since a `Struct`
/// prints in hash order), and their bytes cleared from `hcm`.
fn render_access_logs(hcm: &mut hcm_pb::HttpConnectionManager) -> String {
    use tollgate_proto::envoy::config::accesslog::v3::access_log::ConfigType;
    use tollgate_proto::envoy::config::core::v3::substitution_format_string::Format;
    use tollgate_proto::envoy::extensions::access_loggers::file::v3::{
        FileAccessLog, file_access_log::AccessLogFormat,
    };
    let mut out = String::new();
    for (i, log) in hcm.access_log.iter_mut().enumerate() {
        let Some(ConfigType::TypedConfig(any)) = &mut log.config_type else {
            continue;
        };
        let mut file = FileAccessLog::decode(any.value.as_slice()).unwrap();
        any.value.clear();
        let fields = match file.access_log_format.take() {
            Some(AccessLogFormat::LogFormat(format)) => match format.format {
                Some(Format::JsonFormat(json)) => json
                    .fields
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
                _ => Default::default(),
            },
            _ => Default::default(),
        };
        write!(
            out,
            "\n--- access_log[{i}].typed_config\n{file:#?}\njson_format: {fields:#?}"
        )
        .unwrap();
    }
    out
}

/// A cluster, with its upstream TLS context decoded after it rather than shown as bytes.
fn render_cluster(mut cluster: cluster_pb::Cluster) -> String {
    use tollgate_proto::envoy::config::core::v3::transport_socket::ConfigType;
    use tollgate_proto::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let tls = match cluster
        .transport_socket
        .as_mut()
        .and_then(|socket| socket.config_type.as_mut())
    {
        Some(ConfigType::TypedConfig(any)) => {
            let context = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
            any.value.clear();
            Some(context)
        }
        None => None,
    };
    match tls {
        Some(tls) => format!("{cluster:#?}\n--- transport_socket.typed_config\n{tls:#?}"),
        None => format!("{cluster:#?}"),
    }
}

#[test]
fn golden_basic() {
    let snapshot = translate(&load("basic"), &edge(), &TranslateContext::default()).unwrap();
    let rendered = render(&snapshot);
    let golden = format!(
        "{}/src/translate/testdata/basic.golden",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&golden)
        .expect("golden file missing: run with UPDATE_GOLDEN=1 and review the diff");
    assert!(
        rendered == expected,
        "translation differs from {golden}; rerun with UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn translation_is_deterministic() {
    let store = load("basic");
    assert_eq!(
        translate(&store, &edge(), &TranslateContext::default()).unwrap(),
        translate(&store, &edge(), &TranslateContext::default()).unwrap()
    );
}

#[test]
fn ip_clusters_use_eds_and_dns_clusters_resolve_themselves() {
    let snapshot = translate(&load("basic"), &edge(), &TranslateContext::default()).unwrap();
    let names: Vec<_> = snapshot.resources(ResourceType::Endpoint).keys().collect();
    assert_eq!(names, ["users"]);
    let legacy: cluster_pb::Cluster = decode(&snapshot.resources(ResourceType::Cluster)["legacy"]);
    assert_eq!(
        legacy.cluster_discovery_type,
        Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
            cluster_pb::cluster::DiscoveryType::StrictDns as i32
        ))
    );
    assert!(legacy.load_assignment.is_some());
    assert!(
        legacy
            .typed_extension_protocol_options
            .contains_key(super::cluster::HTTP_PROTOCOL_OPTIONS)
    );
    let users: cluster_pb::Cluster = decode(&snapshot.resources(ResourceType::Cluster)["users"]);
    assert_eq!(users.eds_cluster_config.unwrap().service_name, "users");
    assert!(
        snapshot
            .referenced(ResourceType::Endpoint)
            .contains("users")
    );
}

#[test]
fn listeners_follow_node_cluster_and_use_rds_over_ads() {
    let store = load("basic");
    let edge_snapshot = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    let names: Vec<_> = edge_snapshot
        .resources(ResourceType::Listener)
        .keys()
        .collect();
    assert_eq!(names, ["public"]);
    let mesh = NodeGroup {
        kind: NodeKind::Envoy,
        cluster: "mesh".to_owned(),
    };
    let mesh_snapshot = translate(&store, &mesh, &TranslateContext::default()).unwrap();
    let names: Vec<_> = mesh_snapshot
        .resources(ResourceType::Listener)
        .keys()
        .collect();
    assert_eq!(names, ["internal", "public"]);

    let listener: listener_pb::Listener =
        decode(&edge_snapshot.resources(ResourceType::Listener)["public"]);
    let Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(rds)) =
        hcm(&listener).route_specifier
    else {
        panic!("listener must use RDS")
    };
    assert_eq!(rds.route_config_name, "public");
    assert!(
        edge_snapshot
            .resources(ResourceType::Route)
            .contains_key("public")
    );
}

#[test]
fn host_less_routes_join_every_virtual_host_in_order() {
    let snapshot = translate(&load("basic"), &edge(), &TranslateContext::default()).unwrap();
    let config: route_pb::RouteConfiguration =
        decode(&snapshot.resources(ResourceType::Route)["public"]);
    let layout: Vec<(Vec<String>, Vec<String>)> = config
        .virtual_hosts
        .iter()
        .map(|vh| {
            (
                vh.domains.clone(),
                vh.routes.iter().map(|r| r.name.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        layout,
        vec![
            (
                vec!["api.example.com".to_owned()],
                vec![
                    "health".to_owned(),
                    "canary".to_owned(),
                    "users-api".to_owned(),
                    "old-docs".to_owned()
                ]
            ),
            (
                vec!["*".to_owned()],
                vec![
                    "health".to_owned(),
                    "canary".to_owned(),
                    "old-docs".to_owned()
                ]
            ),
        ]
    );
}

#[test]
fn versions_change_only_with_content() {
    let mut store = load("basic");
    let before = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    store.revision += 1;
    store.clusters.get_mut("legacy").unwrap().connect_timeout_ms = 999;
    let after = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    for ty in ResourceType::ALL {
        for (name, r) in before.resources(ty) {
            let changed = r.version != after.resources(ty)[name].version;
            assert_eq!(
                changed,
                ty == ResourceType::Cluster && name == "legacy",
                "{ty} {name}"
            );
        }
    }
}

#[test]
fn an_empty_store_gives_an_empty_consistent_snapshot() {
    let snapshot = translate(
        &StoreSnapshot::default(),
        &edge(),
        &TranslateContext::default(),
    )
    .unwrap();
    assert!(
        ResourceType::ALL
            .iter()
            .all(|t| snapshot.resources(*t).is_empty())
    );
}

#[test]
fn consistency_check_finds_dangling_names() {
    let mut snapshot = translate(&load("basic"), &edge(), &TranslateContext::default()).unwrap();
    snapshot.resources[ResourceType::Route.index()].clear();
    assert_eq!(
        snapshot.check_consistent(),
        Err(TranslateError::Inconsistent {
            ty: ResourceType::Route,
            name: "public".to_owned()
        })
    );
}

fn certificate(name: &str, hosts: &[&str]) -> crate::model::Certificate {
    let certified = rcgen::generate_simple_self_signed(
        hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    crate::model::Certificate {
        name: name.to_owned(),
        cert_pem: certified.cert.pem(),
        key_pem: Some(certified.signing_key.serialize_pem()),
    }
}

#[test]
fn tls_listeners_pick_certificates_by_sni_and_fetch_them_over_sds() {
    use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
    let mut store = load("basic");
    for cert in [
        certificate("a", &["a.example.com", "shared.example.com"]),
        certificate("b", &["b.example.com", "shared.example.com"]),
    ] {
        crate::model::Resource::Certificate(cert.clone())
            .validate()
            .unwrap();
        store.certificates.insert(cert.name.clone(), cert);
    }
    let listener = store.listeners.get_mut("public").unwrap();
    listener.tls = Some(crate::model::ListenerTls {
        certificates: vec!["a".to_owned(), "b".to_owned()],
    });
    let snapshot = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    assert_eq!(
        snapshot
            .referenced(ResourceType::Secret)
            .iter()
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let secret: tls_pb::Secret = decode(&snapshot.resources(ResourceType::Secret)["a"]);
    let Some(tls_pb::secret::Type::TlsCertificate(tls)) = secret.r#type else {
        panic!("a TLS certificate secret")
    };
    assert!(tls.private_key.is_some() && tls.certificate_chain.is_some());

    let listener: listener_pb::Listener =
        decode(&snapshot.resources(ResourceType::Listener)["public"]);
    assert_eq!(
        listener.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let chains: Vec<(String, Vec<String>)> = listener
        .filter_chains
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.filter_chain_match
                    .clone()
                    .unwrap_or_default()
                    .server_names,
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            (
                "tls:a".to_owned(),
                vec!["a.example.com".to_owned(), "shared.example.com".to_owned()]
            ),
            ("tls:b".to_owned(), vec!["b.example.com".to_owned()]),
        ],
        "a name two certificates share goes to the first"
    );
    assert_eq!(listener.default_filter_chain.unwrap().name, "tls-default:a");
    // The secret's bytes never show in debug output.
    let debug = format!("{snapshot:?}");
    assert!(!debug.contains("PRIVATE KEY"));
}

#[test]
fn header_values_are_literal_for_envoy() {
    let mut store = load("basic");
    store
        .routes
        .get_mut("users-api")
        .unwrap()
        .request_headers
        .set
        .insert("x-discount".to_owned(), "50% %HOST%".to_owned());
    let snapshot = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    let config: route_pb::RouteConfiguration =
        decode(&snapshot.resources(ResourceType::Route)["public"]);
    let value = config.virtual_hosts[0]
        .routes
        .iter()
        .find(|r| r.name == "users-api")
        .unwrap()
        .request_headers_to_add
        .iter()
        .find_map(|h| h.header.as_ref().filter(|h| h.key == "x-discount"))
        .unwrap()
        .value
        .clone();
    assert_eq!(value, "50%% %%HOST%%");
}

fn route_names(config: &route_pb::RouteConfiguration, domain: &str) -> Vec<String> {
    config
        .virtual_hosts
        .iter()
        .find(|vh| vh.domains == [domain])
        .unwrap_or_else(|| panic!("no virtual host for {domain}"))
        .routes
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

#[test]
fn a_route_naming_the_host_outranks_an_equal_host_less_one() {
    let mut store = load("basic");
    let add = |store: &mut StoreSnapshot, json: serde_json::Value| {
        let route: Route = serde_json::from_value(json).unwrap();
        crate::model::Resource::Route(route.clone())
            .validate()
            .unwrap();
        store.routes.insert(route.name.clone(), route);
    };
    // The host-less route's name sorts first: before hosts counted, it won on that host too.
    add(
        &mut store,
        serde_json::json!({"name": "a-orders-any-host", "match": {"path_prefix": "/orders"},
                           "cluster": "users"}),
    );
    add(
        &mut store,
        serde_json::json!({"name": "z-orders-api",
                           "match": {"hosts": ["api.example.com"], "path_prefix": "/orders"},
                           "cluster": "legacy"}),
    );
    // A host-less route with a method condition ties with the host on conditions; the host wins.
    add(
        &mut store,
        serde_json::json!({"name": "a-reports-get",
                           "match": {"path_prefix": "/reports", "methods": ["GET"]},
                           "cluster": "users"}),
    );
    add(
        &mut store,
        serde_json::json!({"name": "z-reports-api",
                           "match": {"hosts": ["api.example.com"], "path_prefix": "/reports"},
                           "cluster": "legacy"}),
    );
    // Explicit priority still comes first.
    add(
        &mut store,
        serde_json::json!({"name": "b-billing-any-host", "match": {"path_prefix": "/billing"},
                           "cluster": "users", "priority": 1}),
    );
    add(
        &mut store,
        serde_json::json!({"name": "a-billing-api",
                           "match": {"hosts": ["api.example.com"], "path_prefix": "/billing"},
                           "cluster": "legacy"}),
    );
    let snapshot = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    let config: route_pb::RouteConfiguration =
        decode(&snapshot.resources(ResourceType::Route)["public"]);
    let api = route_names(&config, "api.example.com");
    let position = |name: &str| api.iter().position(|r| r == name).unwrap();
    assert!(
        position("z-orders-api") < position("a-orders-any-host"),
        "{api:?}"
    );
    assert!(
        position("z-reports-api") < position("a-reports-get"),
        "{api:?}"
    );
    assert!(
        position("b-billing-any-host") < position("a-billing-api"),
        "{api:?}"
    );
    // Elsewhere only the host-less routes apply.
    let any = route_names(&config, "*");
    assert!(
        any.contains(&"a-orders-any-host".to_owned()) && !any.contains(&"z-orders-api".to_owned())
    );
}

#[test]
fn only_idempotent_requests_are_retried_unless_configured() {
    use matcher_pb::string_matcher::MatchPattern;
    use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
    let retry_policy = |store: &StoreSnapshot| {
        let snapshot = translate(store, &edge(), &TranslateContext::default()).unwrap();
        let config: route_pb::RouteConfiguration =
            decode(&snapshot.resources(ResourceType::Route)["public"]);
        let route = config.virtual_hosts[0]
            .routes
            .iter()
            .find(|r| r.name == "users-api")
            .unwrap()
            .clone();
        let Some(route_pb::route::Action::Route(action)) = route.action else {
            panic!("users-api forwards")
        };
        action.retry_policy.unwrap()
    };
    let mut store = load("basic");
    let policy = retry_policy(&store);
    let [matcher] = policy.retriable_request_headers.as_slice() else {
        panic!("one matcher: {:?}", policy.retriable_request_headers)
    };
    assert_eq!(matcher.name, ":method");
    assert!(!matcher.invert_match);
    let Some(route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(string)) =
        &matcher.header_match_specifier
    else {
        panic!("a string match: {matcher:?}")
    };
    let Some(MatchPattern::SafeRegex(regex)) = &string.match_pattern else {
        panic!("a regex: {string:?}")
    };
    assert_eq!(regex.regex, "GET|HEAD|OPTIONS|PUT|DELETE|TRACE");

    store
        .routes
        .get_mut("users-api")
        .unwrap()
        .retries
        .as_mut()
        .unwrap()
        .non_idempotent = true;
    assert!(retry_policy(&store).retriable_request_headers.is_empty());
}

/// A store with a listener-wide CORS policy, a route-level one replacing it, and JWT policies
/// on two routes.
fn policy_snapshot() -> StoreSnapshot {
    let mut snapshot = load("basic");
    let policies: Vec<crate::model::Policy> = serde_json::from_value(serde_json::json!([
        {"type": "cors", "name": "site", "allow_origins": ["https://app.example.com"],
         "allow_methods": ["GET", "PUT"], "max_age_s": 600},
        {"type": "cors", "name": "open", "allow_origins": ["*"], "allow_origin_regexes": ["https://.*\\.example\\.org"]},
        {"type": "jwt", "name": "idp", "issuer": "https://idp", "audiences": ["api"],
         "jwks_uri": "http://127.0.0.1:9000/jwks", "token_from": [{"cookie": "session"}],
         "claims_to_headers": {"sub": "x-user-id"}},
        {"type": "jwt", "name": "partner", "issuer": "https://partner", "optional": true,
         "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}]}}
    ]))
    .unwrap();
    snapshot.policies = policies
        .into_iter()
        .map(|p| (p.name().to_owned(), p))
        .collect();
    let mut names = snapshot.routes.keys().cloned();
    let (first, second) = (names.next().unwrap(), names.next().unwrap());
    snapshot.routes.get_mut(&first).unwrap().policies = vec!["idp".into(), "open".into()];
    snapshot.routes.get_mut(&second).unwrap().policies = vec!["partner".into(), "idp".into()];
    for listener in snapshot.listeners.values_mut() {
        listener.policies = vec!["site".into()];
    }
    crate::model::check_references(
        &snapshot.clusters,
        &snapshot.routes,
        &snapshot.listeners,
        &snapshot.certificates,
        &snapshot.policies,
    )
    .unwrap();
    snapshot
}

#[test]
fn policies_become_envoy_filters_and_per_route_configs() {
    use tollgate_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
    use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;
    let store = policy_snapshot();
    let out = translate(&store, &edge(), &TranslateContext::default()).unwrap();

    // The JWKS is fetched through a cluster of its own, named so it cannot collide.
    let jwks = &out.resources(ResourceType::Cluster)["tollgate:jwks:idp"];
    let jwks: cluster_pb::Cluster = decode(jwks);
    assert_eq!(jwks.connect_timeout.unwrap().seconds, 5);
    assert!(
        out.resources(ResourceType::Endpoint)
            .contains_key("tollgate:jwks:idp")
    );
    assert!(
        !out.resources(ResourceType::Cluster)
            .contains_key("tollgate:jwks:partner")
    );

    for listener in out.resources(ResourceType::Listener).values() {
        let hcm = hcm(&decode::<listener_pb::Listener>(listener));
        let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.cors",
                "envoy.filters.http.jwt_authn",
                "envoy.filters.http.router"
            ]
        );
        let Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) =
            &hcm.http_filters[1].config_type
        else {
            panic!("typed config")
        };
        let jwt = jwt_pb::JwtAuthentication::decode(any.value.as_slice()).unwrap();
        let mut providers: Vec<&String> = jwt.providers.keys().collect();
        providers.sort();
        assert_eq!(providers, ["idp", "partner"]);
        let idp = &jwt.providers["idp"];
        assert_eq!(idp.issuer, "https://idp");
        assert_eq!(idp.from_cookies, ["session"]);
        assert!(!idp.forward, "tokens are stripped by default");
        assert_eq!(idp.claim_to_headers[0].header_name, "x-user-id");
        let mut requirements: Vec<&String> = jwt.requirement_map.keys().collect();
        requirements.sort();
        assert_eq!(requirements, ["idp", "idp|partner"]);
        // Only one of the two policies lets a missing token through: the token is required.
        let any_of = match &jwt.requirement_map["idp|partner"].requires_type {
            Some(jwt_pb::jwt_requirement::RequiresType::RequiresAny(list)) => list,
            other => panic!("requires_any expected, got {other:?}"),
        };
        assert_eq!(any_of.requirements.len(), 2);
    }

    for config in out.resources(ResourceType::Route).values() {
        let config: route_pb::RouteConfiguration = decode(config);
        for route in config.virtual_hosts.iter().flat_map(|vh| &vh.routes) {
            let cors = route
                .typed_per_filter_config
                .get("envoy.filters.http.cors")
                .map(|any| cors_pb::CorsPolicy::decode(any.value.as_slice()).unwrap())
                .expect("every route gets the listener's CORS policy or its own");
            let requirement = route
                .typed_per_filter_config
                .get("envoy.filters.http.jwt_authn")
                .map(|any| jwt_pb::PerRouteConfig::decode(any.value.as_slice()).unwrap());
            let policies = &store.routes[&route.name].policies;
            if policies.contains(&"open".to_owned()) {
                assert_eq!(
                    cors.allow_origin_string_match.len(),
                    2,
                    "route's own policy"
                );
            } else {
                assert_eq!(cors.allow_methods, "GET,PUT");
                assert_eq!(cors.max_age, "600");
            }
            let expected = match policies.len() {
                0 => None,
                _ if policies.contains(&"partner".to_owned()) => Some("idp|partner"),
                _ => Some("idp"),
            };
            let named = requirement.map(|r| match r.requirement_specifier {
                Some(jwt_pb::per_route_config::RequirementSpecifier::RequirementName(n)) => n,
                other => panic!("requirement name expected, got {other:?}"),
            });
            assert_eq!(named.as_deref(), expected, "route {}", route.name);
        }
    }
}

#[test]
fn listeners_without_policies_get_only_the_router() {
    let out = translate(&load("basic"), &edge(), &TranslateContext::default()).unwrap();
    for listener in out.resources(ResourceType::Listener).values() {
        let hcm = hcm(&decode::<listener_pb::Listener>(listener));
        assert_eq!(hcm.http_filters.len(), 1);
    }
}

#[test]
fn api_keys_go_to_envoy_as_ext_authz_and_to_edge_proxies_as_a_key_table() {
    use tollgate_proto::api_key as api_key_pb;
    use tollgate_proto::envoy::extensions::filters::http::ext_authz::v3 as ext_authz_pb;
    use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
    let mut store = load("basic");
    let policy: crate::model::Policy = serde_json::from_value(
        serde_json::json!({"type": "api_key", "name": "keys", "query": "apikey"}),
    )
    .unwrap();
    store.policies.insert("keys".into(), policy);
    let hasher = crate::model::ApiKeyHasher::new(b"server-secret".to_vec());
    let consumer = crate::model::ConsumerSpec {
        name: "acme".into(),
        tier: Some("pro".into()),
        groups: vec!["partners".into()],
        metadata: Default::default(),
        api_keys: Some(vec!["acme-key-0123456789".into()]),
    }
    .into_consumer(&hasher)
    .unwrap();
    store.consumers.insert("acme".into(), consumer);
    let keyed = store.routes.keys().next().unwrap().clone();
    store.routes.get_mut(&keyed).unwrap().policies = vec!["keys".into()];
    let context = TranslateContext {
        grpc_host: "10.1.2.3".into(),
        grpc_port: 18000,
        api_key_secret: std::sync::Arc::from(b"server-secret".to_vec()),
    };
    let per_route = |snapshot: &XdsSnapshot, filter: &str| {
        let mut out = BTreeMap::new();
        for config in snapshot.resources(ResourceType::Route).values() {
            let config: route_pb::RouteConfiguration = decode(config);
            for route in config.virtual_hosts.iter().flat_map(|vh| &vh.routes) {
                out.insert(
                    route.name.clone(),
                    route.typed_per_filter_config.get(filter).cloned(),
                );
            }
        }
        out
    };

    // Envoy: ext_authz to the control plane, switched off on routes without the policy.
    let envoy = translate(&store, &edge(), &context).unwrap();
    assert!(
        envoy
            .resources(ResourceType::Cluster)
            .contains_key("tollgate:control-plane")
    );
    assert!(envoy.resources(ResourceType::Secret).is_empty());
    for (route, config) in per_route(&envoy, "envoy.filters.http.ext_authz") {
        let config =
            ext_authz_pb::ExtAuthzPerRoute::decode(config.unwrap().value.as_slice()).unwrap();
        match config.r#override.unwrap() {
            ext_authz_pb::ext_authz_per_route::Override::CheckSettings(settings) => {
                assert_eq!(route, keyed);
                assert_eq!(
                    settings.context_extensions["tollgate.api_key_policies"],
                    "keys"
                );
            }
            ext_authz_pb::ext_authz_per_route::Override::Disabled(disabled) => {
                assert!(disabled && route != keyed)
            }
        }
    }

    // Edge proxies: their own filter, and the key table (hashes, never keys) over SDS.
    let tollgate = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let edge_snapshot = translate(&store, &tollgate, &context).unwrap();
    assert!(
        !edge_snapshot
            .resources(ResourceType::Cluster)
            .contains_key("tollgate:control-plane")
    );
    let secret: tls_pb::Secret =
        decode(&edge_snapshot.resources(ResourceType::Secret)["tollgate:api-keys"]);
    let Some(tls_pb::secret::Type::GenericSecret(generic)) = secret.r#type else {
        panic!("generic secret expected")
    };
    let Some(tollgate_proto::envoy::config::core::v3::data_source::Specifier::InlineBytes(bytes)) =
        generic.secret.unwrap().specifier
    else {
        panic!("inline bytes expected")
    };
    let table = api_key_pb::ApiKeyTable::decode(bytes.as_slice()).unwrap();
    assert_eq!(table.hmac_secret, b"server-secret");
    assert_eq!(table.consumers[0].name, "acme");
    assert_eq!(
        table.consumers[0].key_hashes,
        [hasher.hash("acme-key-0123456789")]
    );
    assert!(!format!("{:?}", edge_snapshot).contains("acme-key"));
    let routes = per_route(&edge_snapshot, "tollgate.filters.http.api_key");
    let requirement = routes[&keyed].as_ref().unwrap();
    assert_eq!(
        api_key_pb::ApiKeyPerRoute::decode(requirement.value.as_slice())
            .unwrap()
            .providers,
        ["keys"]
    );
    assert!(routes.iter().all(|(name, c)| *name == keyed || c.is_none()));
}

#[test]
fn ip_filters_and_authorization_become_one_rbac_rule_per_route() {
    use tollgate_proto::envoy::config::rbac::v3 as rbac_pb;
    use tollgate_proto::envoy::extensions::filters::http::rbac::v3 as rbac_filter_pb;
    let mut store = load("basic");
    let policies: Vec<crate::model::Policy> = serde_json::from_value(serde_json::json!([
        {"type": "ip_filter", "name": "office", "allow": ["10.0.0.0/8"], "deny": ["10.9.0.0/16"]},
        {"type": "authorization", "name": "admins", "require_claims": {"role": ["admin"]},
         "require_scopes": ["write"]}
    ]))
    .unwrap();
    for policy in policies {
        store.policies.insert(policy.name().to_owned(), policy);
    }
    let guarded = store.routes.keys().next().unwrap().clone();
    store.routes.get_mut(&guarded).unwrap().policies = vec!["office".into(), "admins".into()];
    for listener in store.listeners.values_mut() {
        listener.trusted_proxy_hops = 2;
    }
    let out = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    for listener in out.resources(ResourceType::Listener).values() {
        let hcm = hcm(&decode::<listener_pb::Listener>(listener));
        assert_eq!(hcm.xff_num_trusted_hops, 2);
        let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["envoy.filters.http.rbac", "envoy.filters.http.router"]
        );
    }
    for config in out.resources(ResourceType::Route).values() {
        let config: route_pb::RouteConfiguration = decode(config);
        for route in config.virtual_hosts.iter().flat_map(|vh| &vh.routes) {
            let rbac = route.typed_per_filter_config.get("envoy.filters.http.rbac");
            if route.name != guarded {
                assert!(rbac.is_none(), "{} is unrestricted", route.name);
                continue;
            }
            let per_route =
                rbac_filter_pb::RbacPerRoute::decode(rbac.unwrap().value.as_slice()).unwrap();
            let rules = per_route.rbac.unwrap().rules.unwrap();
            assert_eq!(rules.action, rbac_pb::rbac::Action::Allow as i32);
            let principal = &rules.policies["tollgate"].principals[0];
            // AND(ip filter = AND(allow, NOT deny), authorization = AND(claim, scope)).
            let Some(rbac_pb::principal::Identifier::AndIds(all)) = &principal.identifier else {
                panic!("and_ids expected: {principal:?}")
            };
            assert_eq!(all.ids.len(), 2);
            let text = format!("{principal:?}");
            assert!(text.contains("RemoteIp") && text.contains("NotId"));
            assert!(text.contains("jwt_payload") && text.contains("\"scp\""));
        }
    }
}

#[test]
fn transforms_become_route_header_formatters_and_edge_body_configs() {
    use tollgate_proto::transform as transform_pb;
    let mut store = load("basic");
    let policy: crate::model::Policy = serde_json::from_value(serde_json::json!({
        "type": "transform", "name": "shape",
        "request": {"headers": {"set": {"x-user": "u-{claim.org.id}/{consumer.name} 100%"},
                                "remove": ["x-debug"]},
                    "body": {"rename_keys": "snake_case", "add": {"via": "gw"}},
                    "path": {"regex": "^/old/(.*)", "substitution": "/new/\\1"}},
        "response": {"headers": {"add": {"x-client": "{client_ip} {header.user-agent}"}},
                     "body": {"convert": "json_to_xml"}}
    }))
    .unwrap();
    store.policies.insert("shape".into(), policy);
    let shaped = store
        .routes
        .values()
        .find(|r| r.weighted_clusters.is_some() && r.rewrite.is_none())
        .unwrap()
        .name
        .clone();
    store.routes.get_mut(&shaped).unwrap().policies = vec!["shape".into()];
    let find = |snapshot: &XdsSnapshot| {
        let config: route_pb::RouteConfiguration = decode(
            snapshot
                .resources(ResourceType::Route)
                .values()
                .next()
                .unwrap(),
        );
        config
            .virtual_hosts
            .iter()
            .flat_map(|vh| vh.routes.clone())
            .find(|r| r.name == shaped)
            .unwrap()
    };
    let envoy = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    let route = find(&envoy);
    let user = route
        .request_headers_to_add
        .iter()
        .find(|h| h.header.as_ref().unwrap().key == "x-user")
        .unwrap();
    assert_eq!(
        user.header.as_ref().unwrap().value,
        "u-%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:jwt_payload:org:id)%/\
         %DYNAMIC_METADATA(envoy.filters.http.ext_authz:consumer)% 100%%"
    );
    assert!(
        route
            .request_headers_to_remove
            .contains(&"x-debug".to_owned())
    );
    assert_eq!(
        route.response_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .value,
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %REQ(user-agent)%"
    );
    let Some(route_pb::route::Action::Route(action)) = &route.action else {
        panic!("forwarding route")
    };
    assert_eq!(
        action.regex_rewrite.as_ref().unwrap().substitution,
        "/new/\\1"
    );
    assert!(
        !route
            .typed_per_filter_config
            .contains_key("tollgate.filters.http.transform")
    );

    let tollgate = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let edge_snapshot = translate(&store, &tollgate, &TranslateContext::default()).unwrap();
    let route = find(&edge_snapshot);
    let per_route = transform_pb::TransformPerRoute::decode(
        route.typed_per_filter_config["tollgate.filters.http.transform"]
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(
        per_route.request[0].rename_keys,
        transform_pb::KeyCase::SnakeCase as i32
    );
    assert_eq!(per_route.request[0].add["via"], "\"gw\"");
    assert_eq!(
        per_route.response[0].convert,
        transform_pb::Conversion::JsonToXml as i32
    );
    for listener in edge_snapshot.resources(ResourceType::Listener).values() {
        let hcm = hcm(&decode::<listener_pb::Listener>(listener));
        assert!(
            hcm.http_filters
                .iter()
                .any(|f| f.name == "tollgate.filters.http.transform")
        );
    }
}

/// The basic fixture with API keys, an IP filter and two rate limits on `users-api`, a CORS
/// policy on every listener, and a body transform on `canary`.
fn rate_limit_snapshot() -> StoreSnapshot {
    let mut store = load("basic");
    let policies: Vec<crate::model::Policy> = serde_json::from_value(serde_json::json!([
        {"type": "api_key", "name": "keys"},
        {"type": "cors", "name": "site", "allow_origins": ["https://app.example.com"]},
        {"type": "ip_filter", "name": "office", "deny": ["192.0.2.0/24"]},
        {"type": "transform", "name": "shape", "request": {"body": {"remove": ["password"]}}},
        {"type": "rate_limit", "name": "per-key", "key": ["api_key", "route"],
         "algorithm": "sliding_window", "limit": {"requests": 100, "window_s": 60},
         "tiers": {"pro": {"requests": 1000, "window_s": 60}}, "lease": 10},
        {"type": "rate_limit", "name": "per-ip", "key": ["client_ip", "header:x-tenant"],
         "limit": {"requests": 5, "window_s": 1, "burst": 10}, "mode": "local",
         "shadow": true, "failure_mode": "closed", "legacy_headers": true}
    ]))
    .unwrap();
    store.policies = policies
        .into_iter()
        .map(|p| (p.name().to_owned(), p))
        .collect();
    store.routes.get_mut("users-api").unwrap().policies = vec![
        "per-ip".into(),
        "office".into(),
        "keys".into(),
        "per-key".into(),
    ];
    store.routes.get_mut("canary").unwrap().policies = vec!["shape".into()];
    for listener in store.listeners.values_mut() {
        listener.policies = vec!["site".into()];
    }
    crate::model::check_references(
        &store.clusters,
        &store.routes,
        &store.listeners,
        &store.certificates,
        &store.policies,
    )
    .unwrap();
    store
}

fn routes_by_name(snapshot: &XdsSnapshot) -> BTreeMap<String, route_pb::Route> {
    let mut out = BTreeMap::new();
    for config in snapshot.resources(ResourceType::Route).values() {
        let config: route_pb::RouteConfiguration = decode(config);
        for route in config.virtual_hosts.into_iter().flat_map(|vh| vh.routes) {
            out.insert(route.name.clone(), route);
        }
    }
    out
}

fn filter_config<M: Message + Default>(hcm: &hcm_pb::HttpConnectionManager, name: &str) -> M {
    let filter = hcm.http_filters.iter().find(|f| f.name == name).unwrap();
    let Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("typed config expected")
    };
    M::decode(any.value.as_slice()).unwrap()
}

#[test]
fn rate_limits_go_to_envoy_as_rls_descriptors() {
    use route_pb::rate_limit::action::ActionSpecifier;
    use tollgate_proto::envoy::extensions::filters::http::ratelimit::v3 as ratelimit_pb;
    let store = rate_limit_snapshot();
    let out = translate(&store, &edge(), &TranslateContext::default()).unwrap();

    // Quotas come after authentication and authorization, before body transforms (which
    // Envoy has none of).
    let listener: listener_pb::Listener = decode(&out.resources(ResourceType::Listener)["public"]);
    let hcm = hcm(&listener);
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.cors",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.rbac",
            "envoy.filters.http.ratelimit",
            "envoy.filters.http.ratelimit.fail_closed",
            "envoy.filters.http.router"
        ]
    );
    // Envoy's failure mode is the filter's: fail-closed policies get their own, which answers
    // 503 when the RLS (or the control plane) cannot decide.
    let closed: ratelimit_pb::RateLimit =
        filter_config(&hcm, "envoy.filters.http.ratelimit.fail_closed");
    assert!(closed.failure_mode_deny);
    assert_eq!(closed.status_on_error.unwrap().code, 503);
    let filter: ratelimit_pb::RateLimit = filter_config(&hcm, "envoy.filters.http.ratelimit");
    assert_eq!(filter.domain, "tollgate");
    assert!(!filter.failure_mode_deny);
    assert_eq!(filter.status_on_error, None);
    assert!(filter.disable_x_envoy_ratelimited_header);
    assert_eq!(filter.timeout.unwrap().nanos, 500_000_000);
    let service = filter.rate_limit_service.unwrap();
    assert_eq!(
        service.transport_api_version,
        tollgate_proto::envoy::config::core::v3::ApiVersion::V3 as i32
    );
    let Some(tollgate_proto::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(
        grpc,
    )) = service.grpc_service.unwrap().target_specifier
    else {
        panic!("envoy_grpc expected")
    };
    assert_eq!(grpc.cluster_name, "tollgate:control-plane");
    assert!(
        out.resources(ResourceType::Cluster)
            .contains_key("tollgate:control-plane")
    );

    let routes = routes_by_name(&out);
    let per_route = |filter: &str| {
        ratelimit_pb::RateLimitPerRoute::decode(
            routes["users-api"].typed_per_filter_config[filter]
                .value
                .as_slice(),
        )
        .unwrap()
    };
    // per-ip fails closed, per-key open.
    let limits: Vec<route_pb::RateLimit> = [
        "envoy.filters.http.ratelimit.fail_closed",
        "envoy.filters.http.ratelimit",
    ]
    .into_iter()
    .flat_map(|filter| per_route(filter).rate_limits)
    .collect();
    // One descriptor per policy, in the route's order; each starts by naming its policy.
    let describe = |limit: &route_pb::RateLimit| -> Vec<String> {
        limit
            .actions
            .iter()
            .map(|a| match a.action_specifier.as_ref().unwrap() {
                ActionSpecifier::GenericKey(g) => {
                    format!("{}={}", g.descriptor_key, g.descriptor_value)
                }
                ActionSpecifier::RemoteAddress(_) => "remote_address".to_owned(),
                ActionSpecifier::RequestHeaders(h) => format!(
                    "{}<-header {} skip={}",
                    h.descriptor_key, h.header_name, h.skip_if_absent
                ),
                ActionSpecifier::Metadata(m) => {
                    let key = m.metadata_key.as_ref().unwrap();
                    let path: Vec<String> = key
                        .path
                        .iter()
                        .map(|s| format!("{:?}", s.segment.as_ref().unwrap()))
                        .collect();
                    format!(
                        "{}<-{}:{} skip={}",
                        m.descriptor_key,
                        key.key,
                        path.join(":"),
                        m.skip_if_absent
                    )
                }
                other => panic!("unexpected action {other:?}"),
            })
            .collect()
    };
    let described: Vec<Vec<String>> = limits.iter().map(describe).collect();
    assert_eq!(
        described,
        [
            vec![
                "policy=per-ip".to_owned(),
                "remote_address".to_owned(),
                "header:x-tenant<-header x-tenant skip=false".to_owned(),
            ],
            vec![
                "policy=per-key".to_owned(),
                // Consumers without a tier still get the default limit.
                r#"tier<-envoy.filters.http.ext_authz:Key("tier") skip=true"#.to_owned(),
                // The key's hash from the ext_authz answer: the key itself never travels.
                r#"api_key<-envoy.filters.http.ext_authz:Key("api_key_hash") skip=false"#
                    .to_owned(),
                "route=users-api".to_owned(),
            ],
        ]
    );
    for (name, route) in &routes {
        assert_eq!(
            route
                .typed_per_filter_config
                .contains_key("envoy.filters.http.ratelimit"),
            name == "users-api",
            "{name}"
        );
    }
}

#[test]
fn rate_limits_go_to_edge_proxies_as_their_quota_filter() {
    use tollgate_proto::rate_limit as rate_limit_pb;
    use tollgate_proto::rate_limit::key_part::Part;
    let store = rate_limit_snapshot();
    let tollgate = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let out = translate(&store, &tollgate, &TranslateContext::default()).unwrap();
    assert!(
        !out.resources(ResourceType::Cluster)
            .contains_key("tollgate:control-plane"),
        "edge proxies count themselves"
    );
    let listener: listener_pb::Listener = decode(&out.resources(ResourceType::Listener)["public"]);
    let hcm = hcm(&listener);
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.cors",
            "tollgate.filters.http.api_key",
            "envoy.filters.http.rbac",
            "tollgate.filters.http.rate_limit",
            "tollgate.filters.http.transform",
            "envoy.filters.http.router"
        ]
    );
    let filter: rate_limit_pb::RateLimit = filter_config(&hcm, "tollgate.filters.http.rate_limit");
    assert_eq!(
        filter.policies.keys().collect::<Vec<_>>(),
        ["per-ip", "per-key"]
    );
    assert_eq!(
        filter.policies["per-key"],
        rate_limit_pb::RateLimitPolicy {
            key: vec![
                rate_limit_pb::KeyPart {
                    part: Some(Part::ApiKey(true))
                },
                rate_limit_pb::KeyPart {
                    part: Some(Part::Route(true))
                },
            ],
            limit: Some(rate_limit_pb::Limit {
                requests: 100,
                window_ms: 60_000,
                burst: 0
            }),
            tier_limits: [(
                "pro".to_owned(),
                rate_limit_pb::Limit {
                    requests: 1000,
                    window_ms: 60_000,
                    burst: 0
                }
            )]
            .into(),
            algorithm: rate_limit_pb::Algorithm::SlidingWindow as i32,
            global: true,
            shadow: false,
            fail_closed: false,
            legacy_headers: false,
            lease: 10,
        }
    );
    assert_eq!(
        filter.policies["per-ip"],
        rate_limit_pb::RateLimitPolicy {
            key: vec![
                rate_limit_pb::KeyPart {
                    part: Some(Part::ClientIp(true))
                },
                rate_limit_pb::KeyPart {
                    part: Some(Part::Header("x-tenant".into()))
                },
            ],
            limit: Some(rate_limit_pb::Limit {
                requests: 5,
                window_ms: 1000,
                burst: 10
            }),
            tier_limits: Default::default(),
            algorithm: rate_limit_pb::Algorithm::TokenBucket as i32,
            global: false,
            shadow: true,
            fail_closed: true,
            legacy_headers: true,
            lease: 0,
        }
    );
    let routes = routes_by_name(&out);
    let per_route = rate_limit_pb::RateLimitPerRoute::decode(
        routes["users-api"].typed_per_filter_config["tollgate.filters.http.rate_limit"]
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(per_route.policies, ["per-ip", "per-key"]);
    assert!(
        routes
            .iter()
            .filter(|(name, _)| *name != "users-api")
            .all(|(_, r)| !r
                .typed_per_filter_config
                .contains_key("tollgate.filters.http.rate_limit"))
    );
}

#[test]
fn rate_limits_alone_bring_the_control_plane_cluster_to_envoy() {
    let mut store = load("basic");
    let policy: crate::model::Policy = serde_json::from_value(serde_json::json!({
        "type": "rate_limit", "name": "per-ip", "key": ["client_ip"],
        "limit": {"requests": 5, "window_s": 1}}))
    .unwrap();
    store.policies.insert("per-ip".into(), policy);
    // Redirects and direct responses are not counted (Envoy has no route entry to read for
    // them): on those alone, the policy brings nothing.
    for route in ["health", "old-docs"] {
        store.routes.get_mut(route).unwrap().policies = vec!["per-ip".into()];
    }
    let out = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    let listener: listener_pb::Listener = decode(&out.resources(ResourceType::Listener)["public"]);
    assert_eq!(hcm(&listener).http_filters.len(), 1);
    assert!(
        routes_by_name(&out)
            .values()
            .all(|r| r.typed_per_filter_config.is_empty())
    );
    assert!(
        !out.resources(ResourceType::Cluster)
            .contains_key("tollgate:control-plane")
    );

    store.routes.get_mut("users-api").unwrap().policies = vec!["per-ip".into()];
    let out = translate(&store, &edge(), &TranslateContext::default()).unwrap();
    assert!(
        out.resources(ResourceType::Cluster)
            .contains_key("tollgate:control-plane")
    );
    let listener: listener_pb::Listener = decode(&out.resources(ResourceType::Listener)["public"]);
    let names: Vec<String> = hcm(&listener)
        .http_filters
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(
        names,
        ["envoy.filters.http.ratelimit", "envoy.filters.http.router"]
    );
}

#[test]
fn routes_with_several_filter_configs_keep_their_versions() {
    // A route's per-filter configs are a map; its encoding must not depend on a hash seed.
    for store in [policy_snapshot(), rate_limit_snapshot()] {
        for kind in [NodeKind::Envoy, NodeKind::Tollgate] {
            let group = NodeGroup {
                kind,
                cluster: "edge".into(),
            };
            let first = translate(&store, &group, &TranslateContext::default()).unwrap();
            for _ in 0..5 {
                assert_eq!(
                    first,
                    translate(&store, &group, &TranslateContext::default()).unwrap(),
                    "{kind:?}"
                );
            }
        }
    }
}
