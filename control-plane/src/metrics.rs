//! The control plane's Prometheus metrics: what the store committed and how the fleet took it
//! up. The store and the ADS streams record into one [`Metrics`]; the admin API renders it at
//! `/metrics`. Label values are resource types and node kinds, never names from requests, so
//! the series count stays bounded.

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
        }
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
