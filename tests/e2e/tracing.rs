//! Tracing: an edge proxy exporting to an in-process OTLP receiver continues W3C traces (a
//! SERVER span per request, a CLIENT span per upstream attempt, `traceparent` naming that
//! attempt upstream), starts new ones, flushes its spans on SIGTERM, and without an endpoint
//! leaves trace headers alone.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use support::{
    ControlPlane, EdgeProxy, OtlpReceiver, ReceivedSpan, RecordedRequest, Upstream, eventually,
    free_port,
};

use crate::fixtures::CONVERGE;

const HOST: &str = "app.test";
/// The caller's tracestate, which must reach the upstream as it was sent.
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
/// Long enough for the batch processor's schedule (5 s by default) and a slow machine.
const EXPORTED: Duration = Duration::from_secs(30);

/// A caller's `traceparent` with trace id `trace_id` and span id `span_id` (hex), sampled.
fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

/// `(trace id, parent id, flags)` of a `traceparent` the upstream received.
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    assert_eq!(parts[0], "00", "traceparent {value:?}");
    assert_eq!(parts[1].len(), 32, "traceparent {value:?}");
    assert_eq!(parts[2].len(), 16, "traceparent {value:?}");
    assert!(
        value
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "traceparent {value:?}"
    );
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

/// What the upstream received for paths starting with `prefix`.
fn received(upstream: &Upstream, prefix: &str) -> Vec<RecordedRequest> {
    upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with(prefix))
        .collect()
}

/// Sends `GET path` with `headers` and checks the status.
async fn send(port: u16, path: &str, headers: &[(&str, &str)], status: u16) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = support::client::request(Method::GET, &url, Some(HOST), headers, None)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e:#}"));
    assert_eq!(response.status, status, "{url}: {}", response.body);
}

/// Clusters, routes and a listener on `port`: `api` forwards, `retry` retries a 5xx once,
/// `teapot` answers itself. Returns the last revision.
async fn configure(cp: &ControlPlane, upstream: &Upstream, port: u16) -> u64 {
    cp.put_all([
        ("clusters", "a", json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]})),
        ("routes", "api", json!({"match": {"path_prefix": "/api"}, "cluster": "a"})),
        ("routes", "retry", json!({"match": {"path_prefix": "/retry"}, "cluster": "a",
               "retries": {"attempts": 1, "retry_on": ["5xx"]}})),
        ("routes", "teapot", json!({"match": {"path_exact": "/teapot"}, "direct_response": {"status": 418, "body": "short and stout"}})),
    ]).await;
    cp.put_ok(
        "listeners",
        "public",
        json!({"address": "127.0.0.1", "port": port}),
    )
    .await
    .unwrap()
}

/// Waits until the listener answers (its readiness probes are not traced with a traceparent).
async fn wait_serving(port: u16) {
    let url = format!("http://127.0.0.1:{port}/teapot");
    eventually("the listener serves", CONVERGE, || {
        let url = url.clone();
        async move {
            let response = support::get(&url, Some(HOST)).await?;
            anyhow::ensure!(response.status == 418, "status {}", response.status);
            Ok(())
        }
    })
    .await;
}

/// The spans of trace `trace_id` once there are `count` of them.
async fn trace(receiver: &OtlpReceiver, trace_id: &str, count: usize) -> Vec<ReceivedSpan> {
    receiver.wait_for_trace(trace_id, count, EXPORTED).await
}

fn only<'a>(spans: &'a [ReceivedSpan], kind: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.kind == kind).collect()
}

#[tokio::test]
async fn the_proxy_continues_traces_and_exports_its_spans() {
    let receiver = OtlpReceiver::start().await;
    let cp = ControlPlane::start().await.unwrap();
    let upstream = Upstream::start("a").await;
    let port = free_port();
    let revision = configure(&cp, &upstream, port).await;
    let endpoint = receiver.endpoint();
    let mut proxy =
        EdgeProxy::start_with_args(&cp, "edge-tracing", &["--otlp-endpoint", &endpoint])
            .await
            .unwrap();
    cp.wait_converged(revision, CONVERGE).await.unwrap();
    wait_serving(port).await;

    // 1. A caller's trace, continued through one attempt.
    let (trace_1, caller_1) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let incoming = traceparent(trace_1, caller_1);
    send(
        port,
        "/api/one?api_key=secret-key-789",
        &[("traceparent", &incoming), ("tracestate", TRACESTATE)],
        200,
    )
    .await;
    let sent = received(&upstream, "/api/one");
    assert_eq!(sent.len(), 1);
    let (sent_trace, sent_parent, sent_flags) = parse_traceparent(
        sent[0]
            .header("traceparent")
            .expect("a traceparent upstream"),
    );
    assert_eq!(sent_trace, trace_1);
    assert_ne!(
        sent_parent, caller_1,
        "the upstream's parent is the proxy's span"
    );
    assert_eq!(sent_flags, "01");
    assert_eq!(sent[0].header("tracestate"), Some(TRACESTATE));

    let spans = trace(&receiver, trace_1, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = only(&spans, "server");
    let client = only(&spans, "client");
    assert_eq!((server.len(), client.len()), (1, 1), "{spans:#?}");
    let (server, client) = (server[0], client[0]);
    assert_eq!(server.parent_span_id, caller_1, "{server:#?}");
    assert_eq!(server.name, "GET api");
    assert_eq!(server.status, "unset");
    assert_eq!(server.trace_state, TRACESTATE);
    assert_eq!(server.attr_str("http.request.method"), Some("GET"));
    assert_eq!(server.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(server.attr_str("tollgate.route"), Some("api"));
    assert_eq!(server.attr_str("tollgate.cluster"), Some("a"));
    assert_eq!(server.attr_str("url.path"), Some("/api/one"));
    assert_eq!(server.attr_str("url.scheme"), Some("http"));
    assert_eq!(server.attr_str("server.address"), Some(HOST));
    assert_eq!(server.attr_str("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(
        server.resource_str("service.name"),
        Some("tollgate-edge-proxy")
    );
    assert_eq!(
        server.resource_str("service.instance.id"),
        Some("edge-tracing")
    );
    assert_eq!(client.parent_span_id, server.span_id, "{client:#?}");
    assert_eq!(
        client.span_id, sent_parent,
        "the upstream's traceparent names the attempt"
    );
    assert_eq!(client.name, "GET");
    assert_eq!(client.status, "unset");
    assert_eq!(client.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(
        client.attr_i64("server.port"),
        Some(i64::from(upstream.port()))
    );
    assert_eq!(client.attr_str("tollgate.cluster"), Some("a"));
    assert_eq!(client.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(client.attr_i64("http.request.resend_count"), None);
    // The query (and the API key in it) never reaches a span.
    for span in &spans {
        assert!(!format!("{span:?}").contains("secret-key-789"), "{span:#?}");
    }

    // 2. No traceparent: the proxy starts a trace, and its root is the server span.
    send(port, "/api/two", &[("tracestate", TRACESTATE)], 200).await;
    let sent = received(&upstream, "/api/two");
    assert_eq!(sent.len(), 1);
    let (trace_2, sent_parent, sent_flags) = parse_traceparent(
        sent[0]
            .header("traceparent")
            .expect("a traceparent upstream"),
    );
    assert_ne!(trace_2, trace_1);
    assert_eq!(sent_flags, "01", "sampled at the default ratio 1.0");
    // A tracestate without a traceparent belongs to no trace: it is not forwarded.
    assert_eq!(sent[0].header("tracestate"), None);
    let spans = trace(&receiver, &trace_2, 2).await;
    let (server, client) = (only(&spans, "server")[0], only(&spans, "client")[0]);
    assert_eq!(server.parent_span_id, "", "a root span: {server:#?}");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.span_id, sent_parent);

    // 3. A retried attempt is a client span of its own.
    let (trace_3, caller_3) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let incoming = traceparent(trace_3, caller_3);
    send(
        port,
        "/retry/status/503",
        &[("traceparent", &incoming)],
        503,
    )
    .await;
    let sent = received(&upstream, "/retry/");
    assert_eq!(sent.len(), 2, "one retry");
    let spans = trace(&receiver, trace_3, 3).await;
    let server = only(&spans, "server")[0];
    assert_eq!(server.parent_span_id, caller_3);
    assert_eq!(server.name, "GET retry");
    assert_eq!(server.status, "error", "5xx is a server error: {server:#?}");
    assert_eq!(server.attr_i64("http.response.status_code"), Some(503));
    assert_eq!(server.attr_str("error.type"), Some("503"));
    let mut attempts = only(&spans, "client");
    attempts.sort_by_key(|s| s.attr_i64("http.request.resend_count").unwrap_or(0));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    assert_eq!(attempts[0].attr_i64("http.request.resend_count"), None);
    assert_eq!(attempts[1].attr_i64("http.request.resend_count"), Some(1));
    for (attempt, request) in attempts.iter().zip(&sent) {
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(attempt.status, "error");
        assert_eq!(attempt.attr_i64("http.response.status_code"), Some(503));
        let (trace_id, parent, _) = parse_traceparent(request.header("traceparent").unwrap());
        assert_eq!(trace_id, trace_3);
        assert_eq!(parent, attempt.span_id, "each try names its own span");
    }

    // 4. Answers the proxy makes itself still get a server span.
    let (trace_4, caller_4) = ("11111111111111111111111111111111", "2222222222222222");
    send(
        port,
        "/nowhere",
        &[("traceparent", &traceparent(trace_4, caller_4))],
        404,
    )
    .await;
    let (trace_5, caller_5) = ("33333333333333333333333333333333", "4444444444444444");
    send(
        port,
        "/teapot",
        &[("traceparent", &traceparent(trace_5, caller_5))],
        418,
    )
    .await;
    let no_route = trace(&receiver, trace_4, 1).await;
    assert_eq!(no_route.len(), 1, "no upstream attempt: {no_route:#?}");
    assert_eq!(no_route[0].kind, "server");
    assert_eq!(no_route[0].parent_span_id, caller_4);
    assert_eq!(no_route[0].name, "GET", "no route, no path in the name");
    assert_eq!(no_route[0].status, "unset", "a 4xx is the client's error");
    assert_eq!(no_route[0].attr_i64("http.response.status_code"), Some(404));
    assert_eq!(no_route[0].attr_str("tollgate.route"), None);
    let direct = trace(&receiver, trace_5, 1).await;
    assert_eq!(direct.len(), 1, "{direct:#?}");
    assert_eq!(direct[0].name, "GET teapot");
    assert_eq!(direct[0].attr_i64("http.response.status_code"), Some(418));

    // 5. On SIGTERM the spans still queued are exported before the process exits.
    let (trace_6, caller_6) = ("55555555555555555555555555555555", "6666666666666666");
    send(
        port,
        "/api/last",
        &[("traceparent", &traceparent(trace_6, caller_6))],
        200,
    )
    .await;
    proxy.process().sigterm().unwrap();
    let status = proxy
        .process()
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the proxy exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", proxy.log());
    let last = trace(&receiver, trace_6, 2).await;
    assert_eq!(only(&last, "server")[0].parent_span_id, caller_6);
    assert!(
        proxy.log().contains("trace exporter flushed"),
        "{}",
        proxy.log()
    );
}

#[tokio::test]
async fn without_an_endpoint_trace_headers_pass_through() {
    let cp = ControlPlane::start().await.unwrap();
    let upstream = Upstream::start("a").await;
    let port = free_port();
    let revision = configure(&cp, &upstream, port).await;
    let _proxy = EdgeProxy::start(&cp, "edge-no-tracing").await.unwrap();
    cp.wait_converged(revision, CONVERGE).await.unwrap();
    wait_serving(port).await;

    let valid = traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    // Invalid (uppercase): a tracing proxy would replace it; this one does not look at it.
    let invalid = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    for (path, value) in [("/api/valid", valid.as_str()), ("/api/invalid", invalid)] {
        send(
            port,
            path,
            &[("traceparent", value), ("tracestate", TRACESTATE)],
            200,
        )
        .await;
        let sent = received(&upstream, path);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].header("traceparent"), Some(value), "{path}");
        assert_eq!(sent[0].header("tracestate"), Some(TRACESTATE), "{path}");
    }
    send(port, "/api/none", &[], 200).await;
    let sent = received(&upstream, "/api/none");
    assert_eq!(sent[0].header("traceparent"), None, "nothing is added");
}
