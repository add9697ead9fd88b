//! The edge proxy's `/metrics` after a known mix of requests: exact counts per route, cluster
//! and status class, parsed from the text format.

use serde_json::json;
use support::metrics::Samples;
use support::{ControlPlane, EdgeProxy, Upstream, free_port};

use crate::fixtures::CONVERGE;

#[tokio::test]
async fn metrics_count_requests_by_route_cluster_and_status_class() {
    let cp = ControlPlane::start().await.unwrap();
    let upstream = Upstream::start("a").await;
    let port = free_port();
    let revision = cp.put_all([
        ("clusters", "a", json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]})),
        ("routes", "api", json!({"match": {"path_prefix": "/api"}, "cluster": "a"})),
        ("routes", "teapot", json!({"match": {"path_exact": "/teapot"}, "direct_response": {"status": 418, "body": "short and stout"}})),
        ("listeners", "public", json!({"address": "127.0.0.1", "port": port})),
    ]).await;
    let proxy = EdgeProxy::start(&cp, "edge-metrics").await.unwrap();
    cp.wait_converged(revision, CONVERGE).await.unwrap();

    let send = |path: &'static str, times: usize, status: u16| {
        let url = format!("http://127.0.0.1:{port}{path}");
        async move {
            for _ in 0..times {
                let response = support::get(&url, Some("app.test")).await.unwrap();
                assert_eq!(response.status, status, "{path}: {response:?}");
            }
        }
    };
    send("/api/ok", 7, 200).await;
    send("/api/status/503", 3, 503).await;
    send("/teapot", 2, 418).await;
    send("/nowhere", 4, 404).await;

    let text = support::get(&format!("{}/metrics", proxy.admin_url()), None)
        .await
        .unwrap();
    assert!(
        text.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{text:?}"
    );
    assert!(text.body.trim_end().ends_with("# EOF"));
    let samples = Samples::parse(&text.body).unwrap();
    let requests = |route: &str, cluster: &str, class: &str| {
        samples.get(
            "tollgate_proxy_requests_total",
            &[
                ("route", route),
                ("cluster", cluster),
                ("status_class", class),
            ],
        )
    };
    assert_eq!(requests("api", "a", "2xx"), Some(7.0), "{}", text.body);
    assert_eq!(requests("api", "a", "5xx"), Some(3.0));
    assert_eq!(requests("api", "a", "4xx"), Some(0.0));
    assert_eq!(requests("teapot", "none", "4xx"), Some(2.0));
    assert_eq!(requests("none", "none", "4xx"), Some(4.0));
    let total: f64 = samples
        .named("tollgate_proxy_requests_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 16.0, "every request counted once");

    let count = |name: &str, label: (&str, &str)| samples.get(name, &[label]);
    assert_eq!(
        count(
            "tollgate_proxy_request_duration_seconds_count",
            ("route", "api")
        ),
        Some(10.0)
    );
    assert_eq!(
        count(
            "tollgate_proxy_upstream_request_duration_seconds_count",
            ("cluster", "a")
        ),
        Some(10.0)
    );
    assert_eq!(
        samples.get(
            "tollgate_proxy_upstream_endpoints",
            &[("cluster", "a"), ("state", "healthy")]
        ),
        Some(1.0)
    );
    assert_eq!(
        count("tollgate_proxy_upstream_ejections_total", ("cluster", "a")),
        Some(0.0)
    );
    assert_eq!(samples.get("tollgate_proxy_xds_connected", &[]), Some(1.0));
    assert_eq!(
        count("tollgate_proxy_xds_nacks_total", ("type", "routes")),
        Some(0.0)
    );
    assert!(count("tollgate_proxy_xds_acks_total", ("type", "routes")).unwrap() >= 1.0);
    assert_eq!(samples.named("tollgate_proxy_xds_snapshot").count(), 1);
    assert!(
        samples
            .get("tollgate_proxy_xds_last_update_timestamp_seconds", &[])
            .unwrap()
            > 1.7e9
    );
    assert!(
        samples
            .get("tollgate_proxy_process_resident_memory_bytes", &[])
            .unwrap()
            > 1e6
    );
    assert!(
        samples
            .get("tollgate_proxy_downstream_connections_active", &[])
            .is_some()
    );
    // Label values are config names: no request path made it into a series.
    assert!(!text.body.contains("nowhere") && !text.body.contains("/api/ok"));
}

#[tokio::test]
async fn request_metrics_can_be_turned_off() {
    let cp = ControlPlane::start().await.unwrap();
    let upstream = Upstream::start("a").await;
    let port = free_port();
    let revision = cp
        .put_all([
            (
                "clusters",
                "a",
                json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]}),
            ),
            (
                "routes",
                "api",
                json!({"match": {"path_prefix": "/api"}, "cluster": "a"}),
            ),
            (
                "listeners",
                "public",
                json!({"address": "127.0.0.1", "port": port}),
            ),
        ])
        .await;
    let proxy = EdgeProxy::start_with_args(
        &cp,
        "edge-no-request-metrics",
        &["--request-metrics", "false"],
    )
    .await
    .unwrap();
    cp.wait_converged(revision, CONVERGE).await.unwrap();
    let url = format!("http://127.0.0.1:{port}/api/ok");
    support::eventually("the listener serves", CONVERGE, || {
        let url = url.clone();
        async move {
            let response = support::get(&url, Some("app.test")).await?;
            anyhow::ensure!(response.status == 200, "status {}", response.status);
            Ok(())
        }
    })
    .await;
    for _ in 0..3 {
        let response = support::get(&url, Some("app.test")).await.unwrap();
        assert_eq!(response.status, 200);
    }

    let text = support::get(&format!("{}/metrics", proxy.admin_url()), None)
        .await
        .unwrap();
    let samples = Samples::parse(&text.body).unwrap();
    for name in [
        "tollgate_proxy_requests_total",
        "tollgate_proxy_request_duration_seconds_count",
        "tollgate_proxy_upstream_request_duration_seconds_count",
    ] {
        assert_eq!(samples.named(name).count(), 0, "{name}:\n{}", text.body);
    }
    // What is read at scrape time is still there.
    assert_eq!(samples.get("tollgate_proxy_xds_connected", &[]), Some(1.0));
    assert_eq!(
        samples.get(
            "tollgate_proxy_upstream_endpoints",
            &[("cluster", "a"), ("state", "healthy")]
        ),
        Some(1.0)
    );
}
