//! The ADS server: the gRPC end of the change feed. Each stream follows the store, asks the
//! [`SnapshotCache`] for its node group's resources, and pushes what changed; ACKs, NACKs and
//! sync state go to the [`nodes::NodeRegistry`].

mod delta;
pub mod nodes;
mod sotw;
mod stream;

pub use stream::{Ack, Nack, TypeStatus};

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::envoy::config::core::v3::Node;
use tollgate_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::cache::SnapshotCache;
use crate::store::Store;
use crate::translate::{NodeGroup, NodeKind, ResourceType, TranslateContext};
use nodes::{NodeRegistry, NodeStatus};
use stream::RequestKind;
use stream::StreamState;

/// The aggregated discovery service, SotW and Delta.
#[derive(Debug, Clone)]
pub struct AdsServer {
    store: Store,
    cache: Arc<SnapshotCache>,
    registry: Arc<NodeRegistry>,
    shutdown: watch::Receiver<bool>,
}

impl AdsServer {
    /// A server over `store`, recording nodes in `registry`. Streams end (with `UNAVAILABLE`,
    /// so that clients reconnect elsewhere) once `shutdown` turns true.
    ///
    /// Envoy nodes are told to reach the control plane's gRPC services (ext_authz) at
    /// `grpc_address`.
    pub fn new(
        store: Store,
        registry: Arc<NodeRegistry>,
        shutdown: watch::Receiver<bool>,
        grpc_address: (String, u16),
    ) -> Self {
        let context = TranslateContext {
            grpc_host: grpc_address.0,
            grpc_port: grpc_address.1,
            api_key_secret: store.api_key_hasher().secret().into(),
        };
        Self {
            store,
            cache: Arc::new(SnapshotCache::new(context)),
            registry,
            shutdown,
        }
    }

    /// The tonic service to mount on a gRPC server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.spawn_stream::<SotwProtocol>(request)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.spawn_stream::<DeltaProtocol>(request)))
    }
}

/// What differs between the SotW and Delta streams.
trait Protocol: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static + std::fmt::Debug;
    const NAME: &'static str;
    fn node(req: &Self::Req) -> Option<&Node>;
    fn type_url(req: &Self::Req) -> &str;
    fn error_message(req: &Self::Req) -> Option<&str>;
    fn apply(state: &mut StreamState, req: &Self::Req) -> RequestKind;
    fn poll(state: &mut StreamState) -> Vec<Self::Resp>;
    fn describe(resp: &Self::Resp) -> (&str, &str, usize);
}

struct SotwProtocol;

impl Protocol for SotwProtocol {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const NAME: &'static str = "sotw";
    fn node(req: &Self::Req) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &Self::Req) -> &str {
        &req.type_url
    }
    fn error_message(req: &Self::Req) -> Option<&str> {
        req.error_detail.as_ref().map(|e| e.message.as_str())
    }
    fn apply(state: &mut StreamState, req: &Self::Req) -> RequestKind {
        state.on_sotw_request(req)
    }
    fn poll(state: &mut StreamState) -> Vec<Self::Resp> {
        state.poll_sotw()
    }
    fn describe(resp: &Self::Resp) -> (&str, &str, usize) {
        (&resp.type_url, &resp.nonce, resp.resources.len())
    }
}

struct DeltaProtocol;

impl Protocol for DeltaProtocol {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";
    fn node(req: &Self::Req) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &Self::Req) -> &str {
        &req.type_url
    }
    fn error_message(req: &Self::Req) -> Option<&str> {
        req.error_detail.as_ref().map(|e| e.message.as_str())
    }
    fn apply(state: &mut StreamState, req: &Self::Req) -> RequestKind {
        state.on_delta_request(req)
    }
    fn poll(state: &mut StreamState) -> Vec<Self::Resp> {
        state.poll_delta()
    }
    fn describe(resp: &Self::Resp) -> (&str, &str, usize) {
        (
            &resp.type_url,
            &resp.nonce,
            resp.resources.len() + resp.removed_resources.len(),
        )
    }
}

impl AdsServer {
    fn spawn_stream<P: Protocol>(
        &self,
        request: Request<Streaming<P::Req>>,
    ) -> ResponseStream<P::Resp>
    where
        Streaming<P::Req>: Send,
    {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        // At most one response per type is in flight, so a handful of slots never blocks.
        let (tx, rx) = mpsc::channel(8);
        let server = self.clone();
        tokio::spawn(async move { server.run_stream::<P>(inbound, tx, peer).await });
        Box::pin(ReceiverStream::new(rx))
    }

    async fn run_stream<P: Protocol>(
        self,
        mut inbound: Streaming<P::Req>,
        tx: mpsc::Sender<Result<P::Resp, Status>>,
        peer: Option<SocketAddr>,
    ) {
        let first = match inbound.message().await {
            Ok(Some(req)) => req,
            Ok(None) | Err(_) => return,
        };
        let Some(node) = P::node(&first).cloned() else {
            let _ = tx
                .send(Err(Status::invalid_argument(
                    "the first request on a stream must carry the node",
                )))
                .await;
            return;
        };
        let group = NodeGroup {
            kind: NodeKind::from_user_agent(&node.user_agent_name),
            cluster: node.cluster.clone(),
        };
        let user_agent = match &node.user_agent_version_type {
            Some(tollgate_proto::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(v)) => {
                format!("{}/{}", node.user_agent_name, v)
            }
            _ => node.user_agent_name.clone(),
        };
        let id = self.registry.register(NodeStatus {
            node_id: node.id.clone(),
            cluster: node.cluster.clone(),
            kind: group.kind,
            user_agent,
            protocol: P::NAME,
            peer: peer.map(|p| p.to_string()),
            connected_at_unix_secs: nodes::unix_now(),
            synced_revision: None,
            rejecting: false,
            resources: Default::default(),
        });
        let _registration = Registration {
            registry: &self.registry,
            id,
        };
        let span = tracing::info_span!("ads", node = %node.id, protocol = P::NAME, stream = id);
        async {
            tracing::info!(cluster = %node.cluster, kind = ?group.kind, peer = ?peer, "stream opened");
            self.serve::<P>(inbound, tx, group, id, first).await;
        }
        .instrument(span)
        .await;
    }

    async fn serve<P: Protocol>(
        &self,
        mut inbound: Streaming<P::Req>,
        tx: mpsc::Sender<Result<P::Resp, Status>>,
        group: NodeGroup,
        id: u64,
        first: P::Req,
    ) {
        let mut feed = self.store.subscribe();
        let mut shutdown = self.shutdown.clone();
        let mut state = StreamState::default();
        let metrics = self.store.metrics().clone();
        let snapshot = feed.borrow_and_update().clone();
        state.on_snapshot(self.cache.get(&group, &snapshot));
        let mut next = Some(first);
        loop {
            if let Some(req) = next.take() {
                let kind = P::apply(&mut state, &req);
                let ty = ResourceType::from_type_url(P::type_url(&req));
                match (kind, ty) {
                    (RequestKind::Ack, Some(ty)) => {
                        let since_commit = state
                            .types
                            .get(&ty)
                            .and_then(|st| st.acked_committed_at)
                            .map(|at| at.elapsed());
                        metrics.acked(ty.short_name(), since_commit);
                    }
                    (RequestKind::Nack, Some(ty)) => metrics.nacked(ty.short_name()),
                    _ => {}
                }
                match kind {
                    RequestKind::Nack => tracing::warn!(
                        type_url = P::type_url(&req),
                        error = P::error_message(&req).unwrap_or_default(),
                        "configuration rejected by node"
                    ),
                    RequestKind::Unknown => tracing::debug!(
                        type_url = P::type_url(&req),
                        "request for a type this server does not serve; ignored"
                    ),
                    _ => tracing::trace!(type_url = P::type_url(&req), ?kind, "request"),
                }
            }
            for resp in P::poll(&mut state) {
                let (type_url, nonce, count) = P::describe(&resp);
                tracing::debug!(type_url, nonce, resources = count, "push");
                if let Some(ty) = ResourceType::from_type_url(type_url) {
                    metrics.pushed(ty.short_name());
                }
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            let (synced, rejecting, types) =
                (state.synced_revision(), state.rejecting(), state.status());
            self.registry.update(id, |n| {
                n.synced_revision = synced;
                n.rejecting = rejecting;
                n.resources = types
                    .into_iter()
                    .map(|(ty, st)| (ty.short_name(), st))
                    .collect();
            });
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) => {
                        tracing::info!("stream closed by node");
                        return;
                    }
                    Err(status) => {
                        tracing::info!(code = ?status.code(), message = status.message(), "stream ended");
                        return;
                    }
                },
                changed = feed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let snapshot = feed.borrow_and_update().clone();
                    state.on_snapshot(self.cache.get(&group, &snapshot));
                }
                () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                    let _ = tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                    return;
                }
                () = tx.closed() => return,
            }
        }
    }
}

/// Removes the stream from the registry however the stream ends.
struct Registration<'a> {
    registry: &'a NodeRegistry,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.remove(self.id);
        tracing::debug!(stream = self.id, "stream unregistered");
    }
}

#[cfg(test)]
mod tests;
