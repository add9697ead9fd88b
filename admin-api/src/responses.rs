//! Response bodies: typed, so the OpenAPI document describes exactly what is serialized.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_control_plane::model::{
    Certificate, CertificateInfo, Cluster, Consumer, Listener, Policy, ResourceKind, Route,
};
use tollgate_control_plane::store::{ChangeOp, ChangedResource};
use tollgate_control_plane::xds::nodes::{NodeStatus, RevisionStatus};
use utoipa::ToSchema;

/// One page of a resource list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    /// The store revision the page was read at.
    pub revision: u64,
    /// Resources, ordered by name.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; null on the last page.
    pub next: Option<String>,
}

macro_rules! written {
    ($name:ident, $field:ident, $spec:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $name {
            /// The store revision after the write (unchanged when nothing changed).
            pub revision: u64,
            /// Whether the write changed anything.
            pub changed: bool,
            /// The resource as stored.
            pub $field: $spec,
        }
    };
}

written!(
    ClusterWritten,
    cluster,
    Cluster,
    "A cluster was created or replaced."
);
written!(
    RouteWritten,
    route,
    Route,
    "A route was created or replaced."
);
written!(
    ListenerWritten,
    listener,
    Listener,
    "A listener was created or replaced."
);
written!(
    CertificateWritten,
    certificate,
    CertificateView,
    "A certificate was created or replaced."
);

written!(
    PolicyWritten,
    policy,
    Policy,
    "A policy was created or replaced."
);

written!(
    ConsumerWritten,
    consumer,
    ConsumerView,
    "A consumer was created or replaced."
);

/// A consumer as the API shows it: API keys only as short ids, never the keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerView {
    /// Unique name.
    pub name: String,
    /// Quota plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Groups the consumer belongs to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Free-form labels.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Short ids of the consumer's API keys (a prefix of each keyed hash).
    pub api_key_ids: Vec<String>,
}

impl ConsumerView {
    /// The view of a stored consumer.
    pub fn of(consumer: &Consumer) -> Self {
        Self {
            name: consumer.name.clone(),
            tier: consumer.tier.clone(),
            groups: consumer.groups.clone(),
            metadata: consumer.metadata.clone(),
            api_key_ids: consumer.api_key_ids(),
        }
    }
}

/// A certificate as the API shows it: the chain and what it says, never the private key.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateView {
    /// Unique name.
    pub name: String,
    /// PEM certificate chain.
    pub cert_pem: String,
    /// Names, validity and fingerprint of the leaf certificate.
    #[serde(flatten)]
    pub info: CertificateInfo,
}

impl CertificateView {
    /// The view of a stored certificate (`None` if it cannot be read, which validation prevents).
    pub fn of(certificate: &Certificate) -> Option<Self> {
        Some(Self {
            name: certificate.name.clone(),
            cert_pem: certificate.cert_pem.clone(),
            info: certificate.info().ok()?,
        })
    }
}

/// The store revision after a write.
#[derive(Debug, Serialize, ToSchema)]
pub struct Written {
    /// The new store revision.
    pub revision: u64,
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// The current store revision.
    pub revision: u64,
}

/// Connected proxies.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// One entry per ADS stream.
    pub nodes: Vec<NodeStatus>,
}

/// How far the fleet has taken up a revision.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevisionStatusBody {
    /// The status itself.
    #[serde(flatten)]
    pub status: RevisionStatus,
    /// The store's current revision.
    pub current_revision: u64,
}

/// One revision in the history.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevisionEntry {
    /// The revision number.
    pub revision: u64,
    /// When it was committed (RFC 3339, UTC).
    pub committed_at: String,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub committed_at_ms: u64,
    /// What made it: `api`, `config` or `rollback to N`.
    pub origin: String,
    /// What changed.
    pub changes: Vec<ChangedResource>,
}

/// The revision history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevisionHistory {
    /// The current revision.
    pub current: u64,
    /// Revisions, newest first.
    pub items: Vec<RevisionEntry>,
    /// Pass as `before` to get older revisions; null when there are none.
    pub next: Option<u64>,
}

/// The outcome of a rollback.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolledBack {
    /// The new revision (the current one if nothing changed).
    pub revision: u64,
    /// The revision whose configuration was restored.
    pub rolled_back_to: u64,
    /// What changed.
    pub changes: Vec<ChangedResource>,
}

/// One resource changed by a whole-config write.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigChange {
    /// The resource kind.
    pub kind: ResourceKind,
    /// The resource name.
    pub name: String,
    /// How it changed.
    pub op: ChangeOp,
    /// Dry runs: the resource as it is (absent when it would be created).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    /// Dry runs: the resource as it would be (absent when it would be deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// The outcome of `PUT /v1/config`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigApplied {
    /// The store revision after the write (or the current one on a dry run).
    pub revision: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// What changed (or would change).
    pub changes: Vec<ConfigChange>,
}

/// Every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_json`, `invalid_field`, `not_found`, `reference_conflict`,
    /// `unauthorized`, `forbidden`, `payload_too_large`, `internal`.
    pub code: String,
    /// Path of the offending field, e.g. `endpoints[0].port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Human-readable explanation.
    pub message: String,
}
