//! The proxy's admin endpoint (port 9901 by default), beside the request flow: `/ready` for
//! load balancers and orchestrators, `/config_dump` for people (secrets redacted), `/metrics`
//! for Prometheus.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::cluster::{Discovery, LbPolicy};
use crate::config::listener::AccessLogSink;
use crate::config::route::RouteAction;
use crate::metrics::Metrics;
use crate::proxy::SharedDataPlane;
use crate::snapshot::{Kind, Snapshot};
use crate::xds::XdsStatus;

/// What the admin endpoint reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The config the data path runs on.
    pub plane: SharedDataPlane,
    /// The xDS client's status.
    pub xds: watch::Receiver<XdsStatus>,
    /// The data path's counters.
    pub metrics: Arc<Metrics>,
}

/// Serves the admin endpoint on `socket` until the task is aborted.
pub async fn serve(socket: TcpListener, state: AdminState) {
    let state = Arc::new(state);
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, &request)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The address the admin endpoint was asked to bind, bound.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

fn route(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/ready" => match state.plane.load_full() {
            Some(_) => text(StatusCode::OK, "LIVE\n"),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n"),
        },
        "/metrics" => {
            let status = state.xds.borrow().clone();
            let plane = state.plane.load_full();
            let body = state.metrics.render(plane.as_deref(), &status);
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/config_dump" => {
            let status = state.xds.borrow().clone();
            let body = match state.plane.load_full() {
                Some(plane) => {
                    let mut dump = config_dump(&plane.snapshot, &status);
                    dump["upstreams"] = upstreams_status(&plane.upstreams);
                    dump
                }
                None => json!({"snapshot": null, "xds": xds_status(&status)}),
            };
            let mut response = Response::new(Full::new(Bytes::from(
                serde_json::to_vec_pretty(&body).unwrap_or_default(),
            )));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /ready, /config_dump or /metrics\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

fn xds_status(status: &XdsStatus) -> Value {
    let types: serde_json::Map<String, Value> = status
        .types
        .iter()
        .map(|(kind, t)| {
            (
                kind.short_name().to_owned(),
                json!({
                    "acked_version": t.acked_version,
                    "acks": t.acks,
                    "nacks": t.nacks,
                    "rejecting": t.rejecting,
                    "last_nack": t.last_nack.as_ref().map(|n| json!({
                        "version": n.version,
                        "message": n.message,
                    })),
                }),
            )
        })
        .collect();
    json!({
        "connected": status.connected,
        "connects": status.connects,
        "snapshot_version": status.snapshot_version,
        "types": types,
    })
}

/// The snapshot as JSON. Private keys never appear: certificates show their chain only, and
/// API-key tables only how many consumers and keys they hold (never the HMAC key or hashes).
pub fn config_dump(snapshot: &Snapshot, status: &XdsStatus) -> Value {
    let versions = |kind: Kind, name: &str| {
        snapshot
            .versions
            .get(&kind)
            .and_then(|v| v.get(name))
            .cloned()
    };
    let listeners: Vec<Value> = snapshot
        .listeners
        .values()
        .map(|l| {
            let chains: Vec<Value> = l
                .chains()
                .iter()
                .chain(l.default_chain())
                .map(|c| {
                    json!({
                        "name": c.name,
                        "server_names": c.server_names,
                        "tls_certificate": c.tls.as_ref().map(|t| &t.certificate),
                        "alpn": c.tls.as_ref().map(|t| &t.alpn),
                        "route_config": c.http.route_config_name,
                        "http_filters": c.http.http_filters.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
                        "websocket": c.http.websocket,
                        "access_log": c.http.access_log.as_ref().map(|log| json!({
                            "sink": match &log.sink {
                                AccessLogSink::Stdout => "stdout".to_owned(),
                                AccessLogSink::File(path) => path.display().to_string(),
                            },
                            "fields": log.fields.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>(),
                        })),
                    })
                })
                .collect();
            json!({
                "name": l.name(),
                "version": versions(Kind::Listener, l.name()),
                "address": l.address().to_string(),
                "filter_chains": chains,
            })
        })
        .collect();
    let route_tables: Vec<Value> = snapshot
        .route_tables
        .values()
        .map(|t| {
            let hosts: Vec<Value> = t
                .virtual_hosts()
                .iter()
                .map(|vh| {
                    let routes: Vec<Value> = vh
                        .routes
                        .iter()
                        .map(|r| {
                            let action = match &r.action {
                                RouteAction::Forward(f) => json!({
                                    "forward": f.clusters().map(|(name, weight)| json!({"cluster": name, "weight": weight})).collect::<Vec<_>>(),
                                    "timeout_ms": f.timeout.map(|t| t.as_millis()),
                                    "retries": f.retry_policy.as_ref().map(|p| p.num_retries),
                                }),
                                RouteAction::Redirect(redirect) => {
                                    json!({"redirect": redirect.status.as_u16()})
                                }
                                RouteAction::Direct(direct) => {
                                    json!({"direct_response": direct.status.as_u16()})
                                }
                            };
                            json!({"name": &*r.name, "action": action})
                        })
                        .collect();
                    json!({"name": vh.name, "domains": vh.domains, "routes": routes})
                })
                .collect();
            json!({
                "name": t.name(),
                "version": versions(Kind::RouteConfig, t.name()),
                "virtual_hosts": hosts,
            })
        })
        .collect();
    let clusters: Vec<Value> = snapshot
        .clusters
        .values()
        .map(|c| {
            let discovery = match &c.discovery {
                Discovery::Eds { service_name } => json!({"eds": service_name}),
                Discovery::StrictDns { hosts, .. } => json!({
                    "strict_dns": hosts.iter().map(|h| format!("{}:{}", h.host, h.port)).collect::<Vec<_>>()
                }),
                Discovery::Static { endpoints } => json!({
                    "static": endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>()
                }),
            };
            json!({
                "name": c.name,
                "version": versions(Kind::Cluster, &c.name),
                "discovery": discovery,
                "lb_policy": lb_policy_name(c.lb_policy),
                "connect_timeout_ms": c.connect_timeout.as_millis(),
                "circuit_breakers": {
                    "max_connections": c.circuit_breakers.max_connections,
                    "max_pending_requests": c.circuit_breakers.max_pending_requests,
                    "max_requests": c.circuit_breakers.max_requests,
                    "max_retries": c.circuit_breakers.max_retries,
                },
                "tls": c.tls.is_some(),
                "health_check": c.health_check.as_ref().map(|h| &h.path),
                "outlier_detection": c.outlier_detection.is_some(),
            })
        })
        .collect();
    let endpoints: Vec<Value> = snapshot
        .endpoints
        .values()
        .map(|e| {
            json!({
                "cluster_name": e.cluster_name,
                "version": versions(Kind::Endpoints, &e.cluster_name),
                "endpoints": e.endpoints.iter().map(|ep| json!({"address": ep.address.to_string(), "weight": ep.weight})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let certificates: Vec<Value> = snapshot
        .certificates
        .values()
        .map(|c| {
            json!({
                "name": c.name(),
                "version": versions(Kind::Secret, c.name()),
                "certificate_chain": c.chain_pem(),
                "private_key": "[redacted]",
            })
        })
        .collect();
    let api_key_tables: Vec<Value> = snapshot
        .api_key_tables
        .iter()
        .map(|(name, table)| {
            let (consumers, keys) = table.summary();
            json!({
                "name": name,
                "version": versions(Kind::Secret, name),
                "consumers": consumers,
                "keys": keys,
            })
        })
        .collect();
    json!({
        "version": snapshot.version,
        "xds": xds_status(status),
        "listeners": listeners,
        "route_configs": route_tables,
        "clusters": clusters,
        "endpoints": endpoints,
        "certificates": certificates,
        "api_key_tables": api_key_tables,
    })
}

/// Each cluster's endpoints as the data path sees them now: health, ejection, load.
fn upstreams_status(upstreams: &crate::upstream::Upstreams) -> Value {
    let mut clusters: Vec<Value> = upstreams
        .iter()
        .map(|cluster| {
            let members = cluster.members();
            let endpoints: Vec<Value> = members
                .endpoints
                .iter()
                .map(|e| {
                    json!({
                        "address": e.address.to_string(),
                        "weight": e.weight,
                        "healthy": e.health.is_available(),
                        "failed_active_health_check": e.failed_health_check(),
                        "ejected": e.health.is_ejected(),
                        "active_requests": e.active_requests(),
                    })
                })
                .collect();
            json!({
                "cluster": cluster.name(),
                "open_connections": cluster.open_connections(),
                "endpoints": endpoints,
            })
        })
        .collect();
    clusters.sort_by(|a, b| a["cluster"].as_str().cmp(&b["cluster"].as_str()));
    Value::Array(clusters)
}

fn lb_policy_name(policy: LbPolicy) -> &'static str {
    match policy {
        LbPolicy::RoundRobin => "round_robin",
        LbPolicy::LeastRequest { .. } => "least_request",
        LbPolicy::Random => "random",
        LbPolicy::RingHash { .. } => "ring_hash",
        LbPolicy::Maglev { .. } => "maglev",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::config::filters::api_key::tests::{hash, table};

    #[test]
    fn key_tables_are_dumped_as_counts_only() {
        let snapshot = Snapshot {
            version: "1".into(),
            versions: BTreeMap::from([(
                Kind::Secret,
                BTreeMap::from([("tollgate:api-keys".to_owned(), "v7".to_owned())]),
            )]),
            listeners: BTreeMap::new(),
            route_tables: BTreeMap::new(),
            clusters: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            certificates: BTreeMap::new(),
            api_key_tables: BTreeMap::from([("tollgate:api-keys".to_owned(), Arc::new(table()))]),
        };
        let dump = config_dump(&snapshot, &XdsStatus::default());
        assert_eq!(
            dump["api_key_tables"],
            json!([{"name": "tollgate:api-keys", "version": "v7", "consumers": 2, "keys": 3}])
        );
        let text = dump.to_string();
        assert!(!text.contains(&hash("acme-key-1")));
        assert!(!text.contains("0123456789abcdef"));
    }
}
