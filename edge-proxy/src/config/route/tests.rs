use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use matcher_pb::string_matcher::MatchPattern;
use route_pb::header_matcher::HeaderMatchSpecifier as HeaderSpec;
use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as QuerySpec;
use route_pb::route_match::PathSpecifier;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
use tollgate_proto::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};

use super::*;

// ---------------------------------------------------------------------------------------------
// Proto builders

fn path_match(spec: PathSpecifier) -> route_pb::RouteMatch {
    route_pb::RouteMatch {
        path_specifier: Some(spec),
        ..Default::default()
    }
}

fn prefix(p: &str) -> route_pb::RouteMatch {
    path_match(PathSpecifier::Prefix(p.into()))
}

fn exact(p: &str) -> route_pb::RouteMatch {
    path_match(PathSpecifier::Path(p.into()))
}

fn regex_path(r: &str) -> route_pb::RouteMatch {
    path_match(PathSpecifier::SafeRegex(regex(r)))
}

fn regex(r: &str) -> matcher_pb::RegexMatcher {
    matcher_pb::RegexMatcher {
        regex: r.into(),
        ..Default::default()
    }
}

fn string(pattern: MatchPattern, ignore_case: bool) -> matcher_pb::StringMatcher {
    matcher_pb::StringMatcher {
        ignore_case,
        match_pattern: Some(pattern),
    }
}

fn header(name: &str, spec: HeaderSpec) -> route_pb::HeaderMatcher {
    route_pb::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn inverted(mut h: route_pb::HeaderMatcher) -> route_pb::HeaderMatcher {
    h.invert_match = true;
    h
}

fn query(name: &str, spec: QuerySpec) -> route_pb::QueryParameterMatcher {
    route_pb::QueryParameterMatcher {
        name: name.into(),
        query_parameter_match_specifier: Some(spec),
    }
}

fn with_headers(
    mut m: route_pb::RouteMatch,
    headers: Vec<route_pb::HeaderMatcher>,
) -> route_pb::RouteMatch {
    m.headers = headers;
    m
}

fn with_query(
    mut m: route_pb::RouteMatch,
    query: Vec<route_pb::QueryParameterMatcher>,
) -> route_pb::RouteMatch {
    m.query_parameters = query;
    m
}

fn case_insensitive(mut m: route_pb::RouteMatch) -> route_pb::RouteMatch {
    m.case_sensitive = Some(BoolValue { value: false });
    m
}

fn to_cluster(cluster: &str) -> route_pb::RouteAction {
    route_pb::RouteAction {
        cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::Cluster(
            cluster.into(),
        )),
        ..Default::default()
    }
}

fn weighted(clusters: &[(&str, u32)]) -> route_pb::RouteAction {
    route_pb::RouteAction {
        cluster_specifier: Some(route_pb::route_action::ClusterSpecifier::WeightedClusters(
            route_pb::WeightedCluster {
                clusters: clusters
                    .iter()
                    .map(|(name, weight)| route_pb::weighted_cluster::ClusterWeight {
                        name: (*name).into(),
                        weight: Some(UInt32Value { value: *weight }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn route(name: &str, m: route_pb::RouteMatch, action: route_pb::route::Action) -> route_pb::Route {
    route_pb::Route {
        name: name.into(),
        r#match: Some(m),
        action: Some(action),
        ..Default::default()
    }
}

/// A route forwarding to a cluster named after the route.
fn fwd(name: &str, m: route_pb::RouteMatch) -> route_pb::Route {
    route(name, m, route_pb::route::Action::Route(to_cluster(name)))
}

fn vhost(name: &str, domains: &[&str], routes: Vec<route_pb::Route>) -> route_pb::VirtualHost {
    route_pb::VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| (*d).into()).collect(),
        routes,
        ..Default::default()
    }
}

fn config(virtual_hosts: Vec<route_pb::VirtualHost>) -> route_pb::RouteConfiguration {
    route_pb::RouteConfiguration {
        name: "public".into(),
        virtual_hosts,
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

fn build(cfg: &route_pb::RouteConfiguration) -> RouteTable {
    RouteTable::try_from(cfg).unwrap_or_else(|e| panic!("{e}"))
}

/// What header templates read besides the headers, for tests.
fn cx() -> crate::config::format::FormatContext<'static> {
    crate::config::format::FormatContext {
        authority: "h",
        method: "GET",
        scheme: "http",
        client: std::net::IpAddr::from([192, 0, 2, 7]),
        metadata: &crate::config::format::NoMetadata,
    }
}

fn header_option(
    key: &str,
    value: &str,
    action: core_pb::header_value_option::HeaderAppendAction,
) -> core_pb::HeaderValueOption {
    core_pb::HeaderValueOption {
        header: Some(core_pb::HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

struct Req {
    method: &'static str,
    scheme: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: HeaderMap,
}

fn get(authority: &'static str, path: &'static str) -> Req {
    Req {
        method: "GET",
        scheme: "http",
        authority,
        path,
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn clone_with_method(&self, method: &'static str) -> Self {
        Req {
            method,
            scheme: self.scheme,
            authority: self.authority,
            path: self.path,
            headers: self.headers.clone(),
        }
    }

    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn scheme(mut self, scheme: &'static str) -> Self {
        self.scheme = scheme;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }

    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: self.method,
            scheme: self.scheme,
            authority: self.authority,
            path_and_query: self.path,
            headers: &self.headers,
        }
    }
}

fn found<'t>(table: &'t RouteTable, req: &Req) -> Option<&'t str> {
    table.find(&req.head()).map(|m| &*m.route.name)
}

// ---------------------------------------------------------------------------------------------
// Matching: one table, many requests

/// A table exercising every match kind and every kind of domain.
fn matching_config() -> route_pb::RouteConfiguration {
    use MatchPattern as P;
    let api = vec![
        fwd("api-exact", exact("/exact")),
        fwd("api-ci-exact", case_insensitive(exact("/Exact-CI"))),
        fwd("api-ci-prefix", case_insensitive(prefix("/CaseLess"))),
        fwd("api-regex", regex_path("/items/[0-9]+")),
        fwd(
            "api-post",
            with_headers(
                prefix("/m"),
                vec![header(
                    ":method",
                    HeaderSpec::StringMatch(string(P::Exact("POST".into()), false)),
                )],
            ),
        ),
        fwd(
            "api-not-get",
            with_headers(
                prefix("/m"),
                vec![inverted(header(
                    ":method",
                    HeaderSpec::StringMatch(string(P::Exact("GET".into()), false)),
                ))],
            ),
        ),
        fwd(
            "api-h-prefix",
            with_headers(
                prefix("/h/"),
                vec![header(
                    "x-env",
                    HeaderSpec::StringMatch(string(P::Prefix("pro".into()), true)),
                )],
            ),
        ),
        fwd(
            "api-h-suffix",
            with_headers(
                prefix("/h/"),
                vec![header(
                    "x-env",
                    HeaderSpec::StringMatch(string(P::Suffix("-eu".into()), false)),
                )],
            ),
        ),
        fwd(
            "api-h-contains",
            with_headers(
                prefix("/h/"),
                vec![header(
                    "x-env",
                    HeaderSpec::StringMatch(string(P::Contains("stag".into()), false)),
                )],
            ),
        ),
        fwd(
            "api-h-regex",
            with_headers(
                prefix("/h/"),
                vec![header(
                    "x-env",
                    HeaderSpec::StringMatch(string(P::SafeRegex(regex("dev[0-9]")), false)),
                )],
            ),
        ),
        fwd(
            "api-h-range",
            with_headers(
                prefix("/h/"),
                vec![header(
                    "x-version",
                    HeaderSpec::RangeMatch(tollgate_proto::envoy::r#type::v3::Int64Range {
                        start: 2,
                        end: 5,
                    }),
                )],
            ),
        ),
        fwd(
            "api-h-absent",
            with_headers(
                prefix("/h/"),
                vec![header("x-debug", HeaderSpec::PresentMatch(false))],
            ),
        ),
        fwd("api-h-present", prefix("/h/")),
        fwd(
            "api-q-exact",
            with_query(
                prefix("/q"),
                vec![query(
                    "v",
                    QuerySpec::StringMatch(string(P::Exact("2".into()), false)),
                )],
            ),
        ),
        fwd(
            "api-q-regex",
            with_query(
                prefix("/q"),
                vec![query(
                    "v",
                    QuerySpec::StringMatch(string(P::SafeRegex(regex("[0-9]+")), false)),
                )],
            ),
        ),
        fwd(
            "api-q-present",
            with_query(
                prefix("/q"),
                vec![query("debug", QuerySpec::PresentMatch(true))],
            ),
        ),
        fwd("api-first", prefix("/first")),
        fwd("api-first-shadowed", prefix("/first/more")),
        fwd("api-catch-all", prefix("/")),
    ];
    config(vec![
        vhost("api", &["api.example.com"], api),
        vhost(
            "suffix-long",
            &["*.eu.example.com"],
            vec![fwd("suffix-long", prefix("/"))],
        ),
        vhost(
            "suffix-short",
            &["*.example.com"],
            vec![fwd("suffix-short", prefix("/"))],
        ),
        vhost(
            "suffix-dash",
            &["*-admin.example.com"],
            vec![fwd("suffix-dash", prefix("/"))],
        ),
        vhost(
            "prefix-long",
            &["api.internal.*"],
            vec![fwd("prefix-long", prefix("/"))],
        ),
        vhost(
            "prefix-short",
            &["api.*"],
            vec![fwd("prefix-short", prefix("/"))],
        ),
        vhost(
            "any",
            &["*"],
            vec![
                fwd("any-health", exact("/healthz")),
                fwd("any", prefix("/")),
            ],
        ),
    ])
}

#[test]
fn requests_route_as_envoy_would() {
    let table = build(&matching_config());
    let api = "api.example.com";
    let cases: Vec<(Req, Option<&str>)> = vec![
        // Path: exact (query ignored, case sensitive by default), case-insensitive, regex.
        (get(api, "/exact"), Some("api-exact")),
        (get(api, "/exact?x=1"), Some("api-exact")),
        (get(api, "/exact#frag"), Some("api-exact")),
        (get(api, "/Exact"), Some("api-catch-all")),
        (get(api, "/exact/more"), Some("api-catch-all")),
        (get(api, "/exact-ci"), Some("api-ci-exact")),
        (get(api, "/caseless/x"), Some("api-ci-prefix")),
        (get(api, "/CASELESS"), Some("api-ci-prefix")),
        (get(api, "/items/42"), Some("api-regex")),
        (get(api, "/items/42?page=2"), Some("api-regex")),
        // The regex must match the whole path, not a part of it.
        (get(api, "/items/42/reviews"), Some("api-catch-all")),
        (get(api, "/v1/items/42"), Some("api-catch-all")),
        // Method via the :method pseudo-header, and inverted.
        (get(api, "/m").method("POST"), Some("api-post")),
        (get(api, "/m").method("PUT"), Some("api-not-get")),
        (get(api, "/m"), Some("api-catch-all")),
        // Header string matchers, in route order.
        (
            get(api, "/h/").header("x-env", "PROD"),
            Some("api-h-prefix"),
        ),
        (
            get(api, "/h/").header("x-env", "dev-eu"),
            Some("api-h-suffix"),
        ),
        (
            get(api, "/h/").header("x-env", "staging"),
            Some("api-h-contains"),
        ),
        (get(api, "/h/").header("x-env", "dev7"), Some("api-h-regex")),
        // A regex on a header must match the whole value too.
        (
            get(api, "/h/").header("x-env", "dev77"),
            Some("api-h-absent"),
        ),
        // Several values are joined with ',' before matching, as Envoy does.
        (
            get(api, "/h/")
                .header("x-env", "a")
                .header("x-env", "dev-eu"),
            Some("api-h-suffix"),
        ),
        // Range [2, 5).
        (
            get(api, "/h/").header("x-version", "2"),
            Some("api-h-range"),
        ),
        (
            get(api, "/h/").header("x-version", "4"),
            Some("api-h-range"),
        ),
        (
            get(api, "/h/").header("x-version", "5"),
            Some("api-h-absent"),
        ),
        (
            get(api, "/h/").header("x-version", "3.5"),
            Some("api-h-absent"),
        ),
        // present_match: false matches only when the header is absent.
        (
            get(api, "/h/").header("x-debug", "1"),
            Some("api-h-present"),
        ),
        // Query parameters: first value counts, not decoded, full regex match.
        (get(api, "/q?v=2"), Some("api-q-exact")),
        (get(api, "/q?a=b&v=2"), Some("api-q-exact")),
        (get(api, "/q?v=3&v=2"), Some("api-q-regex")),
        (get(api, "/q?v=12x"), Some("api-catch-all")),
        (get(api, "/q?v=%32"), Some("api-catch-all")),
        (get(api, "/q?debug"), Some("api-q-present")),
        (get(api, "/q?debug=&v=x"), Some("api-q-present")),
        (get(api, "/q?debugx=1"), Some("api-catch-all")),
        // First match wins, even when a later route is more specific.
        (get(api, "/first/more"), Some("api-first")),
        // Virtual hosts: exact beats every wildcard; case and port are ignored.
        (get("API.Example.COM", "/"), Some("api-catch-all")),
        (get("api.example.com:8443", "/"), Some("api-catch-all")),
        // Longest suffix wildcard wins; the `*` must stand for at least one character.
        (get("shop.example.com", "/"), Some("suffix-short")),
        (get("shop.eu.example.com", "/"), Some("suffix-long")),
        (get("ops-admin.example.com", "/"), Some("suffix-dash")),
        (get("example.com", "/"), Some("any")),
        (get(".example.com", "/"), Some("any")),
        // Suffix wildcards beat prefix wildcards, which beat `*`.
        (get("api.foo.example.com", "/"), Some("suffix-short")),
        (get("api.internal.corp", "/"), Some("prefix-long")),
        (get("api.other:80", "/"), Some("prefix-short")),
        (get("api.", "/"), Some("any")),
        (get("elsewhere.org", "/healthz"), Some("any-health")),
        (get("[::1]:8080", "/x"), Some("any")),
    ];
    assert!(cases.len() >= 40);
    for (req, want) in &cases {
        assert_eq!(
            found(&table, req),
            *want,
            "{} {}{} {:?}",
            req.method,
            req.authority,
            req.path,
            req.headers
        );
    }
}

#[test]
fn virtual_host_lookup_honours_ignore_port_in_host_matching() {
    let mut cfg = matching_config();
    cfg.ignore_port_in_host_matching = false;
    let table = build(&cfg);
    // With the port kept, `api.example.com:8443` is no exact domain (nor a `*.example.com`
    // host), but it starts with `api.`.
    assert_eq!(
        found(&table, &get("api.example.com:8443", "/")),
        Some("prefix-short")
    );
    assert_eq!(found(&table, &get("shop.example.com:80", "/")), Some("any"));
    assert_eq!(
        found(&table, &get("api.example.com", "/")),
        Some("api-catch-all")
    );
}

#[test]
fn no_virtual_host_or_no_route_is_none() {
    let table = build(&config(vec![vhost(
        "only",
        &["a.example.com"],
        vec![fwd("a", prefix("/a"))],
    )]));
    assert!(table.find(&get("b.example.com", "/a").head()).is_none());
    assert!(table.find(&get("a.example.com", "/b").head()).is_none());
    assert!(table.find_virtual_host("a.example.com").is_some());
}

#[test]
fn a_lone_wildcard_virtual_host_ignores_the_authority() {
    let table = build(&config(vec![vhost(
        "any",
        &["*"],
        vec![fwd("r", prefix("/"))],
    )]));
    assert_eq!(found(&table, &get("", "/")), Some("r"));
    assert_eq!(found(&table, &get("whatever:1", "/")), Some("r"));
}

#[test]
fn header_matcher_edge_cases() {
    use MatchPattern as P;
    #[allow(deprecated)]
    let cfg = config(vec![vhost(
        "v",
        &["*"],
        vec![
            // Inverted value matcher: a missing header does not match.
            fwd(
                "not-prod",
                with_headers(
                    prefix("/inv"),
                    vec![inverted(header(
                        "x-env",
                        HeaderSpec::StringMatch(string(P::Exact("prod".into()), false)),
                    ))],
                ),
            ),
            // Unless treat_missing_header_as_empty.
            fwd(
                "not-prod-or-missing",
                with_headers(
                    prefix("/inv"),
                    vec![route_pb::HeaderMatcher {
                        treat_missing_header_as_empty: true,
                        ..inverted(header(
                            "x-env",
                            HeaderSpec::StringMatch(string(P::Exact("prod".into()), false)),
                        ))
                    }],
                ),
            ),
            // No specifier at all means present; the deprecated exact_match "" means any value.
            fwd(
                "present",
                with_headers(
                    prefix("/p"),
                    vec![route_pb::HeaderMatcher {
                        name: "x-a".into(),
                        ..Default::default()
                    }],
                ),
            ),
            fwd(
                "exact-empty",
                with_headers(
                    prefix("/p"),
                    vec![header("x-b", HeaderSpec::ExactMatch("".into()))],
                ),
            ),
            // Envoy keeps Host as :authority, and a matcher named `host` reads :authority.
            fwd(
                "host-header",
                with_headers(
                    prefix("/host"),
                    vec![header(
                        "host",
                        HeaderSpec::StringMatch(string(P::Exact("h".into()), false)),
                    )],
                ),
            ),
            fwd(
                "authority",
                with_headers(
                    prefix("/host"),
                    vec![header(
                        ":authority",
                        HeaderSpec::StringMatch(string(P::Suffix(":8080".into()), false)),
                    )],
                ),
            ),
            // Inverted presence: absent.
            fwd(
                "no-auth",
                with_headers(
                    prefix("/auth"),
                    vec![inverted(header(
                        "authorization",
                        HeaderSpec::PresentMatch(true),
                    ))],
                ),
            ),
            fwd("rest", prefix("/")),
        ],
    )]);
    let table = build(&cfg);
    let cases = [
        (get("h", "/inv"), "not-prod-or-missing"),
        (get("h", "/inv").header("x-env", "dev"), "not-prod"),
        (get("h", "/inv").header("x-env", "prod"), "rest"),
        (get("h", "/p").header("x-a", ""), "present"),
        (get("h", "/p").header("x-b", "anything"), "exact-empty"),
        (get("h", "/p"), "rest"),
        (get("h:8080", "/host"), "authority"),
        (get("h", "/host"), "host-header"),
        (get("other", "/host").header("host", "h"), "rest"),
        (get("h", "/auth"), "no-auth"),
        (
            get("h", "/auth").header("authorization", "Bearer x"),
            "rest",
        ),
    ];
    for (req, want) in &cases {
        assert_eq!(
            found(&table, req),
            Some(*want),
            "{}{} {:?}",
            req.authority,
            req.path,
            req.headers
        );
    }
}

/// Repeated headers, as Envoy 1.40 matched them (a static Envoy config with these matchers,
/// requests sent with curl over HTTP/1.1 and HTTP/2).
#[test]
fn repeated_headers_match_value_by_value_as_envoy() {
    use MatchPattern as P;
    let s = |p: P| HeaderSpec::StringMatch(string(p, false));
    let matcher = |path: &str, h: route_pb::HeaderMatcher| {
        fwd(path, with_headers(prefix(&format!("/{path}/")), vec![h]))
    };
    let missing_as_empty = |h: route_pb::HeaderMatcher| route_pb::HeaderMatcher {
        treat_missing_header_as_empty: true,
        ..h
    };
    let range = || {
        HeaderSpec::RangeMatch(tollgate_proto::envoy::r#type::v3::Int64Range { start: 1, end: 10 })
    };
    let table = build(&config(vec![vhost(
        "v",
        &["*"],
        vec![
            matcher("exact", header("x-h", s(P::Exact("prod".into())))),
            matcher(
                "not-exact",
                inverted(header("x-h", s(P::Exact("prod".into())))),
            ),
            matcher("joined", header("x-h", s(P::Exact("dev,prod".into())))),
            matcher("regex", header("x-h", s(P::SafeRegex(regex("v[0-9]+"))))),
            matcher("range", header("x-h", range())),
            matcher("not-range", inverted(header("x-h", range()))),
            matcher("present", header("x-h", HeaderSpec::PresentMatch(true))),
            matcher("absent", header("x-h", HeaderSpec::PresentMatch(false))),
            matcher(
                "not-prod-or-missing",
                missing_as_empty(inverted(header("x-h", s(P::Exact("prod".into()))))),
            ),
            // Envoy's header map joins repeated lines of its inline headers as they arrive.
            matcher("ua", header("user-agent", s(P::Exact("b".into())))),
            matcher("ua-joined", header("user-agent", s(P::Exact("a,b".into())))),
            fwd("miss", prefix("/")),
        ],
    )]));
    let cases: &[(&'static str, &[&'static str], &str)] = &[
        ("/exact/", &[], "miss"),
        ("/exact/", &["prod"], "exact"),
        ("/exact/", &["dev", "prod"], "exact"),
        ("/exact/", &["prod", "prod"], "exact"),
        ("/exact/", &["dev", "test"], "miss"),
        ("/exact/", &["dev,prod"], "miss"),
        ("/not-exact/", &[], "miss"),
        ("/not-exact/", &["dev"], "not-exact"),
        ("/not-exact/", &["dev", "prod"], "miss"),
        ("/not-exact/", &["dev", "test"], "not-exact"),
        ("/not-exact/", &["dev,prod"], "not-exact"),
        ("/joined/", &["dev", "prod"], "miss"),
        ("/joined/", &["dev,prod"], "joined"),
        ("/regex/", &["beta", "v2"], "regex"),
        ("/regex/", &["dev", "prod"], "miss"),
        ("/range/", &["abc", "5"], "range"),
        ("/range/", &["50", "abc"], "miss"),
        ("/not-range/", &["abc", "5"], "miss"),
        ("/not-range/", &["50", "abc"], "not-range"),
        ("/not-range/", &[], "miss"),
        ("/present/", &["a", "b"], "present"),
        ("/absent/", &[], "absent"),
        ("/absent/", &["a", "b"], "miss"),
        ("/not-prod-or-missing/", &[], "not-prod-or-missing"),
        ("/not-prod-or-missing/", &["dev", "prod"], "miss"),
        (
            "/not-prod-or-missing/",
            &["dev", "test"],
            "not-prod-or-missing",
        ),
    ];
    for (path, values, want) in cases {
        let mut req = get("h", path);
        for value in *values {
            req = req.header("x-h", value);
        }
        assert_eq!(found(&table, &req), Some(*want), "{path} {values:?}");
    }
    let ua = |path: &'static str| {
        get("h", path)
            .header("user-agent", "a")
            .header("user-agent", "b")
    };
    assert_eq!(found(&table, &ua("/ua/")), Some("miss"));
    assert_eq!(found(&table, &ua("/ua-joined/")), Some("ua-joined"));
}

#[test]
fn joined_headers_are_sorted_lower_case_names() {
    assert!(JOINED_HEADERS.windows(2).all(|w| w[0] < w[1]));
    for name in JOINED_HEADERS {
        assert_eq!(HeaderName::from_static(name).as_str(), *name);
    }
}

#[test]
fn retries_are_limited_to_requests_matching_a_retriable_request_header() {
    use MatchPattern as P;
    let mut action = to_cluster("c");
    action.retry_policy = Some(route_pb::RetryPolicy {
        retry_on: "5xx".into(),
        retriable_request_headers: vec![
            header(
                ":method",
                HeaderSpec::StringMatch(string(P::SafeRegex(regex("GET|PUT")), false)),
            ),
            header("x-retry", HeaderSpec::PresentMatch(true)),
        ],
        ..Default::default()
    });
    let table = single_route_table(route(
        "r",
        prefix("/"),
        route_pb::route::Action::Route(action),
    ));
    let retry = forward_of(&table).retry_policy.as_ref().unwrap();
    assert_eq!(retry.retriable_request_headers.len(), 2);
    // Any one matcher is enough.
    assert!(retry.retry_allowed(&get("h", "/").head()));
    assert!(retry.retry_allowed(&get("h", "/").method("PUT").head()));
    assert!(retry.retry_allowed(&get("h", "/").method("POST").header("x-retry", "1").head()));
    assert!(!retry.retry_allowed(&get("h", "/").method("POST").head()));
    assert!(!retry.retry_allowed(&get("h", "/").method("GETX").head()));

    // Without any, every request may be retried.
    let mut action = to_cluster("c");
    action.retry_policy = Some(route_pb::RetryPolicy {
        retry_on: "5xx".into(),
        ..Default::default()
    });
    let table = single_route_table(route(
        "r",
        prefix("/"),
        route_pb::route::Action::Route(action),
    ));
    let retry = forward_of(&table).retry_policy.as_ref().unwrap();
    assert!(retry.retry_allowed(&get("h", "/").method("POST").head()));
}

// ---------------------------------------------------------------------------------------------
// Actions

fn single_route_table(r: route_pb::Route) -> RouteTable {
    build(&config(vec![vhost("v", &["*"], vec![r])]))
}

fn only_route(table: &RouteTable) -> &Route {
    &table.virtual_hosts()[0].routes[0]
}

fn forward_of(table: &RouteTable) -> &Forward {
    match &only_route(table).action {
        RouteAction::Forward(f) => f,
        other => panic!("not a forward: {other:?}"),
    }
}

#[test]
fn weighted_pick_follows_envoys_intervals() {
    let table = single_route_table(route(
        "w",
        prefix("/"),
        route_pb::route::Action::Route(weighted(&[("users", 90), ("legacy", 10)])),
    ));
    let f = forward_of(&table);
    assert_eq!(f.total_weight(), 100);
    for (random, want) in [
        (0, "users"),
        (89, "users"),
        (90, "legacy"),
        (99, "legacy"),
        // Any u64 is reduced modulo the total first.
        (100, "users"),
        (190, "legacy"),
        (u64::MAX, "users"), // u64::MAX % 100 == 15
    ] {
        assert_eq!(&**f.pick_cluster(random), want, "random {random}");
    }

    // A zero weight owns an empty interval and is never picked.
    let table = single_route_table(route(
        "w",
        prefix("/"),
        route_pb::route::Action::Route(weighted(&[("a", 1), ("b", 0), ("c", 2)])),
    ));
    let f = forward_of(&table);
    let picks: Vec<_> = (0..f.total_weight())
        .map(|r| &**f.pick_cluster(r))
        .collect();
    assert_eq!(picks, ["a", "c", "c"]);
    assert_eq!(
        f.clusters().collect::<Vec<_>>(),
        [("a", 1), ("b", 0), ("c", 2)]
    );

    let table = single_route_table(fwd("solo", prefix("/")));
    assert_eq!(&**forward_of(&table).pick_cluster(12345), "solo");
}

#[test]
fn forward_settings_and_defaults() {
    // No timeout: Envoy's 15 s. 0 s: none. Retries inherit from the virtual host only when the
    // route has none.
    let vhost_retry = route_pb::RetryPolicy {
        retry_on: "connect-failure".into(),
        ..Default::default()
    };
    let mut own = to_cluster("c");
    own.timeout = Some(PbDuration {
        seconds: 1,
        nanos: 500_000_000,
    });
    own.retry_policy = Some(route_pb::RetryPolicy {
        retry_on: "5xx, reset,5xx".into(),
        num_retries: Some(UInt32Value { value: 3 }),
        per_try_timeout: Some(PbDuration {
            seconds: 0,
            nanos: 250_000_000,
        }),
        ..Default::default()
    });
    own.host_rewrite_specifier = Some(
        route_pb::route_action::HostRewriteSpecifier::HostRewriteLiteral("up.internal".into()),
    );
    let mut no_timeout = to_cluster("c");
    no_timeout.timeout = Some(PbDuration::default());
    let mut v = vhost(
        "v",
        &["*"],
        vec![
            route("own", prefix("/own"), route_pb::route::Action::Route(own)),
            route(
                "none",
                prefix("/none"),
                route_pb::route::Action::Route(no_timeout),
            ),
            fwd("inherit", prefix("/")),
        ],
    );
    v.retry_policy = Some(vhost_retry);
    let table = build(&config(vec![v]));
    let forward = |i: usize| match &table.virtual_hosts()[0].routes[i].action {
        RouteAction::Forward(f) => f,
        _ => unreachable!(),
    };

    let own = forward(0);
    assert_eq!(own.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(
        own.retry_policy,
        Some(RetryPolicy {
            retry_on: vec![RetryOn::FiveXx, RetryOn::Reset],
            num_retries: 3,
            per_try_timeout: Some(Duration::from_millis(250)),
            retriable_request_headers: Vec::new(),
        })
    );
    assert_eq!(
        own.host_rewrite,
        Some(HeaderValue::from_static("up.internal"))
    );

    let none = forward(1);
    assert_eq!(none.timeout, None);
    assert!(none.host_rewrite.is_none());

    let inherit = forward(2);
    assert_eq!(inherit.timeout, Some(DEFAULT_ROUTE_TIMEOUT));
    let retry = inherit.retry_policy.as_ref().unwrap();
    assert!(retry.retries_on(RetryOn::ConnectFailure));
    assert!(!retry.retries_on(RetryOn::FiveXx));
    assert_eq!(retry.num_retries, 1, "Envoy's default");
    assert_eq!(retry.per_try_timeout, None);
    assert!(retry.retry_allowed(&get("h", "/").method("POST").head()));
}

#[test]
fn path_rewrites_replace_what_the_route_matched() {
    fn rewrite(
        m: route_pb::RouteMatch,
        action: route_pb::RouteAction,
        path: &'static str,
    ) -> Option<String> {
        let table = single_route_table(route("r", m, route_pb::route::Action::Route(action)));
        let route = only_route(&table);
        assert!(
            route.matches(&get("h", path).head()),
            "{path} must match the route"
        );
        route.upstream_path(path)
    }
    let prefix_rewrite = |p: &str| route_pb::RouteAction {
        prefix_rewrite: p.into(),
        ..to_cluster("c")
    };
    let regex_rewrite = |pattern: &str, substitution: &str| route_pb::RouteAction {
        regex_rewrite: Some(matcher_pb::RegexMatchAndSubstitute {
            pattern: Some(regex(pattern)),
            substitution: substitution.into(),
        }),
        ..to_cluster("c")
    };
    let cases: Vec<(
        route_pb::RouteMatch,
        route_pb::RouteAction,
        &'static str,
        Option<&str>,
    )> = vec![
        (
            prefix("/users"),
            prefix_rewrite("/v2/users"),
            "/users/7?x=1",
            Some("/v2/users/7?x=1"),
        ),
        // Envoy's well-known trailing-slash behaviour: `/api` → `/` gives `//x`.
        (prefix("/api"), prefix_rewrite("/"), "/api/x", Some("//x")),
        (prefix("/api/"), prefix_rewrite("/"), "/api/x", Some("/x")),
        // Case-insensitive matching: the matched length is replaced, whatever its case.
        (
            case_insensitive(prefix("/caseless")),
            prefix_rewrite("/c"),
            "/CASELESS/x",
            Some("/c/x"),
        ),
        // Exact and regex routes replace the whole path and keep the query.
        (
            exact("/old"),
            prefix_rewrite("/new"),
            "/old?q=1",
            Some("/new?q=1"),
        ),
        (
            regex_path("/items/[0-9]+"),
            prefix_rewrite("/item"),
            "/items/12?z",
            Some("/item?z"),
        ),
        // Envoy's documented regex_rewrite example, with RE2 `\N` groups.
        (
            prefix("/service"),
            regex_rewrite("^/service/([^/]+)(/.*)$", r"\2/instance/\1"),
            "/service/foo/v1/api?x=1",
            Some("/v1/api/instance/foo?x=1"),
        ),
        // Every match is replaced; `$` is literal in an RE2 substitution.
        (
            prefix("/"),
            regex_rewrite("o", "$0"),
            "/foo/boo",
            Some("/f$0$0/b$0$0"),
        ),
        (prefix("/"), regex_rewrite("a", r"\\"), "/a", Some(r"/\")),
        // A rewrite that leaves an empty path is no rewrite, as in Envoy.
        (prefix("/"), regex_rewrite("^.*$", ""), "/gone?q", None),
        // No rewrite configured.
        (prefix("/"), to_cluster("c"), "/same", None),
    ];
    for (m, action, path, want) in cases {
        assert_eq!(rewrite(m, action, path).as_deref(), want, "{path}");
    }
}

fn redirect_table(action: route_pb::RedirectAction, m: route_pb::RouteMatch) -> RouteTable {
    single_route_table(route("r", m, route_pb::route::Action::Redirect(action)))
}

fn location(table: &RouteTable, req: &Req) -> (StatusCode, String) {
    let matched = table.find(&req.head()).expect("route");
    match &matched.route.action {
        RouteAction::Redirect(r) => (r.status, r.location(&req.head())),
        other => panic!("not a redirect: {other:?}"),
    }
}

#[test]
fn redirect_locations_follow_envoys_new_uri() {
    use route_pb::redirect_action::{
        PathRewriteSpecifier as PathSpec, RedirectResponseCode as Code,
        SchemeRewriteSpecifier as SchemeSpec,
    };
    let https = Some(SchemeSpec::HttpsRedirect(true));
    let path = |p: &str| Some(PathSpec::PathRedirect(p.into()));
    let cases: Vec<(
        route_pb::RedirectAction,
        route_pb::RouteMatch,
        Req,
        StatusCode,
        &str,
    )> = vec![
        // https_redirect keeps host, path and query; 301 by default.
        (
            route_pb::RedirectAction {
                scheme_rewrite_specifier: https.clone(),
                ..Default::default()
            },
            prefix("/"),
            get("a.com", "/p?q=1"),
            StatusCode::MOVED_PERMANENTLY,
            "https://a.com/p?q=1",
        ),
        // Changing scheme drops the old scheme's default port…
        (
            route_pb::RedirectAction {
                scheme_rewrite_specifier: https.clone(),
                ..Default::default()
            },
            prefix("/"),
            get("a.com:80", "/p"),
            StatusCode::MOVED_PERMANENTLY,
            "https://a.com/p",
        ),
        // …but not another port,
        (
            route_pb::RedirectAction {
                scheme_rewrite_specifier: https.clone(),
                ..Default::default()
            },
            prefix("/"),
            get("a.com:8080", "/p"),
            StatusCode::MOVED_PERMANENTLY,
            "https://a.com:8080/p",
        ),
        // nor the default port when the scheme stays.
        (
            route_pb::RedirectAction {
                host_redirect: "".into(),
                response_code: Code::Found as i32,
                ..Default::default()
            },
            prefix("/"),
            get("a.com:80", "/p"),
            StatusCode::FOUND,
            "http://a.com:80/p",
        ),
        (
            route_pb::RedirectAction {
                scheme_rewrite_specifier: Some(SchemeSpec::SchemeRedirect("http".into())),
                ..Default::default()
            },
            prefix("/"),
            get("a.com:443", "/p").scheme("https"),
            StatusCode::MOVED_PERMANENTLY,
            "http://a.com/p",
        ),
        // IPv6 literal: the port after `]` is the one dropped.
        (
            route_pb::RedirectAction {
                scheme_rewrite_specifier: https.clone(),
                ..Default::default()
            },
            prefix("/"),
            get("[::1]:80", "/p"),
            StatusCode::MOVED_PERMANENTLY,
            "https://[::1]/p",
        ),
        // port_redirect replaces the request's port.
        (
            route_pb::RedirectAction {
                scheme_rewrite_specifier: https.clone(),
                port_redirect: 8443,
                ..Default::default()
            },
            prefix("/"),
            get("a.com:8080", "/p"),
            StatusCode::MOVED_PERMANENTLY,
            "https://a.com:8443/p",
        ),
        // host_redirect, with the port appended.
        (
            route_pb::RedirectAction {
                host_redirect: "docs.example.com".into(),
                port_redirect: 9000,
                response_code: Code::TemporaryRedirect as i32,
                ..Default::default()
            },
            prefix("/"),
            get("a.com:8080", "/p?x"),
            StatusCode::TEMPORARY_REDIRECT,
            "http://docs.example.com:9000/p?x",
        ),
        // path_redirect keeps the request's query unless stripped.
        (
            route_pb::RedirectAction {
                path_rewrite_specifier: path("/new"),
                ..Default::default()
            },
            prefix("/"),
            get("a.com", "/old?q=1"),
            StatusCode::MOVED_PERMANENTLY,
            "http://a.com/new?q=1",
        ),
        (
            route_pb::RedirectAction {
                path_rewrite_specifier: path("/new"),
                strip_query: true,
                response_code: Code::SeeOther as i32,
                ..Default::default()
            },
            prefix("/"),
            get("a.com", "/old?q=1"),
            StatusCode::SEE_OTHER,
            "http://a.com/new",
        ),
        // A query in path_redirect replaces the request's and survives strip_query.
        (
            route_pb::RedirectAction {
                path_rewrite_specifier: path("/new?x=1"),
                strip_query: true,
                ..Default::default()
            },
            prefix("/"),
            get("a.com", "/old?q=1"),
            StatusCode::MOVED_PERMANENTLY,
            "http://a.com/new?x=1",
        ),
        // A path without a leading slash gets one.
        (
            route_pb::RedirectAction {
                path_rewrite_specifier: path("new"),
                ..Default::default()
            },
            prefix("/"),
            get("a.com", "/old"),
            StatusCode::MOVED_PERMANENTLY,
            "http://a.com/new",
        ),
        // strip_query alone.
        (
            route_pb::RedirectAction {
                strip_query: true,
                ..Default::default()
            },
            prefix("/"),
            get("a.com", "/p?q=1&r=2"),
            StatusCode::MOVED_PERMANENTLY,
            "http://a.com/p",
        ),
        // prefix_rewrite replaces the matched prefix (the control plane's `old-docs` route).
        (
            route_pb::RedirectAction {
                scheme_rewrite_specifier: Some(SchemeSpec::SchemeRedirect("https".into())),
                host_redirect: "docs.example.com".into(),
                path_rewrite_specifier: Some(PathSpec::PrefixRewrite("/guide".into())),
                response_code: Code::PermanentRedirect as i32,
                ..Default::default()
            },
            prefix("/docs"),
            get("www.example.com", "/docs/intro?lang=en"),
            StatusCode::PERMANENT_REDIRECT,
            "https://docs.example.com/guide/intro?lang=en",
        ),
        (
            route_pb::RedirectAction {
                path_rewrite_specifier: Some(PathSpec::PrefixRewrite("/v2".into())),
                strip_query: true,
                ..Default::default()
            },
            exact("/v1"),
            get("a.com", "/v1?q"),
            StatusCode::MOVED_PERMANENTLY,
            "http://a.com/v2",
        ),
        // regex_rewrite on the path, the query kept.
        (
            route_pb::RedirectAction {
                path_rewrite_specifier: Some(PathSpec::RegexRewrite(
                    matcher_pb::RegexMatchAndSubstitute {
                        pattern: Some(regex("^/u/([0-9]+)$")),
                        substitution: r"/users/\1".into(),
                    },
                )),
                ..Default::default()
            },
            prefix("/u/"),
            get("a.com", "/u/42?tab=1"),
            StatusCode::MOVED_PERMANENTLY,
            "http://a.com/users/42?tab=1",
        ),
    ];
    for (action, m, req, status, want) in cases {
        let table = redirect_table(action, m);
        assert_eq!(
            location(&table, &req),
            (status, want.to_owned()),
            "{}{}",
            req.authority,
            req.path
        );
    }
}

#[test]
fn direct_responses_and_their_location() {
    let direct = |status: u32, body: Option<core_pb::data_source::Specifier>| {
        single_route_table(route(
            "d",
            prefix("/"),
            route_pb::route::Action::DirectResponse(route_pb::DirectResponseAction {
                status,
                body: body.map(|specifier| core_pb::DataSource {
                    specifier: Some(specifier),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ))
    };
    let req = get("a.com:8080", "/x?y");
    let table = direct(
        200,
        Some(core_pb::data_source::Specifier::InlineString("ok".into())),
    );
    let RouteAction::Direct(d) = &only_route(&table).action else {
        panic!("not direct")
    };
    assert_eq!((d.status, d.body.as_slice()), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(d.location(&req.head()), None);

    let table = direct(
        302,
        Some(core_pb::data_source::Specifier::InlineBytes(vec![0, 1])),
    );
    let RouteAction::Direct(d) = &only_route(&table).action else {
        panic!("not direct")
    };
    assert_eq!(d.body, [0, 1]);
    // Envoy adds the request's own URL as Location to 201 and 3xx direct responses.
    assert_eq!(
        d.location(&req.head()).as_deref(),
        Some("http://a.com:8080/x?y")
    );

    let table = direct(201, None);
    let RouteAction::Direct(d) = &only_route(&table).action else {
        panic!("not direct")
    };
    assert!(d.body.is_empty());
    assert!(d.location(&req.head()).is_some());
}

// ---------------------------------------------------------------------------------------------
// Header mutations

#[test]
fn header_mutations_apply_as_envoys_header_parser() {
    use core_pb::header_value_option::HeaderAppendAction as A;
    let mut r = fwd("r", prefix("/"));
    r.request_headers_to_add = vec![
        header_option("x-append", "new", A::AppendIfExistsOrAdd),
        header_option("x-absent", "added", A::AddIfAbsent),
        header_option("x-present", "kept?", A::AddIfAbsent),
        header_option("x-over", "replaced", A::OverwriteIfExistsOrAdd),
        header_option("x-over-if", "replaced", A::OverwriteIfExists),
        header_option("x-over-if-missing", "never", A::OverwriteIfExists),
        header_option("x-empty", "", A::AppendIfExistsOrAdd),
        core_pb::HeaderValueOption {
            keep_empty_value: true,
            ..header_option("x-kept-empty", "", A::AppendIfExistsOrAdd)
        },
        header_option("x-percent", "100%%", A::OverwriteIfExistsOrAdd),
        // Removed first, then decided against the headers without it: added.
        header_option("x-removed", "again", A::AddIfAbsent),
    ];
    r.request_headers_to_remove = vec!["x-removed".into()];
    let mut v = vhost("v", &["*"], vec![r]);
    v.request_headers_to_add = vec![header_option("x-level", "vhost", A::OverwriteIfExistsOrAdd)];
    let mut cfg = config(vec![v]);
    cfg.request_headers_to_add = vec![header_option(
        "x-level",
        "global",
        A::OverwriteIfExistsOrAdd,
    )];
    cfg.response_headers_to_add = vec![header_option(
        "x-served-by",
        "tollgate",
        A::AppendIfExistsOrAdd,
    )];
    cfg.response_headers_to_remove = vec!["server".into()];

    let table = build(&cfg);
    let req = get("h", "/");
    let matched = table.find(&req.head()).unwrap();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-append", "old"),
        ("x-present", "orig"),
        ("x-over", "a"),
        ("x-over", "b"),
        ("x-over-if", "a"),
        ("x-removed", "gone"),
    ] {
        headers.append(name, HeaderValue::from_static(value));
    }
    matched.apply_request_headers(&mut headers, &cx()).unwrap();
    let all = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(all("x-append"), ["old", "new"]);
    assert_eq!(all("x-absent"), ["added"]);
    assert_eq!(all("x-present"), ["orig"]);
    assert_eq!(all("x-over"), ["replaced"]);
    assert_eq!(all("x-over-if"), ["replaced"]);
    assert!(all("x-over-if-missing").is_empty());
    assert!(
        all("x-empty").is_empty(),
        "empty values are skipped by default"
    );
    assert_eq!(all("x-kept-empty"), [""]);
    assert_eq!(all("x-percent"), ["100%"]);
    assert_eq!(all("x-removed"), ["again"]);
    // Route, then virtual host, then route configuration: the global overwrite lands last.
    assert_eq!(all("x-level"), ["global"]);

    let mut response = HeaderMap::new();
    response.insert("server", HeaderValue::from_static("upstream"));
    matched.apply_response_headers(&mut response, &HeaderMap::new(), &cx());
    assert_eq!(response.get("x-served-by").unwrap(), "tollgate");
    assert!(response.get("server").is_none());

    // most_specific_header_mutations_wins reverses the order: the virtual host's wins.
    cfg.most_specific_header_mutations_wins = true;
    let table = build(&cfg);
    let mut headers = HeaderMap::new();
    table
        .find(&req.head())
        .unwrap()
        .apply_request_headers(&mut headers, &cx())
        .unwrap();
    assert_eq!(headers.get("x-level").unwrap(), "vhost");
}

#[test]
fn templated_header_values_follow_envoy() {
    use core_pb::header_value_option::HeaderAppendAction as A;
    // Each expectation was checked against Envoy 1.40 with the same route.
    let mut r = fwd("r", prefix("/"));
    r.request_headers_to_add = vec![
        header_option("x-user", "Bearer %REQ(x-in)%", A::OverwriteIfExistsOrAdd),
        header_option(
            "x-bearer",
            "Bearer %REQ(x-missing)%",
            A::OverwriteIfExistsOrAdd,
        ),
        header_option(
            "x-only-missing",
            "%REQ(x-missing)%",
            A::OverwriteIfExistsOrAdd,
        ),
        core_pb::HeaderValueOption {
            keep_empty_value: true,
            ..header_option(
                "x-keep-empty",
                "%REQ(x-missing)%",
                A::OverwriteIfExistsOrAdd,
            )
        },
        header_option(
            "x-ip",
            "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            A::AppendIfExistsOrAdd,
        ),
        // Removed at this level first: not seen.
        header_option(
            "x-removed-echo",
            "%REQ(x-removed)%",
            A::OverwriteIfExistsOrAdd,
        ),
        // Added at this level: not seen either.
        header_option("x-prior", "%REQ(x-set-first)%", A::OverwriteIfExistsOrAdd),
        header_option("x-set-first", "route-level", A::OverwriteIfExistsOrAdd),
    ];
    r.request_headers_to_remove = vec!["x-removed".into()];
    r.response_headers_to_add = vec![
        header_option("x-r-in", "%REQ(x-in)%", A::OverwriteIfExistsOrAdd),
        header_option("x-r-set", "%REQ(x-set-first)%", A::OverwriteIfExistsOrAdd),
        header_option("x-r-host", "%REQ(host)%", A::OverwriteIfExistsOrAdd),
    ];
    let mut v = vhost("v", &["*"], vec![r]);
    // The virtual host's mutations come after the route's, and see them.
    v.request_headers_to_add = vec![header_option(
        "x-vh-sees-route",
        "%REQ(x-set-first)%",
        A::OverwriteIfExistsOrAdd,
    )];
    let table = build(&config(vec![v]));
    let req = get("h", "/");
    let matched = table.find(&req.head()).unwrap();
    assert!(matched.response_reads_request());
    assert!(matched.reads_client_address());
    let mut headers = HeaderMap::new();
    headers.insert("x-in", HeaderValue::from_static("hello"));
    headers.insert("x-removed", HeaderValue::from_static("gone"));
    matched.apply_request_headers(&mut headers, &cx()).unwrap();
    let value = |map: &HeaderMap, name: &str| map.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(value(&headers, "x-user").as_deref(), Some("Bearer hello"));
    assert_eq!(value(&headers, "x-bearer").as_deref(), Some("Bearer "));
    assert_eq!(value(&headers, "x-only-missing"), None);
    assert_eq!(value(&headers, "x-keep-empty").as_deref(), Some(""));
    assert_eq!(value(&headers, "x-ip").as_deref(), Some("192.0.2.7"));
    assert_eq!(value(&headers, "x-removed-echo"), None);
    assert_eq!(value(&headers, "x-prior"), None);
    assert_eq!(
        value(&headers, "x-vh-sees-route").as_deref(),
        Some("route-level")
    );

    // Response templates read the request as it was sent upstream.
    let mut response = HeaderMap::new();
    matched.apply_response_headers(&mut response, &headers, &cx());
    assert_eq!(value(&response, "x-r-in").as_deref(), Some("hello"));
    assert_eq!(value(&response, "x-r-set").as_deref(), Some("route-level"));
    assert_eq!(value(&response, "x-r-host").as_deref(), Some("h"));
}

#[test]
fn header_formatters_outside_the_subset_are_nacked_with_their_path() {
    use core_pb::header_value_option::HeaderAppendAction as A;
    let nack = |edit: &dyn Fn(&mut route_pb::RouteConfiguration)| {
        let mut cfg = config(vec![vhost("v", &["*"], vec![fwd("r", prefix("/"))])]);
        edit(&mut cfg);
        let error = RouteTable::try_from(&cfg).unwrap_err();
        format!("{}: {}", error.field, error.reason)
    };
    assert_eq!(
        nack(&|c| {
            c.virtual_hosts[0].routes[0].response_headers_to_add = vec![
                header_option("x-ok", "%REQ(x-a)%", A::AppendIfExistsOrAdd),
                header_option("x-at", "at %START_TIME%", A::AppendIfExistsOrAdd),
            ]
        }),
        "virtual_hosts[0].routes[0].response_headers_to_add[1].header.value: not supported: \
         substitution command %START_TIME% (supported: REQ, DYNAMIC_METADATA, \
         DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT; %% is a literal %) in \"at %START_TIME%\""
    );
    assert_eq!(
        nack(&|c| {
            c.virtual_hosts[0].request_headers_to_add = vec![header_option(
                "x-md",
                "%DYNAMIC_METADATA(envoy.lb:zone)%",
                A::AppendIfExistsOrAdd,
            )]
        }),
        "virtual_hosts[0].request_headers_to_add[0].header.value: not supported: dynamic \
         metadata namespace \"envoy.lb\" in \"%DYNAMIC_METADATA(envoy.lb:zone)%\""
    );
    assert_eq!(
        nack(&|c| {
            c.request_headers_to_add = vec![header_option("x-pct", "50%", A::AppendIfExistsOrAdd)]
        }),
        "request_headers_to_add[0].header.value: malformed substitution command in \"50%\" \
         (write %% for a literal %)"
    );
}

#[test]
fn invalid_formatted_values_fail_requests_and_are_left_out_of_responses() {
    use crate::config::format::{DynamicMetadata, FormatContext, JWT_AUTHN_NAMESPACE};
    use core_pb::header_value_option::HeaderAppendAction as A;
    struct Claim;
    impl DynamicMetadata for Claim {
        fn get(&self, _: &str, _: &[String]) -> Option<std::borrow::Cow<'_, serde_json::Value>> {
            Some(std::borrow::Cow::Owned(serde_json::json!("a\nb")))
        }
    }
    let claim = format!("%DYNAMIC_METADATA({JWT_AUTHN_NAMESPACE}:jwt_payload:name)%");
    let mut r = fwd("r", prefix("/"));
    r.request_headers_to_add = vec![header_option("x-name", &claim, A::OverwriteIfExistsOrAdd)];
    r.response_headers_to_add = vec![
        header_option("x-name", &claim, A::OverwriteIfExistsOrAdd),
        header_option("x-fine", "fine", A::OverwriteIfExistsOrAdd),
    ];
    let table = build(&config(vec![vhost("v", &["*"], vec![r])]));
    let req = get("h", "/");
    let matched = table.find(&req.head()).unwrap();
    assert!(!matched.response_reads_request());
    assert!(!matched.reads_client_address());
    let cx = FormatContext {
        metadata: &Claim,
        ..cx()
    };
    let mut headers = HeaderMap::new();
    let error = matched
        .apply_request_headers(&mut headers, &cx)
        .unwrap_err();
    assert_eq!(error.to_string(), "invalid header value for: x-name");
    let mut response = HeaderMap::new();
    matched.apply_response_headers(&mut response, &headers, &cx);
    assert!(response.get("x-name").is_none());
    assert_eq!(response["x-fine"], "fine");
}

#[test]
fn deprecated_append_maps_to_actions() {
    #[allow(deprecated)]
    let option = |append: bool| core_pb::HeaderValueOption {
        header: Some(core_pb::HeaderValue {
            key: "x".into(),
            value: "v".into(),
            ..Default::default()
        }),
        append: Some(BoolValue { value: append }),
        ..Default::default()
    };
    let mut r = fwd("r", prefix("/"));
    r.request_headers_to_add = vec![option(true), option(false)];
    let table = single_route_table(r);
    let actions: Vec<_> = only_route(&table)
        .request_headers
        .add
        .iter()
        .map(|h| h.action)
        .collect();
    assert_eq!(
        actions,
        [
            AppendAction::AppendIfExistsOrAdd,
            AppendAction::OverwriteIfExistsOrAdd
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Rejected configs

/// A valid config with one route; each case breaks one thing.
fn base() -> route_pb::RouteConfiguration {
    config(vec![vhost(
        "v",
        &["a.example.com"],
        vec![fwd("r", prefix("/"))],
    )])
}

fn first_route(cfg: &mut route_pb::RouteConfiguration) -> &mut route_pb::Route {
    &mut cfg.virtual_hosts[0].routes[0]
}

fn first_action(cfg: &mut route_pb::RouteConfiguration) -> &mut route_pb::RouteAction {
    match first_route(cfg).action.as_mut() {
        Some(route_pb::route::Action::Route(action)) => action,
        _ => unreachable!(),
    }
}

fn first_match(cfg: &mut route_pb::RouteConfiguration) -> &mut route_pb::RouteMatch {
    first_route(cfg).r#match.as_mut().unwrap()
}

/// Breaks one thing in a valid config.
type Breaker = Box<dyn Fn(&mut route_pb::RouteConfiguration)>;
/// Checks the reason a broken config was rejected for.
type Check<'a> = &'a dyn Fn(&Reason) -> bool;

#[test]
fn unsupported_or_invalid_configs_are_rejected_naming_the_field() {
    use MatchPattern as P;
    use route_pb::route::Action;
    let unsupported = |r: &Reason| *r == Reason::Unsupported;
    let invalid = |r: &Reason| matches!(r, Reason::Invalid(_));
    let bad_regex = |r: &Reason| matches!(r, Reason::InvalidRegex(_));
    let missing = |r: &Reason| *r == Reason::Missing;
    let unsupported_value = |r: &Reason| matches!(r, Reason::UnsupportedValue(_));

    let cases: Vec<(&str, Breaker, Check<'_>)> = vec![
        // Matchers.
        (
            "virtual_hosts[0].routes[0].match.safe_regex",
            Box::new(|c| *first_match(c) = regex_path("/items/(")),
            &bad_regex,
        ),
        (
            // Balanced alone or it could escape the anchors: `\A(?:a)|(b)\z`.
            "virtual_hosts[0].routes[0].match.safe_regex",
            Box::new(|c| *first_match(c) = regex_path("a)|(b")),
            &bad_regex,
        ),
        (
            "virtual_hosts[0].routes[0].match.path_separated_prefix",
            Box::new(|c| {
                *first_match(c) = path_match(PathSpecifier::PathSeparatedPrefix("/a".into()))
            }),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].match.path_specifier",
            Box::new(|c| first_match(c).path_specifier = None),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].match.runtime_fraction",
            Box::new(|c| first_match(c).runtime_fraction = Some(Default::default())),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].match.grpc",
            Box::new(|c| first_match(c).grpc = Some(Default::default())),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].match.tls_context",
            Box::new(|c| first_match(c).tls_context = Some(Default::default())),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].match.dynamic_metadata",
            Box::new(|c| first_match(c).dynamic_metadata = vec![Default::default()]),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].match.cookies",
            Box::new(|c| first_match(c).cookies = vec![Default::default()]),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].match.headers[1].string_match.safe_regex",
            Box::new(|c| {
                first_match(c).headers = vec![
                    header("x-a", HeaderSpec::PresentMatch(true)),
                    header(
                        "x-b",
                        HeaderSpec::StringMatch(string(P::SafeRegex(regex("[")), false)),
                    ),
                ]
            }),
            &bad_regex,
        ),
        (
            "virtual_hosts[0].routes[0].match.headers[0].string_match.prefix",
            Box::new(|c| {
                first_match(c).headers = vec![header(
                    "x-a",
                    HeaderSpec::StringMatch(string(P::Prefix("".into()), false)),
                )]
            }),
            &missing,
        ),
        (
            "virtual_hosts[0].routes[0].match.headers[0].string_match.custom",
            Box::new(|c| {
                first_match(c).headers = vec![header(
                    "x-a",
                    HeaderSpec::StringMatch(string(P::Custom(Default::default()), false)),
                )]
            }),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].match.headers[0].name",
            Box::new(|c| {
                first_match(c).headers = vec![header(":protocol", HeaderSpec::PresentMatch(true))]
            }),
            &unsupported_value,
        ),
        (
            "virtual_hosts[0].routes[0].match.query_parameters[0].present_match",
            Box::new(|c| {
                first_match(c).query_parameters = vec![query("a", QuerySpec::PresentMatch(false))]
            }),
            &unsupported_value,
        ),
        (
            "virtual_hosts[0].routes[0].match.query_parameters[0].name",
            Box::new(|c| {
                first_match(c).query_parameters = vec![query("", QuerySpec::PresentMatch(true))]
            }),
            &missing,
        ),
        // Route-level fields.
        (
            "virtual_hosts[0].routes[0].match",
            Box::new(|c| first_route(c).r#match = None),
            &missing,
        ),
        (
            "virtual_hosts[0].routes[0].action",
            Box::new(|c| first_route(c).action = None),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].filter_action",
            Box::new(|c| first_route(c).action = Some(Action::FilterAction(Default::default()))),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].non_forwarding_action",
            Box::new(|c| {
                first_route(c).action = Some(Action::NonForwardingAction(Default::default()))
            }),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.cors\"]",
            Box::new(|c| {
                first_route(c)
                    .typed_per_filter_config
                    .insert("envoy.filters.http.cors".into(), Default::default());
            }),
            &unsupported_value,
        ),
        (
            "virtual_hosts[0].routes[0].tracing",
            Box::new(|c| first_route(c).tracing = Some(Default::default())),
            &unsupported,
        ),
        // Forwarding.
        (
            "virtual_hosts[0].routes[0].route.hash_policy",
            Box::new(|c| first_action(c).hash_policy = vec![Default::default()]),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].route.rate_limits",
            Box::new(|c| first_action(c).rate_limits = vec![Default::default()]),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].route.request_mirror_policies",
            Box::new(|c| first_action(c).request_mirror_policies = vec![Default::default()]),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].route.upgrade_configs",
            Box::new(|c| first_action(c).upgrade_configs = vec![Default::default()]),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].route.cluster_header",
            Box::new(|c| {
                first_action(c).cluster_specifier = Some(
                    route_pb::route_action::ClusterSpecifier::ClusterHeader("x-cluster".into()),
                )
            }),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].route.cluster_specifier_plugin",
            Box::new(|c| {
                first_action(c).cluster_specifier = Some(
                    route_pb::route_action::ClusterSpecifier::ClusterSpecifierPlugin("p".into()),
                )
            }),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].route.cluster",
            Box::new(|c| *first_action(c) = to_cluster("")),
            &missing,
        ),
        (
            "virtual_hosts[0].routes[0].route.host_rewrite_header",
            Box::new(|c| {
                first_action(c).host_rewrite_specifier = Some(
                    route_pb::route_action::HostRewriteSpecifier::HostRewriteHeader("x-h".into()),
                )
            }),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].route.regex_rewrite",
            Box::new(|c| {
                let action = first_action(c);
                action.prefix_rewrite = "/a".into();
                action.regex_rewrite = Some(matcher_pb::RegexMatchAndSubstitute {
                    pattern: Some(regex("a")),
                    substitution: "b".into(),
                });
            }),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].route.regex_rewrite.substitution",
            Box::new(|c| {
                first_action(c).regex_rewrite = Some(matcher_pb::RegexMatchAndSubstitute {
                    pattern: Some(regex("^/(a)$")),
                    substitution: r"/\2".into(),
                });
            }),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].route.timeout",
            Box::new(|c| {
                first_action(c).timeout = Some(PbDuration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].route.weighted_clusters.clusters",
            Box::new(|c| *first_action(c) = weighted(&[("a", 0), ("b", 0)])),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].route.weighted_clusters.clusters",
            Box::new(|c| *first_action(c) = weighted(&[("a", u32::MAX), ("b", 1)])),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[1].weight",
            Box::new(|c| {
                let mut action = weighted(&[("a", 1), ("b", 1)]);
                if let Some(route_pb::route_action::ClusterSpecifier::WeightedClusters(w)) =
                    &mut action.cluster_specifier
                {
                    w.clusters[1].weight = None;
                }
                *first_action(c) = action;
            }),
            &missing,
        ),
        (
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on",
            Box::new(|c| {
                first_action(c).retry_policy = Some(route_pb::RetryPolicy {
                    retry_on: "5xx,sometimes".into(),
                    ..Default::default()
                })
            }),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on",
            Box::new(|c| {
                first_action(c).retry_policy = Some(route_pb::RetryPolicy {
                    retry_on: "unavailable".into(),
                    ..Default::default()
                })
            }),
            &unsupported_value,
        ),
        (
            "virtual_hosts[0].routes[0].route.retry_policy.retriable_request_headers[1].name",
            Box::new(|c| {
                first_action(c).retry_policy = Some(route_pb::RetryPolicy {
                    retry_on: "5xx".into(),
                    retriable_request_headers: vec![
                        header(
                            ":method",
                            HeaderSpec::StringMatch(string(P::Exact("GET".into()), false)),
                        ),
                        header(":status", HeaderSpec::PresentMatch(true)),
                    ],
                    ..Default::default()
                })
            }),
            &unsupported_value,
        ),
        (
            "virtual_hosts[0].routes[0].route.retry_policy.retry_back_off",
            Box::new(|c| {
                first_action(c).retry_policy = Some(route_pb::RetryPolicy {
                    retry_on: "5xx".into(),
                    retry_back_off: Some(Default::default()),
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        // Redirects and direct responses.
        (
            "virtual_hosts[0].routes[0].redirect.response_code",
            Box::new(|c| {
                first_route(c).action = Some(Action::Redirect(route_pb::RedirectAction {
                    response_code: 9,
                    ..Default::default()
                }))
            }),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].redirect.path_rewrite",
            Box::new(|c| {
                first_route(c).action = Some(Action::Redirect(route_pb::RedirectAction {
                    path_rewrite_specifier: Some(
                        route_pb::redirect_action::PathRewriteSpecifier::PathRewrite(
                            "/%REQ(x)%".into(),
                        ),
                    ),
                    ..Default::default()
                }))
            }),
            &unsupported,
        ),
        (
            "virtual_hosts[0].routes[0].redirect.host_redirect",
            Box::new(|c| {
                first_route(c).action = Some(Action::Redirect(route_pb::RedirectAction {
                    host_redirect: "evil.com/\r\nx: y".into(),
                    ..Default::default()
                }))
            }),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].direct_response.status",
            Box::new(|c| {
                first_route(c).action =
                    Some(Action::DirectResponse(route_pb::DirectResponseAction {
                        status: 700,
                        ..Default::default()
                    }))
            }),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].direct_response.body",
            Box::new(|c| {
                c.max_direct_response_body_size_bytes = Some(UInt32Value { value: 3 });
                first_route(c).action =
                    Some(Action::DirectResponse(route_pb::DirectResponseAction {
                        status: 200,
                        body: Some(core_pb::DataSource {
                            specifier: Some(core_pb::data_source::Specifier::InlineString(
                                "four".into(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }))
            }),
            &invalid,
        ),
        (
            "virtual_hosts[0].routes[0].direct_response.body.filename",
            Box::new(|c| {
                first_route(c).action =
                    Some(Action::DirectResponse(route_pb::DirectResponseAction {
                        status: 200,
                        body: Some(core_pb::DataSource {
                            specifier: Some(core_pb::data_source::Specifier::Filename(
                                "/etc/passwd".into(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }))
            }),
            &unsupported,
        ),
        // Header mutations.
        (
            "virtual_hosts[0].routes[0].request_headers_to_add[0].header.value",
            Box::new(|c| {
                first_route(c).request_headers_to_add = vec![header_option(
                    "x-client",
                    "%DOWNSTREAM_REMOTE_ADDRESS%",
                    core_pb::header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
                )]
            }),
            &unsupported_value,
        ),
        (
            "virtual_hosts[0].routes[0].request_headers_to_add[0].header.key",
            Box::new(|c| {
                first_route(c).request_headers_to_add = vec![header_option(
                    "Host",
                    "x",
                    core_pb::header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
                )]
            }),
            &invalid,
        ),
        (
            "virtual_hosts[0].response_headers_to_remove[0]",
            Box::new(|c| c.virtual_hosts[0].response_headers_to_remove = vec![":status".into()]),
            &invalid,
        ),
        (
            "request_headers_to_add[0].append",
            Box::new(|c| {
                #[allow(deprecated)]
                let option = core_pb::HeaderValueOption {
                    append: Some(BoolValue { value: true }),
                    ..header_option(
                        "x",
                        "v",
                        core_pb::header_value_option::HeaderAppendAction::AddIfAbsent,
                    )
                };
                c.request_headers_to_add = vec![option];
            }),
            &invalid,
        ),
        // Virtual hosts.
        (
            "virtual_hosts[1].domains[1]",
            Box::new(|c| {
                c.virtual_hosts
                    .push(vhost("w", &["b.example.com", "A.example.com"], vec![]))
            }),
            &|r: &Reason| {
                *r == Reason::DuplicateDomain {
                    domain: "a.example.com".into(),
                    first: 0,
                }
            },
        ),
        (
            "virtual_hosts[2].domains[0]",
            Box::new(|c| {
                c.virtual_hosts.push(vhost("w", &["*"], vec![]));
                c.virtual_hosts.push(vhost("x", &["*"], vec![]));
            }),
            &|r: &Reason| matches!(r, Reason::DuplicateDomain { first: 1, .. }),
        ),
        (
            "virtual_hosts[2].domains[0]",
            Box::new(|c| {
                c.virtual_hosts.push(vhost("w", &["*.example.com"], vec![]));
                c.virtual_hosts.push(vhost("x", &["*.Example.com"], vec![]));
            }),
            &|r: &Reason| matches!(r, Reason::DuplicateDomain { first: 1, .. }),
        ),
        (
            "virtual_hosts[0].domains",
            Box::new(|c| c.virtual_hosts[0].domains.clear()),
            &missing,
        ),
        (
            "virtual_hosts[0].name",
            Box::new(|c| c.virtual_hosts[0].name.clear()),
            &missing,
        ),
        (
            "virtual_hosts[0].cors",
            #[allow(deprecated)]
            Box::new(|c| c.virtual_hosts[0].cors = Some(Default::default())),
            &unsupported,
        ),
        (
            "virtual_hosts[0].require_tls",
            Box::new(|c| c.virtual_hosts[0].require_tls = 2),
            &unsupported,
        ),
        (
            "virtual_hosts[0].rate_limits",
            Box::new(|c| c.virtual_hosts[0].rate_limits = vec![Default::default()]),
            &unsupported,
        ),
        (
            "virtual_hosts[0].request_mirror_policies",
            Box::new(|c| c.virtual_hosts[0].request_mirror_policies = vec![Default::default()]),
            &unsupported,
        ),
        (
            "virtual_hosts[0].typed_per_filter_config.f",
            Box::new(|c| {
                c.virtual_hosts[0]
                    .typed_per_filter_config
                    .insert("f".into(), Default::default());
            }),
            &unsupported_value,
        ),
        // Route configuration.
        (
            "vhds",
            Box::new(|c| c.vhds = Some(Default::default())),
            &unsupported,
        ),
        (
            "internal_only_headers",
            Box::new(|c| c.internal_only_headers = vec!["x-internal".into()]),
            &unsupported,
        ),
        (
            "vhost_header",
            Box::new(|c| c.vhost_header = "x-host".into()),
            &unsupported,
        ),
        (
            "cluster_specifier_plugins",
            Box::new(|c| c.cluster_specifier_plugins = vec![Default::default()]),
            &unsupported,
        ),
    ];
    for (field, breaker, check) in cases {
        let mut cfg = base();
        breaker(&mut cfg);
        let err = RouteTable::try_from(&cfg).expect_err(field);
        assert_eq!(err.field, field, "{err}");
        assert!(check(&err.reason), "{err}");
        assert_eq!(err.resource, Resource::RouteConfig("public".into()));
        assert!(
            err.to_string()
                .starts_with(&format!("route config public: {field}: ")),
            "{err}"
        );
    }
}

#[test]
fn rejection_messages_read_well() {
    let mut cfg = config(vec![vhost(
        "v",
        &["*"],
        vec![
            fwd("a", prefix("/a")),
            fwd("b", prefix("/b")),
            fwd("c", regex_path("/x/(")),
        ],
    )]);
    let err = RouteTable::try_from(&cfg).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "route config public: virtual_hosts[0].routes[2].match.safe_regex: invalid regex: "
        ),
        "{err}"
    );
    cfg.virtual_hosts[0].routes[2] = fwd("c", prefix("/c"));
    match cfg.virtual_hosts[0].routes[1].action.as_mut() {
        Some(route_pb::route::Action::Route(action)) => {
            action.hash_policy = vec![Default::default()];
        }
        _ => unreachable!(),
    }
    assert_eq!(
        RouteTable::try_from(&cfg).unwrap_err().to_string(),
        "route config public: virtual_hosts[0].routes[1].route.hash_policy: not supported"
    );
}

// ---------------------------------------------------------------------------------------------
// What the control plane actually serves

#[test]
fn accepts_what_the_control_plane_translator_emits() {
    use prost::Message as _;
    use tollgate_control_plane::model::{Cluster, Listener, Route as ModelRoute};
    use tollgate_control_plane::store::StoreSnapshot;
    use tollgate_control_plane::translate::{NodeGroup, NodeKind, ResourceType, translate};

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../control-plane/src/translate/testdata/basic.json"
    );
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let list = |key: &str| fixture[key].clone();
    let clusters: Vec<Cluster> = serde_json::from_value(list("clusters")).unwrap();
    let routes: Vec<ModelRoute> = serde_json::from_value(list("routes")).unwrap();
    let listeners: Vec<Listener> = serde_json::from_value(list("listeners")).unwrap();
    let store = StoreSnapshot {
        revision: 1,
        clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
        routes: routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
        listeners: listeners.into_iter().map(|l| (l.name.clone(), l)).collect(),
        ..Default::default()
    };
    let node = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let snapshot = translate(&store, &node, &Default::default()).unwrap();
    let resource = &snapshot.resources(ResourceType::Route)["public"];
    let proto = route_pb::RouteConfiguration::decode(resource.body.value.as_slice()).unwrap();
    let table = RouteTable::try_from(&proto).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(table.name(), "public");
    assert!(!table.validate_clusters());
    assert_eq!(table.clusters(), ["legacy", "users"].into());

    // users-api: host, prefix, methods (a regex over :method) and a header; rewrites, timeout,
    // retries and header mutations.
    let req = get("API.example.com:8080", "/users/7?x=1")
        .method("POST")
        .header("x-env", "prod");
    let matched = table.find(&req.head()).expect("users-api");
    assert_eq!(&*matched.route.name, "users-api");
    let RouteAction::Forward(f) = &matched.route.action else {
        panic!("users-api forwards")
    };
    assert_eq!(&**f.pick_cluster(0), "users");
    assert_eq!(
        matched.route.upstream_path(req.path).as_deref(),
        Some("/v2/users/7?x=1")
    );
    assert_eq!(
        f.host_rewrite,
        Some(HeaderValue::from_static("users.internal"))
    );
    assert_eq!(f.timeout, Some(Duration::from_millis(1500)));
    let retry = f.retry_policy.as_ref().expect("users-api retries");
    assert_eq!(retry.retry_on, [RetryOn::FiveXx, RetryOn::Reset]);
    assert_eq!(retry.num_retries, 2);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(500)));
    // Only idempotent methods are retried (the route has no `non_idempotent`).
    for (method, allowed) in [
        ("GET", true),
        ("PUT", true),
        ("POST", false),
        ("PATCH", false),
    ] {
        assert_eq!(
            retry.retry_allowed(&req.clone_with_method(method).head()),
            allowed,
            "{method}"
        );
    }
    let mut headers = HeaderMap::new();
    headers.insert("x-debug", HeaderValue::from_static("1"));
    matched.apply_request_headers(&mut headers, &cx()).unwrap();
    assert_eq!(headers.get("x-gateway").unwrap(), "tollgate");
    assert!(headers.get("x-debug").is_none());

    // Wrong method or header: not users-api, and nothing else on that path.
    assert!(
        table
            .find(
                &get("api.example.com", "/users/7")
                    .method("DELETE")
                    .header("x-env", "prod")
                    .head()
            )
            .is_none()
    );
    assert!(
        table
            .find(
                &get("api.example.com", "/users/7")
                    .header("x-env", "dev")
                    .head()
            )
            .is_none()
    );

    // canary: any host, regex path, query presence, weighted 90/10.
    let req = get("other.example.org", "/items/12?canary");
    let matched = table.find(&req.head()).expect("canary");
    assert_eq!(&*matched.route.name, "canary");
    let RouteAction::Forward(f) = &matched.route.action else {
        panic!("canary forwards")
    };
    assert_eq!(
        (&**f.pick_cluster(89), &**f.pick_cluster(90)),
        ("users", "legacy")
    );
    assert!(
        table
            .find(&get("other.example.org", "/items/12").head())
            .is_none()
    );

    // old-docs: a 308 to https://docs.example.com with the /docs prefix replaced by "/",
    // which gives Envoy's double slash.
    let req = get("api.example.com", "/docs/intro?lang=en");
    let matched = table.find(&req.head()).expect("old-docs");
    let RouteAction::Redirect(r) = &matched.route.action else {
        panic!("old-docs redirects")
    };
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.location(&req.head()),
        "https://docs.example.com//intro?lang=en"
    );

    // health: direct 200 "ok", on every host.
    let matched = table.find(&get("x", "/healthz").head()).expect("health");
    let RouteAction::Direct(d) = &matched.route.action else {
        panic!("health answers directly")
    };
    assert_eq!((d.status, d.body.as_slice()), (StatusCode::OK, &b"ok"[..]));
}

// ---------------------------------------------------------------------------------------------
// The route index

/// With many routes the virtual host looks routes up through its prefix index; whatever the
/// mix of matchers, the route found must be the one a scan in config order finds.
#[test]
fn indexed_lookup_finds_what_a_scan_in_order_finds() {
    let mut routes = Vec::new();
    for i in 0..40 {
        routes.push(fwd(&format!("prefix-{i}"), prefix(&format!("/r{i}"))));
        if i % 7 == 0 {
            routes.push(fwd(&format!("exact-{i}"), exact(&format!("/r{i}/exact"))));
            routes.push(fwd(
                &format!("regex-{i}"),
                regex_path(&format!("/re/{i}/[a-z]+")),
            ));
            routes.push(fwd(
                &format!("nocase-{i}"),
                case_insensitive(prefix(&format!("/CASE{i}"))),
            ));
        }
    }
    // A route that shadows later ones, and catch-alls at the end.
    routes.insert(5, fwd("shadow", prefix("/r3")));
    routes.push(fwd("root", prefix("/")));
    routes.push(fwd("empty", prefix("")));
    let table = build(&config(vec![vhost("all", &["*"], routes)]));
    let vhost = &table.virtual_hosts()[0];
    assert!(!vhost.index.is_empty(), "the index is in use at this size");
    for path in [
        "/r1",
        "/r12",
        "/r3",
        "/r35/x",
        "/r7/exact",
        "/r7/exactly",
        "/r14/exact?q=1",
        "/re/7/abc",
        "/re/7/ABC",
        "/case14/x",
        "/CASE0",
        "/bench",
        "/",
        "/r",
        "/r399",
        "/x/r1",
    ] {
        let req = get("any.example.com", path);
        let head = req.head();
        let scanned = vhost
            .routes
            .iter()
            .find(|r| r.matches(&head))
            .map(|r| &r.name);
        let indexed = vhost.find_route(&head).map(|r| &r.name);
        assert_eq!(indexed, scanned, "{path}");
    }
    assert_eq!(found(&table, &get("a", "/r33/x")).unwrap(), "shadow");
    assert_eq!(found(&table, &get("a", "/bench")).unwrap(), "root");
}

#[test]
fn accepts_the_control_planes_transform_policies() {
    use std::borrow::Cow;

    use prost::Message as _;
    use tollgate_control_plane::model::{Cluster, Listener, Policy, Route as ModelRoute};
    use tollgate_control_plane::store::StoreSnapshot;
    use tollgate_control_plane::translate::{NodeGroup, NodeKind, ResourceType, translate};
    use tollgate_proto::envoy::config::listener::v3 as listener_pb;

    use crate::config::filters::HttpFilterKind;
    use crate::config::format::{
        DynamicMetadata, EXT_AUTHZ_NAMESPACE, FormatContext, JWT_AUTHN_NAMESPACE, lookup,
    };

    let cluster: Cluster = serde_json::from_value(serde_json::json!({
        "name": "app", "endpoints": [{"address": "127.0.0.1", "port": 8080}]}))
    .unwrap();
    let route: ModelRoute = serde_json::from_value(serde_json::json!({
        "name": "shaped", "match": {"path_prefix": "/old"}, "cluster": "app",
        "policies": ["shape"]}))
    .unwrap();
    let listener: Listener =
        serde_json::from_value(serde_json::json!({"name": "public", "port": 8080})).unwrap();
    let policy: Policy = serde_json::from_value(serde_json::json!({
        "type": "transform", "name": "shape",
        "request": {"headers": {"set": {"x-user": "u-{claim.org.id}/{consumer.name} 100%",
                                        "x-tier": "{consumer.tier}", "x-ua": "{header.user-agent}",
                                        "x-ip": "{client_ip}"},
                                "remove": ["x-debug"]},
                    "body": {"rename_keys": "snake_case", "remove": ["password"], "add": {"via": "gw"},
                             "on_invalid": "reject"},
                    "path": {"regex": "^/old/(.*)", "substitution": "/new/\\1"}},
        "response": {"headers": {"add": {"x-host": "{header.host}"}},
                     "body": {"convert": "json_to_xml"}}
    }))
    .unwrap();
    let store = StoreSnapshot {
        revision: 1,
        clusters: [("app".to_owned(), cluster)].into(),
        routes: [("shaped".to_owned(), route)].into(),
        listeners: [("public".to_owned(), listener)].into(),
        policies: [("shape".to_owned(), policy)].into(),
        ..Default::default()
    };
    let node = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let snapshot = translate(&store, &node, &Default::default()).unwrap();
    let resource = &snapshot.resources(ResourceType::Route)["public"];
    let proto = route_pb::RouteConfiguration::decode(resource.body.value.as_slice()).unwrap();
    let table = RouteTable::try_from(&proto).unwrap_or_else(|e| panic!("{e}"));
    let resource = &snapshot.resources(ResourceType::Listener)["public"];
    let proto = listener_pb::Listener::decode(resource.body.value.as_slice()).unwrap();
    let listener =
        crate::config::listener::Listener::try_from(&proto).unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<&HttpFilterKind> = listener.chains()[0]
        .http
        .http_filters
        .iter()
        .map(|f| &f.kind)
        .collect();
    assert!(matches!(
        kinds[..],
        [HttpFilterKind::Transform, HttpFilterKind::Router]
    ));

    let req = get("api.test", "/old/x")
        .header("user-agent", "curl")
        .header("x-debug", "1");
    let matched = table.find(&req.head()).unwrap();
    let RouteAction::Forward(forward) = &matched.route.action else {
        panic!("forwards")
    };
    assert_eq!(
        forward.rewrite_path("/old/x?q").as_deref(),
        Some("/new/x?q")
    );
    let bodies = matched
        .filter_config("tollgate.filters.http.transform")
        .and_then(|c| c.as_transform())
        .unwrap();
    assert_eq!(bodies.request.len(), 1);
    assert!(bodies.request[0].reject_invalid);
    assert_eq!(bodies.response.len(), 1);

    struct Identity;
    impl DynamicMetadata for Identity {
        fn get(&self, namespace: &str, path: &[String]) -> Option<Cow<'_, serde_json::Value>> {
            let all = serde_json::json!({
                JWT_AUTHN_NAMESPACE: {"jwt_payload": {"org": {"id": 42}}},
                EXT_AUTHZ_NAMESPACE: {"consumer": "acme", "tier": "gold"},
            });
            lookup(&all[namespace], path).cloned().map(Cow::Owned)
        }
    }
    let cx = FormatContext {
        metadata: &Identity,
        ..cx()
    };
    let mut headers = req.headers.clone();
    matched.apply_request_headers(&mut headers, &cx).unwrap();
    assert_eq!(headers["x-user"], "u-42/acme 100%");
    assert_eq!(headers["x-tier"], "gold");
    assert_eq!(headers["x-ua"], "curl");
    assert_eq!(headers["x-ip"], "192.0.2.7");
    assert!(headers.get("x-debug").is_none());
    assert!(matched.response_reads_request());
    let mut response = HeaderMap::new();
    matched.apply_response_headers(&mut response, &headers, &cx);
    assert_eq!(response["x-host"], "h");
}
