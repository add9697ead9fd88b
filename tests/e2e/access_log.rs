//! Access logs: the same listener config gives Envoy and the edge proxy each a file access log;
//! the same requests must produce the same JSON lines (the API key's consumer and the quota
//! decision included), and no secret may reach any log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{Value, json};
use support::{ControlPlane, EdgeProxy, Envoy, EnvoyOptions, Upstream, eventually, free_port};

use crate::fixtures::CONVERGE;

const HOST: &str = "shop.example.com";

/// The API key of consumer `acme`, sent on the metered route.
const API_KEY: &str = "secret-apikey-0123456789";

/// Secrets sent in headers and the query; none may be logged.
const SECRETS: [&str; 4] = [
    "secret-token-123",
    "secret-cookie-456",
    "secret-key-789",
    API_KEY,
];

/// One request: what is sent and what its line must say.
struct Case {
    path_and_query: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// The path the line shows: without the query.
    logged_path: &'static str,
    status: u64,
    route: Option<&'static str>,
    /// Whether it went to the upstream (cluster `main`).
    forwarded: bool,
    /// The API key's consumer.
    consumer: Option<&'static str>,
    /// The quota decision.
    quota: Option<&'static str>,
    /// A request body: sent with `POST`, and logged as `bytes_in`.
    body: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let forwarded = |path_and_query, logged_path, headers| Case {
        path_and_query,
        headers,
        logged_path,
        status: 200,
        route: Some("fwd"),
        forwarded: true,
        consumer: None,
        quota: None,
        body: None,
    };
    vec![
        forwarded("/fwd/plain", "/fwd/plain", &[]),
        Case {
            path_and_query: "/nothing/here",
            headers: &[],
            logged_path: "/nothing/here",
            status: 404,
            route: None,
            forwarded: false,
            consumer: None,
            quota: None,
            body: None,
        },
        Case {
            path_and_query: "/direct",
            headers: &[],
            logged_path: "/direct",
            status: 200,
            route: Some("direct"),
            forwarded: false,
            consumer: None,
            quota: None,
            body: None,
        },
        forwarded(
            "/fwd/auth",
            "/fwd/auth",
            &[("authorization", "Bearer secret-token-123")],
        ),
        forwarded(
            "/fwd/cookie",
            "/fwd/cookie",
            &[("cookie", "session=secret-cookie-456")],
        ),
        forwarded("/fwd/key?api_key=secret-key-789", "/fwd/key", &[]),
        // One request a minute per API key: the first passes, the second is refused by the
        // quota, and both name the key's consumer.
        Case {
            path_and_query: "/metered/first",
            headers: &[("x-api-key", API_KEY)],
            logged_path: "/metered/first",
            status: 200,
            route: Some("metered"),
            forwarded: true,
            consumer: Some("acme"),
            quota: Some("allowed"),
            body: None,
        },
        Case {
            path_and_query: "/metered/second",
            headers: &[("x-api-key", API_KEY)],
            logged_path: "/metered/second",
            status: 429,
            route: Some("metered"),
            forwarded: false,
            consumer: Some("acme"),
            quota: Some("limited"),
            body: None,
        },
        // A body streamed to the upstream is counted as it goes.
        Case {
            body: Some("twenty-one bytes long"),
            ..forwarded("/fwd/upload", "/fwd/upload", &[])
        },
    ]
}

#[tokio::test]
async fn envoy_and_the_edge_proxy_write_the_same_access_log() {
    let Some(_) = support::require_envoy() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start().await.expect("control plane starts");
    let upstream = Upstream::start("main").await;
    let (envoy_port, edge_port) = (free_port(), free_port());
    let envoy_log = dir.path().join("envoy-access.log");
    let edge_log = dir.path().join("edge-access.log");

    cp.put_all([
        ("clusters", "main", json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]})),
        ("routes", "fwd", json!({"match": {"path_prefix": "/fwd"}, "cluster": "main"})),
        ("routes", "direct", json!({"match": {"path_exact": "/direct"}, "direct_response": {"status": 200, "body": "ok"}})),
        ("consumers", "acme", json!({"api_keys": [API_KEY]})),
        ("policies", "keys", json!({"type": "api_key"})),
        ("policies", "per-key", json!({"type": "rate_limit", "key": ["api_key"],
                                       "limit": {"requests": 1, "window_s": 60}})),
        ("routes", "metered", json!({"match": {"path_prefix": "/metered"}, "cluster": "main",
                                     "policies": ["keys", "per-key"]})),
    ]).await;
    let mut revision = 0;
    for (name, port, node_cluster, log) in [
        ("envoy-l", envoy_port, "envoy", &envoy_log),
        ("edge-l", edge_port, "edge", &edge_log),
    ] {
        revision = cp
            .put_ok(
                "listeners",
                name,
                json!({"address": "127.0.0.1", "port": port, "node_cluster": node_cluster,
                   "access_log": {"path": log.to_str().unwrap()}}),
            )
            .await
            .unwrap_or_else(|e| panic!("listener {name}: {e:#}"));
    }

    let envoy_options = EnvoyOptions {
        node_id: "access-log-envoy".to_owned(),
        node_cluster: "envoy".to_owned(),
        delta: false,
    };
    let (envoy, edge) = tokio::join!(
        Envoy::start(&cp, envoy_options),
        EdgeProxy::start(&cp, "access-log-edge"),
    );
    let (mut envoy, mut edge) = (
        envoy.expect("envoy starts"),
        edge.expect("edge proxy starts"),
    );
    cp.wait_converged(revision, CONVERGE)
        .await
        .expect("both proxies take up the listeners");
    // The edge proxy's /config_dump shows where its listener logs.
    let dump = edge.config_dump().await.unwrap();
    let logged = dump["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "edge-l"))
        .map(|l| l["filter_chains"][0]["access_log"]["sink"].clone());
    assert_eq!(
        logged.as_ref().and_then(|v| v.as_str()),
        edge_log.to_str(),
        "{dump}"
    );

    let cases = cases();
    let sent_from = since_epoch(SystemTime::now());
    for (proxy, port) in [("envoy", envoy_port), ("edge", edge_port)] {
        // An acked listener may take a moment to accept connections; this probe is logged too.
        let probe = format!("http://127.0.0.1:{port}/direct?probe");
        eventually(&format!("the {proxy} listener serves"), CONVERGE, || {
            let probe = probe.clone();
            async move {
                let response = support::get(&probe, Some(HOST)).await?;
                anyhow::ensure!(response.status == 200, "status {}", response.status);
                Ok(())
            }
        })
        .await;
        for case in &cases {
            let url = format!("http://127.0.0.1:{port}{}", case.path_and_query);
            let method = if case.body.is_some() {
                Method::POST
            } else {
                Method::GET
            };
            let body = case.body.map(|b| b.as_bytes().to_vec());
            let response = support::client::request(method, &url, Some(HOST), case.headers, body)
                .await
                .unwrap_or_else(|e| panic!("{proxy}: {url}: {e:#}"));
            assert_eq!(
                u64::from(response.status),
                case.status,
                "{proxy}: {url}: {}",
                response.body
            );
        }
    }

    let expected = cases.len();
    let mut by_proxy = BTreeMap::new();
    for (proxy, path) in [("envoy", &envoy_log), ("edge", &edge_log)] {
        let lines = eventually(
            &format!("{proxy} writes an access log line per request"),
            Duration::from_secs(10),
            || async move { read_lines(path, expected) },
        )
        .await;
        by_proxy.insert(proxy, lines);
    }

    for (proxy, lines) in &by_proxy {
        eprintln!("{proxy} access log:");
        for line in lines.values() {
            eprintln!("  {line}");
        }
        for case in &cases {
            let line = lines
                .get(case.logged_path)
                .unwrap_or_else(|| panic!("{proxy}: no line for {}", case.logged_path));
            let what = format!("{proxy}: line for {}: {line}", case.path_and_query);
            assert_eq!(line["status"], case.status, "{what}");
            let method = if case.body.is_some() { "POST" } else { "GET" };
            assert_eq!(line["method"], method, "{what}");
            assert_eq!(line["host"], HOST, "{what}");
            assert_eq!(line["protocol"], "HTTP/1.1", "{what}");
            assert_eq!(line["bytes_in"], case.body.map_or(0, str::len), "{what}");
            assert_eq!(line["route"], json!(case.route), "{what}");
            assert_eq!(line["consumer"], json!(case.consumer), "{what}");
            assert_eq!(line["quota"], json!(case.quota), "{what}");
            let request_id = line["request_id"].as_str().unwrap_or_default();
            assert_eq!(request_id.len(), 36, "{what}");
            let time = line["time"].as_str().unwrap_or_default();
            // Milliseconds exactly, as Envoy's `%START_TIME%` writes them.
            assert!(time.len() == 24 && time.ends_with('Z'), "{what}");
            // While the requests were sent, to the millisecond: the edge proxy reads the wall
            // clock through the monotonic one (`access_log::WallClock`).
            let logged = humantime::parse_rfc3339(time)
                .map(since_epoch)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let sent_until = since_epoch(SystemTime::now());
            assert!(
                (sent_from..=sent_until).contains(&logged),
                "{what}: not within {sent_from}..={sent_until} ms"
            );
            assert!(line["duration_ms"].is_u64(), "{what}");
            if case.forwarded {
                assert_eq!(line["cluster"], "main", "{what}");
                assert_eq!(
                    line["upstream"],
                    format!("127.0.0.1:{}", upstream.port()),
                    "{what}"
                );
                assert!(line["bytes_out"].as_u64().unwrap_or_default() > 0, "{what}");
            } else {
                // A filter's answer on a forwarding route names the route's cluster.
                let cluster = (case.route == Some("metered")).then_some("main");
                assert_eq!(line["cluster"], json!(cluster), "{what}");
                assert_eq!(line["upstream"], Value::Null, "{what}");
            }
            if case.route == Some("direct") {
                assert_eq!(line["bytes_out"], 2, "{what}");
            }
        }
    }
    // The same keys, and for what is not per-request (ids, times, sizes of echoed headers),
    // the same values.
    for path in cases.iter().map(|c| c.logged_path) {
        let (envoy, edge) = (&by_proxy["envoy"][path], &by_proxy["edge"][path]);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(envoy), keys(edge), "{path}");
        for key in [
            "method", "host", "path", "protocol", "status", "bytes_in", "upstream", "route",
            "cluster", "consumer", "quota",
        ] {
            assert_eq!(envoy[key], edge[key], "{path}: {key}");
        }
    }

    let edge_process_log = edge.log();
    for (what, text) in [
        (
            "envoy access log",
            std::fs::read_to_string(&envoy_log).unwrap(),
        ),
        (
            "edge access log",
            std::fs::read_to_string(&edge_log).unwrap(),
        ),
        ("edge proxy process log", edge_process_log),
    ] {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{what} contains {secret}:\n{text}");
        }
    }

    // The other logger and the other path operator: both proxies must ACK them (converged
    // means no NACK) and write the query to their standard output.
    let mut revision = 0;
    for (name, port, node_cluster) in [
        ("envoy-l", envoy_port, "envoy"),
        ("edge-l", edge_port, "edge"),
    ] {
        revision = cp
            .put_ok(
                "listeners",
                name,
                json!({"address": "127.0.0.1", "port": port, "node_cluster": node_cluster,
                       "access_log": {"path": "stdout", "include_query": true}}),
            )
            .await
            .unwrap_or_else(|e| panic!("listener {name}: {e:#}"));
    }
    cp.wait_converged(revision, CONVERGE)
        .await
        .expect("both proxies take up stdout access logs");
    for (proxy, port, process) in [
        ("envoy", envoy_port, envoy.process()),
        ("edge", edge_port, edge.process()),
    ] {
        let url = format!("http://127.0.0.1:{port}/fwd/query?page=2");
        let wanted = r#""path":"/fwd/query?page=2""#;
        eventually(
            &format!("{proxy} logs the query to stdout"),
            Duration::from_secs(10),
            || {
                let url = url.clone();
                let log = process.log();
                async move {
                    if log.contains(wanted) {
                        return Ok(());
                    }
                    // Sent until seen: the listener update may take a moment to apply.
                    support::get(&url, Some(HOST)).await?;
                    anyhow::bail!("not logged yet")
                }
            },
        )
        .await;
    }
}

/// The log's lines by path, once it has at least `expected` lines besides the readiness probes;
/// every line must be a JSON object.
fn read_lines(path: &Path, expected: usize) -> anyhow::Result<BTreeMap<String, Value>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = BTreeMap::new();
    for line in text.lines() {
        let value: Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not JSON ({e}): {line}"))?;
        anyhow::ensure!(value.is_object(), "not an object: {line}");
        let path = value["path"].as_str().unwrap_or_default().to_owned();
        lines.insert(path, value);
    }
    // Probes are logged as `/direct` too; the last `/direct` line is the case's.
    let distinct = lines.len();
    anyhow::ensure!(
        distinct >= expected,
        "{distinct} distinct paths of {expected} so far"
    );
    Ok(lines)
}

/// Milliseconds since the Unix epoch.
fn since_epoch(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
