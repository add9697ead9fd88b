//! API-key policies from one control plane: Envoy checks keys through the control plane's
//! ext_authz service, the edge proxy against the key table it gets over SDS. A valid key
//! reaches the upstream with the consumer's headers and without the key, a revoked one is
//! refused once the change has converged, and the key shows up in no log, no config dump and
//! no admin response.

use serde_json::json;
use support::{ControlPlane, Upstream, eventually, free_port};

use crate::fixtures::{CONVERGE, Peer, start_envoy_and_edge};

const HOST: &str = "keys.test";
const ACME_KEY: &str = "acme-key-3b5d8f1a9c7e2046";
const BETA_KEY: &str = "beta/key+7f1e9a2c4d6b8e05";

#[tokio::test]
async fn envoy_and_the_edge_proxy_check_api_keys_alike() {
    let Some(_) = support::require_envoy() else {
        return;
    };
    let cp = ControlPlane::start().await.expect("control plane starts");
    let upstream = Upstream::start("billing").await;
    let (envoy_port, edge_port) = (free_port(), free_port());
    // Access logs on both listeners, so the test can look for the key in them.
    let log_dir = tempfile::tempdir().expect("temp dir");
    let envoy_log = log_dir.path().join("envoy-access.log");
    let edge_log = log_dir.path().join("edge-access.log");
    let revision = cp.put_all([
        ("clusters", "billing", json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]})),
        ("consumers", "acme", json!({"tier": "pro", "api_keys": [ACME_KEY]})),
        ("consumers", "beta", json!({"api_keys": [BETA_KEY]})),
        ("policies", "keys", json!({"type": "api_key", "query": "apikey"})),
        ("routes", "billing", json!({"match": {"path_prefix": "/billing"}, "cluster": "billing", "policies": ["keys"]})),
        ("routes", "status", json!({"match": {"path_prefix": "/status"}, "cluster": "billing"})),
        ("listeners", "envoy-l", json!({"address": "127.0.0.1", "port": envoy_port, "node_cluster": "envoy",
               "access_log": {"path": envoy_log, "include_query": true}})),
        ("listeners", "edge-l", json!({"address": "127.0.0.1", "port": edge_port, "node_cluster": "edge",
               "access_log": {"path": edge_log, "include_query": true}})),
    ]).await;

    let (mut envoy, edge) = start_envoy_and_edge(&cp, "keys", revision).await;
    let peers = Peer::envoy_and_edge(envoy_port, edge_port, HOST);
    for peer in &peers {
        peer.wait_serving("/status", &[]).await;
    }

    let beta_in_query = format!(
        "/billing/invoices?apikey={}&page=2",
        "beta%2Fkey%2B7f1e9a2c4d6b8e05"
    );
    // (name, path, headers, status, consumer and tier the upstream must see)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        u16,
        Option<(&'a str, Option<&'a str>)>,
    );
    let cases: Vec<Case> = vec![
        (
            "key in the header",
            "/billing/invoices",
            vec![("x-api-key", ACME_KEY), ("x-consumer-name", "forged")],
            200,
            Some(("acme", Some("pro"))),
        ),
        (
            "key in the query, consumer without a tier",
            &beta_in_query,
            vec![("x-consumer-tier", "forged")],
            200,
            Some(("beta", None)),
        ),
        ("missing key", "/billing/invoices", vec![], 401, None),
        (
            "unknown key",
            "/billing/invoices",
            vec![("x-api-key", "nobody-key-0000000000000")],
            401,
            None,
        ),
        (
            "identity headers without a key",
            "/billing/invoices",
            vec![("x-consumer-name", "acme")],
            401,
            None,
        ),
        ("route without the policy", "/status", vec![], 200, None),
    ];
    let mut failures = Vec::new();
    for (name, path, headers, expected, identity) in &cases {
        for peer in &peers {
            upstream.clear();
            let response = peer.send(path, headers).await;
            if response.status != *expected {
                failures.push(format!(
                    "{name}: {} answered {} (expected {expected}): {}",
                    peer.name, response.status, response.body
                ));
                continue;
            }
            let seen = upstream.requests();
            if *expected == 401 {
                if !seen.is_empty() {
                    failures.push(format!("{name}: {} forwarded a refused request", peer.name));
                }
                let challenge = response.header("www-authenticate").unwrap_or_default();
                let body: serde_json::Value = response.json().unwrap_or_default();
                if !challenge.starts_with("ApiKey") || body["error"]["code"] != "unauthorized" {
                    failures.push(format!(
                        "{name}: {} refused with www-authenticate {challenge:?} and body {}",
                        peer.name, response.body
                    ));
                }
                continue;
            }
            let Some((consumer, tier)) = identity else {
                continue;
            };
            let [request] = seen.as_slice() else {
                failures.push(format!(
                    "{name}: {} sent {} requests",
                    peer.name,
                    seen.len()
                ));
                continue;
            };
            let problems = [
                (
                    request.header("x-consumer-name") != Some(consumer),
                    "x-consumer-name",
                ),
                (
                    request.header("x-consumer-tier") != *tier,
                    "x-consumer-tier",
                ),
                (
                    request.header("x-api-key").is_some(),
                    "the key header was forwarded",
                ),
                (
                    request.path.contains("apikey"),
                    "the key parameter was forwarded",
                ),
                (
                    *path != "/billing/invoices" && !request.path.contains("page=2"),
                    "other query parameters were lost",
                ),
            ];
            for (_, problem) in problems.iter().filter(|(bad, _)| *bad) {
                failures.push(format!(
                    "{name}: through {}: {problem}: {} {:?}",
                    peer.name, request.path, request.headers
                ));
            }
        }
    }

    // Revoking acme's key: once the change has converged, both proxies refuse it.
    let revision = cp
        .put_ok("consumers", "acme", json!({"tier": "pro", "api_keys": []}))
        .await
        .expect("revoke acme's key");
    cp.wait_converged(revision, CONVERGE)
        .await
        .expect("both proxies take up the revocation");
    for peer in &peers {
        let response = peer
            .send("/billing/invoices", &[("x-api-key", ACME_KEY)])
            .await;
        if response.status != 401 {
            failures.push(format!(
                "revoked key: {} answered {}",
                peer.name, response.status
            ));
        }
    }

    // Every refusal is counted by reason on the edge proxy: two requests came without a key,
    // one with an unknown key, one with the revoked key.
    let text = support::get(&format!("{}/metrics", edge.admin_url()), None)
        .await
        .expect("edge /metrics")
        .body;
    let samples = support::metrics::Samples::parse(&text).expect("metrics parse");
    for (reason, expected) in [("missing", 2.0), ("invalid", 2.0)] {
        let counted = samples.get(
            "tollgate_proxy_auth_rejections_total",
            &[
                ("route", "billing"),
                ("filter", "api_key"),
                ("reason", reason),
            ],
        );
        if counted != Some(expected) {
            failures.push(format!(
                "edge /metrics counts {counted:?} {reason} API keys, expected {expected}"
            ));
        }
    }

    // The keys appear nowhere: logs, config dumps, admin responses. Access logs are written
    // asynchronously (Envoy flushes files every second): wait until they hold the requests.
    for path in [&envoy_log, &edge_log] {
        eventually("the access log records the requests", CONVERGE, || async {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            anyhow::ensure!(text.contains("/billing/invoices"), "not yet: {text}");
            Ok(())
        })
        .await;
    }
    let mut places: Vec<(String, String)> = vec![
        ("control plane log".into(), cp.log()),
        ("edge proxy log".into(), edge.log()),
        ("envoy log".into(), envoy.process().log()),
        (
            "edge proxy config_dump".into(),
            edge.config_dump()
                .await
                .expect("edge config_dump")
                .to_string(),
        ),
        (
            "envoy config_dump".into(),
            envoy
                .config_dump()
                .await
                .expect("envoy config_dump")
                .to_string(),
        ),
        (
            "GET /v1/consumers".into(),
            cp.get_json("/v1/consumers")
                .await
                .expect("consumers")
                .to_string(),
        ),
        (
            "GET /v1/config".into(),
            cp.get_json("/v1/config").await.expect("config").to_string(),
        ),
    ];
    for (name, path) in [
        ("envoy access log", &envoy_log),
        ("edge access log", &edge_log),
    ] {
        places.push((
            name.into(),
            std::fs::read_to_string(path).unwrap_or_default(),
        ));
    }
    for (place, text) in &places {
        for key in [ACME_KEY, BETA_KEY, "beta%2Fkey%2B7f1e9a2c4d6b8e05"] {
            if text.contains(key) {
                failures.push(format!("{place} contains an API key"));
            }
        }
    }

    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
