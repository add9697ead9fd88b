//! The xDS client: how configuration reaches the proxy.
//!
//! This is the first step of the request flow's setup, ahead of any connection: one Delta ADS
//! stream to the control plane feeds LDS, RDS, CDS, EDS and SDS resources through
//! [`crate::config`]'s validation into a [`SnapshotBuilder`]. Every complete, changed state
//! is published as one `Arc<Snapshot>` on a `watch` channel, which the listeners and the data
//! path (later pieces) follow. A response with any invalid resource is NACKed whole, with the
//! validation error as `error_detail`, and the last good snapshot stays. When the stream fails
//! the client reconnects with jittered exponential backoff, resuming from what it holds.
//!
//! [`SnapshotBuilder`]: crate::snapshot::SnapshotBuilder
//!
//! [`client`] runs the stream; this module holds the public handle, the configuration, the
//! status report and the per-resource validation.

pub mod client;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_proto::envoy::config::cluster::v3 as cluster_pb;
use tollgate_proto::envoy::config::endpoint::v3 as endpoint_pb;
use tollgate_proto::envoy::config::listener::v3 as listener_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use tollgate_proto::google::protobuf::Any;

use crate::config::cluster::{Cluster, Endpoints};
use crate::config::listener::{Listener, Secret};
use crate::config::route::RouteTable;
use crate::listeners::Reservations;
use crate::snapshot::{Accepted, Kind, Snapshot};

/// The `user_agent_name` the proxy reports; the control plane tailors resources by it.
pub const USER_AGENT_NAME: &str = "tollgate";

/// The gRPC code sent in a NACK's `error_detail`: `INVALID_ARGUMENT`.
pub const NACK_CODE: i32 = 3;

/// How to reach the control plane, and who this proxy is.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// The control plane's gRPC address, e.g. `http://127.0.0.1:18000`.
    pub endpoint: String,
    /// The node `id`: this proxy instance.
    pub node_id: String,
    /// The node `cluster`: the group of proxies that get the same configuration.
    pub node_cluster: String,
    /// Reconnect delays.
    pub backoff: Backoff,
}

impl XdsConfig {
    /// A configuration with the default backoff.
    pub fn new(
        endpoint: impl Into<String>,
        node_id: impl Into<String>,
        node_cluster: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            node_id: node_id.into(),
            node_cluster: node_cluster.into(),
            backoff: Backoff::default(),
        }
    }
}

/// Exponential reconnect backoff: `initial`, doubling up to `max`; each delay is jittered down
/// to between half and all of its value, so that a fleet does not reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The un-jittered delay before reconnect attempt `attempt` (0: the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// [`Backoff::delay`] with jitter applied.
    pub fn jittered(&self, attempt: u32) -> Duration {
        self.delay(attempt).mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// What the client has accepted and rejected, per resource type: for the admin endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdsStatus {
    /// Whether a stream to the control plane is open.
    pub connected: bool,
    /// Streams opened so far (1 after the first connect; more after reconnects).
    pub connects: u64,
    /// The `version` of the latest published snapshot.
    pub snapshot_version: Option<String>,
    /// Per resource type.
    pub types: BTreeMap<Kind, TypeStatus>,
}

/// One resource type's ACK/NACK state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// `system_version_info` of the last accepted response.
    pub acked_version: Option<String>,
    /// Responses accepted.
    pub acks: u64,
    /// Responses rejected.
    pub nacks: u64,
    /// The last response was rejected; the previous state is kept.
    pub rejecting: bool,
    /// The most recent rejection, kept after a later ACK for the record.
    pub last_nack: Option<Rejected>,
}

/// A rejected response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The response's `system_version_info`.
    pub version: String,
    /// The response's nonce.
    pub nonce: String,
    /// The `error_detail` message sent.
    pub message: String,
}

/// The running client: its snapshots, its status, and its task.
#[derive(Debug)]
pub struct Xds {
    /// The latest complete snapshot; `None` until the first one.
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    /// ACK/NACK and connection status.
    pub status: watch::Receiver<XdsStatus>,
    /// The client task; it runs until aborted.
    pub task: JoinHandle<()>,
    /// Where a serving proxy reports the snapshot it has in effect.
    applied: Option<watch::Sender<Option<Arc<Snapshot>>>>,
}

impl Xds {
    /// Reports `snapshot` (one received from [`Xds::snapshots`]) in effect: the answers that
    /// waited for it go out. Only a client from [`spawn_serving`] waits for this.
    pub fn mark_applied(&self, snapshot: Arc<Snapshot>) {
        if let Some(applied) = &self.applied {
            applied.send_replace(Some(snapshot));
        }
    }
}

/// Starts the xDS client on the current Tokio runtime, for a caller that only reads the
/// snapshots: it ACKs at once and leaves listeners' addresses unchecked.
pub fn spawn(config: XdsConfig) -> Xds {
    start(config, None)
}

/// Starts the xDS client on the current Tokio runtime for a proxy that serves its snapshots:
/// - it binds the socket of every new or moved listener in `reservations` before it ACKs the
///   LDS update that brings it; a socket that cannot be bound is a NACK naming the listener.
///   The proxy hands the same `reservations` to its [`crate::listeners::Listeners`], which run
///   those sockets;
/// - it ACKs a response that published a new snapshot only once the proxy reported that
///   snapshot in effect with [`Xds::mark_applied`], so that an ACK means the proxy obeys it.
pub fn spawn_serving(config: XdsConfig, reservations: Reservations) -> Xds {
    start(config, Some(reservations))
}

fn start(config: XdsConfig, reservations: Option<Reservations>) -> Xds {
    let (snapshot_tx, snapshots) = watch::channel(None);
    let (status_tx, status) = watch::channel(XdsStatus::default());
    let (applied, applied_rx) = match reservations {
        Some(_) => {
            let (tx, rx) = watch::channel(None);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let task = tokio::spawn(client::run(
        config,
        reservations,
        snapshot_tx,
        applied_rx,
        status_tx,
    ));
    Xds {
        snapshots,
        status,
        task,
        applied,
    }
}

/// Decodes and validates one resource of `kind`. The error is the NACK message: the
/// [`crate::config::ConfigError`] text, or why the bytes are not a resource of that kind.
pub fn validate(kind: Kind, name: &str, body: Option<&Any>) -> Result<Accepted, String> {
    let Some(body) = body else {
        return Err(format!("{kind} {name}: resource body is missing"));
    };
    if body.type_url != kind.type_url() {
        return Err(format!(
            "{kind} {name}: type {} where {} was expected",
            body.type_url,
            kind.type_url()
        ));
    }
    fn decode<M: Message + Default>(kind: Kind, name: &str, body: &Any) -> Result<M, String> {
        M::decode(body.value.as_slice()).map_err(|e| format!("{kind} {name}: undecodable: {e}"))
    }
    let accepted = match kind {
        Kind::Listener => {
            let pb: listener_pb::Listener = decode(kind, name, body)?;
            Accepted::Listener(Listener::try_from(&pb).map_err(|e| e.to_string())?)
        }
        Kind::RouteConfig => {
            let pb: route_pb::RouteConfiguration = decode(kind, name, body)?;
            Accepted::RouteTable(RouteTable::try_from(&pb).map_err(|e| e.to_string())?)
        }
        Kind::Cluster => {
            let pb: cluster_pb::Cluster = decode(kind, name, body)?;
            Accepted::Cluster(Cluster::try_from(&pb).map_err(|e| e.to_string())?)
        }
        Kind::Endpoints => {
            let pb: endpoint_pb::ClusterLoadAssignment = decode(kind, name, body)?;
            Accepted::Endpoints(Endpoints::try_from(&pb).map_err(|e| e.to_string())?)
        }
        Kind::Secret => {
            let pb: tls_pb::Secret = decode(kind, name, body)?;
            Accepted::Secret(Secret::try_from(&pb).map_err(|e| e.to_string())?)
        }
    };
    // The resources are keyed by the name xDS gives them; one that calls itself otherwise
    // would be looked up under a name it does not answer to.
    if accepted.name() != name {
        return Err(format!(
            "{kind} {name}: the resource is named {:?}",
            accepted.name()
        ));
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_the_delay() {
        let b = Backoff::default();
        assert_eq!(b.delay(0), Duration::from_millis(250));
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(3), Duration::from_secs(2));
        assert_eq!(b.delay(7), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
        for attempt in 0..10 {
            let d = b.jittered(attempt);
            assert!(d <= b.delay(attempt) && d >= b.delay(attempt) / 2, "{d:?}");
        }
    }

    #[test]
    fn validation_names_the_kind_and_resource() {
        assert_eq!(
            validate(Kind::Listener, "l", None).unwrap_err(),
            "listeners l: resource body is missing"
        );
        let wrong = Any {
            type_url: Kind::Cluster.type_url().into(),
            value: Vec::new(),
        };
        assert!(
            validate(Kind::Listener, "l", Some(&wrong))
                .unwrap_err()
                .contains("where type.googleapis.com/envoy.config.listener.v3.Listener")
        );
    }
}
