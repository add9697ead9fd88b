//! The Delta ADS stream itself: connect, subscribe, validate, ACK or NACK, publish, reconnect.
//!
//! Subscriptions: LDS and CDS as wildcards; RDS and SDS for the names the held listeners use;
//! EDS for the service names of the held EDS clusters. Subscription changes go out before the
//! ACK of the response that caused them, so the control plane sees, say, the EDS names of new
//! clusters before it considers the clusters settled and releases listeners ("make before
//! break"). Named resources no longer referenced are unsubscribed and dropped.
//!
//! When a proxy serves the snapshots, the answer to a response that published a new one waits
//! until the proxy reports that snapshot in effect: an ACK then means "this proxy routes by
//! it", so a change the control plane reports converged is one every proxy obeys. Answers keep
//! their order: one held answer holds the ones after it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tollgate_proto::envoy::config::core::v3::{Node, node::UserAgentVersionType};
use tollgate_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tollgate_proto::google::rpc;
use tonic::transport::Endpoint;
use tracing::Instrument;

use super::{NACK_CODE, Rejected, USER_AGENT_NAME, XdsConfig, XdsStatus, validate};
use crate::listeners::Reservations;
use crate::snapshot::{Accepted, Kind, Snapshot, SnapshotBuilder};

/// Time allowed to open a TCP/HTTP2 connection to the control plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The endpoint is not a valid URI.
    #[error("invalid control plane endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The configured endpoint.
        endpoint: String,
        /// Why it is invalid.
        source: tonic::transport::Error,
    },
    /// The connection could not be opened.
    #[error("connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The stream failed or was refused.
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    /// The control plane closed the stream.
    #[error("stream closed by the control plane")]
    Closed,
}

/// Runs the client until its task is aborted.
pub(super) async fn run(
    config: XdsConfig,
    reservations: Option<Reservations>,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    applied: Option<watch::Receiver<Option<Arc<Snapshot>>>>,
    status: watch::Sender<XdsStatus>,
) {
    let span = tracing::info_span!("xds", node = %config.node_id, endpoint = %config.endpoint);
    let mut client = Client {
        config,
        reservations,
        builder: SnapshotBuilder::new(),
        published: None,
        snapshots,
        latest: None,
        applied,
        status,
    };
    async move {
        let mut attempt = 0;
        loop {
            let mut progressed = false;
            let error = client.stream(&mut progressed).await;
            client.status.send_modify(|s| s.connected = false);
            // A stream that got as far as a response was healthy: start the backoff over.
            if progressed {
                attempt = 0;
            }
            let delay = client.config.backoff.jittered(attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "xds stream ended; reconnecting");
            tokio::time::sleep(delay).await;
        }
    }
    .instrument(span)
    .await;
}

struct Client {
    config: XdsConfig,
    /// Where new listeners' sockets are bound before their LDS update is ACKed, if anywhere.
    reservations: Option<Reservations>,
    builder: SnapshotBuilder,
    /// The builder generation last published.
    published: Option<u64>,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    /// The last snapshot published.
    latest: Option<Arc<Snapshot>>,
    /// The snapshot the proxy has in effect, when a proxy serves them; `None` when nothing
    /// serves them and answers go out at once.
    applied: Option<watch::Receiver<Option<Arc<Snapshot>>>>,
    status: watch::Sender<XdsStatus>,
}

/// One stream's request side and subscriptions.
struct Stream {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    /// Names subscribed per named kind on this stream.
    subscribed: BTreeMap<Kind, BTreeSet<String>>,
    /// ACKs and NACKs waiting, in order, for the latest snapshot to be in effect. Nonces
    /// belong to a stream, so a new stream starts with none.
    held: Vec<DeltaDiscoveryRequest>,
}

impl Stream {
    fn send(&self, req: DeltaDiscoveryRequest) {
        // A send fails only when the stream is gone; the response side notices that too.
        let _ = self.tx.send(req);
    }

    /// Sends an ACK or NACK now if `in_effect` and nothing is held before it; holds it
    /// otherwise.
    fn answer(&mut self, req: DeltaDiscoveryRequest, in_effect: bool) {
        if in_effect && self.held.is_empty() {
            self.send(req);
        } else {
            self.held.push(req);
        }
    }

    /// Sends the held answers.
    fn release_held(&mut self) {
        for req in std::mem::take(&mut self.held) {
            self.send(req);
        }
    }
}

/// Waits for `applied` to change; never, when there is nothing to follow or its sender is gone.
async fn applied_changed(applied: &mut Option<watch::Receiver<Option<Arc<Snapshot>>>>) {
    if let Some(applied) = applied
        && applied.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

impl Client {
    /// Runs one stream until it fails; sets `progressed` once a response arrived.
    async fn stream(&mut self, progressed: &mut bool) -> XdsError {
        let endpoint = match Endpoint::from_shared(self.config.endpoint.clone()) {
            Ok(e) => e.connect_timeout(CONNECT_TIMEOUT),
            Err(source) => {
                return XdsError::Endpoint {
                    endpoint: self.config.endpoint.clone(),
                    source,
                };
            }
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return XdsError::Connect(e),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut stream = Stream {
            tx,
            subscribed: BTreeMap::new(),
            held: Vec::new(),
        };
        self.subscribe_initial(&mut stream);
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel);
        let mut inbound = match grpc
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return status.into(),
        };
        self.status.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
        });
        tracing::info!("xds stream opened");
        let mut applied = self.applied.clone();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(resp)) => {
                        *progressed = true;
                        self.on_response(&mut stream, resp);
                    }
                    Ok(None) => return XdsError::Closed,
                    Err(status) => return status.into(),
                },
                () = applied_changed(&mut applied), if !stream.held.is_empty() => {
                    if self.in_effect() {
                        stream.release_held();
                    }
                }
            }
        }
    }

    /// Whether the proxy routes by the latest published snapshot (always, when nothing
    /// serves the snapshots).
    fn in_effect(&self) -> bool {
        match (&self.applied, &self.latest) {
            (Some(applied), Some(latest)) => applied
                .borrow()
                .as_ref()
                .is_some_and(|applied| Arc::ptr_eq(applied, latest)),
            _ => true,
        }
    }

    /// The first request of each type: the node on the very first; wildcards for LDS and CDS;
    /// the names in use for the others; and what is held already, so that a reconnect only
    /// receives what changed meanwhile.
    fn subscribe_initial(&self, stream: &mut Stream) {
        let mut node = Some(self.node());
        for kind in Kind::ALL {
            let versions = self.builder.versions(kind);
            let req = if kind.is_wildcard() {
                DeltaDiscoveryRequest {
                    type_url: kind.type_url().to_owned(),
                    initial_resource_versions: versions.into_iter().collect(),
                    node: node.take(),
                    ..Default::default()
                }
            } else {
                let wanted = self.builder.wanted(kind);
                if wanted.is_empty() {
                    continue;
                }
                let req = DeltaDiscoveryRequest {
                    type_url: kind.type_url().to_owned(),
                    resource_names_subscribe: wanted.iter().cloned().collect(),
                    initial_resource_versions: versions
                        .into_iter()
                        .filter(|(name, _)| wanted.contains(name))
                        .collect(),
                    node: node.take(),
                    ..Default::default()
                };
                stream.subscribed.insert(kind, wanted);
                req
            };
            stream.send(req);
        }
    }

    fn node(&self) -> Node {
        Node {
            id: self.config.node_id.clone(),
            cluster: self.config.node_cluster.clone(),
            user_agent_name: USER_AGENT_NAME.to_owned(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").to_owned(),
            )),
            ..Default::default()
        }
    }

    fn on_response(&mut self, stream: &mut Stream, resp: DeltaDiscoveryResponse) {
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            let message = format!("type {} is not supported", resp.type_url);
            tracing::warn!(type_url = %resp.type_url, nonce = %resp.nonce, "response of an unknown type rejected");
            stream.answer(nack(&resp, message), self.in_effect());
            return;
        };
        let mut updates = Vec::with_capacity(resp.resources.len());
        let mut errors = Vec::new();
        for r in &resp.resources {
            match validate(kind, &r.name, r.resource.as_ref()) {
                Ok(accepted) => updates.push((r.version.clone(), accepted)),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty()
            && kind == Kind::Listener
            && let Some(reservations) = &self.reservations
        {
            let changes: Vec<_> = updates
                .iter()
                .filter_map(|(_, accepted)| match accepted {
                    Accepted::Listener(l) => Some((l.name(), l.address())),
                    _ => None,
                })
                .collect();
            let held = self.builder.listener_addresses();
            if let Err(e) = reservations.reserve(&held, &changes, &resp.removed_resources) {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            let message = errors.join("; ");
            tracing::warn!(
                %kind,
                version = %resp.system_version_info,
                nonce = %resp.nonce,
                error = %message,
                "configuration rejected; keeping the previous one"
            );
            self.status.send_modify(|s| {
                let st = s.types.entry(kind).or_default();
                st.nacks += 1;
                st.rejecting = true;
                st.last_nack = Some(Rejected {
                    version: resp.system_version_info.clone(),
                    nonce: resp.nonce.clone(),
                    message: message.clone(),
                });
            });
            stream.answer(nack(&resp, message), self.in_effect());
            return;
        }
        let updated = updates.len();
        let changed = self.builder.apply(
            kind,
            &resp.system_version_info,
            updates,
            &resp.removed_resources,
        );
        tracing::debug!(
            %kind,
            version = %resp.system_version_info,
            nonce = %resp.nonce,
            updated,
            removed = resp.removed_resources.len(),
            changed,
            "configuration accepted"
        );
        self.resubscribe(stream);
        self.status.send_modify(|s| {
            let st = s.types.entry(kind).or_default();
            st.acks += 1;
            st.rejecting = false;
            st.acked_version = Some(resp.system_version_info.clone());
        });
        self.publish();
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            ..Default::default()
        };
        stream.answer(ack, self.in_effect());
    }

    /// Brings the named subscriptions in line with what the held resources reference, and
    /// drops held resources nothing references any more.
    fn resubscribe(&mut self, stream: &mut Stream) {
        for kind in Kind::ALL.into_iter().filter(|k| !k.is_wildcard()) {
            let wanted = self.builder.wanted(kind);
            let current = stream.subscribed.entry(kind).or_default();
            let subscribe: Vec<String> = wanted.difference(current).cloned().collect();
            let unsubscribe: Vec<String> = current.difference(&wanted).cloned().collect();
            let dropped = self.builder.retain_wanted(kind);
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            tracing::debug!(%kind, ?subscribe, ?unsubscribe, ?dropped, "subscription changed");
            *current = wanted;
            // No nonce: this request answers no response, it only changes the subscription.
            stream.send(DeltaDiscoveryRequest {
                type_url: kind.type_url().to_owned(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            });
        }
    }

    /// Publishes the held state if it changed since the last publication and is complete.
    fn publish(&mut self) {
        let generation = self.builder.generation();
        if self.published == Some(generation) {
            return;
        }
        match self.builder.complete() {
            Ok(snapshot) => {
                self.published = Some(generation);
                tracing::info!(
                    version = %snapshot.version,
                    listeners = snapshot.listeners.len(),
                    route_tables = snapshot.route_tables.len(),
                    clusters = snapshot.clusters.len(),
                    certificates = snapshot.certificates.len(),
                    "snapshot published"
                );
                let version = snapshot.version.clone();
                let snapshot = Arc::new(snapshot);
                self.latest = Some(Arc::clone(&snapshot));
                self.snapshots.send_replace(Some(snapshot));
                self.status
                    .send_modify(|s| s.snapshot_version = Some(version));
            }
            Err(missing) => tracing::debug!(%missing, "snapshot not published yet"),
        }
    }
}

fn nack(resp: &DeltaDiscoveryResponse, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        error_detail: Some(rpc::Status {
            code: NACK_CODE,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}
