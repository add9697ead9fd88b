//! The control plane's Prometheus metrics: what the store committed, how the fleet took it up,
//! and what the rate-limit service decided. The store, the ADS streams and the RLS record into
//! one [`Metrics`]; the admin API renders it at `/metrics`. Label values are resource types,
//! node kinds, outcomes and policy names from the store, never values from requests, so the
//! series count stays bounded by the configuration.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::xds::nodes::NodeStatus;

/// Labels naming an xDS resource type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

/// Labels of a store write's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Labels of connected nodes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    kind: &'static str,
    protocol: &'static str,
}

/// Labels of a rate-limit decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    policy: String,
    outcome: &'static str,
}

/// How a store write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new revision was committed.
    Committed,
    /// The write repeated the current state; no revision.
    Unchanged,
    /// Validation or a reference check refused it.
    Rejected,
    /// The backend failed.
    Failed,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The control plane's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pushes: Family<TypeLabel, Counter>,
    acks: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    commit_to_ack: HistogramFamily<TypeLabel>,
    store_writes: Family<OutcomeLabel, Counter>,
    store_write_seconds: Histogram,
    store_revision: Gauge,
    connected_nodes: Family<NodeLabel, Gauge>,
    rls_decisions: Family<DecisionLabel, Counter>,
    quota: Arc<OnceLock<tollgate_quota::Quota>>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let pushes = Family::default();
        let acks = Family::default();
        let nacks = Family::default();
        let commit_to_ack: HistogramFamily<TypeLabel> =
            Family::new_with_constructor(latency_histogram);
        let store_writes = Family::default();
        let store_write_seconds = latency_histogram();
        let store_revision = Gauge::default();
        let connected_nodes = Family::default();
        let rls_decisions = Family::default();
        let quota = Arc::new(OnceLock::new());
        registry.register(
            "xds_pushes",
            "xDS responses sent, by resource type",
            pushes.clone(),
        );
        registry.register(
            "xds_acks",
            "xDS responses accepted by nodes, by resource type",
            acks.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS responses rejected by nodes, by resource type",
            nacks.clone(),
        );
        registry.register(
            "xds_commit_to_ack_seconds",
            "Time from a store revision's commit to a node acknowledging it, by resource type",
            commit_to_ack.clone(),
        );
        registry.register(
            "store_writes",
            "Store writes, by outcome",
            store_writes.clone(),
        );
        registry.register(
            "store_write_duration_seconds",
            "Time to validate and commit a store write",
            store_write_seconds.clone(),
        );
        registry.register(
            "store_revision",
            "The store's current revision",
            store_revision.clone(),
        );
        registry.register(
            "xds_connected_nodes",
            "Connected ADS streams, by node kind and protocol",
            connected_nodes.clone(),
        );
        registry.register(
            "rls_decisions",
            "Rate-limit decisions made for Envoy nodes, by policy and outcome (allowed, limited, \
             failed_open, failed_closed, shadow_limited)",
            rls_decisions.clone(),
        );
        registry.register_collector(Box::new(QuotaBackendCollector(quota.clone())));
        Self {
            registry,
            pushes,
            acks,
            nacks,
            commit_to_ack,
            store_writes,
            store_write_seconds,
            store_revision,
            connected_nodes,
            rls_decisions,
            quota,
        }
    }
}

/// Reports the state of the rate-limit service's counter backend when scraped.
#[derive(Debug)]
struct QuotaBackendCollector(Arc<OnceLock<tollgate_quota::Quota>>);

impl prometheus_client::collector::Collector for QuotaBackendCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(quota) = self.0.get() else {
            return Ok(());
        };
        let snapshot = quota.metrics().snapshot();
        let up = ConstGauge::new(i64::from(snapshot.backend_up));
        up.encode(encoder.encode_descriptor(
            "rls_backend_up",
            "Whether the rate-limit counters (Redis, or in process) can be reached",
            None,
            up.metric_type(),
        )?)?;
        let failures = ConstCounter::new(snapshot.errors + snapshot.timeouts);
        failures.encode(encoder.encode_descriptor(
            "rls_backend_failures",
            "Calls to the rate-limit counters that failed or timed out",
            None,
            failures.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Metrics {
    /// A response of `ty` was sent.
    pub fn pushed(&self, ty: &'static str) {
        self.pushes.get_or_create(&TypeLabel { r#type: ty }).inc();
    }

    /// A node accepted a response of `ty`; `since_commit` is the time since its revision was
    /// committed, when known (not for revisions loaded at start-up).
    pub fn acked(&self, ty: &'static str, since_commit: Option<Duration>) {
        let label = TypeLabel { r#type: ty };
        self.acks.get_or_create(&label).inc();
        if let Some(elapsed) = since_commit {
            self.commit_to_ack
                .get_or_create(&label)
                .observe(elapsed.as_secs_f64());
        }
    }

    /// A node rejected a response of `ty`.
    pub fn nacked(&self, ty: &'static str) {
        self.nacks.get_or_create(&TypeLabel { r#type: ty }).inc();
    }

    /// The RLS decided one descriptor of `policy`.
    pub fn rls_decision(&self, policy: &str, outcome: tollgate_quota::PolicyOutcome) {
        self.rls_decisions
            .get_or_create(&DecisionLabel {
                policy: policy.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Reports the backend of `quota` (the RLS's engine for global policies) when scraped.
    /// Only the first engine given is kept.
    pub fn observe_quota(&self, quota: tollgate_quota::Quota) {
        let _ = self.quota.set(quota);
    }

    /// A store write ended after `elapsed`.
    pub fn store_write(&self, outcome: WriteOutcome, elapsed: Duration) {
        let outcome = match outcome {
            WriteOutcome::Committed => "committed",
            WriteOutcome::Unchanged => "unchanged",
            WriteOutcome::Rejected => "rejected",
            WriteOutcome::Failed => "failed",
        };
        self.store_writes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.store_write_seconds.observe(elapsed.as_secs_f64());
    }

    /// Renders every metric in the Prometheus (OpenMetrics) text format, with the gauges that
    /// describe current state taken now.
    pub fn render(&self, revision: u64, nodes: &[NodeStatus]) -> String {
        self.store_revision.set(revision as i64);
        // Rebuilt on each scrape, so a kind whose last node left drops to zero rather than
        // keeping a stale count.
        self.connected_nodes.clear();
        for kind in ["envoy", "tollgate", "other"] {
            for protocol in ["sotw", "delta"] {
                let count = nodes
                    .iter()
                    .filter(|n| n.protocol == protocol && kind_name(n) == kind)
                    .count();
                self.connected_nodes
                    .get_or_create(&NodeLabel { kind, protocol })
                    .set(count as i64);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn kind_name(node: &NodeStatus) -> &'static str {
    match node.kind {
        crate::translate::NodeKind::Envoy => "envoy",
        crate::translate::NodeKind::Tollgate => "tollgate",
        crate::translate::NodeKind::Other => "other",
    }
}
