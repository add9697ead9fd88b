//! The edge proxy's Prometheus metrics, beside the request flow: every request is counted by
//! route, cluster and status class when its response headers leave, and every upstream attempt
//! is timed (neither with `--request-metrics false`); open connections, endpoint health and the
//! xDS state are read at scrape time. Label values are
//! names from the config (route, cluster, resource type), never from requests, so the number of
//! series stays bounded by the config.

use crate::NameMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::proxy::DataPlane;
use crate::xds::XdsStatus;

/// Labels of a request: the route that took it and the cluster it went to (`none` for a
/// request without a route, or answered by the proxy itself), and the status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    cluster: String,
    status_class: &'static str,
}

/// Labels of a refused request: the route, the filter and its reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    route: String,
    filter: &'static str,
    reason: &'static str,
}

/// Labels of a quota decision: the rate-limit policy and what the engine decided.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    policy: String,
    outcome: &'static str,
}

/// Labels naming a quota backend: `redis` or `local`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: &'static str,
}

/// Labels naming a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// Labels naming a cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

/// Labels of a cluster's endpoints in one health state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointStateLabels {
    cluster: String,
    state: &'static str,
}

/// Labels naming a snapshot version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// Labels naming an xDS resource type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The label value for "no route" or "no cluster".
pub const NONE: &str = "none";

/// The proxy's metrics; one per process, shared by every connection.
#[derive(Debug)]
pub struct Metrics {
    /// Whether requests and upstream attempts are recorded (`--request-metrics`).
    per_request: bool,
    requests: Family<RequestLabels, Counter>,
    auth_rejections: Family<RejectionLabels, Counter>,
    request_seconds: HistogramFamily<RouteLabel>,
    upstream_seconds: HistogramFamily<ClusterLabel>,
    /// Handles by (route, cluster), so the hot path neither allocates labels nor takes the
    /// families' write locks once a pair has been seen.
    handles: RwLock<NameMap<String, NameMap<String, Arc<RouteHandles>>>>,
    upstream_handles: RwLock<NameMap<String, Histogram>>,
    connections: AtomicU64,
    quota_decisions: Family<QuotaLabels, Counter>,
    /// Handles by policy, in [`QUOTA_OUTCOMES`] order, so counting a decision allocates
    /// nothing once the policy has been seen.
    quota_handles: RwLock<NameMap<String, Arc<[Counter; 5]>>>,
    /// The quota engines, for their backend's state at scrape time.
    quotas: std::sync::OnceLock<crate::filter::rate_limit::Quotas>,
    /// The snapshot in use: its version, and when it was applied (Unix seconds).
    snapshot: RwLock<Option<(String, f64)>>,
}

/// The series one (route, cluster) pair records into.
#[derive(Debug)]
struct RouteHandles {
    /// By status class: 1xx to 5xx.
    by_class: [Counter; 5],
    seconds: Histogram,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Metrics {
    /// Metrics that record every request and upstream attempt when `per_request` is on, and
    /// only the series read at scrape time (xDS, endpoints, connections, process) when off.
    pub fn new(per_request: bool) -> Self {
        Self {
            per_request,
            requests: Family::default(),
            auth_rejections: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            handles: RwLock::default(),
            upstream_handles: RwLock::default(),
            connections: AtomicU64::new(0),
            quota_decisions: Family::default(),
            quota_handles: RwLock::default(),
            quotas: std::sync::OnceLock::new(),
            snapshot: RwLock::new(None),
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every quota decision is counted by policy and outcome, whatever `--request-metrics` says:
/// limits and failures are what operators alert on.
impl tollgate_quota::QuotaObserver for Metrics {
    fn on_decision(&self, policy: &tollgate_quota::Policy, decision: &tollgate_quota::Decision) {
        use tollgate_quota::PolicyOutcome;
        let outcome = PolicyOutcome::of(policy, decision);
        let index = PolicyOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        let cached = self
            .quota_handles
            .read()
            .ok()
            .and_then(|map| map.get(policy.name()).cloned());
        let handles = cached.unwrap_or_else(|| {
            let handles = Arc::new(PolicyOutcome::ALL.map(|outcome| {
                self.quota_decisions
                    .get_or_create(&QuotaLabels {
                        policy: policy.name().to_owned(),
                        outcome: outcome.as_str(),
                    })
                    .clone()
            }));
            if let Ok(mut map) = self.quota_handles.write() {
                map.insert(policy.name().to_owned(), Arc::clone(&handles));
            }
            handles
        });
        handles[index].inc();
    }
}

impl Metrics {
    /// Counts a request whose response headers are leaving, and its time so far.
    pub fn record_request(&self, route: &str, cluster: &str, status: u16, elapsed: Duration) {
        if !self.per_request {
            return;
        }
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let handles = self.route_handles(route, cluster);
        handles.by_class[class].inc();
        handles.seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts a request an authentication or authorization filter refused. Refusals are
    /// counted even with `--request-metrics false`: they are what operators alert on, and they
    /// happen on the slow path anyway.
    pub fn record_rejection(&self, route: &str, filter: &'static str, reason: &'static str) {
        self.auth_rejections
            .get_or_create(&RejectionLabels {
                route: route.to_owned(),
                filter,
                reason,
            })
            .inc();
    }

    /// Records one upstream attempt's time to response headers (or to its failure).
    pub fn record_upstream(&self, cluster: &str, elapsed: Duration) {
        if !self.per_request {
            return;
        }
        let cached = self
            .upstream_handles
            .read()
            .ok()
            .and_then(|map| map.get(cluster).cloned());
        let histogram = cached.unwrap_or_else(|| {
            let histogram = self
                .upstream_seconds
                .get_or_create(&ClusterLabel {
                    cluster: cluster.to_owned(),
                })
                .clone();
            if let Ok(mut map) = self.upstream_handles.write() {
                map.insert(cluster.to_owned(), histogram.clone());
            }
            histogram
        });
        histogram.observe(elapsed.as_secs_f64());
    }

    /// Notes that a new snapshot is in use: its version and when.
    pub fn snapshot_applied(&self, version: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        if let Ok(mut snapshot) = self.snapshot.write() {
            *snapshot = Some((version.to_owned(), now));
        }
    }

    /// Reports the state of `quotas`' backends when scraped.
    pub fn observe_quotas(&self, quotas: &crate::filter::rate_limit::Quotas) {
        let _ = self.quotas.set(quotas.clone());
    }

    /// Downstream connections open now.
    pub fn open_connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// A downstream connection opened; closed when the guard drops.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGauge {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGauge(Arc::clone(self))
    }

    fn route_handles(&self, route: &str, cluster: &str) -> Arc<RouteHandles> {
        if let Ok(map) = self.handles.read()
            && let Some(handles) = map
                .get(route)
                .and_then(|by_cluster| by_cluster.get(cluster))
        {
            return Arc::clone(handles);
        }
        let by_class = STATUS_CLASSES.map(|status_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.to_owned(),
                    cluster: cluster.to_owned(),
                    status_class,
                })
                .clone()
        });
        let seconds = self
            .request_seconds
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .clone();
        let handles = Arc::new(RouteHandles { by_class, seconds });
        if let Ok(mut map) = self.handles.write() {
            map.entry(route.to_owned())
                .or_default()
                .insert(cluster.to_owned(), Arc::clone(&handles));
        }
        handles
    }

    /// The OpenMetrics text: the recorded series, plus what is read now from the data plane
    /// (endpoint health), the xDS client and the process.
    pub fn render(&self, plane: Option<&DataPlane>, xds: &XdsStatus) -> String {
        let mut registry = Registry::with_prefix("tollgate_proxy");
        // The families are cheap handles onto the same series: registering clones of them per
        // scrape keeps the per-request path free of the registry.
        registry.register(
            "requests",
            "Requests answered, by route, cluster and status class",
            self.requests.clone(),
        );
        registry.register(
            "auth_rejections",
            "Requests refused by authentication or authorization, by route, filter and reason",
            self.auth_rejections.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response headers leaving, by route",
            self.request_seconds.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Time from sending an attempt upstream to its response headers, by cluster",
            self.upstream_seconds.clone(),
        );
        let connections = Gauge::<i64>::default();
        connections.set(i64::try_from(self.connections.load(Ordering::Relaxed)).unwrap_or(0));
        registry.register(
            "downstream_connections_active",
            "Client connections open now",
            connections,
        );
        let endpoints = Family::<EndpointStateLabels, Gauge>::default();
        let ejections = Family::<ClusterLabel, Counter>::default();
        if let Some(plane) = plane {
            for cluster in plane.upstreams.iter() {
                ejections
                    .get_or_create(&ClusterLabel {
                        cluster: cluster.name().to_owned(),
                    })
                    .inc_by(cluster.ejections());
                let members = cluster.members();
                for state in ["healthy", "unhealthy", "ejected"] {
                    let count = members
                        .endpoints
                        .iter()
                        .filter(|e| match state {
                            "healthy" => e.health.is_available(),
                            "ejected" => e.health.is_ejected(),
                            _ => e.failed_health_check(),
                        })
                        .count();
                    endpoints
                        .get_or_create(&EndpointStateLabels {
                            cluster: cluster.name().to_owned(),
                            state,
                        })
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
            }
        }
        registry.register(
            "upstream_ejections",
            "Endpoints ejected by outlier detection, by cluster",
            ejections,
        );
        registry.register(
            "upstream_endpoints",
            "Endpoints by cluster and state (healthy: may take traffic; unhealthy: failed its \
             active health check; ejected: by outlier detection)",
            endpoints,
        );
        let connected = Gauge::<i64>::default();
        connected.set(i64::from(xds.connected));
        registry.register(
            "xds_connected",
            "1 while the ADS stream to the control plane is open",
            connected,
        );
        let reconnects = Counter::<u64>::default();
        reconnects.inc_by(xds.connects);
        registry.register("xds_streams", "ADS streams opened since start", reconnects);
        let acks = Family::<TypeLabel, Counter>::default();
        let nacks = Family::<TypeLabel, Counter>::default();
        for (kind, status) in &xds.types {
            let label = TypeLabel {
                r#type: kind.short_name(),
            };
            acks.get_or_create(&label).inc_by(status.acks);
            nacks.get_or_create(&label).inc_by(status.nacks);
        }
        registry.register(
            "quota_decisions",
            "Rate-limit decisions, by policy and outcome (allowed, limited, failed_open, \
             failed_closed, shadow_limited)",
            self.quota_decisions.clone(),
        );
        if let Some(quotas) = self.quotas.get() {
            let up = Family::<BackendLabel, Gauge>::default();
            let failures = Family::<BackendLabel, Counter>::default();
            let mut engines = vec![(&quotas.local, "local")];
            if quotas.global.is_redis() {
                engines.push((&quotas.global, "redis"));
            }
            for (engine, backend) in engines {
                let snapshot = engine.metrics().snapshot();
                let label = BackendLabel { backend };
                up.get_or_create(&label).set(i64::from(snapshot.backend_up));
                failures
                    .get_or_create(&label)
                    .inc_by(snapshot.errors + snapshot.timeouts);
            }
            registry.register(
                "quota_backend_up",
                "Whether the rate-limit counters can be reached, by backend",
                up,
            );
            registry.register(
                "quota_backend_failures",
                "Calls to the rate-limit counters that failed or timed out, by backend",
                failures,
            );
        }
        registry.register("xds_acks", "xDS responses accepted, by type", acks);
        registry.register("xds_nacks", "xDS responses rejected, by type", nacks);
        let snapshot = self.snapshot.read().ok().and_then(|s| s.clone());
        if let Some((version, applied)) = snapshot {
            let last_update = Gauge::<f64, AtomicU64>::default();
            last_update.set(applied);
            registry.register(
                "xds_last_update_timestamp_seconds",
                "When the snapshot in use was applied (Unix time)",
                last_update,
            );
            let info = Family::<VersionLabel, Gauge>::default();
            info.get_or_create(&VersionLabel { version }).set(1);
            registry.register(
                "xds_snapshot",
                "The snapshot in use, by the control plane's version (always 1)",
                info,
            );
        }
        process_metrics(&mut registry);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Counts one open downstream connection until dropped.
#[derive(Debug)]
pub struct ConnectionGauge(Arc<Metrics>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resident memory, CPU time and open file descriptors, from `/proc/self` (Linux).
fn process_metrics(registry: &mut Registry) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return;
    };
    let fields: Vec<&str> = after.split(' ').collect();
    let field = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok());
    // utime and stime (fields 14 and 15 of the whole line) in clock ticks; rss (24) in pages.
    // Linux's USER_HZ is 100 on every architecture it supports, and pages are 4 KiB on the
    // ones this runs on.
    if let (Some(utime), Some(stime)) = (field(11), field(12)) {
        let cpu = Counter::<f64, AtomicU64>::default();
        cpu.inc_by((utime + stime) as f64 / 100.0);
        registry.register("process_cpu_seconds", "CPU time used by the process", cpu);
    }
    if let Some(pages) = field(21) {
        let rss = Gauge::<i64>::default();
        rss.set(i64::try_from(pages * 4096).unwrap_or(i64::MAX));
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            rss,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let open = Gauge::<i64>::default();
        open.set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        registry.register("process_open_fds", "Open file descriptors", open);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tollgate_quota::{Decision, FailureMode, Limit, Outcome, Policy, QuotaObserver as _};

    use super::*;

    #[test]
    fn quota_decisions_are_counted_by_policy_and_outcome_shadow_apart() {
        let metrics = Metrics::new(false);
        let limit = Limit::fixed_window(1, Duration::from_secs(60));
        let enforced = Policy::new("enforced", limit, FailureMode::Closed).unwrap();
        let shadow = Policy::new("trial", limit, FailureMode::Closed)
            .unwrap()
            .with_shadow(true);
        let decided = |outcome| Decision {
            outcome,
            limit: 1,
            window: Duration::from_secs(60),
            remaining: 0,
            reset_after: Duration::ZERO,
            retry_after: None,
        };
        for (policy, outcome) in [
            (&enforced, Outcome::Allowed),
            (&enforced, Outcome::Limited),
            (&enforced, Outcome::Limited),
            (&enforced, Outcome::FailedClosed),
            (&shadow, Outcome::Limited),
            (&shadow, Outcome::FailedClosed),
        ] {
            metrics.on_decision(policy, &decided(outcome));
        }
        let text = metrics.render(None, &XdsStatus::default());
        let count = |policy: &str, outcome: &str| {
            let series = format!(
                "tollgate_proxy_quota_decisions_total{{policy=\"{policy}\",outcome=\"{outcome}\"}} "
            );
            text.lines()
                .find_map(|line| line.strip_prefix(&series))
                .map(|value| value.parse::<u64>().unwrap())
        };
        assert_eq!(count("enforced", "allowed"), Some(1));
        assert_eq!(count("enforced", "limited"), Some(2));
        assert_eq!(count("enforced", "failed_closed"), Some(1));
        assert_eq!(count("enforced", "shadow_limited"), Some(0));
        // A shadow policy refuses nothing: over its limit it is `shadow_limited`, and with its
        // counters unreachable it lets the request through.
        assert_eq!(count("trial", "limited"), Some(0));
        assert_eq!(count("trial", "shadow_limited"), Some(1));
        assert_eq!(count("trial", "failed_open"), Some(1));
        assert_eq!(count("trial", "failed_closed"), Some(0));
    }
}
