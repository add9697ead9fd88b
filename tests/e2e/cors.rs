//! CORS policies, answered alike by Envoy (its `cors` filter) and the edge proxy: a matrix of
//! preflight and actual requests from allowed and foreign origins gives the same status and
//! the same `access-control-*` headers on both, and preflights never reach the upstream.

use reqwest::Method;
use serde_json::json;
use support::{ControlPlane, Upstream, free_port};

use crate::fixtures::{Peer, start_envoy_and_edge};

const HOST: &str = "cors.test";

/// The response headers compared between the proxies.
const CORS_HEADERS: &[&str] = &[
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-allow-credentials",
    "access-control-allow-private-network",
];

/// What a proxy answered, as far as CORS goes.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    reached_upstream: bool,
}

impl Peer {
    async fn answer(
        &self,
        upstream: &Upstream,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        upstream.clear();
        let response = self.request(method, path, headers, None).await;
        Answer {
            status: response.status,
            headers: CORS_HEADERS
                .iter()
                .filter_map(|name| {
                    response
                        .header(name)
                        .map(|v| ((*name).to_owned(), v.to_owned()))
                })
                .collect(),
            reached_upstream: upstream.request_count() > 0,
        }
    }
}

#[tokio::test]
async fn envoy_and_the_edge_proxy_answer_cors_alike() {
    let Some(_) = support::require_envoy() else {
        return;
    };
    let cp = ControlPlane::start().await.expect("control plane starts");
    let upstream = Upstream::start("app").await;
    let (envoy_port, edge_port) = (free_port(), free_port());
    let revision = cp.put_all([
        ("clusters", "app", json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]})),
        ("policies", "site", json!({"type": "cors", "allow_origins": ["https://app.example.com"],
               "allow_origin_regexes": ["https://[a-z]+\\.example\\.org"],
               "allow_methods": ["GET", "PUT", "DELETE"], "allow_headers": ["content-type", "x-trace"],
               "expose_headers": ["x-request-id"], "max_age_s": 600, "allow_credentials": true})),
        ("policies", "anyone", json!({"type": "cors", "allow_origins": ["*"], "allow_methods": ["GET"]})),
        ("routes", "api", json!({"match": {"path_prefix": "/api"}, "cluster": "app"})),
        ("routes", "public", json!({"match": {"path_prefix": "/public"}, "cluster": "app", "policies": ["anyone"]})),
        // The listener's policy covers /api; /public has its own, which replaces it.
        ("listeners", "envoy-l", json!({"address": "127.0.0.1", "port": envoy_port, "node_cluster": "envoy", "policies": ["site"]})),
        ("listeners", "edge-l", json!({"address": "127.0.0.1", "port": edge_port, "node_cluster": "edge", "policies": ["site"]})),
    ]).await;
    let (_envoy, _edge) = start_envoy_and_edge(&cp, "cors", revision).await;
    let peers = Peer::envoy_and_edge(envoy_port, edge_port, HOST);
    for peer in &peers {
        peer.wait_serving("/api", &[]).await;
    }

    let options = Method::OPTIONS;
    let preflight = |origin: &'static str, method: &'static str| {
        vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ]
    };
    // (name, method, path, headers, what Envoy does, in brief)
    type Case = (
        &'static str,
        Method,
        &'static str,
        Vec<(&'static str, &'static str)>,
        Expect,
    );
    let cases: Vec<Case> = vec![
        (
            "preflight, allowed origin",
            options.clone(),
            "/api/x",
            preflight("https://app.example.com", "PUT"),
            Expect::Preflight,
        ),
        (
            "preflight, origin by regex",
            options.clone(),
            "/api/x",
            preflight("https://eu.example.org", "DELETE"),
            Expect::Preflight,
        ),
        (
            "preflight, method not listed",
            options.clone(),
            "/api/x",
            preflight("https://app.example.com", "PATCH"),
            Expect::Preflight,
        ),
        (
            "preflight, foreign origin",
            options.clone(),
            "/api/x",
            preflight("https://evil.test", "GET"),
            Expect::Forwarded,
        ),
        (
            "preflight with request headers",
            options.clone(),
            "/api/x",
            vec![
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "content-type, x-trace"),
            ],
            Expect::Preflight,
        ),
        (
            "OPTIONS without preflight headers",
            options.clone(),
            "/api/x",
            vec![("origin", "https://app.example.com")],
            Expect::Forwarded,
        ),
        (
            "preflight, wildcard policy",
            options.clone(),
            "/public/x",
            preflight("https://anything.test", "GET"),
            Expect::Preflight,
        ),
        (
            "actual request, allowed origin",
            Method::GET,
            "/api/x",
            vec![("origin", "https://app.example.com")],
            Expect::Forwarded,
        ),
        (
            "actual request, regex origin",
            Method::PUT,
            "/api/x",
            vec![("origin", "https://us.example.org")],
            Expect::Forwarded,
        ),
        (
            "actual request, foreign origin",
            Method::GET,
            "/api/x",
            vec![("origin", "https://evil.test")],
            Expect::Forwarded,
        ),
        (
            "actual request, origin case differs",
            Method::GET,
            "/api/x",
            vec![("origin", "https://APP.example.com")],
            Expect::Forwarded,
        ),
        (
            "actual request, no origin",
            Method::GET,
            "/api/x",
            vec![],
            Expect::Forwarded,
        ),
        (
            "actual request, wildcard policy",
            Method::GET,
            "/public/x",
            vec![("origin", "https://anything.test")],
            Expect::Forwarded,
        ),
        (
            "actual request, null origin",
            Method::GET,
            "/public/x",
            vec![("origin", "null")],
            Expect::Forwarded,
        ),
    ];
    let mut failures = Vec::new();
    for (name, method, path, headers, expect) in &cases {
        let envoy = peers[0]
            .answer(&upstream, method.clone(), path, headers)
            .await;
        let edge = peers[1]
            .answer(&upstream, method.clone(), path, headers)
            .await;
        match expect {
            Expect::Preflight if envoy.reached_upstream || envoy.status != 200 => failures.push(
                format!("{name}: envoy did not answer the preflight itself: {envoy:?}"),
            ),
            Expect::Forwarded if !envoy.reached_upstream => {
                failures.push(format!("{name}: envoy did not forward: {envoy:?}"))
            }
            _ => {}
        }
        if envoy != edge {
            failures.push(format!("{name}:\n    envoy {envoy:?}\n    edge  {edge:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What Envoy does with a case: the proxy answers (a preflight), or the request goes on.
enum Expect {
    Preflight,
    Forwarded,
}
