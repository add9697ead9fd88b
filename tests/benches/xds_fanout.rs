//! xDS fan-out benchmark: how fast one route change reaches a large fleet.
//!
//! Starts the real `tollgate control-plane` (release build), loads 1,000 routes and 200
//! clusters through the admin API, connects N simulated ADS clients (half SotW, half Delta) that
//! behave like Envoy (subscribe to CDS, EDS, LDS and RDS, ACK every response), waits until the
//! control plane reports all of them converged, then changes one route and measures, per client,
//! the time from the write until its RDS update arrives, and the bytes it received.
//!
//!     cargo build --release --bins && cargo bench -p tollgate-tests --bench xds_fanout
//!
//! `FANOUT_CLIENTS` (default 1000), `FANOUT_ROUTES` (1000), `FANOUT_CLUSTERS` (200) change the size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::json;
use support::ControlPlane;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::envoy::config::core::v3::Node;
use tollgate_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tollgate_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tollgate_proto::type_url;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one simulated client saw.
#[derive(Default)]
struct Observed {
    /// Bytes of every response received (protobuf-encoded size).
    bytes: AtomicU64,
    /// Resources received (Delta: added or updated, plus removals).
    resources: AtomicU64,
    /// When an RDS response of at least this revision arrived.
    rds_at: Mutex<Option<(u64, Instant)>>,
}

fn node(i: usize) -> Node {
    Node {
        id: format!("bench-{i}"),
        cluster: "edge".to_owned(),
        user_agent_name: "envoy".to_owned(),
        ..Default::default()
    }
}

async fn run_sotw_client(
    url: String,
    i: usize,
    clusters: Vec<String>,
    seen: Arc<Observed>,
    connecting: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url).await?;
    drop(connecting);
    let (tx, rx) = mpsc::channel(16);
    let request = |ty: &str, names: &[String], version: &str, nonce: &str, with_node: bool| {
        DiscoveryRequest {
            node: with_node.then(|| node(i)),
            type_url: ty.to_owned(),
            resource_names: names.to_vec(),
            version_info: version.to_owned(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        }
    };
    tx.send(request(type_url::CLUSTER, &[], "", "", true))
        .await?;
    tx.send(request(type_url::ENDPOINT, &clusters, "", "", false))
        .await?;
    tx.send(request(type_url::LISTENER, &[], "", "", false))
        .await?;
    tx.send(request(
        type_url::ROUTE,
        &["public".to_owned()],
        "",
        "",
        false,
    ))
    .await?;
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        seen.bytes
            .fetch_add(response.encoded_len() as u64, Ordering::Relaxed);
        seen.resources
            .fetch_add(response.resources.len() as u64, Ordering::Relaxed);
        if response.type_url == type_url::ROUTE {
            let revision: u64 = response.version_info.parse()?;
            *seen.rds_at.lock().await = Some((revision, Instant::now()));
        }
        let names: Vec<String> = match response.type_url.as_str() {
            type_url::ENDPOINT => clusters.clone(),
            type_url::ROUTE => vec!["public".to_owned()],
            _ => Vec::new(),
        };
        tx.send(request(
            &response.type_url,
            &names,
            &response.version_info,
            &response.nonce,
            false,
        ))
        .await?;
    }
    Ok(())
}

async fn run_delta_client(
    url: String,
    i: usize,
    clusters: Vec<String>,
    seen: Arc<Observed>,
    connecting: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url).await?;
    drop(connecting);
    let (tx, rx) = mpsc::channel(16);
    let request =
        |ty: &str, subscribe: &[String], nonce: &str, with_node: bool| DeltaDiscoveryRequest {
            node: with_node.then(|| node(i)),
            type_url: ty.to_owned(),
            resource_names_subscribe: subscribe.to_vec(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        };
    tx.send(request(type_url::CLUSTER, &[], "", true)).await?;
    tx.send(request(type_url::ENDPOINT, &clusters, "", false))
        .await?;
    tx.send(request(type_url::LISTENER, &[], "", false)).await?;
    tx.send(request(type_url::ROUTE, &["public".to_owned()], "", false))
        .await?;
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        seen.bytes
            .fetch_add(response.encoded_len() as u64, Ordering::Relaxed);
        seen.resources.fetch_add(
            (response.resources.len() + response.removed_resources.len()) as u64,
            Ordering::Relaxed,
        );
        if response.type_url == type_url::ROUTE {
            let revision: u64 = response.system_version_info.parse()?;
            *seen.rds_at.lock().await = Some((revision, Instant::now()));
        }
        tx.send(request(&response.type_url, &[], &response.nonce, false))
            .await?;
    }
    Ok(())
}

/// Waits until `clients` nodes are connected and all hold `revision`.
async fn wait_all_converged(
    cp: &ControlPlane,
    revision: u64,
    clients: usize,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = cp
            .get_json(&format!("/v1/revisions/{revision}/status?wait=5s"))
            .await?;
        if status["nodes"] == clients && status["converged"] == true {
            return Ok(format!(
                "{} of {} acked revision {revision}",
                status["acked"], status["nodes"]
            ));
        }
        anyhow::ensure!(Instant::now() < deadline, "not converged: {status}");
        if status["nodes"] != clients {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn route(i: usize, clusters: usize, header: &str) -> serde_json::Value {
    json!({
        "match": {"path_prefix": format!("/svc/{i}/"), "methods": ["GET", "POST"]},
        "cluster": format!("c{}", i % clusters),
        "timeout_ms": 3000,
        "request_headers": {"set": {"x-route": header}},
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clients = env_usize("FANOUT_CLIENTS", 1000);
    let routes = env_usize("FANOUT_ROUTES", 1000);
    let clusters = env_usize("FANOUT_CLUSTERS", 200);
    println!(
        "xds_fanout: {clients} clients (half SotW, half Delta), {routes} routes, {clusters} clusters"
    );

    let cp = ControlPlane::start().await?;
    let load_started = Instant::now();
    let cluster_names: Vec<String> = (0..clusters).map(|i| format!("c{i}")).collect();
    for (i, name) in cluster_names.iter().enumerate() {
        let a = (i % 250) as u8;
        cp.put_ok(
            "clusters",
            name,
            json!({"endpoints": [{"address": format!("10.1.{a}.1"), "port": 8080}, {"address": format!("10.1.{a}.2"), "port": 8080}]}),
        )
        .await?;
    }
    for i in 0..routes {
        cp.put_ok("routes", &format!("r{i}"), route(i, clusters, "v1"))
            .await?;
    }
    let revision = cp
        .put_ok("listeners", "public", json!({"port": 10080}))
        .await?;
    println!(
        "loaded config through the admin API in {:?} (revision {revision})",
        load_started.elapsed()
    );

    let url = format!("http://127.0.0.1:{}", cp.xds_port());
    let connect_started = Instant::now();
    let limit = Arc::new(Semaphore::new(64));
    let mut observed = Vec::with_capacity(clients);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let seen = Arc::new(Observed::default());
        observed.push((i % 2 == 1, seen.clone()));
        let (url, names) = (url.clone(), cluster_names.clone());
        // Bounded concurrent connects, so the accept backlog never overflows.
        let permit = limit.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let result = if i % 2 == 1 {
                run_delta_client(url, i, names, seen, permit).await
            } else {
                run_sotw_client(url, i, names, seen, permit).await
            };
            if let Err(e) = result {
                eprintln!("client {i}: {e:#}");
            }
        }));
    }
    let status = wait_all_converged(&cp, revision, clients).await?;
    println!(
        "{clients} clients connected and converged in {:?} ({status})",
        connect_started.elapsed()
    );

    let baseline: Vec<(u64, u64)> = observed
        .iter()
        .map(|(_, s)| {
            (
                s.bytes.load(Ordering::Relaxed),
                s.resources.load(Ordering::Relaxed),
            )
        })
        .collect();
    let changed_route = routes / 2;
    let write_started = Instant::now();
    let target = cp
        .put_ok(
            "routes",
            &format!("r{changed_route}"),
            route(changed_route, clusters, "v2"),
        )
        .await?;
    let committed = Instant::now();
    assert_eq!(target, revision + 1);
    wait_all_converged(&cp, target, clients).await?;
    let (mut sotw_latency, mut delta_latency) = (Vec::new(), Vec::new());
    let (mut sotw_bytes, mut delta_bytes, mut delta_resources) =
        (Vec::new(), Vec::new(), Vec::new());
    for ((delta, seen), (bytes0, resources0)) in observed.iter().zip(&baseline) {
        let (got, at) = seen.rds_at.lock().await.expect("every client received RDS");
        anyhow::ensure!(
            got == target,
            "a client's last RDS is revision {got}, expected {target}"
        );
        // Measured from the start of the write request, which commits before it answers: an upper
        // bound on commit-to-client time.
        let latency = at.saturating_duration_since(write_started);
        let bytes = seen.bytes.load(Ordering::Relaxed) - bytes0;
        let resources = seen.resources.load(Ordering::Relaxed) - resources0;
        if *delta {
            delta_latency.push(latency);
            delta_bytes.push(bytes);
            delta_resources.push(resources);
        } else {
            sotw_latency.push(latency);
            sotw_bytes.push(bytes);
        }
    }
    let mut all: Vec<Duration> = sotw_latency.iter().chain(&delta_latency).copied().collect();
    all.sort();
    sotw_latency.sort();
    delta_latency.sort();
    println!();
    println!(
        "one route changed; the write's HTTP round trip took {:?}",
        committed - write_started
    );
    println!(
        "time from the write (commit included) until the client received the new route table:"
    );
    println!("| clients | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (label, latencies) in [
        ("all", &all),
        ("sotw", &sotw_latency),
        ("delta", &delta_latency),
    ] {
        println!(
            "| {label} ({}) | {:.1} ms | {:.1} ms | {:.1} ms |",
            latencies.len(),
            percentile(latencies, 0.5).as_secs_f64() * 1e3,
            percentile(latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    println!(
        "bytes received per client for the change: sotw {:.0}, delta {:.0}",
        avg(&sotw_bytes),
        avg(&delta_bytes)
    );
    println!(
        "resources received per delta client for the change: min {}, max {}",
        delta_resources.iter().min().unwrap_or(&0),
        delta_resources.iter().max().unwrap_or(&0)
    );
    let within_1s = all.iter().filter(|d| **d <= Duration::from_secs(1)).count();
    println!("clients updated within 1 s: {within_1s}/{}", all.len());
    // Close the clients before the control plane goes, so they do not report its exit.
    for task in tasks {
        task.abort();
    }
    Ok(())
}
