//! The node registry: which proxies are connected, and what each has acknowledged or rejected.
//! It feeds `GET /v1/nodes` and `GET /v1/revisions/{n}/status`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use super::stream::TypeStatus;
use crate::translate::NodeKind;

/// One connected ADS stream and what its node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NodeStatus {
    /// The node's `id`.
    pub node_id: String,
    /// The node's `cluster`.
    pub cluster: String,
    /// What the node runs.
    pub kind: NodeKind,
    /// `user_agent_name` and version as the node reported them.
    pub user_agent: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// The peer address of the stream.
    pub peer: Option<String>,
    /// When the stream opened (seconds since the Unix epoch).
    pub connected_at_unix_secs: u64,
    /// The newest store revision the node holds completely.
    pub synced_revision: Option<u64>,
    /// The node currently rejects some of its latest configuration.
    pub rejecting: bool,
    /// Per resource type (`clusters`, `endpoints`, `listeners`, `routes`): acked version,
    /// sync state and the last NACK with its message.
    pub resources: BTreeMap<&'static str, TypeStatus>,
}

/// A node that rejected a revision, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NackedNode {
    /// The node's `id`.
    pub node_id: String,
    /// The rejected resource type.
    #[serde(rename = "type")]
    pub resource_type: &'static str,
    /// The node's error message.
    pub message: String,
}

/// How far the fleet has taken up one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RevisionStatus {
    /// The revision asked about.
    pub revision: u64,
    /// Every connected node holds this revision (or a newer one). True with no nodes.
    pub converged: bool,
    /// Connected nodes.
    pub nodes: usize,
    /// Nodes holding this revision or a newer one.
    pub acked: usize,
    /// Nodes that have not caught up yet and are not rejecting.
    pub pending: Vec<String>,
    /// Nodes rejecting their current configuration.
    pub nacked: Vec<NackedNode>,
}

/// The registry of connected nodes, one entry per ADS stream.
#[derive(Debug)]
pub struct NodeRegistry {
    nodes: Mutex<BTreeMap<u64, NodeStatus>>,
    next_id: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for NodeRegistry {
    fn default() -> Self {
        Self {
            nodes: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            changed: watch::channel(0).0,
        }
    }
}

impl NodeRegistry {
    /// Adds a stream; returns its id.
    pub fn register(&self, status: NodeStatus) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, status);
        self.bump();
        id
    }

    /// Changes a stream's entry.
    pub fn update(&self, id: u64, f: impl FnOnce(&mut NodeStatus)) {
        if let Some(status) = self.lock().get_mut(&id) {
            f(status);
        }
        self.bump();
    }

    /// Removes a stream that ended.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.bump();
    }

    /// Every connected stream, oldest first.
    pub fn list(&self) -> Vec<NodeStatus> {
        self.lock().values().cloned().collect()
    }

    /// How far the connected nodes have taken up `revision`.
    pub fn revision_status(&self, revision: u64) -> RevisionStatus {
        let nodes = self.lock();
        let mut status = RevisionStatus {
            revision,
            converged: false,
            nodes: nodes.len(),
            acked: 0,
            pending: Vec::new(),
            nacked: Vec::new(),
        };
        for node in nodes.values() {
            if node.synced_revision.is_some_and(|r| r >= revision) {
                status.acked += 1;
            } else if node.rejecting {
                for (ty, st) in &node.resources {
                    if let (true, Some(nack)) = (st.rejecting, &st.last_nack) {
                        status.nacked.push(NackedNode {
                            node_id: node.node_id.clone(),
                            resource_type: ty,
                            message: nack.message.clone(),
                        });
                    }
                }
            } else {
                status.pending.push(node.node_id.clone());
            }
        }
        status.converged = status.acked == status.nodes;
        status
    }

    /// Waits until no node is pending on `revision` (all acked it or are rejecting), or until
    /// `timeout`; returns the status at that moment.
    pub async fn wait_revision(&self, revision: u64, timeout: Duration) -> RevisionStatus {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            let status = self.revision_status(revision);
            if status.pending.is_empty() {
                return status;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.revision_status(revision),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, NodeStatus>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
