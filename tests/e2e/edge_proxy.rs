//! The Tollgate edge proxy end to end: a real `tollgate edge-proxy` fed by a real control plane,
//! carrying HTTP/1.1, WebSocket and gRPC (h2c) traffic to in-process upstreams, through config
//! changes under load, a control plane crash, an endpoint failure and a SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::{ControlPlane, EdgeProxy, HttpResponse, Upstream, eventually, free_port};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// How long a change may take to reach the proxy before a test fails.
const CONVERGE: Duration = Duration::from_secs(20);

/// A control plane, one edge proxy on it, two upstreams and the proxy's listener port.
struct EdgeFleet {
    cp: ControlPlane,
    proxy: EdgeProxy,
    upstream_a: Upstream,
    upstream_b: Upstream,
    port: u16,
}

impl EdgeFleet {
    /// Starts a control plane holding clusters `a` and `b`, route `api` (`/api` → `a`) and
    /// listener `public`, then an edge proxy on it; returns once `/api` answers through the
    /// proxy.
    async fn start(node_id: &str) -> EdgeFleet {
        let cp = ControlPlane::start().await.expect("control plane starts");
        let upstream_a = Upstream::start("a").await;
        let upstream_b = Upstream::start("b").await;
        let port = free_port();
        let revision = cp
            .put_all([
                ("clusters", "a", cluster_json(&[&upstream_a])),
                ("clusters", "b", cluster_json(&[&upstream_b])),
                ("routes", "api", api_route("a", None)),
                (
                    "listeners",
                    "public",
                    json!({"address": "127.0.0.1", "port": port}),
                ),
            ])
            .await;
        // The config is in place first, so the proxy's first snapshot is complete.
        let proxy = EdgeProxy::start(&cp, node_id)
            .await
            .expect("edge proxy starts");
        cp.wait_converged(revision, CONVERGE).await.unwrap();
        let fleet = EdgeFleet {
            cp,
            proxy,
            upstream_a,
            upstream_b,
            port,
        };
        // The port accepts once converged (bound before the ACK); retried all the same, so that
        // a fleet that cannot serve fails here with its last error.
        let url = fleet.url("/api/ready");
        eventually("the listener serves /api", CONVERGE, || {
            let url = url.clone();
            async move {
                let response = support::get(&url, None).await?;
                anyhow::ensure!(response.status == 200, "status {}", response.status);
                Ok(())
            }
        })
        .await;
        fleet.upstream_a.clear();
        fleet
    }

    /// `http://127.0.0.1:<listener><path>`.
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `GET <path>` through the proxy.
    async fn get(&self, path: &str) -> HttpResponse {
        support::get(&self.url(path), None)
            .await
            .unwrap_or_else(|e| panic!("GET {path} through the edge proxy: {e:#}"))
    }

    /// `PUT`s `body` as `/v1/{kind}/{name}` and waits until the fleet has converged on it.
    async fn put_converged(&self, kind: &str, name: &str, body: Value) -> u64 {
        let revision = self.cp.put_ok(kind, name, body).await.unwrap();
        self.cp.wait_converged(revision, CONVERGE).await.unwrap();
        revision
    }

    /// The proxy's `/config_dump`.
    async fn config_dump(&self) -> Value {
        self.proxy.config_dump().await.unwrap()
    }
}

/// A cluster of `upstreams`, each an endpoint on loopback.
fn cluster_json(upstreams: &[&Upstream]) -> Value {
    let endpoints: Vec<Value> = upstreams
        .iter()
        .map(|u| json!({"address": "127.0.0.1", "port": u.port()}))
        .collect();
    json!({"endpoints": endpoints, "connect_timeout_ms": 1000})
}

/// Route `api`: `/api` → `cluster`, setting `x-variant` on the request when given.
fn api_route(cluster: &str, variant: Option<u32>) -> Value {
    let mut route = json!({"match": {"path_prefix": "/api"}, "cluster": cluster});
    if let Some(variant) = variant {
        route["request_headers"] = json!({"set": {"x-variant": variant.to_string()}});
    }
    route
}

/// Asserts that `response` is a 200 from the upstream called `upstream`.
fn assert_served_by(response: &HttpResponse, upstream: &str, what: &str) {
    assert_eq!(
        (response.status, response.header("x-upstream")),
        (200, Some(upstream)),
        "{what}: expected a 200 from upstream {upstream}; body: {}",
        response.body
    );
}

/// Polls the proxy's log until one line contains every one of `needles`; returns that line.
async fn wait_for_log_line(proxy: &EdgeProxy, what: &str, needles: &[&str]) -> String {
    eventually(what, Duration::from_secs(10), || {
        let log = proxy.log();
        async move {
            log.lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no log line contains all of {needles:?} yet"))
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. Hot reload under load

/// Requests per second the load aims at, across all workers.
const TARGET_RATE: u32 = 2_000;
/// Concurrent keep-alive clients.
const LOAD_WORKERS: u32 = 16;
/// The least time the load runs.
const LOAD_DURATION: Duration = Duration::from_secs(10);
/// Route changes applied while the load runs.
const ROUTE_CHANGES: u32 = 50;

/// What the load loop saw.
#[derive(Debug, Default)]
struct LoadReport {
    ok: u64,
    failed: u64,
    /// The first few failures, described.
    failures: Vec<String>,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.failed += other.failed;
        let room = 10usize.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
    }
}

/// One keep-alive client sending `GET <base>/api/<worker>/<n>` at `rate` per second until
/// `stop`; every answer must be a 200 from upstream `a` or `b`.
async fn load_worker(base: String, worker: u32, rate: u32, stop: Arc<AtomicBool>) -> LoadReport {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a reqwest client");
    let mut pace = tokio::time::interval(Duration::from_secs(1) / rate);
    // Catch up after a slow answer: the rate is the target where the machine allows it, and
    // otherwise the most it can do.
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut report = LoadReport::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        n += 1;
        let url = format!("{base}/api/{worker}/{n}");
        let outcome = match client.get(&url).send().await {
            Ok(response) => {
                let status = response.status();
                let upstream = response
                    .headers()
                    .get("x-upstream")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match response.bytes().await {
                    Ok(_) if status == 200 && matches!(upstream.as_deref(), Some("a" | "b")) => {
                        Ok(())
                    }
                    Ok(body) => Err(format!(
                        "GET {url}: {status}, x-upstream {upstream:?}, body {:?}",
                        String::from_utf8_lossy(&body)
                    )),
                    Err(e) => Err(format!("GET {url}: {status}, reading the body: {e:#}")),
                }
            }
            Err(e) => Err(format!("GET {url}: {e:#}")),
        };
        match outcome {
            Ok(()) => report.ok += 1,
            Err(failure) => {
                report.failed += 1;
                if report.failures.len() < 10 {
                    report.failures.push(failure);
                }
            }
        }
    }
    report
}

/// The route state the changes walk through; the last one is what the proxy must end on.
#[derive(Debug, Clone, Copy)]
struct RouteState {
    cluster: &'static str,
    variant: Option<u32>,
    other_route: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_drops_no_request() {
    let fleet = EdgeFleet::start("edge-hot-reload").await;
    let stop = Arc::new(AtomicBool::new(false));
    let per_worker = TARGET_RATE / LOAD_WORKERS;
    let started = Instant::now();
    let workers: Vec<JoinHandle<LoadReport>> = (0..LOAD_WORKERS)
        .map(|worker| {
            tokio::spawn(load_worker(
                fleet.url(""),
                worker,
                per_worker,
                Arc::clone(&stop),
            ))
        })
        .collect();

    // Spread the changes over the load's duration; each one is taken up before the next.
    let mut pace = tokio::time::interval(LOAD_DURATION / (ROUTE_CHANGES + 1));
    pace.tick().await;
    let mut state = RouteState {
        cluster: "a",
        variant: None,
        other_route: false,
    };
    for change in 0..ROUTE_CHANGES {
        pace.tick().await;
        let revision = match change % 3 {
            0 => {
                state.cluster = if state.cluster == "a" { "b" } else { "a" };
                let route = api_route(state.cluster, state.variant);
                fleet.cp.put_ok("routes", "api", route).await.unwrap()
            }
            1 => {
                state.variant = match state.variant {
                    Some(_) => None,
                    None => Some(change),
                };
                let route = api_route(state.cluster, state.variant);
                fleet.cp.put_ok("routes", "api", route).await.unwrap()
            }
            _ => {
                state.other_route = !state.other_route;
                if state.other_route {
                    let route = json!({"match": {"path_prefix": "/other"}, "cluster": "b"});
                    fleet.cp.put_ok("routes", "other", route).await.unwrap()
                } else {
                    fleet.cp.delete_ok("routes", "other").await.unwrap()
                }
            }
        };
        fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();
    }
    let changes_done = started.elapsed();
    if let Some(rest) = LOAD_DURATION.checked_sub(changes_done) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut report = LoadReport::default();
    for worker in workers {
        report.merge(worker.await.expect("a load worker panicked"));
    }
    let elapsed = started.elapsed();
    let total = report.ok + report.failed;
    println!(
        "hot reload: {total} requests from {LOAD_WORKERS} keep-alive clients in {elapsed:.1?} \
         = {:.0} requests/s (target {TARGET_RATE}/s); {ROUTE_CHANGES} route changes in \
         {changes_done:.1?}; {} failed",
        total as f64 / elapsed.as_secs_f64(),
        report.failed
    );
    assert_eq!(
        report.failed, 0,
        "requests failed during hot reload (first ones): {:#?}",
        report.failures
    );
    assert!(
        fleet.upstream_a.request_count() > 0 && fleet.upstream_b.request_count() > 0,
        "the load reached both clusters: a {}, b {}",
        fleet.upstream_a.request_count(),
        fleet.upstream_b.request_count()
    );

    // The last change is what the proxy serves now.
    let final_state = state;
    println!("hot reload: final state {final_state:?}");
    for n in 0..20 {
        let response = fleet.get(&format!("/api/final/{n}")).await;
        assert_served_by(&response, final_state.cluster, "after the last change");
        let echo = response.json().unwrap();
        let variant = final_state.variant.map(|v| v.to_string());
        assert_eq!(
            echo["headers"]["x-variant"].as_str(),
            variant.as_deref(),
            "x-variant after the last change; echo: {echo}"
        );
    }
    let other = fleet.get("/other/x").await;
    if final_state.other_route {
        assert_served_by(&other, "b", "route other");
    } else {
        assert_eq!(other.status, 404, "route other was removed: {}", other.body);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The control plane SIGKILLed

#[tokio::test]
async fn proxy_outlives_a_killed_control_plane_and_catches_up_after_restart() {
    let mut fleet = EdgeFleet::start("edge-cp-killed").await;
    assert_served_by(&fleet.get("/api/before").await, "a", "before the kill");
    let connects_before = fleet.config_dump().await["xds"]["connects"]
        .as_u64()
        .expect("config_dump xds.connects");

    fleet.cp.kill();
    let proxy = &fleet.proxy;
    eventually(
        "the proxy notices the control plane is gone",
        Duration::from_secs(15),
        || async move {
            let dump = proxy.config_dump().await?;
            anyhow::ensure!(dump["xds"]["connected"] == false, "xds: {}", dump["xds"]);
            Ok(())
        },
    )
    .await;
    // It keeps serving its last snapshot while the control plane is away.
    let away = Instant::now();
    let mut served = 0;
    while away.elapsed() < Duration::from_secs(3) {
        assert_served_by(
            &fleet.get(&format!("/api/away/{served}")).await,
            "a",
            "with the control plane down",
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "control plane down: {served} requests served in {:.1?}",
        away.elapsed()
    );

    fleet.cp.restart().await.unwrap();
    let revision = fleet
        .cp
        .put_ok("routes", "api", api_route("b", None))
        .await
        .unwrap();
    // It reconnects on its own (jittered backoff) and takes the change up.
    let cp = &fleet.cp;
    let node_id = fleet.proxy.node_id().to_owned();
    eventually(
        "the proxy reconnects to the restarted control plane",
        Duration::from_secs(30),
        || {
            let node_id = node_id.clone();
            async move {
                let nodes = cp.get_json("/v1/nodes").await?;
                let listed = nodes["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n["node_id"] == node_id.as_str()));
                anyhow::ensure!(listed, "{node_id} not in /v1/nodes: {nodes}");
                Ok(())
            }
        },
    )
    .await;
    let status = fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();
    assert!(
        status["acked"].as_u64() >= Some(1),
        "the proxy acked revision {revision}: {status}"
    );
    let url = fleet.url("/api/after");
    eventually("the proxy routes /api to b", CONVERGE, || {
        let url = url.clone();
        async move {
            let response = support::get(&url, None).await?;
            anyhow::ensure!(
                response.status == 200 && response.header("x-upstream") == Some("b"),
                "{} from {:?}",
                response.status,
                response.header("x-upstream")
            );
            Ok(())
        }
    })
    .await;
    let dump = fleet.config_dump().await;
    assert_eq!(dump["xds"]["connected"], true, "xds: {}", dump["xds"]);
    assert!(
        dump["xds"]["connects"].as_u64() > Some(connects_before),
        "a new ADS stream after the restart: {}",
        dump["xds"]
    );
}

// ---------------------------------------------------------------------------------------------
// 3. An endpoint dies in a health-checked cluster

#[tokio::test]
async fn a_dead_endpoint_is_taken_out_by_health_checks() {
    let fleet = EdgeFleet::start("edge-health").await;
    let healthy = Upstream::start("healthy").await;
    let doomed = Upstream::start("doomed").await;
    let doomed_addr = doomed.addr().to_string();
    let mut cluster = cluster_json(&[&healthy, &doomed]);
    cluster["health_check"] = json!({
        "path": "/health",
        "interval_ms": 200,
        // Generous: a slow probe of the live endpoint on a loaded machine must not fail it.
        // The dead one refuses connections at once.
        "timeout_ms": 1000,
        "healthy_threshold": 1,
        "unhealthy_threshold": 2,
    });
    cluster["outlier_detection"] = json!({
        "consecutive_5xx": 3,
        "interval_ms": 200,
        "base_ejection_time_ms": 30_000,
        "max_ejection_percent": 50,
    });
    fleet.cp.put_ok("clusters", "pair", cluster).await.unwrap();
    fleet
        .put_converged(
            "routes",
            "pair",
            json!({"match": {"path_prefix": "/pair"}, "cluster": "pair"}),
        )
        .await;

    // Both endpoints take traffic and are probed before one of them dies.
    let url = fleet.url("/pair/warm-up");
    eventually("both endpoints serve /pair", CONVERGE, || {
        let url = url.clone();
        let seen =
            [&healthy, &doomed].map(|u| u.requests().iter().any(|r| r.path.starts_with("/pair/")));
        async move {
            let response = support::get(&url, None).await?;
            anyhow::ensure!(response.status == 200, "status {}", response.status);
            anyhow::ensure!(
                seen == [true, true],
                "served by (healthy, doomed): {seen:?}"
            );
            Ok(())
        }
    })
    .await;
    eventually("health checks reach both endpoints", CONVERGE, || {
        let probed = [&healthy, &doomed].map(|u| u.requests().iter().any(|r| r.path == "/health"));
        async move {
            anyhow::ensure!(
                probed == [true, true],
                "probed (healthy, doomed): {probed:?}"
            );
            Ok(())
        }
    })
    .await;

    // Its port now refuses connections, and its open connections are closed.
    drop(doomed);
    let line = wait_for_log_line(
        &fleet.proxy,
        "the proxy marks the dead endpoint unhealthy",
        &["failed health checks", &doomed_addr],
    )
    .await;
    println!("health check: {line}");

    healthy.clear();
    let mut failures = Vec::new();
    for n in 0..100 {
        let response = fleet.get(&format!("/pair/{n}")).await;
        if response.status != 200 || response.header("x-upstream") != Some("healthy") {
            failures.push(format!(
                "/pair/{n}: {} from {:?}: {}",
                response.status,
                response.header("x-upstream"),
                response.body
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 100 requests failed after {doomed_addr} died: {failures:#?}",
        failures.len()
    );
    assert_eq!(
        healthy
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/pair/"))
            .count(),
        100
    );
}

// ---------------------------------------------------------------------------------------------
// 4. WebSocket

#[tokio::test]
async fn websocket_echo_through_the_edge_proxy() {
    let fleet = EdgeFleet::start("edge-websocket").await;
    let (echo_port, echo) = crate::websocket::echo_server().await;
    fleet
        .cp
        .put_ok(
            "clusters",
            "echo",
            json!({"endpoints": [{"address": "127.0.0.1", "port": echo_port}]}),
        )
        .await
        .unwrap();
    fleet
        .put_converged(
            "routes",
            "ws",
            json!({"match": {"path_prefix": "/ws"}, "cluster": "echo"}),
        )
        .await;

    let url = fleet.url("/ws").replace("http", "ws");
    let mut ws = crate::websocket::exchange_echoes(&url, "the edge proxy").await;
    ws.close(None).await.unwrap();
    // The server answers the close, and the proxied connection ends cleanly.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(message) = ws.next().await {
            if message.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the WebSocket closed within 5 s");
    echo.abort();
}

// ---------------------------------------------------------------------------------------------
// 5. gRPC over h2c

/// The next `Watch` message's status, or `None` at the end of the stream.
async fn next_watch_status(stream: &mut tonic::Streaming<HealthCheckResponse>) -> Option<i32> {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a Watch message within 5 s")
        .expect("a Watch message, not an error")
        .map(|m| m.status)
}

#[tokio::test]
async fn grpc_unary_and_server_streaming_through_the_edge_proxy() {
    let fleet = EdgeFleet::start("edge-grpc").await;
    // The upstream: gRPC's standard health service on tonic, h2c.
    let (mut reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("tollgate.Test", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_port = listener.local_addr().unwrap().port();
    support::ports::mark_taken(grpc_port);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    fleet
        .cp
        .put_ok(
            "clusters",
            "grpc",
            json!({"endpoints": [{"address": "127.0.0.1", "port": grpc_port}], "http2": true}),
        )
        .await
        .unwrap();
    fleet
        .put_converged(
            "routes",
            "grpc",
            json!({"match": {"path_prefix": "/grpc.health.v1.Health/"}, "cluster": "grpc"}),
        )
        .await;

    // The client speaks HTTP/2 with prior knowledge to the proxy's listener.
    let channel = tonic::transport::Endpoint::from_shared(fleet.url(""))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("an h2c connection to the edge proxy");
    let mut client = HealthClient::new(channel);

    // Unary: the message, then the trailers with grpc-status 0.
    let response = client
        .check(HealthCheckRequest {
            service: "tollgate.Test".to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("Check through the proxy: {status:?}"));
    assert_eq!(
        response
            .metadata()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("0"),
        "Check's trailers: {:?}",
        response.metadata()
    );
    assert_eq!(response.get_ref().status, WireStatus::Serving as i32);
    // A gRPC error travels back too (a trailers-only response).
    let unknown = client
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // Server streaming: each status change is a message, in order, and ending the stream
    // sends grpc-status 0 in the trailers.
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "tollgate.Test".to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("Watch through the proxy: {status:?}"))
        .into_inner();
    let mut seen = vec![next_watch_status(&mut stream).await];
    reporter
        .set_service_status("tollgate.Test", ServingStatus::NotServing)
        .await;
    seen.push(next_watch_status(&mut stream).await);
    reporter
        .set_service_status("tollgate.Test", ServingStatus::Serving)
        .await;
    seen.push(next_watch_status(&mut stream).await);
    reporter.clear_service_status("tollgate.Test").await;
    seen.push(next_watch_status(&mut stream).await);
    assert_eq!(
        seen,
        vec![
            Some(WireStatus::Serving as i32),
            Some(WireStatus::NotServing as i32),
            Some(WireStatus::Serving as i32),
            None,
        ],
        "Watch messages in order, then the end of the stream"
    );
    let trailers = stream
        .trailers()
        .await
        .expect("Watch's trailers")
        .expect("Watch ends with trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("0"),
        "Watch's trailers: {trailers:?}"
    );
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// 7. Graceful drain on SIGTERM

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish() {
    let mut fleet = EdgeFleet::start("edge-drain").await;
    let url = fleet.url("/api/delay/1000");
    let in_flight = tokio::spawn(async move { support::get(&url, None).await });
    let upstream = &fleet.upstream_a;
    eventually(
        "the slow request reaches the upstream",
        Duration::from_secs(10),
        || {
            let arrived = upstream
                .requests()
                .iter()
                .any(|r| r.path == "/api/delay/1000");
            async move {
                anyhow::ensure!(arrived, "not yet");
                Ok(())
            }
        },
    )
    .await;

    let sent = Instant::now();
    fleet.proxy.process().sigterm().unwrap();
    let response = in_flight
        .await
        .expect("the request task")
        .expect("the request in flight gets its response");
    assert_served_by(&response, "a", "the request in flight at SIGTERM");
    let answered = sent.elapsed();
    let exit = fleet
        .proxy
        .process()
        .wait_exit(Duration::from_secs(3))
        .await;
    println!(
        "drain: answered {answered:.1?} after SIGTERM, exited {:.1?} after it: {exit:?}",
        sent.elapsed()
    );
    assert!(
        exit.is_some_and(|s| s.success()),
        "the proxy exits 0 within 3 s of its last response: {exit:?}\n{}",
        fleet.proxy.log()
    );
}

/// Listeners whose port is ready when the change converges, and one whose port is not: a new
/// listener takes requests as soon as its revision converges (its socket is bound before the
/// ACK), and a listener moved to a port another process holds is NACKed, naming the listener
/// and the port, while it goes on serving where it was.
#[tokio::test]
async fn listener_ports_are_bound_before_the_ack_and_a_taken_one_is_nacked() {
    let fleet = EdgeFleet::start("edge-listener-ports").await;

    let second = free_port();
    fleet
        .put_converged(
            "listeners",
            "second",
            json!({"address": "127.0.0.1", "port": second}),
        )
        .await;
    // No retry: converged means the port accepts.
    let response = support::get(&format!("http://127.0.0.1:{second}/api/at-once"), None)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{response:?}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let revision = fleet
        .cp
        .put_ok(
            "listeners",
            "second",
            json!({"address": "127.0.0.1", "port": taken_port}),
        )
        .await
        .unwrap();
    let status = fleet.cp.wait_nacked(revision, CONVERGE).await.unwrap();
    assert_eq!(status["converged"], false);
    let nack = &status["nacked"][0];
    assert_eq!(nack["node_id"], "edge-listener-ports");
    assert_eq!(nack["type"], "listeners");
    let message = nack["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "listener second: cannot bind 127.0.0.1:{taken_port}: "
        )),
        "{nack}"
    );

    // Nothing moved: both listeners serve on their ports, and the taken port is untouched.
    for port in [fleet.port, second] {
        let response = support::get(&format!("http://127.0.0.1:{port}/api/still"), None)
            .await
            .unwrap();
        assert_eq!(response.status, 200, "port {port}: {response:?}");
    }
    let dump = fleet.config_dump().await;
    let held = dump["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "second")
        .unwrap();
    assert_eq!(held["address"], format!("127.0.0.1:{second}"), "{dump}");
    assert_eq!(dump["xds"]["types"]["listeners"]["rejecting"], true);
    drop(taken);
}
