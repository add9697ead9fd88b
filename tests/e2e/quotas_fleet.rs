//! Global quotas across a fleet: three edge proxies behind HAProxy in TCP mode, counting in one
//! real Redis, and an Envoy sidecar asking the control plane's rate-limit service over the
//! same counters.
//!
//! - A quota of 50 requests per minute per API key, three keys each hammered by 8 concurrent
//!   clients with 200 requests through the balancer: exactly 50 accepted per key, whichever
//!   proxy served them, the rest 429 with `Retry-After`, `RateLimit-Policy`, `RateLimit` and a
//!   JSON body. Then Envoy answers 429 for a spent key and 200 for a fresh one.
//! - Redis SIGKILLed under load: the fail-open policy keeps answering 200, the fail-closed one
//!   503, no proxy crashes, no request hangs; once Redis is back, limits apply again within 5 s.
//!
//! On one host the proxies cannot share a port: each gets its own node cluster and a listener
//! limited to it, as each container of `compose.yaml` has its own address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::haproxy::{Haproxy, require_haproxy};
use support::metrics::Samples;
use support::redis::{RedisServer, start_redis};
use support::{ControlPlane, EdgeProxy, Envoy, EnvoyOptions, Upstream, eventually, free_port};

use crate::fixtures::CONVERGE;

/// Requests per key per minute.
const PER_KEY: usize = 50;
/// Concurrent clients per key, and requests per client.
const CLIENTS: usize = 8;
const REQUESTS: usize = 200;
const KEYS: [&str; 3] = [
    "fleet-key-1-0d6f2a9c4b7e1358",
    "fleet-key-2-7a1e5c3b9d0f2468",
    "fleet-key-3-3c9b1d7e5f0a8264",
];
/// A key nobody has used.
const FRESH_KEY: &str = "fleet-key-4-9e2d4b6a8c0f1357";
const PROXIES: usize = 3;

/// A control plane with `--redis`, an upstream, and three edge proxies counting in the same
/// Redis behind HAProxy.
struct Fleet {
    // Dropped in order: the balancer and proxies before the control plane and Redis.
    haproxy: Haproxy,
    proxies: Vec<EdgeProxy>,
    cp: ControlPlane,
    _upstream: Upstream,
    redis: RedisServer,
    client_url: String,
}

impl Fleet {
    /// Starts everything; `config` is written before the proxies start, after the clusters,
    /// consumers and per-proxy listeners. `redis_timeout` is the proxies' and the RLS's.
    async fn start(
        name: &str,
        redis_timeout: &str,
        config: Vec<(&str, &str, serde_json::Value)>,
    ) -> Option<Fleet> {
        require_haproxy()?;
        let redis = start_redis().expect("redis starts")?;
        let url = redis.url();
        let cp =
            ControlPlane::start_with_args(&["--redis", &url, "--redis-timeout", redis_timeout])
                .await
                .expect("control plane starts");
        let upstream = Upstream::start("api").await;
        let mut writes = vec![
            (
                "clusters",
                "api".to_owned(),
                json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]}),
            ),
            ("policies", "keys".to_owned(), json!({"type": "api_key"})),
        ];
        for (i, key) in KEYS.iter().chain([&FRESH_KEY]).enumerate() {
            writes.push((
                "consumers",
                format!("tenant-{i}"),
                json!({"api_keys": [key]}),
            ));
        }
        let ports: Vec<u16> = (0..PROXIES).map(|_| free_port()).collect();
        for (i, port) in ports.iter().enumerate() {
            writes.push((
                "listeners",
                format!("{name}-{i}"),
                json!({"address": "127.0.0.1", "port": port, "node_cluster": format!("{name}-{i}")}),
            ));
        }
        writes.extend(
            config
                .into_iter()
                .map(|(kind, name, body)| (kind, name.to_owned(), body)),
        );
        let revision = cp.put_all(writes).await;
        let mut proxies = Vec::new();
        for i in 0..PROXIES {
            let node = format!("{name}-{i}");
            let proxy = EdgeProxy::spawn_in_cluster(
                cp.xds_port(),
                &node,
                &node,
                &["--redis", &url, "--redis-timeout", redis_timeout],
            )
            .expect("edge proxy starts");
            proxies.push(proxy);
        }
        for proxy in &proxies {
            proxy.wait_ready(CONVERGE).await.expect("edge proxy ready");
        }
        cp.wait_converged(revision, CONVERGE)
            .await
            .expect("the fleet accepts the quota config");
        let backends: Vec<(String, u16)> =
            ports.iter().map(|p| ("127.0.0.1".to_owned(), *p)).collect();
        let haproxy = Haproxy::tcp(&backends).await.expect("haproxy starts");
        let client_url = format!("http://127.0.0.1:{}", haproxy.port());
        Some(Fleet {
            haproxy,
            proxies,
            cp,
            _upstream: upstream,
            redis,
            client_url,
        })
    }

    /// Every proxy's `/metrics`.
    async fn metrics(&self) -> Vec<Samples> {
        let mut all = Vec::new();
        for proxy in &self.proxies {
            let scrape = support::get(&format!("{}/metrics", proxy.admin_url()), None)
                .await
                .expect("proxy metrics");
            all.push(Samples::parse(&scrape.body).expect("metrics parse"));
        }
        all
    }

    /// Fails if a proxy or the balancer has exited.
    fn assert_all_running(&mut self) {
        for proxy in &mut self.proxies {
            let node = proxy.node_id().to_owned();
            if let Some(status) = proxy.process().try_status() {
                panic!("edge proxy {node} exited: {status}");
            }
        }
        if let Some(status) = self.haproxy.process().try_status() {
            panic!("haproxy exited: {status}");
        }
    }
}

/// One client: its own connection pool, so that HAProxy spreads clients over the proxies.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// What one response said, kept for the checks.
#[derive(Debug)]
struct Seen {
    status: u16,
    /// The problems found in its headers and body, if any.
    problems: Vec<String>,
    elapsed: Duration,
}

async fn send(client: &reqwest::Client, url: &str, key: Option<&str>) -> Seen {
    let started = Instant::now();
    let mut request = client.get(url);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            return Seen {
                status: 0,
                problems: vec![format!("request failed: {e}")],
                elapsed: started.elapsed(),
            };
        }
    };
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (policy, ratelimit, retry_after) = (
        header("ratelimit-policy"),
        header("ratelimit"),
        header("retry-after"),
    );
    let body = response.text().await.unwrap_or_default();
    let mut problems = Vec::new();
    match status {
        200 | 429 => {
            if policy.is_none() {
                problems.push("no RateLimit-Policy".to_owned());
            }
            if ratelimit.is_none() {
                problems.push("no RateLimit".to_owned());
            }
        }
        _ => {}
    }
    if matches!(status, 429 | 503) {
        if retry_after.is_none() {
            problems.push("no Retry-After".to_owned());
        }
        let code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|b| b["error"]["code"].as_str().map(str::to_owned));
        let expected = if status == 429 {
            "rate_limited"
        } else {
            "rate_limit_unavailable"
        };
        if code.as_deref() != Some(expected) {
            problems.push(format!("body {body:?} is not the JSON error {expected}"));
        }
    }
    Seen {
        status,
        problems,
        elapsed: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_and_envoy_share_one_quota_per_api_key() {
    let Some(_) = support::require_envoy() else {
        return;
    };
    let Some(mut fleet) = Fleet::start(
        "fleet",
        // Generous: this test is about what is counted, not how fast.
        "2s",
        vec![
            (
                "policies",
                "per-key",
                json!({"type": "rate_limit", "key": ["api_key"], "algorithm": "fixed_window",
                       "limit": {"requests": PER_KEY, "window_s": 60}}),
            ),
            (
                "routes",
                "orders",
                json!({"match": {"path_prefix": "/orders"}, "cluster": "api",
                       "policies": ["keys", "per-key"]}),
            ),
        ],
    )
    .await
    else {
        return;
    };
    let url = format!("{}/orders", fleet.client_url);

    // 3 keys × 8 clients × 200 requests, all at once.
    let mut tasks = Vec::new();
    for key in KEYS {
        for _ in 0..CLIENTS {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut seen = Vec::with_capacity(REQUESTS);
                for _ in 0..REQUESTS {
                    seen.push(send(&client, &url, Some(key)).await);
                }
                (key, seen)
            }));
        }
    }
    let mut failures = Vec::new();
    let mut accepted = std::collections::BTreeMap::new();
    for task in tasks {
        let (key, seen) = task.await.expect("client task");
        for response in seen {
            match response.status {
                200 => *accepted.entry(key).or_insert(0) += 1,
                429 => {}
                other => failures.push(format!("{key}: status {other}")),
            }
            failures.extend(response.problems.into_iter().map(|p| format!("{key}: {p}")));
        }
        accepted.entry(key).or_insert(0);
    }
    for (key, count) in &accepted {
        if *count != PER_KEY {
            failures.push(format!(
                "{key}: {count} accepted, expected exactly {PER_KEY}"
            ));
        }
    }
    fleet.assert_all_running();

    // Every proxy took part, and together they allowed exactly 150.
    let mut allowed_total = 0.0;
    for (i, samples) in fleet.metrics().await.iter().enumerate() {
        let get = |outcome| {
            samples
                .get(
                    "tollgate_proxy_quota_decisions_total",
                    &[("policy", "per-key"), ("outcome", outcome)],
                )
                .unwrap_or(0.0)
        };
        let (allowed, limited) = (get("allowed"), get("limited"));
        if allowed + limited == 0.0 {
            failures.push(format!(
                "proxy {i} decided nothing: HAProxy did not spread clients"
            ));
        }
        allowed_total += allowed;
        if samples.get("tollgate_proxy_quota_backend_up", &[("backend", "redis")]) != Some(1.0) {
            failures.push(format!(
                "proxy {i}: tollgate_proxy_quota_backend_up is not 1"
            ));
        }
    }
    if allowed_total != (PER_KEY * KEYS.len()) as f64 {
        failures.push(format!("the proxies allowed {allowed_total} in all"));
    }
    // One counter per key in Redis, named by the keyed hash: no API key in any Redis key.
    let keys = fleet
        .redis
        .command(&["KEYS", "tollgate:rl:*"])
        .expect("redis KEYS");
    let counters: Vec<&str> = keys.lines().filter(|l| l.contains("per-key")).collect();
    if counters.len() != KEYS.len() {
        failures.push(format!("redis counters: {counters:?}"));
    }
    for key in KEYS {
        if keys.contains(key) {
            failures.push("a Redis key contains an API key".to_owned());
        }
    }

    // An Envoy sidecar on the same control plane draws on the same counters.
    let envoy_port = free_port();
    let revision = fleet
        .cp
        .put_ok(
            "listeners",
            "sidecar",
            json!({"address": "127.0.0.1", "port": envoy_port, "node_cluster": "sidecars"}),
        )
        .await
        .expect("PUT the sidecar listener");
    let mut options = EnvoyOptions::new("fleet-envoy");
    options.node_cluster = "sidecars".to_owned();
    let _envoy = Envoy::start(&fleet.cp, options)
        .await
        .expect("envoy starts");
    fleet
        .cp
        .wait_converged(revision, CONVERGE)
        .await
        .expect("envoy accepts the quota config");
    let envoy_url = format!("http://127.0.0.1:{envoy_port}/orders");
    let envoy_client = client();
    eventually("envoy serves the route", CONVERGE, || async {
        let fresh = send(&envoy_client, &envoy_url, Some(FRESH_KEY)).await;
        anyhow::ensure!(fresh.status == 200, "fresh key: {fresh:?}");
        Ok(())
    })
    .await;
    let spent = send(&envoy_client, &envoy_url, Some(KEYS[0])).await;
    if spent.status != 429 || !spent.problems.is_empty() {
        failures.push(format!(
            "envoy, spent key: {spent:?} (expected 429 with the fields)"
        ));
    }
    let fresh = send(&envoy_client, &envoy_url, Some(FRESH_KEY)).await;
    if fresh.status != 200 || !fresh.problems.is_empty() {
        failures.push(format!("envoy, fresh key: {fresh:?}"));
    }
    // And the fleet sees what Envoy spent: two requests, so 47 left after this third one.
    let through_fleet = client()
        .get(&url)
        .header("x-api-key", FRESH_KEY)
        .send()
        .await
        .expect("request through the fleet");
    let ratelimit = through_fleet
        .headers()
        .get("ratelimit")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !ratelimit.starts_with(&format!("\"per-key\";r={};", PER_KEY - 3)) {
        failures.push(format!(
            "fleet after envoy, fresh key: RateLimit {ratelimit:?}"
        ));
    }

    failures.dedup();
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_survives_redis_going_away_under_load() {
    // "No request waits past the timeout": the bound leaves room for a loaded debug build and
    // three hops; a request stuck on Redis would take the client's 10 s.
    const PATIENCE: Duration = Duration::from_secs(2);
    let Some(mut fleet) = Fleet::start(
        "redis-loss",
        // Short, but long enough that a loaded test machine never fails a check with Redis up.
        "250ms",
        vec![
            (
                "policies",
                "lenient",
                json!({"type": "rate_limit", "key": ["client_ip"], "failure_mode": "open",
                       "limit": {"requests": 1_000_000, "window_s": 3600}}),
            ),
            (
                "policies",
                "strict",
                json!({"type": "rate_limit", "key": ["client_ip"], "failure_mode": "closed",
                       "limit": {"requests": 1_000_000, "window_s": 3600}}),
            ),
            (
                "policies",
                "tiny",
                json!({"type": "rate_limit", "key": ["api_key"], "algorithm": "fixed_window",
                       "limit": {"requests": 3, "window_s": 3600}}),
            ),
            (
                "routes",
                "open",
                json!({"match": {"path_prefix": "/open"}, "cluster": "api", "policies": ["lenient"]}),
            ),
            (
                "routes",
                "strict",
                json!({"match": {"path_prefix": "/strict"}, "cluster": "api", "policies": ["strict"]}),
            ),
            (
                "routes",
                "tiny",
                json!({"match": {"path_prefix": "/tiny"}, "cluster": "api",
                       "policies": ["keys", "tiny"]}),
            ),
        ],
    )
    .await
    else {
        return;
    };
    let base = fleet.client_url.clone();

    // Load on both routes, from 4 clients, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (i, path) in ["/open", "/strict", "/open", "/strict"]
        .into_iter()
        .enumerate()
    {
        let url = format!("{base}{path}");
        let stop = Arc::clone(&stop);
        load.push(tokio::spawn(async move {
            let client = client();
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push((Instant::now(), send(&client, &url, None).await));
                // Paced, so a debug build keeps up and Redis sees steady traffic.
                tokio::time::sleep(Duration::from_millis(5 + i as u64)).await;
            }
            (path, seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    fleet.redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted_at = Instant::now();
    fleet.redis.restart().expect("redis restarts");
    // Limits apply again: the tiny quota (3 per key) refuses the 4th request within 5 s.
    let probe = client();
    eventually(
        "limits apply again after Redis is back",
        Duration::from_secs(5),
        || {
            let probe = probe.clone();
            let url = format!("{base}/tiny");
            async move {
                let mut statuses = Vec::new();
                for _ in 0..4 {
                    statuses.push(send(&probe, &url, Some(KEYS[0])).await.status);
                }
                anyhow::ensure!(statuses.last() == Some(&429), "statuses {statuses:?}");
                Ok(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut failures = Vec::new();
    let mut strict_refused = 0;
    for task in load {
        let (path, seen) = task.await.expect("load task");
        for (at, response) in seen {
            let during_outage = at > killed_at + Duration::from_millis(200) && at < restarted_at;
            let ok = match (path, response.status) {
                ("/open", 200) => true,
                ("/strict", 200) => {
                    at < killed_at + Duration::from_millis(200) || at > restarted_at
                }
                // Also a request in flight when Redis died.
                ("/strict", 503) => {
                    strict_refused += 1;
                    at + response.elapsed > killed_at
                }
                _ => false,
            };
            if !ok || (during_outage && path == "/strict" && response.status != 503) {
                failures.push(format!(
                    "{path} at {:?} after the kill: {response:?}",
                    at.saturating_duration_since(killed_at)
                ));
            }
            if !response.problems.is_empty() && response.status != 200 {
                failures.push(format!("{path}: {:?}", response.problems));
            }
            if response.elapsed > PATIENCE {
                failures.push(format!("{path} took {:?}", response.elapsed));
            }
        }
    }
    if strict_refused == 0 {
        failures.push("the fail-closed policy never refused while Redis was down".to_owned());
    }
    fleet.assert_all_running();
    let failed_open: f64 = fleet
        .metrics()
        .await
        .iter()
        .map(|s| {
            s.get(
                "tollgate_proxy_quota_decisions_total",
                &[("policy", "lenient"), ("outcome", "failed_open")],
            )
            .unwrap_or(0.0)
        })
        .sum();
    if failed_open == 0.0 {
        failures.push("no proxy counted a failed_open decision".to_owned());
    }
    failures.truncate(20);
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
