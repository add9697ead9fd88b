//! Rate-limit policies on a real Envoy: its `ratelimit` filter asks the control plane's RLS,
//! which counts in a real Redis (`--redis`) under the key scheme edge proxies share. A quota
//! per API key lets exactly N requests of each key through, then answers 429 with the
//! `RateLimit*` and `Retry-After` headers and a JSON body, while a fresh key still passes;
//! tier limits follow the consumer's tier; a shadow policy counts but never refuses. The API
//! keys appear neither in Redis nor in any log. With Redis gone each policy follows its
//! failure mode (fail-closed: 503), and recovers with Redis; with the control plane gone,
//! fail-open policies let requests through and fail-closed ones answer 503.

use reqwest::Method;
use serde_json::json;
use support::metrics::Samples;
use support::redis::start_redis;
use support::{ControlPlane, Envoy, EnvoyOptions, Upstream, eventually, free_port};

use crate::fixtures::CONVERGE;

const HOST: &str = "quotas.test";
/// Two keys of one consumer (tier `pro`), and one of a consumer without a tier.
const ACME_KEY_1: &str = "acme-key-1-5c0f3e9a7b2d4168";
const ACME_KEY_2: &str = "acme-key-2-94e1b7c3a0d85f26";
const BETA_KEY: &str = "beta-key-0-3a7c9e1f5b2d8046";
/// Requests per key per window.
const PER_KEY: usize = 3;
/// Requests per consumer per window: `pro` tier, and everyone else.
const PRO: usize = 4;
const DEFAULT_PLAN: usize = 2;
/// Windows far longer than the test, so that no counter refills while it runs.
const WINDOW_S: u64 = 3600;

async fn send(port: u16, path: &str, headers: &[(&str, &str)]) -> support::HttpResponse {
    let url = format!("http://127.0.0.1:{port}{path}");
    support::client::request(Method::GET, &url, Some(HOST), headers, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

#[tokio::test]
async fn envoy_counts_quotas_in_redis_through_the_rls() {
    let Some(_) = support::require_envoy() else {
        return;
    };
    let Some(mut redis) = start_redis().expect("redis starts") else {
        return;
    };
    // A generous Redis deadline: this test is about what is counted, not how fast.
    let mut cp = ControlPlane::start_with_args(&["--redis", &redis.url(), "--redis-timeout", "2s"])
        .await
        .expect("control plane starts");
    let upstream = Upstream::start("api").await;
    let port = free_port();
    let fixed = |requests: usize| json!({"requests": requests, "window_s": WINDOW_S});
    let writes = [
        (
            "clusters",
            "api",
            json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]}),
        ),
        (
            "consumers",
            "acme",
            json!({"tier": "pro", "api_keys": [ACME_KEY_1, ACME_KEY_2]}),
        ),
        ("consumers", "beta", json!({"api_keys": [BETA_KEY]})),
        ("policies", "keys", json!({"type": "api_key"})),
        (
            "policies",
            "per-key",
            json!({"type": "rate_limit", "key": ["api_key"], "legacy_headers": true,
                   "limit": {"requests": PER_KEY, "window_s": WINDOW_S}}),
        ),
        (
            "policies",
            "per-plan",
            json!({"type": "rate_limit", "key": ["consumer"], "algorithm": "fixed_window",
                   "limit": fixed(DEFAULT_PLAN), "tiers": {"pro": fixed(PRO)}}),
        ),
        (
            "policies",
            "trial",
            json!({"type": "rate_limit", "key": ["client_ip"], "shadow": true,
                   "algorithm": "fixed_window", "limit": fixed(1)}),
        ),
        (
            "routes",
            "billing",
            json!({"match": {"path_prefix": "/billing"}, "cluster": "api",
                   "policies": ["keys", "per-key"]}),
        ),
        (
            "routes",
            "plans",
            json!({"match": {"path_prefix": "/plans"}, "cluster": "api",
                   "policies": ["keys", "per-plan"]}),
        ),
        (
            "routes",
            "trial",
            json!({"match": {"path_prefix": "/trial"}, "cluster": "api", "policies": ["trial"]}),
        ),
        (
            "policies",
            "strict",
            json!({"type": "rate_limit", "key": ["client_ip"], "failure_mode": "closed",
                   "algorithm": "fixed_window", "limit": fixed(100)}),
        ),
        (
            "routes",
            "strict",
            json!({"match": {"path_prefix": "/strict"}, "cluster": "api", "policies": ["strict"]}),
        ),
        (
            "routes",
            "status",
            json!({"match": {"path_prefix": "/status"}, "cluster": "api"}),
        ),
        (
            "listeners",
            "public",
            json!({"address": "127.0.0.1", "port": port}),
        ),
    ];
    let revision = cp.put_all(writes).await;
    let mut envoy = Envoy::start(&cp, EnvoyOptions::new("quotas-envoy"))
        .await
        .expect("envoy starts");
    cp.wait_converged(revision, CONVERGE)
        .await
        .expect("envoy accepts the rate-limit config");
    eventually("envoy serves routes", CONVERGE, || async {
        let response = send(port, "/status", &[]).await;
        anyhow::ensure!(response.status == 200, "status {}", response.status);
        Ok(())
    })
    .await;

    let mut failures = Vec::new();

    // Per API key: exactly PER_KEY requests of a key pass, with the headers, then 429.
    upstream.clear();
    for (i, expected_remaining) in (0..PER_KEY).rev().enumerate() {
        let response = send(port, "/billing/invoices", &[("x-api-key", ACME_KEY_1)]).await;
        let expected = [
            ("status", "200".to_owned(), response.status.to_string()),
            (
                "ratelimit-policy",
                format!(r#""per-key";q={PER_KEY};w={WINDOW_S};tollgate-burst={PER_KEY}"#),
                response
                    .header("ratelimit-policy")
                    .unwrap_or_default()
                    .to_owned(),
            ),
            (
                "ratelimit (before t)",
                format!(r#""per-key";r={expected_remaining}"#),
                response
                    .header("ratelimit")
                    .unwrap_or_default()
                    .split(";t=")
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            (
                "x-ratelimit-limit",
                PER_KEY.to_string(),
                response
                    .header("x-ratelimit-limit")
                    .unwrap_or_default()
                    .to_owned(),
            ),
            (
                "x-ratelimit-remaining",
                expected_remaining.to_string(),
                response
                    .header("x-ratelimit-remaining")
                    .unwrap_or_default()
                    .to_owned(),
            ),
            (
                "retry-after",
                String::new(),
                response
                    .header("retry-after")
                    .unwrap_or_default()
                    .to_owned(),
            ),
        ];
        for (what, want, got) in expected {
            if want != got {
                failures.push(format!(
                    "key 1, request {}: {what}: expected {want:?}, got {got:?} ({:?})",
                    i + 1,
                    response.headers
                ));
            }
        }
    }
    for extra in 1..=2 {
        let response = send(port, "/billing/invoices", &[("x-api-key", ACME_KEY_1)]).await;
        let body = response.json().unwrap_or_default();
        let retry_after: u64 = response
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let problems = [
            (response.status != 429, "status is not 429"),
            (
                body["error"]["code"] != "rate_limited",
                "body is not the JSON error",
            ),
            (
                response.header("content-type") != Some("application/json"),
                "content-type is not JSON",
            ),
            (retry_after < 1, "no retry-after"),
            (
                !response
                    .header("ratelimit")
                    .unwrap_or_default()
                    .starts_with(r#""per-key";r=0;t="#),
                "ratelimit does not say 0 remain",
            ),
            (
                response.header("ratelimit-policy").is_none(),
                "no ratelimit-policy",
            ),
            (
                response.header("x-ratelimit-remaining") != Some("0"),
                "x-ratelimit-remaining is not 0",
            ),
            (
                response.header("x-envoy-ratelimited").is_some(),
                "x-envoy-ratelimited is sent",
            ),
        ];
        for (_, problem) in problems.iter().filter(|(bad, _)| *bad) {
            failures.push(format!(
                "key 1, request {} over the quota: {problem}: {} {:?} {}",
                PER_KEY + extra,
                response.status,
                response.headers,
                response.body
            ));
        }
    }
    if upstream.request_count() != PER_KEY {
        failures.push(format!(
            "the upstream saw {} requests of key 1, expected {PER_KEY}",
            upstream.request_count()
        ));
    }
    // The other key of the same consumer has a quota of its own.
    for n in 1..=PER_KEY {
        let response = send(port, "/billing/invoices", &[("x-api-key", ACME_KEY_2)]).await;
        if response.status != 200 {
            failures.push(format!(
                "key 2, request {n}: {} {}",
                response.status, response.body
            ));
        }
    }
    let refused = send(port, "/billing/invoices", &[("x-api-key", ACME_KEY_2)]).await;
    if refused.status != 429 {
        failures.push(format!(
            "key 2, request {}: {} (expected 429)",
            PER_KEY + 1,
            refused.status
        ));
    }

    // Per consumer, by tier: acme (pro) gets PRO, beta (no tier) the default.
    for (key, quota, who) in [(ACME_KEY_2, PRO, "acme"), (BETA_KEY, DEFAULT_PLAN, "beta")] {
        let statuses: Vec<u16> = {
            let mut out = Vec::new();
            for _ in 0..quota + 2 {
                out.push(send(port, "/plans", &[("x-api-key", key)]).await.status);
            }
            out
        };
        let expected: Vec<u16> = (0..quota + 2)
            .map(|i| if i < quota { 200 } else { 429 })
            .collect();
        if statuses != expected {
            failures.push(format!(
                "{who} on /plans: {statuses:?}, expected {expected:?}"
            ));
        }
    }
    // Quotas apply after authentication: a missing key is still a 401.
    let unauthenticated = send(port, "/plans", &[]).await;
    if unauthenticated.status != 401 {
        failures.push(format!(
            "/plans without a key: {} (expected 401)",
            unauthenticated.status
        ));
    }

    // Shadow: counted past its limit of 1, never refused, and not shown to clients.
    for n in 1..=4 {
        let response = send(port, "/trial", &[]).await;
        if response.status != 200 || response.header("ratelimit-policy").is_some() {
            failures.push(format!(
                "shadow request {n}: {} {:?}",
                response.status, response.headers
            ));
        }
    }

    // What the RLS decided, by policy and outcome.
    let scrape = support::get(&format!("{}/metrics", cp.admin_url()), None)
        .await
        .expect("metrics");
    let samples = Samples::parse(&scrape.body).expect("metrics parse");
    for (policy, outcome, count) in [
        ("per-key", "allowed", 2 * PER_KEY),
        ("per-key", "limited", 3),
        ("per-plan", "allowed", PRO + DEFAULT_PLAN),
        ("per-plan", "limited", 4),
        ("trial", "allowed", 1),
        ("trial", "shadow_limited", 3),
    ] {
        let got = samples.get(
            "tollgate_rls_decisions_total",
            &[("policy", policy), ("outcome", outcome)],
        );
        if got != Some(count as f64) {
            failures.push(format!(
                "tollgate_rls_decisions_total{{{policy},{outcome}}}: {got:?}, expected {count}"
            ));
        }
    }
    for outcome in ["failed_open", "failed_closed"] {
        if samples
            .named("tollgate_rls_decisions_total")
            .any(|s| s.labels.get("outcome").map(String::as_str) == Some(outcome) && s.value > 0.0)
        {
            failures.push(format!("the RLS reported {outcome} decisions"));
        }
    }
    if samples.get("tollgate_rls_backend_up", &[]) != Some(1.0) {
        failures.push("tollgate_rls_backend_up is not 1".to_owned());
    }
    // Envoy reached the RLS every time (it lets requests through when it cannot); its
    // rate-limit stats are kept under the route's upstream cluster.
    for (stat, want) in [
        (
            "cluster.api.ratelimit.ok",
            2 * PER_KEY + PRO + DEFAULT_PLAN + 4,
        ),
        ("cluster.api.ratelimit.over_limit", 3 + 4),
        ("cluster.api.ratelimit.error", 0),
        ("cluster.api.ratelimit.failure_mode_allowed", 0),
    ] {
        let got = envoy.stat(stat).await.expect("envoy stats").unwrap_or(0);
        if got != want as u64 {
            failures.push(format!("envoy {stat} = {got}, expected {want}"));
        }
    }

    // The counters are in Redis, one per (policy, identity), under the shared scheme; the
    // keys never appear there nor in any log.
    let keys = redis.command(&["KEYS", "tollgate:rl:v1:*"]).expect("KEYS");
    let keys: Vec<&str> = keys.lines().collect();
    let count = |prefix: &str| {
        keys.iter()
            .filter(|k| k.starts_with(&format!("tollgate:rl:v1:{{{prefix}\x1f")))
            .count()
    };
    for (policy, expected) in [("per-key", 2), ("per-plan", 2), ("trial", 1)] {
        if count(policy) != expected {
            failures.push(format!(
                "redis holds {} counters of {policy}, expected {expected}: {keys:?}",
                count(policy)
            ));
        }
    }
    if !keys.iter().any(|k| k.contains("\x1fconsumer=acme}")) {
        failures.push(format!("no counter for consumer acme: {keys:?}"));
    }
    let places = [
        ("redis keys", keys.join("\n")),
        ("control plane log", cp.log()),
        ("envoy log", envoy.process().log()),
    ];
    for (place, text) in &places {
        for key in [ACME_KEY_1, ACME_KEY_2, BETA_KEY] {
            if text.contains(key) {
                failures.push(format!("{place} contains an API key"));
            }
        }
    }

    // Redis goes away: the fail-closed policy refuses (503, from Envoy's fail-closed filter
    // when the RLS says it cannot decide), the fail-open one lets requests through uncounted;
    // both come back with Redis.
    let strict = send(port, "/strict", &[]).await;
    if strict.status != 200 {
        failures.push(format!("/strict with Redis up: {}", strict.status));
    }
    redis.kill();
    let refused = send(port, "/strict", &[]).await;
    if refused.status != 503 {
        failures.push(format!(
            "/strict with Redis down: {} {:?} {}",
            refused.status, refused.headers, refused.body
        ));
    }
    let open = send(port, "/trial", &[]).await;
    if open.status != 200 {
        failures.push(format!("/trial with Redis down: {}", open.status));
    }
    redis.restart().expect("redis restarts");
    eventually(
        "the fail-closed policy recovers with Redis",
        CONVERGE,
        || async {
            let response = send(port, "/strict", &[]).await;
            anyhow::ensure!(response.status == 200, "status {}", response.status);
            Ok(())
        },
    )
    .await;
    let scrape = support::get(&format!("{}/metrics", cp.admin_url()), None)
        .await
        .expect("metrics");
    let samples = Samples::parse(&scrape.body).expect("metrics parse");
    for (policy, outcome) in [("strict", "failed_closed"), ("trial", "failed_open")] {
        let got = samples.get(
            "tollgate_rls_decisions_total",
            &[("policy", policy), ("outcome", outcome)],
        );
        if got.unwrap_or(0.0) < 1.0 {
            failures.push(format!(
                "tollgate_rls_decisions_total{{{policy},{outcome}}}: {got:?}, expected at least 1"
            ));
        }
    }

    // The control plane goes away: Envoy cannot ask; fail-open policies let the request
    // through, fail-closed ones refuse it.
    cp.kill();
    let response = send(port, "/strict", &[]).await;
    if response.status != 503 {
        failures.push(format!(
            "/strict with the control plane down: {} (fails closed: 503)",
            response.status
        ));
    }
    let response = send(port, "/trial", &[]).await;
    if response.status != 200 {
        failures.push(format!(
            "/trial with the control plane down: {} (fails open)",
            response.status
        ));
    }
    let allowed = envoy
        .stat("cluster.api.ratelimit.failure_mode_allowed")
        .await
        .expect("envoy stats");
    if allowed != Some(1) {
        failures.push(format!(
            "envoy failure_mode_allowed = {allowed:?} after the control plane went away"
        ));
    }

    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
