//! Parity with Envoy: one control plane serves the same route table to a Tollgate edge proxy
//! and to a real Envoy 1.40, and a matrix of requests through both must give the same status
//! codes, the same locally made responses, and the same request as seen by the fake upstream.
//!
//! Envoy is the reference: every case also states what Envoy is expected to do, so that a case
//! which silently stopped exercising its feature (e.g. a route that no longer matches, giving
//! the same 404 on both) fails instead of passing. A difference between the proxies is a bug
//! unless the case is marked as a known difference with its reason, and the few headers that
//! legitimately differ are listed, with why, in [`UPSTREAM_HEADERS_THAT_DIFFER`] and
//! [`RESPONSE_HEADERS_THAT_DIFFER`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use reqwest::Method;
use serde_json::{Value, json};
use support::{ControlPlane, EdgeProxy, Envoy, EnvoyOptions, Upstream, eventually, free_port};

use crate::fixtures::CONVERGE;

/// The `Host` every case sends unless it says otherwise. Both listeners are on different ports,
/// so the client's default `Host` (`127.0.0.1:<port>`) would differ between the proxies.
const HOST: &str = "parity.test";

/// Request headers the upstream legitimately sees differently through the two proxies, each with
/// the reason. Cases may still assert such a header's value explicitly.
const UPSTREAM_HEADERS_THAT_DIFFER: &[(&str, &str)] = &[
    (
        "x-request-id",
        "a random UUID that each proxy generates per request",
    ),
    (
        "x-envoy-expected-rq-timeout-ms",
        "Envoy tells the upstream its route timeout; Tollgate does not emit Envoy's own headers",
    ),
    (
        "x-envoy-external-address",
        "Envoy names an external client's address; Tollgate does not emit Envoy's own headers",
    ),
    (
        "x-envoy-internal",
        "Envoy marks requests from internal clients; Tollgate does not emit Envoy's own headers",
    ),
    (
        "x-envoy-original-path",
        "Envoy records the path before a rewrite; Tollgate does not emit Envoy's own headers",
    ),
    (
        "x-envoy-original-host",
        "Envoy records the host before a rewrite; Tollgate does not emit Envoy's own headers",
    ),
    (
        "x-forwarded-for",
        "its last hop only (the rest is compared in `compare`): for a loopback client Envoy \
         appends the host's own address (`localAddress()`, e.g. 192.0.2.2) instead of the peer's; \
         the edge proxy appends the peer it saw, 127.0.0.1, which is what the header is for",
    ),
    (
        "x-envoy-attempt-count",
        "Envoy counts attempts (when asked to); Tollgate does not emit Envoy's own headers",
    ),
];

/// Response headers that legitimately differ between the two proxies, each with the reason.
///
/// `content-length` is compared only for responses the proxies make themselves (direct
/// responses, redirects, no route, upstream errors): a forwarded response's body is the fake
/// upstream's JSON echo of the request, which contains the headers above, so its length differs.
const RESPONSE_HEADERS_THAT_DIFFER: &[(&str, &str)] = &[
    (
        "date",
        "the clock: the two responses need not fall in one second",
    ),
    (
        "server",
        "each proxy names itself (`envoy`, `tollgate`): Envoy's default \
         server_header_transformation overwrites it",
    ),
    (
        "x-envoy-upstream-service-time",
        "Envoy's own measurement of the upstream's latency; Tollgate does not emit it",
    ),
    (
        "connection",
        "connection management is per hop (RFC 9110, 7.6.1): Envoy sends `close` after \
         answering a request whose body it did not read (a redirected POST); the edge proxy \
         leaves draining the body to its HTTP server",
    ),
    (
        "transfer-encoding",
        "message framing is per hop (RFC 9112, 6.1): Envoy announces `chunked` on a bodiless \
         HEAD reply where the edge proxy sends no framing header",
    ),
];

/// Requests per proxy for the weighted split, and the largest allowed distance of each
/// cluster's observed share from its configured one (about five standard deviations of a
/// binomial with n = 200, p = 0.25, so a correct proxy fails less than once in a million runs).
const SPLIT_REQUESTS: usize = 200;
const SPLIT_TOLERANCE: f64 = 0.15;

/// The fake upstreams, one per cluster that forwards somewhere real.
const UPSTREAMS: &[&str] = &["main", "alt", "flaky", "half", "split-a", "split-b"];

#[tokio::test]
async fn edge_proxy_and_envoy_agree_on_the_route_table() {
    let Some(_) = support::require_envoy() else {
        return;
    };
    let cp = ControlPlane::start().await.expect("control plane starts");
    let mut upstreams = BTreeMap::new();
    for name in UPSTREAMS {
        upstreams.insert(*name, Upstream::start(name).await);
    }
    // Nobody listens here: connect failures. Reserved, so no process of this test takes it.
    let dead_port = free_port();
    let (envoy_port, edge_port) = (free_port(), free_port());
    let revision = install_config(&cp, &upstreams, dead_port, envoy_port, edge_port).await;

    let envoy_options = EnvoyOptions {
        node_id: "parity-envoy".to_owned(),
        node_cluster: "envoy".to_owned(),
        delta: false,
    };
    let (envoy, edge) = tokio::join!(
        Envoy::start(&cp, envoy_options),
        EdgeProxy::start(&cp, "parity-edge"),
    );
    let (_envoy, _edge) = (
        envoy.expect("envoy starts"),
        edge.expect("edge proxy starts"),
    );
    cp.wait_converged(revision, CONVERGE)
        .await
        .expect("both proxies take up the route table");
    let peers = [
        Peer {
            name: "envoy",
            port: envoy_port,
        },
        Peer {
            name: "edge",
            port: edge_port,
        },
    ];
    // An acked listener may take a moment to accept connections.
    for peer in &peers {
        eventually(
            &format!("the {} listener serves routes", peer.name),
            CONVERGE,
            || async {
                let response = support::get(&peer.url("/direct"), Some(HOST)).await?;
                anyhow::ensure!(response.status == 200, "status {}", response.status);
                Ok(())
            },
        )
        .await;
    }

    let cases = cases();
    assert!(cases.len() >= 40, "the matrix has {} cases", cases.len());
    let mut table = String::new();
    let mut failures = Vec::new();
    // The same root cause shows up in many cases: group the problems so the report names each
    // once, with the cases it affects.
    let mut by_problem: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut known = 0;
    for case in &cases {
        let envoy_seen = observe(&peers[0], case, &upstreams).await;
        let edge_seen = observe(&peers[1], case, &upstreams).await;
        let mut problems = Vec::new();
        for (peer, seen) in [("envoy", &envoy_seen), ("edge", &edge_seen)] {
            problems.extend(case.check(seen).into_iter().map(|p| format!("{peer}: {p}")));
        }
        problems.extend(compare(case, &envoy_seen, &edge_seen));
        let mut unique = std::collections::BTreeSet::new();
        problems.retain(|p| unique.insert(p.clone()));
        let verdict = match (case.known_difference, problems.is_empty()) {
            (None, true) => "ok",
            (Some(_), false) => {
                known += 1;
                "known difference"
            }
            (None, false) => "FAIL",
            (Some(_), true) => {
                problems.push(
                    "marked as a known difference, but the proxies agree: remove the mark".into(),
                );
                "FAIL"
            }
        };
        let _ = writeln!(table, "{verdict:>16}  {}", case.name);
        if let Some(reason) = case.known_difference {
            let _ = writeln!(table, "{:>18}{reason}", "");
        }
        if verdict == "FAIL" {
            let mut detail = format!("case `{}`: {}\n", case.name, case.describe_request());
            for problem in &problems {
                let _ = writeln!(detail, "    - {problem}");
                by_problem
                    .entry(problem.clone())
                    .or_default()
                    .push(case.name);
            }
            failures.push(detail);
        }
    }

    let split = weighted_split(&peers, &upstreams).await;
    let _ = writeln!(
        table,
        "{:>16}  weighted split ({SPLIT_REQUESTS} requests per proxy)",
        if split.is_empty() { "ok" } else { "FAIL" }
    );
    for problem in &split {
        by_problem
            .entry(problem.clone())
            .or_default()
            .push("weighted split");
    }
    failures.extend(split);

    let mut summary = String::new();
    for (problem, names) in &by_problem {
        let _ = writeln!(summary, "- in {} case(s): {problem}", names.len());
        let _ = writeln!(summary, "    {}", names.join("; "));
    }
    eprintln!(
        "parity matrix: {} cases ({} requests per proxy, plus {SPLIT_REQUESTS} for the weighted \
         split), {} failed, {known} known differences\n{table}",
        cases.len(),
        cases.iter().map(|c| c.repeat).sum::<usize>(),
        failures.len(),
    );
    assert!(
        failures.is_empty(),
        "{} parity failures.\n\nDistinct problems:\n{summary}\nBy case:\n{}",
        failures.len(),
        failures.join("")
    );
}

/// One of the two proxies under comparison.
struct Peer {
    name: &'static str,
    port: u16,
}

impl Peer {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Creates the clusters, the route table and the two listeners (one per proxy: a port cannot be
/// bound twice on one machine); returns the last revision.
async fn install_config(
    cp: &ControlPlane,
    upstreams: &BTreeMap<&str, Upstream>,
    dead_port: u16,
    envoy_port: u16,
    edge_port: u16,
) -> u64 {
    let endpoint = |port: u16| json!({"address": "127.0.0.1", "port": port});
    let mut clusters: Vec<(&str, Value)> = upstreams
        .iter()
        .filter(|(name, _)| **name != "half")
        .map(|(name, upstream)| (*name, json!([endpoint(upstream.port())])))
        .collect();
    clusters.push(("dead", json!([endpoint(dead_port)])));
    clusters.push((
        "half",
        json!([endpoint(dead_port), endpoint(upstreams["half"].port())]),
    ));
    for (name, endpoints) in clusters {
        let spec = json!({"endpoints": endpoints, "connect_timeout_ms": 1000});
        cp.put_ok("clusters", name, spec)
            .await
            .unwrap_or_else(|e| panic!("cluster {name}: {e:#}"));
    }
    for (name, spec) in routes() {
        cp.put_ok("routes", name, spec)
            .await
            .unwrap_or_else(|e| panic!("route {name}: {e:#}"));
    }
    cp.put_ok(
        "listeners",
        "envoy-l",
        json!({"address": "127.0.0.1", "port": envoy_port, "node_cluster": "envoy"}),
    )
    .await
    .expect("listener envoy-l");
    cp.put_ok(
        "listeners",
        "edge-l",
        json!({"address": "127.0.0.1", "port": edge_port, "node_cluster": "edge"}),
    )
    .await
    .expect("listener edge-l")
}

/// The route table. Each route tags what it forwards with `x-route`, so a case can tell which
/// route took a request. Prefixes are chosen so that none is a prefix of another unless a case
/// is about exactly that.
fn routes() -> Vec<(&'static str, Value)> {
    fn tagged(tag: &str) -> Value {
        json!({"set": {"x-route": tag}})
    }
    let forward = |name: &'static str, matcher: Value, cluster: &str| {
        (
            name,
            json!({"match": matcher, "cluster": cluster, "request_headers": tagged(name)}),
        )
    };
    let with = |(name, mut spec): (&'static str, Value), extra: Value| {
        for (key, value) in extra.as_object().expect("an object").clone() {
            spec[key] = value;
        }
        (name, spec)
    };
    vec![
        // Path match kinds.
        forward("pfx", json!({"path_prefix": "/pfx"}), "main"),
        forward("exact", json!({"path_exact": "/exact"}), "main"),
        // No anchors: a path regex must still match the whole path.
        forward("regex", json!({"path_regex": "/rx/[0-9]+"}), "main"),
        // Methods.
        forward(
            "meth-one",
            json!({"path_prefix": "/meth1", "methods": ["PUT"]}),
            "main",
        ),
        forward(
            "meth-many",
            json!({"path_prefix": "/methods", "methods": ["GET", "DELETE"]}),
            "main",
        ),
        // Header matchers.
        forward(
            "hdr-exact",
            json!({"path_prefix": "/hdr-exact", "headers": [{"name": "x-env", "exact": "prod"}]}),
            "main",
        ),
        forward(
            "hdr-prefix",
            json!({"path_prefix": "/hdr-prefix", "headers": [{"name": "x-env", "prefix": "pr"}]}),
            "main",
        ),
        forward(
            "hdr-regex",
            json!({"path_prefix": "/hdr-regex", "headers": [{"name": "x-ver", "regex": "v[0-9]+"}]}),
            "main",
        ),
        forward(
            "hdr-present",
            json!({"path_prefix": "/hdr-present", "headers": [{"name": "x-flag", "present": true}]}),
            "main",
        ),
        forward(
            "hdr-absent",
            json!({"path_prefix": "/hdr-absent", "headers": [{"name": "x-flag", "present": false}]}),
            "main",
        ),
        forward(
            "hdr-invert",
            json!({"path_prefix": "/hdr-invert",
                   "headers": [{"name": "x-env", "exact": "prod", "invert": true}]}),
            "main",
        ),
        forward(
            "hdr-all",
            json!({"path_prefix": "/hdr-all", "headers": [
                {"name": "x-env", "exact": "prod"}, {"name": "x-team", "prefix": "pay"}]}),
            "main",
        ),
        // Query matchers.
        forward(
            "q-present",
            json!({"path_prefix": "/q-present", "query": [{"name": "debug", "present": true}]}),
            "main",
        ),
        forward(
            "q-exact",
            json!({"path_prefix": "/q-exact", "query": [{"name": "v", "exact": "1"}]}),
            "main",
        ),
        forward(
            "q-regex",
            json!({"path_prefix": "/q-regex", "query": [{"name": "id", "regex": "[0-9]+"}]}),
            "main",
        ),
        // Hosts: exact, `*.suffix`, `prefix.*`, and the host-less fallback on the same path.
        forward(
            "host-exact",
            json!({"hosts": ["api.example.com"], "path_prefix": "/vhost"}),
            "alt",
        ),
        forward(
            "host-suffix",
            json!({"hosts": ["*.example.org"], "path_prefix": "/vhost"}),
            "alt",
        ),
        forward(
            "host-prefix",
            json!({"hosts": ["shop.*"], "path_prefix": "/vhost"}),
            "alt",
        ),
        // Named to sort after the `host-*` routes: hosts do not count as conditions when the
        // control plane orders routes, so a host-less route on the same path whose name sorts
        // first would shadow them on every host.
        forward("vhost-any", json!({"path_prefix": "/vhost"}), "main"),
        // Order: priority first, then exact, regex, longer prefix.
        with(
            forward("prio-high", json!({"path_prefix": "/prio"}), "main"),
            json!({"priority": 10}),
        ),
        forward("prio-exact", json!({"path_exact": "/prio/exact"}), "alt"),
        forward("order-short", json!({"path_prefix": "/order"}), "main"),
        forward(
            "order-long",
            json!({"path_prefix": "/order/deeper"}),
            "main",
        ),
        forward("order-exact", json!({"path_exact": "/order/exact"}), "main"),
        forward(
            "order-regex",
            json!({"path_regex": "/order/[a-z]+"}),
            "main",
        ),
        // Rewrites.
        with(
            forward("rw-prefix", json!({"path_prefix": "/old"}), "main"),
            json!({"rewrite": {"path_prefix": "/new"}}),
        ),
        with(
            forward("rw-root", json!({"path_prefix": "/strip"}), "main"),
            json!({"rewrite": {"path_prefix": "/"}}),
        ),
        with(
            forward("rw-regex", json!({"path_prefix": "/rr"}), "main"),
            json!({"rewrite": {"path_regex": "^/rr/([^/]+)/([^/]+)$",
                               "path_substitution": "/swapped/\\2/\\1"}}),
        ),
        with(
            forward("rw-host", json!({"path_prefix": "/rwhost"}), "main"),
            json!({"rewrite": {"host": "internal.svc"}}),
        ),
        // Redirects.
        (
            "redir-path",
            json!({"match": {"path_prefix": "/r301"}, "redirect": {"path": "/moved"}}),
        ),
        (
            "redir-host",
            json!({"match": {"path_prefix": "/r302"},
                   "redirect": {"host": "other.example", "status": 302}}),
        ),
        (
            "redir-prefix",
            json!({"match": {"path_prefix": "/r303"},
                   "redirect": {"prefix_rewrite": "/landing", "strip_query": true, "status": 303}}),
        ),
        (
            "redir-https",
            json!({"match": {"path_prefix": "/r307"},
                   "redirect": {"scheme": "https", "status": 307},
                   "response_headers": {"set": {"x-redirected": "yes"}}}),
        ),
        (
            "redir-port",
            json!({"match": {"path_prefix": "/r308"},
                   "redirect": {"port": 8443, "status": 308}}),
        ),
        // Direct responses.
        (
            "direct-ok",
            json!({"match": {"path_exact": "/direct"},
                   "direct_response": {"status": 200, "body": "hello from the gateway"},
                   "response_headers": {"set": {"x-direct": "yes"}}}),
        ),
        (
            "direct-503",
            json!({"match": {"path_exact": "/maintenance"},
                   "direct_response": {"status": 503, "body": "down for maintenance"}}),
        ),
        (
            "direct-204",
            json!({"match": {"path_exact": "/empty"}, "direct_response": {"status": 204}}),
        ),
        // Header mutations.
        (
            "req-headers",
            json!({"match": {"path_prefix": "/reqh"}, "cluster": "main",
                   "request_headers": {"set": {"x-set": "new"}, "add": {"x-add": "added"},
                                       "remove": ["x-remove"]}}),
        ),
        (
            "resp-headers",
            json!({"match": {"path_prefix": "/resph"}, "cluster": "main",
                   "response_headers": {"set": {"x-resp-set": "s", "x-upstream": "masked"},
                                        "add": {"x-resp-add": "a"},
                                        "remove": ["content-type"]}}),
        ),
        // Weighted split.
        (
            "split",
            json!({"match": {"path_prefix": "/split"},
                   "weighted_clusters": [{"cluster": "split-a", "weight": 3},
                                         {"cluster": "split-b", "weight": 1}]}),
        ),
        // Retries against failing endpoints.
        with(
            forward("retry-5xx", json!({"path_prefix": "/retry"}), "flaky"),
            json!({"retries": {"attempts": 2, "retry_on": ["5xx"]}}),
        ),
        with(
            forward(
                "retry-any-method",
                json!({"path_prefix": "/anyretry"}),
                "flaky",
            ),
            json!({"retries": {"attempts": 2, "retry_on": ["5xx"], "non_idempotent": true}}),
        ),
        with(
            forward("retry-gw", json!({"path_prefix": "/gw"}), "flaky"),
            json!({"retries": {"attempts": 1, "retry_on": ["gateway-error"]}}),
        ),
        with(
            forward("retry-4xx", json!({"path_prefix": "/r4xx"}), "flaky"),
            json!({"retries": {"attempts": 1, "retry_on": ["retriable-4xx"]}}),
        ),
        forward("no-retry", json!({"path_prefix": "/noretry"}), "flaky"),
        forward("dead", json!({"path_prefix": "/dead"}), "dead"),
        with(
            forward("dead-retry", json!({"path_prefix": "/unreachable"}), "dead"),
            json!({"retries": {"attempts": 2, "retry_on": ["connect-failure"]}}),
        ),
        with(
            forward("half-dead", json!({"path_prefix": "/half"}), "half"),
            json!({"retries": {"attempts": 3, "retry_on": ["connect-failure"]}}),
        ),
        // Timeouts.
        with(
            forward("slow", json!({"path_prefix": "/slow"}), "main"),
            json!({"timeout_ms": 1000}),
        ),
        with(
            forward("per-try", json!({"path_prefix": "/pertry"}), "flaky"),
            json!({"retries": {"attempts": 1, "retry_on": ["5xx"], "per_try_timeout_ms": 150}}),
        ),
    ]
}

/// One request of the matrix and what Envoy is expected to do with it.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<&'static str>,
    /// How many times the request is sent (for cases that depend on endpoint choice).
    repeat: usize,
    status: u16,
    /// The upstream that must see the request, and the path it must see.
    upstream: Option<(&'static str, &'static str)>,
    /// Requests the upstream must see per request sent (retries count).
    attempts: usize,
    /// Expected values of request headers at the upstream (empty: absent).
    upstream_headers: Vec<(&'static str, Vec<&'static str>)>,
    /// Values request headers must not have at the upstream.
    upstream_headers_not: Vec<(&'static str, &'static str)>,
    /// Expected response headers (`None`: absent).
    response_headers: Vec<(&'static str, Option<&'static str>)>,
    /// The body of a response the proxy makes itself, compared between the proxies.
    local_body: Option<&'static str>,
    known_difference: Option<&'static str>,
}

impl Case {
    fn new(name: &'static str, method: &'static str, path: &'static str) -> Case {
        Case {
            name,
            method,
            path,
            host: HOST,
            headers: Vec::new(),
            body: None,
            repeat: 1,
            status: 200,
            upstream: None,
            attempts: 0,
            upstream_headers: Vec::new(),
            upstream_headers_not: Vec::new(),
            response_headers: Vec::new(),
            local_body: None,
            known_difference: None,
        }
    }

    fn get(name: &'static str, path: &'static str) -> Case {
        Case::new(name, "GET", path)
    }

    /// Forwarded unchanged to `upstream`, which answers 200 (unless `status` says otherwise).
    fn reaches(self, upstream: &'static str) -> Case {
        let path = self.path;
        self.reaches_as(upstream, path)
    }

    /// Forwarded to `upstream`, which sees `path`.
    fn reaches_as(mut self, upstream: &'static str, path: &'static str) -> Case {
        self.upstream = Some((upstream, path));
        self.attempts = 1;
        self
    }

    /// Forwarded through the route tagged `route` (its `x-route` request header).
    fn via(self, route: &'static str) -> Case {
        self.upstream_header("x-route", &[route])
    }

    /// Answered by the proxy itself with `status` and `body`.
    fn local(mut self, status: u16, body: &'static str) -> Case {
        self.status = status;
        self.local_body = Some(body);
        self
    }

    /// No route matches: Envoy's 404 with an empty body.
    fn no_route(self) -> Case {
        self.local(404, "")
    }

    fn status(mut self, status: u16) -> Case {
        self.status = status;
        self
    }

    fn attempts(mut self, attempts: usize) -> Case {
        self.attempts = attempts;
        self
    }

    fn host(mut self, host: &'static str) -> Case {
        self.host = host;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Case {
        self.headers.push((name, value));
        self
    }

    fn body(mut self, body: &'static str) -> Case {
        self.body = Some(body);
        self
    }

    fn repeat(mut self, times: usize) -> Case {
        self.repeat = times;
        self
    }

    fn upstream_header(mut self, name: &'static str, values: &[&'static str]) -> Case {
        self.upstream_headers.push((name, values.to_vec()));
        self
    }

    fn upstream_header_is_not(mut self, name: &'static str, value: &'static str) -> Case {
        self.upstream_headers_not.push((name, value));
        self
    }

    fn response_header(mut self, name: &'static str, value: Option<&'static str>) -> Case {
        self.response_headers.push((name, value));
        self
    }

    fn location(self, location: &'static str) -> Case {
        self.response_header("location", Some(location))
    }

    /// Marks the case as a known, documented difference between the proxies. Unused while every
    /// difference found is a bug to fix rather than a choice to document.
    #[allow(dead_code)]
    fn known_difference(mut self, reason: &'static str) -> Case {
        self.known_difference = Some(reason);
        self
    }

    fn describe_request(&self) -> String {
        let mut out = format!("{} {} (host {})", self.method, self.path, self.host);
        for (name, value) in &self.headers {
            let _ = write!(out, ", {name}: {value:?}");
        }
        if let Some(body) = self.body {
            let _ = write!(out, ", body {body:?}");
        }
        if self.repeat > 1 {
            let _ = write!(out, ", sent {} times", self.repeat);
        }
        out
    }

    /// Where `seen` departs from what Envoy is expected to do.
    fn check(&self, seen: &Observed) -> Vec<String> {
        let mut problems = Vec::new();
        if seen.statuses.iter().any(|s| *s != self.status) {
            problems.push(format!(
                "status {:?}, expected {}",
                seen.statuses, self.status
            ));
        }
        let wanted = self.attempts * self.repeat;
        match self.upstream {
            Some((upstream, path)) => {
                if seen.upstream.len() != wanted {
                    problems.push(format!(
                        "the upstreams saw {} requests ({}), expected {wanted}",
                        seen.upstream.len(),
                        Seen::list(&seen.upstream)
                    ));
                }
                for request in &seen.upstream {
                    if request.upstream != upstream || request.path != path {
                        problems.push(format!(
                            "{} saw {} {}, expected {upstream} to see {path}",
                            request.upstream, request.method, request.path
                        ));
                    }
                    for (name, values) in &self.upstream_headers {
                        let got = request.all_headers.get(*name).cloned().unwrap_or_default();
                        if got != *values {
                            problems.push(format!(
                                "the upstream saw {name}: {got:?}, expected {values:?}"
                            ));
                        }
                    }
                    for (name, value) in &self.upstream_headers_not {
                        let got = request.all_headers.get(*name).cloned().unwrap_or_default();
                        if got.iter().any(|v| v == value) {
                            problems.push(format!(
                                "the upstream saw {name}: {got:?}, expected anything but {value:?}"
                            ));
                        }
                    }
                }
            }
            None if !seen.upstream.is_empty() => problems.push(format!(
                "the upstreams saw {} requests ({}), expected none",
                seen.upstream.len(),
                Seen::list(&seen.upstream)
            )),
            None => {}
        }
        for (name, value) in &self.response_headers {
            let got = seen.all_response_headers.get(*name);
            let got = got.and_then(|v| v.first()).map(String::as_str);
            if got != *value {
                problems.push(format!(
                    "response header {name}: {got:?}, expected {value:?}"
                ));
            }
        }
        if let Some(body) = self.local_body
            && seen.body.as_deref() != Some(body)
        {
            problems.push(format!("body {:?}, expected {body:?}", seen.body));
        }
        problems
    }
}

/// The matrix. Statuses, upstreams and paths are what Envoy does; the edge proxy must agree.
fn cases() -> Vec<Case> {
    vec![
        // Path prefix: a plain string prefix, case-sensitive, on the normalized path.
        Case::get("prefix itself", "/pfx")
            .reaches("main")
            .via("pfx"),
        Case::get("prefix with sub-path and query", "/pfx/a/b?x=1&y=2")
            .reaches("main")
            .via("pfx"),
        Case::get("prefix is a string prefix, not a segment", "/pfxyz")
            .reaches("main")
            .via("pfx"),
        Case::get("prefix is case-sensitive", "/PFX/a").no_route(),
        Case::get(
            "slashes are merged before matching and forwarding",
            "//pfx///a",
        )
        .reaches_as("main", "/pfx/a")
        .via("pfx"),
        Case::new("POST with a body", "POST", "/pfx/upload")
            .body("payload=1&more=2")
            .reaches("main")
            .via("pfx"),
        // Exact path.
        Case::get("exact path", "/exact")
            .reaches("main")
            .via("exact"),
        Case::get("exact path ignores the query", "/exact?q=1")
            .reaches("main")
            .via("exact"),
        Case::get("exact path with a trailing slash", "/exact/").no_route(),
        // Regex path: the whole path, never the query.
        Case::get("regex path", "/rx/123")
            .reaches("main")
            .via("regex"),
        Case::get("regex must match the whole path (suffix)", "/rx/123abc").no_route(),
        Case::get("regex must match the whole path (prefix)", "/pre/rx/1").no_route(),
        Case::get("regex ignores the query", "/rx/42?page=2")
            .reaches("main")
            .via("regex"),
        // Methods.
        Case::new("single method", "PUT", "/meth1")
            .body("x")
            .reaches("main")
            .via("meth-one"),
        Case::get("single method, other method", "/meth1").no_route(),
        Case::get("method list, GET", "/methods")
            .reaches("main")
            .via("meth-many"),
        Case::new("method list, DELETE", "DELETE", "/methods/7")
            .reaches("main")
            .via("meth-many"),
        Case::new("method list, POST is not in it", "POST", "/methods").no_route(),
        Case::new("method list, HEAD is not GET", "HEAD", "/methods").no_route(),
        // Header matchers.
        Case::get("header exact", "/hdr-exact")
            .header("x-env", "prod")
            .reaches("main")
            .via("hdr-exact"),
        Case::get("header exact, other value", "/hdr-exact")
            .header("x-env", "production")
            .no_route(),
        Case::get("header exact is case-sensitive", "/hdr-exact")
            .header("x-env", "PROD")
            .no_route(),
        // Envoy 1.40 matches a repeated header when any one of its values matches (not the
        // values joined with `,`).
        Case::get("header exact, repeated header", "/hdr-exact")
            .header("x-env", "prod")
            .header("x-env", "prod")
            .reaches("main")
            .via("hdr-exact"),
        Case::get("header exact, two values, the second matches", "/hdr-exact")
            .header("x-env", "dev")
            .header("x-env", "prod")
            .reaches("main")
            .via("hdr-exact"),
        Case::get("header exact, two values, neither matches", "/hdr-exact")
            .header("x-env", "dev")
            .header("x-env", "test")
            .no_route(),
        Case::get("header regex, two values, the second matches", "/hdr-regex")
            .header("x-ver", "beta")
            .header("x-ver", "v2")
            .reaches("main")
            .via("hdr-regex"),
        Case::get("header exact, missing", "/hdr-exact").no_route(),
        Case::get("header prefix", "/hdr-prefix")
            .header("x-env", "preview")
            .reaches("main")
            .via("hdr-prefix"),
        Case::get("header prefix, other value", "/hdr-prefix")
            .header("x-env", "staging")
            .no_route(),
        Case::get("header regex", "/hdr-regex")
            .header("x-ver", "v12")
            .reaches("main")
            .via("hdr-regex"),
        Case::get("header regex must match the whole value", "/hdr-regex")
            .header("x-ver", "v12-beta")
            .no_route(),
        Case::get("header present", "/hdr-present")
            .header("x-flag", "1")
            .reaches("main")
            .via("hdr-present"),
        Case::get("header present with an empty value", "/hdr-present")
            .header("x-flag", "")
            .reaches("main")
            .via("hdr-present"),
        Case::get("header present, missing", "/hdr-present").no_route(),
        Case::get("header absent", "/hdr-absent")
            .reaches("main")
            .via("hdr-absent"),
        Case::get("header absent, present", "/hdr-absent")
            .header("x-flag", "1")
            .no_route(),
        // Envoy: a missing header fails every value matcher, inverted or not.
        Case::get("inverted exact, header missing", "/hdr-invert").no_route(),
        Case::get("inverted exact, other value", "/hdr-invert")
            .header("x-env", "dev")
            .reaches("main")
            .via("hdr-invert"),
        Case::get("inverted exact, the value", "/hdr-invert")
            .header("x-env", "prod")
            .no_route(),
        Case::get("all header conditions hold", "/hdr-all")
            .header("x-env", "prod")
            .header("x-team", "payments")
            .reaches("main")
            .via("hdr-all"),
        Case::get("one header condition fails", "/hdr-all")
            .header("x-env", "prod")
            .header("x-team", "search")
            .no_route(),
        // Query matchers.
        Case::get("query present without a value", "/q-present?debug")
            .reaches("main")
            .via("q-present"),
        Case::get("query present with a value", "/q-present?a=1&debug=0")
            .reaches("main")
            .via("q-present"),
        Case::get("query present, other name", "/q-present?debugx=1").no_route(),
        Case::get("query exact", "/q-exact?v=1")
            .reaches("main")
            .via("q-exact"),
        Case::get("query exact, other value", "/q-exact?v=10").no_route(),
        Case::get("query exact looks at the first value", "/q-exact?v=2&v=1").no_route(),
        Case::get("query exact, percent-encoded value", "/q-exact?v=%31").no_route(),
        Case::get("query regex", "/q-regex?id=123")
            .reaches("main")
            .via("q-regex"),
        Case::get("query regex must match the whole value", "/q-regex?id=123a").no_route(),
        // Hosts.
        Case::get("exact host", "/vhost")
            .host("api.example.com")
            .reaches("alt")
            .via("host-exact")
            .upstream_header("host", &["api.example.com"]),
        Case::get("exact host, port ignored", "/vhost/x")
            .host("api.example.com:8080")
            .reaches("alt")
            .via("host-exact")
            .upstream_header("host", &["api.example.com:8080"]),
        Case::get("exact host, case-insensitive", "/vhost")
            .host("API.Example.COM")
            .reaches("alt")
            .via("host-exact"),
        Case::get("suffix wildcard host", "/vhost")
            .host("a.b.example.org")
            .reaches("alt")
            .via("host-suffix"),
        Case::get("suffix wildcard needs a label", "/vhost")
            .host("example.org")
            .reaches("main")
            .via("vhost-any"),
        Case::get("prefix wildcard host", "/vhost")
            .host("shop.example.net")
            .reaches("alt")
            .via("host-prefix"),
        Case::get("suffix wildcard beats prefix wildcard", "/vhost")
            .host("shop.example.org")
            .reaches("alt")
            .via("host-suffix"),
        Case::get("other host falls back to host-less routes", "/vhost")
            .host("other.test")
            .reaches("main")
            .via("vhost-any"),
        // Order: first match wins.
        Case::get("priority beats an exact path", "/prio/exact")
            .reaches("main")
            .via("prio-high"),
        Case::get("exact before regex", "/order/exact")
            .reaches("main")
            .via("order-exact"),
        Case::get("regex before prefix", "/order/abc")
            .reaches("main")
            .via("order-regex"),
        Case::get("regex before a longer prefix", "/order/deeper")
            .reaches("main")
            .via("order-regex"),
        Case::get("longer prefix first", "/order/deeper/x")
            .reaches("main")
            .via("order-long"),
        Case::get("shorter prefix last", "/order/1")
            .reaches("main")
            .via("order-short"),
        // Rewrites.
        Case::get("prefix rewrite keeps the query", "/old/a?x=1")
            .reaches_as("main", "/new/a?x=1")
            .via("rw-prefix"),
        Case::get("prefix rewrite of the prefix itself", "/old")
            .reaches_as("main", "/new")
            .via("rw-prefix"),
        Case::get("prefix rewrite is a string replacement", "/oldish")
            .reaches_as("main", "/newish")
            .via("rw-prefix"),
        Case::get("prefix rewrite to /", "/strip/a")
            .reaches_as("main", "//a")
            .via("rw-root"),
        Case::get("regex rewrite keeps the query", "/rr/a/b?x=1")
            .reaches_as("main", "/swapped/b/a?x=1")
            .via("rw-regex"),
        Case::get("regex rewrite that does not match", "/rr/a")
            .reaches("main")
            .via("rw-regex"),
        Case::get("host rewrite", "/rwhost/x")
            .reaches("main")
            .via("rw-host")
            .upstream_header("host", &["internal.svc"]),
        // Redirects.
        Case::get("redirect path, 301, keeps the query", "/r301?a=1")
            .local(301, "")
            .location("http://parity.test/moved?a=1"),
        Case::get("redirect host, 302", "/r302/x")
            .local(302, "")
            .location("http://other.example/r302/x"),
        Case::get(
            "redirect prefix rewrite, 303, strips the query",
            "/r303/x?y=1",
        )
        .local(303, "")
        .location("http://parity.test/landing/x"),
        Case::get("redirect scheme, 307", "/r307/x")
            .local(307, "")
            .location("https://parity.test/r307/x")
            .response_header("x-redirected", Some("yes")),
        Case::get("redirect scheme with a port in the host", "/r307")
            .host("parity.test:8080")
            .local(307, "")
            .location("https://parity.test:8080/r307"),
        Case::new("redirect of a POST, 307", "POST", "/r307/form")
            .body("a=1")
            .local(307, "")
            .location("https://parity.test/r307/form"),
        Case::get("redirect port, 308", "/r308")
            .local(308, "")
            .location("http://parity.test:8443/r308"),
        // Direct responses.
        Case::get("direct response with a body", "/direct")
            .local(200, "hello from the gateway")
            .response_header("content-type", Some("text/plain"))
            .response_header("x-direct", Some("yes")),
        Case::get("direct response 503", "/maintenance").local(503, "down for maintenance"),
        Case::get("direct response 204 without a body", "/empty").local(204, ""),
        // Header mutations.
        Case::get("request headers set, add, remove", "/reqh")
            .header("x-set", "old")
            .header("x-add", "mine")
            .header("x-remove", "bye")
            .header("x-keep", "kept")
            .reaches("main")
            .upstream_header("x-set", &["new"])
            .upstream_header("x-add", &["mine", "added"])
            .upstream_header("x-remove", &[])
            .upstream_header("x-keep", &["kept"]),
        Case::get("response headers set, add, remove", "/resph")
            .reaches("main")
            .response_header("x-resp-set", Some("s"))
            .response_header("x-upstream", Some("masked"))
            .response_header("x-resp-add", Some("a"))
            .response_header("content-type", None),
        // Envoy appends to x-forwarded-for; for a loopback client it appends the host's own
        // address (`localAddress()`), which depends on the machine, so only parity is checked.
        Case::get("x-forwarded-for is appended to", "/pfx")
            .header("x-forwarded-for", "10.0.0.1")
            .reaches("main"),
        // Envoy 1.40 treats no client as internal unless the connection manager's
        // internal_address_config says so, and the control plane does not set one: a client's
        // x-request-id and x-forwarded-proto are not trusted, and its x-envoy-* controls dropped.
        Case::get("a client's x-request-id is replaced", "/pfx")
            .header("x-request-id", "parity-request-1")
            .reaches("main")
            .upstream_header_is_not("x-request-id", "parity-request-1"),
        Case::get("a client's x-forwarded-proto is overwritten", "/pfx")
            .header("x-forwarded-proto", "https")
            .reaches("main")
            .upstream_header("x-forwarded-proto", &["http"]),
        Case::get("a client's x-envoy-* controls are dropped", "/pfx")
            .header("x-envoy-retry-on", "5xx")
            .header("x-envoy-upstream-rq-timeout-ms", "1")
            .header("x-envoy-custom", "kept?")
            .reaches("main")
            .upstream_header("x-envoy-retry-on", &[])
            .upstream_header("x-envoy-upstream-rq-timeout-ms", &[]),
        // Retries against a failing endpoint: count the attempts the upstream saw.
        Case::get("5xx retried twice", "/retry/status/503")
            .reaches("flaky")
            .status(503)
            .attempts(3),
        Case::get("500 retried on 5xx", "/retry/status/500")
            .reaches("flaky")
            .status(500)
            .attempts(3),
        // Only idempotent methods are retried, unless the route says `non_idempotent`.
        Case::new(
            "POST is not retried by default",
            "POST",
            "/retry/status/503",
        )
        .body("once")
        .reaches("flaky")
        .status(503),
        Case::new("PUT is retried (idempotent)", "PUT", "/retry/status/503")
            .body("twice")
            .reaches("flaky")
            .status(503)
            .attempts(3),
        Case::new(
            "POST retried with non_idempotent",
            "POST",
            "/anyretry/status/503",
        )
        .body("again")
        .reaches("flaky")
        .status(503)
        .attempts(3),
        Case::get("404 is not retried on 5xx", "/retry/status/404")
            .reaches("flaky")
            .status(404),
        Case::get("success is not retried", "/retry/fine").reaches("flaky"),
        Case::get("502 retried on gateway-error", "/gw/status/502")
            .reaches("flaky")
            .status(502)
            .attempts(2),
        Case::get("500 is not a gateway error", "/gw/status/500")
            .reaches("flaky")
            .status(500),
        Case::get("409 retried on retriable-4xx", "/r4xx/status/409")
            .reaches("flaky")
            .status(409)
            .attempts(2),
        Case::get("503 without a retry policy", "/noretry/status/503")
            .reaches("flaky")
            .status(503),
        Case::get("connect failure", "/dead").status(503),
        Case::get("connect failure, retried", "/unreachable").status(503),
        Case::get("connect failure retried onto a live endpoint", "/half/x")
            .reaches("half")
            .repeat(6),
        // Timeouts.
        Case::get("route timeout", "/slow/delay/3000")
            .reaches("main")
            .status(504),
        Case::get("within the route timeout", "/slow/delay/10").reaches("main"),
        Case::get("per-try timeout, retried", "/pertry/delay/1000")
            .reaches("flaky")
            .status(504)
            .attempts(2),
        // No route.
        Case::get("no route", "/nothing/here").no_route(),
    ]
}

/// What one proxy did with one case.
#[derive(Debug)]
struct Observed {
    /// One per request sent.
    statuses: Vec<u16>,
    /// The last response's headers, names lower-case.
    all_response_headers: BTreeMap<String, Vec<String>>,
    /// The last response's body.
    body: Option<String>,
    /// Every request the upstreams saw, in arrival order.
    upstream: Vec<Seen>,
}

/// One request as an upstream saw it.
#[derive(Debug)]
struct Seen {
    upstream: String,
    method: String,
    path: String,
    all_headers: BTreeMap<String, Vec<String>>,
    body: String,
}

impl Seen {
    /// `upstream METHOD path, …` for messages.
    fn list(seen: &[Seen]) -> String {
        let all: Vec<String> = seen
            .iter()
            .map(|s| format!("{} {} {}", s.upstream, s.method, s.path))
            .collect();
        all.join(", ")
    }
}

/// Sends `case` through `peer` and collects what the client and the upstreams saw.
async fn observe(peer: &Peer, case: &Case, upstreams: &BTreeMap<&str, Upstream>) -> Observed {
    for upstream in upstreams.values() {
        upstream.clear();
    }
    let method = Method::from_bytes(case.method.as_bytes()).expect("a valid method");
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..case.repeat {
        let response = support::client::request(
            method.clone(),
            &peer.url(case.path),
            Some(case.host),
            &case.headers,
            case.body.map(|b| b.as_bytes().to_vec()),
        )
        .await
        .unwrap_or_else(|e| panic!("case `{}` through {}: {e:#}", case.name, peer.name));
        statuses.push(response.status);
        last = Some(response);
    }
    let last = last.expect("every case sends at least one request");
    let mut all_response_headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &last.headers {
        all_response_headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    // Every upstream answered before the proxy did, and records on arrival, so all attempts
    // are in.
    let mut upstream = Vec::new();
    for (name, server) in upstreams {
        for request in server.requests() {
            let mut all_headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (header, value) in request.headers {
                all_headers.entry(header).or_default().push(value);
            }
            upstream.push(Seen {
                upstream: (*name).to_owned(),
                method: request.method,
                path: request.path,
                all_headers,
                body: String::from_utf8_lossy(&request.body).into_owned(),
            });
        }
    }
    Observed {
        statuses,
        all_response_headers,
        body: Some(last.body),
        upstream,
    }
}

/// Whether `name` is in `list`.
fn listed(list: &[(&str, &str)], name: &str) -> bool {
    list.iter().any(|(entry, _)| name == *entry)
}

/// Header maps without the entries that legitimately differ.
fn comparable<'a>(
    headers: &'a BTreeMap<String, Vec<String>>,
    differ: &[(&str, &str)],
    skip: &[&str],
) -> BTreeMap<&'a str, &'a [String]> {
    headers
        .iter()
        .filter(|(name, _)| !listed(differ, name) && !skip.contains(&name.as_str()))
        .map(|(name, values)| (name.as_str(), values.as_slice()))
        .collect()
}

/// Every way in which the edge proxy's handling of `case` differs from Envoy's.
fn compare(case: &Case, envoy: &Observed, edge: &Observed) -> Vec<String> {
    let mut diffs = Vec::new();
    if envoy.statuses != edge.statuses {
        diffs.push(format!(
            "status: envoy {:?}, edge {:?}",
            envoy.statuses, edge.statuses
        ));
    }
    let local = case.local_body.is_some() || case.upstream.is_none();
    // See RESPONSE_HEADERS_THAT_DIFFER for why forwarded responses' lengths are not compared.
    let skip: &[&str] = if local { &[] } else { &["content-length"] };
    diff_headers(
        "response header",
        &comparable(
            &envoy.all_response_headers,
            RESPONSE_HEADERS_THAT_DIFFER,
            skip,
        ),
        &comparable(
            &edge.all_response_headers,
            RESPONSE_HEADERS_THAT_DIFFER,
            skip,
        ),
        &mut diffs,
    );
    if local && envoy.body != edge.body {
        diffs.push(format!(
            "body: envoy {:?}, edge {:?}",
            envoy.body, edge.body
        ));
    }
    if envoy.upstream.len() != edge.upstream.len() {
        diffs.push(format!(
            "the upstreams saw {} requests through envoy ({}), {} through edge ({})",
            envoy.upstream.len(),
            Seen::list(&envoy.upstream),
            edge.upstream.len(),
            Seen::list(&edge.upstream),
        ));
    }
    for (e, t) in envoy.upstream.iter().zip(&edge.upstream) {
        // Attempts are not numbered, so that one difference in every attempt reads once.
        let at = "upstream: ";
        for (what, a, b) in [
            ("upstream", &e.upstream, &t.upstream),
            ("method", &e.method, &t.method),
            ("path", &e.path, &t.path),
            ("body", &e.body, &t.body),
        ] {
            if a != b {
                diffs.push(format!("{at}{what}: envoy {a:?}, edge {b:?}"));
            }
        }
        let (envoy_xff, edge_xff) = (forwarded_for(&e.all_headers), forwarded_for(&t.all_headers));
        if envoy_xff.map(|(before, _)| before) != edge_xff.map(|(before, _)| before) {
            diffs.push(format!(
                "{at}x-forwarded-for before the last hop: envoy {envoy_xff:?}, edge {edge_xff:?}"
            ));
        }
        if let Some((_, last)) = edge_xff
            && last != "127.0.0.1"
        {
            diffs.push(format!(
                "{at}x-forwarded-for: edge appended {last:?}, not the peer"
            ));
        }
        diff_headers(
            &format!("{at}header"),
            &comparable(&e.all_headers, UPSTREAM_HEADERS_THAT_DIFFER, &[]),
            &comparable(&t.all_headers, UPSTREAM_HEADERS_THAT_DIFFER, &[]),
            &mut diffs,
        );
    }
    diffs
}

/// `x-forwarded-for` split into what came before the proxy's hop and the hop it appended.
fn forwarded_for(headers: &BTreeMap<String, Vec<String>>) -> Option<(&str, &str)> {
    let value = headers
        .get("x-forwarded-for")
        .and_then(|values| values.first())?;
    Some(match value.rsplit_once(',') {
        Some((before, last)) => (before, last.trim()),
        None => ("", value.as_str()),
    })
}

fn diff_headers(
    what: &str,
    envoy: &BTreeMap<&str, &[String]>,
    edge: &BTreeMap<&str, &[String]>,
    diffs: &mut Vec<String>,
) {
    let names: std::collections::BTreeSet<&str> =
        envoy.keys().chain(edge.keys()).copied().collect();
    for name in names {
        let (a, b) = (envoy.get(name), edge.get(name));
        if a != b {
            diffs.push(format!("{what} {name}: envoy {a:?}, edge {b:?}"));
        }
    }
}

/// Sends [`SPLIT_REQUESTS`] through each proxy to the 3:1 split and checks each cluster's share,
/// and that a request looks the same to the upstream whichever proxy forwarded it.
async fn weighted_split(peers: &[Peer], upstreams: &BTreeMap<&str, Upstream>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut first_seen = Vec::new();
    for peer in peers {
        for upstream in upstreams.values() {
            upstream.clear();
        }
        // In batches: concurrent enough to be quick, few enough sockets to stay polite.
        let url = peer.url("/split/share");
        for batch in 0..SPLIT_REQUESTS.div_ceil(25) {
            let sends = (batch * 25..SPLIT_REQUESTS.min((batch + 1) * 25))
                .map(|_| support::client::request(Method::GET, &url, Some(HOST), &[], None));
            for response in futures::future::join_all(sends).await {
                let response =
                    response.unwrap_or_else(|e| panic!("split via {}: {e:#}", peer.name));
                assert_eq!(
                    response.status, 200,
                    "split via {}: {}",
                    peer.name, response.body
                );
            }
        }
        let a = upstreams["split-a"].request_count();
        let b = upstreams["split-b"].request_count();
        #[allow(clippy::cast_precision_loss)]
        let share = a as f64 / SPLIT_REQUESTS as f64;
        eprintln!("weighted split via {}: split-a {a}, split-b {b}", peer.name);
        if a + b != SPLIT_REQUESTS || (share - 0.75).abs() > SPLIT_TOLERANCE {
            failures.push(format!(
                "weighted split via {}: split-a got {a}, split-b {b} of {SPLIT_REQUESTS}; \
                 expected 75 % ± {:.0} % to split-a",
                peer.name,
                SPLIT_TOLERANCE * 100.0
            ));
        }
        let request = upstreams["split-a"]
            .requests()
            .into_iter()
            .next()
            .or_else(|| upstreams["split-b"].requests().into_iter().next());
        first_seen.push(request);
    }
    if let [Some(envoy), Some(edge)] = first_seen.as_slice() {
        let strip = |r: &support::RecordedRequest| {
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, value) in &r.headers {
                if !listed(UPSTREAM_HEADERS_THAT_DIFFER, name) {
                    headers.entry(name.clone()).or_default().push(value.clone());
                }
            }
            (r.method.clone(), r.path.clone(), headers)
        };
        if strip(envoy) != strip(edge) {
            failures.push(format!(
                "weighted split: the upstream saw\n  via envoy {:?}\n  via edge {:?}",
                strip(envoy),
                strip(edge)
            ));
        }
    }
    failures
}
