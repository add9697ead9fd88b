//! The xDS client against the real control plane's ADS server, in-process, and against a fake
//! ADS server that sends what the proxy must reject.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tollgate_control_plane::model::{
    Certificate, Cluster, Endpoint, LbPolicy, Listener, ListenerTls, Resource, ResourceKind, Route,
    RouteMatch,
};
use tollgate_control_plane::store::{Change, Store};
use tollgate_control_plane::translate::{NodeGroup, NodeKind, ResourceType, translate};
use tollgate_control_plane::xds::AdsServer;
use tollgate_control_plane::xds::nodes::NodeRegistry;
use tollgate_edge_proxy::listeners::Reservations;
use tollgate_edge_proxy::snapshot::{Kind, Snapshot};
use tollgate_edge_proxy::xds::{self, Backoff, Xds, XdsConfig};
use tollgate_proto::envoy::config::listener::v3 as listener_pb;
use tollgate_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as ResourcePb,
};
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The model

fn cluster(name: &str, port: u16) -> Change {
    Change::Put(Resource::Cluster(Cluster {
        name: name.to_owned(),
        endpoints: vec![Endpoint {
            address: "127.0.0.1".to_owned(),
            port,
            weight: 1,
        }],
        lb_policy: LbPolicy::RoundRobin,
        connect_timeout_ms: 1000,
        http2: false,
        health_check: None,
        outlier_detection: None,
        circuit_breakers: None,
        tls: None,
    }))
}

fn route(name: &str, prefix: &str, cluster: &str) -> Change {
    Change::Put(Resource::Route(Route {
        name: name.to_owned(),
        matcher: RouteMatch {
            path_prefix: Some(prefix.to_owned()),
            ..RouteMatch::default()
        },
        cluster: Some(cluster.to_owned()),
        weighted_clusters: None,
        redirect: None,
        direct_response: None,
        rewrite: None,
        timeout_ms: None,
        retries: None,
        request_headers: Default::default(),
        response_headers: Default::default(),
        priority: 0,
        policies: Vec::new(),
    }))
}

fn listener(name: &str, port: u16, certificates: &[&str]) -> Change {
    Change::Put(Resource::Listener(Listener {
        name: name.to_owned(),
        address: "127.0.0.1".to_owned(),
        port,
        node_cluster: None,
        tls: (!certificates.is_empty()).then(|| ListenerTls {
            certificates: certificates.iter().map(|c| (*c).to_owned()).collect(),
        }),
        access_log: None,
        trusted_proxy_hops: 0,
        policies: Vec::new(),
    }))
}

fn certificate(name: &str, host: &str) -> Change {
    let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    Change::Put(Resource::Certificate(Certificate {
        name: name.to_owned(),
        cert_pem: certified.cert.pem(),
        key_pem: Some(certified.signing_key.serialize_pem()),
    }))
}

fn delete(kind: ResourceKind, name: &str) -> Change {
    Change::Delete {
        kind,
        name: name.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

/// The real ADS server on `listener`; stopped by aborting the task and raising the shutdown
/// flag (which ends its open streams, as a dying control plane would).
struct ControlPlane {
    task: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

impl ControlPlane {
    fn start(store: &Store, registry: &Arc<NodeRegistry>, listener: TcpListener) -> Self {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server = AdsServer::new(
            store.clone(),
            Arc::clone(registry),
            shutdown_rx,
            ("127.0.0.1".to_owned(), 18000),
        );
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(server.into_service())
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self { task, shutdown }
    }

    async fn stop(self) {
        self.shutdown.send_replace(true);
        self.task.abort();
        let _ = self.task.await;
    }
}

fn client(addr: SocketAddr, node_id: &str) -> Xds {
    xds::spawn(client_config(addr, node_id))
}

fn client_config(addr: SocketAddr, node_id: &str) -> XdsConfig {
    let mut config = XdsConfig::new(format!("http://{addr}"), node_id, "edge");
    // Quick reconnects keep the restart test short.
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    config
}

/// Waits until a published snapshot satisfies `pred`; returns it.
async fn snapshot_where(
    xds: &mut Xds,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let found = {
        let waited = tokio::time::timeout(
            DEADLINE,
            xds.snapshots.wait_for(|s| s.as_deref().is_some_and(&pred)),
        )
        .await;
        match waited {
            Ok(Ok(s)) => s.clone(),
            _ => None,
        }
    };
    match found {
        Some(s) => s,
        None => panic!(
            "no snapshot with {what} within {DEADLINE:?}; last: {:#?}; status: {:#?}",
            xds.snapshots.borrow().as_ref().map(|s| &s.versions),
            *xds.status.borrow()
        ),
    }
}

/// Polls `cond` until it holds, or panics after the deadline.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route_clusters(snapshot: &Snapshot, table: &str) -> BTreeSet<String> {
    snapshot.route_tables[table]
        .clusters()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn names<T>(map: &std::collections::BTreeMap<String, T>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------
// Against the real control plane

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_control_plane_through_changes_deletions_and_a_restart() {
    let store = Store::in_memory();
    store
        .write(vec![
            cluster("users", 9001),
            cluster("orders", 9002),
            route("users", "/users", "users"),
            certificate("site", "example.com"),
            listener("public", 18080, &[]),
            listener("secure", 18443, &["site"]),
        ])
        .await
        .unwrap();
    let registry = Arc::new(NodeRegistry::default());
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let cp = ControlPlane::start(&store, &registry, socket);
    let mut proxy = client(addr, "proxy-1");

    // (a) A complete snapshot with everything.
    let snap = snapshot_where(&mut proxy, "both listeners", |s| s.listeners.len() == 2).await;
    assert_eq!(names(&snap.listeners), ["public", "secure"]);
    assert_eq!(names(&snap.route_tables), ["public", "secure"]);
    assert_eq!(names(&snap.clusters), ["orders", "users"]);
    assert_eq!(names(&snap.endpoints), ["orders", "users"]);
    assert_eq!(names(&snap.certificates), ["site"]);
    assert_eq!(
        snap.endpoints["users"].endpoints[0].address,
        "127.0.0.1:9001".parse().unwrap()
    );
    assert_eq!(
        route_clusters(&snap, "public"),
        BTreeSet::from(["users".to_owned()])
    );
    assert_eq!(
        snap.listeners["secure"].references().secrets,
        BTreeSet::from(["site"])
    );
    assert!(snap.versions.values().all(|v| !v.is_empty()));

    // (b) The control plane sees the node converged: a tollgate node speaking delta.
    let revision = store.current().revision;
    eventually("the control plane reports the node converged", || {
        registry.revision_status(revision).converged && registry.list().len() == 1
    })
    .await;
    let node = &registry.list()[0];
    assert_eq!(node.kind, NodeKind::Tollgate);
    assert_eq!(node.protocol, "delta");
    assert_eq!(node.node_id, "proxy-1");
    assert_eq!(node.cluster, "edge");
    assert!(!node.rejecting);
    {
        let status = proxy.status.borrow();
        assert!(status.connected);
        assert!(status.types.values().all(|t| t.nacks == 0 && !t.rejecting));
        assert_eq!(status.types.len(), 5, "{status:#?}");
    }

    // (c) A route change arrives as a new snapshot.
    store
        .write(vec![route("users", "/users", "orders")])
        .await
        .unwrap();
    let snap = snapshot_where(&mut proxy, "the route to orders", |s| {
        route_clusters(s, "public").contains("orders")
    })
    .await;
    assert_eq!(
        route_clusters(&snap, "secure"),
        BTreeSet::from(["orders".to_owned()])
    );

    // (d) Deleting a listener drops it, and the route table and certificate only it used.
    store
        .write(vec![delete(ResourceKind::Listener, "secure")])
        .await
        .unwrap();
    let snap = snapshot_where(&mut proxy, "no secure listener", |s| {
        !s.listeners.contains_key("secure")
    })
    .await;
    assert_eq!(names(&snap.listeners), ["public"]);
    assert_eq!(names(&snap.route_tables), ["public"]);
    assert!(snap.certificates.is_empty());
    // Deleting a cluster drops it and its endpoints.
    store
        .write(vec![delete(ResourceKind::Cluster, "users")])
        .await
        .unwrap();
    let snap = snapshot_where(&mut proxy, "no users cluster", |s| {
        !s.clusters.contains_key("users")
    })
    .await;
    assert_eq!(names(&snap.clusters), ["orders"]);
    assert_eq!(names(&snap.endpoints), ["orders"]);

    // (f) The control plane goes away: the last snapshot stays published.
    let before_restart = Arc::clone(&snap);
    cp.stop().await;
    eventually("the client notices the control plane is gone", || {
        !proxy.status.borrow().connected
    })
    .await;
    let still = proxy.snapshots.borrow().clone().unwrap();
    assert!(Arc::ptr_eq(&still, &before_restart));
    // A change while it is down.
    store.write(vec![cluster("billing", 9003)]).await.unwrap();
    let socket = TcpListener::bind(addr).await.unwrap();
    let cp = ControlPlane::start(&store, &registry, socket);
    eventually("the client reconnects", || {
        proxy.status.borrow().connects >= 2
    })
    .await;
    // A change after the restart.
    store
        .write(vec![route("billing", "/billing", "billing")])
        .await
        .unwrap();
    let snap = snapshot_where(&mut proxy, "the billing cluster and route", |s| {
        s.endpoints.contains_key("billing") && route_clusters(s, "public").contains("billing")
    })
    .await;
    assert_eq!(names(&snap.clusters), ["billing", "orders"]);
    let revision = store.current().revision;
    eventually("the node converges after the restart", || {
        registry.revision_status(revision).converged && registry.list().len() == 1
    })
    .await;

    proxy.task.abort();
    cp.stop().await;
}

/// Long enough for an ACK that was not held to reach the control plane.
const ACK_GRACE: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_client_acks_a_new_snapshot_only_once_the_proxy_applied_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = Store::in_memory();
    store
        .write(vec![
            cluster("users", 9001),
            route("users", "/users", "users"),
            listener("public", port, &[]),
        ])
        .await
        .unwrap();
    let registry = Arc::new(NodeRegistry::default());
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let cp = ControlPlane::start(&store, &registry, socket);
    let mut proxy = xds::spawn_serving(
        client_config(addr, "proxy-applies"),
        Reservations::default(),
    );

    // Published, but nothing applied it: the control plane must not see it converged.
    snapshot_where(&mut proxy, "the listener", |s| s.listeners.len() == 1).await;
    let revision = store.current().revision;
    tokio::time::sleep(ACK_GRACE).await;
    assert!(
        !registry.revision_status(revision).converged,
        "ACKed before the snapshot was applied: {:#?}",
        registry.revision_status(revision)
    );
    // Applying the latest snapshot (more may be published as the last responses land)
    // releases the ACKs.
    eventually("the node converges once its snapshot is applied", || {
        if let Some(latest) = proxy.snapshots.borrow().clone() {
            proxy.mark_applied(latest);
        }
        registry.revision_status(revision).converged
    })
    .await;

    // A change: applying an older snapshot releases nothing; applying the new one does.
    let older = proxy.snapshots.borrow().clone().unwrap();
    store
        .write(vec![route("users", "/people", "users")])
        .await
        .unwrap();
    let changed = snapshot_where(&mut proxy, "the new route", |s| !std::ptr::eq(s, &*older)).await;
    let revision = store.current().revision;
    proxy.mark_applied(older);
    tokio::time::sleep(ACK_GRACE).await;
    assert!(
        !registry.revision_status(revision).converged,
        "ACKed while an older snapshot was in effect"
    );
    proxy.mark_applied(changed);
    eventually("the node converges on the change", || {
        registry.revision_status(revision).converged
    })
    .await;

    proxy.task.abort();
    cp.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Against a fake server that sends a listener the proxy does not support

/// A Delta ADS server that answers the wildcard LDS and CDS requests from a script and records
/// every request.
#[derive(Clone)]
struct FakeAds {
    /// LDS responses to send, one per LDS request that is not a NACK, in order.
    listeners: Arc<Mutex<Vec<DeltaDiscoveryResponse>>>,
    requests: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let _ = this.requests.send(req.clone());
                let answer = |nonce: &str, resources| DeltaDiscoveryResponse {
                    system_version_info: nonce.to_owned(),
                    type_url: req.type_url.clone(),
                    nonce: nonce.to_owned(),
                    resources,
                    ..Default::default()
                };
                // Only first requests (no nonce) and ACKs of LDS get the next scripted response.
                let response = if req.type_url == tollgate_proto::type_url::CLUSTER
                    && req.response_nonce.is_empty()
                {
                    Some(answer("cds-1", Vec::new()))
                } else if req.type_url == tollgate_proto::type_url::LISTENER
                    && req.error_detail.is_none()
                {
                    let mut script = this.listeners.lock().unwrap();
                    (!script.is_empty()).then(|| script.remove(0))
                } else {
                    None
                };
                if let Some(response) = response
                    && tx.send(Ok(response)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A listener exactly as the control plane translates it for a tollgate node, which the
/// proxy accepts, and the same with `use_original_dst` set, which it must reject.
fn listeners() -> (listener_pb::Listener, listener_pb::Listener) {
    let good = translated_listener(18080);
    let mut bad = good.clone();
    bad.use_original_dst = Some(tollgate_proto::google::protobuf::BoolValue { value: true });
    (good, bad)
}

/// The control plane's translation of listener "public" on 127.0.0.1:`port`.
fn translated_listener(port: u16) -> listener_pb::Listener {
    use prost::Message;
    let mut store = tollgate_control_plane::store::StoreSnapshot {
        revision: 1,
        ..Default::default()
    };
    let Change::Put(Resource::Listener(l)) = listener("public", port, &[]) else {
        unreachable!()
    };
    store.listeners.insert("public".into(), l);
    let group = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let xds = translate(&store, &group, &Default::default()).unwrap();
    let body = &xds.resources(ResourceType::Listener)["public"].body;
    listener_pb::Listener::decode(body.value.as_slice()).unwrap()
}

/// A [`FakeAds`] sending the `script`ed LDS responses, on a free port: its address, its task,
/// and every request it receives.
async fn serve_fake(
    script: Vec<DeltaDiscoveryResponse>,
) -> (
    SocketAddr,
    JoinHandle<Result<(), tonic::transport::Error>>,
    mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
) {
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let fake = FakeAds {
        listeners: Arc::new(Mutex::new(script)),
        requests: requests_tx,
    };
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(socket)),
    );
    (addr, server, requests)
}

/// The requests received until the one answering `nonce`, that one last.
async fn requests_until_answer(
    requests: &mut mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    nonce: &str,
) -> Vec<DeltaDiscoveryRequest> {
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let req = requests.recv().await.unwrap();
            let done = req.response_nonce == nonce;
            seen.push(req);
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer to {nonce}"));
    seen
}

/// Waits until the client's status shows its first LDS rejection.
async fn first_lds_rejection_recorded(proxy: &Xds) {
    eventually("the status shows the rejection", || {
        proxy
            .status
            .borrow()
            .types
            .get(&Kind::Listener)
            .is_some_and(|t| t.rejecting && t.nacks == 1)
    })
    .await;
}

fn lds_response(nonce: &str, listener: Option<&listener_pb::Listener>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: nonce.to_owned(),
        type_url: tollgate_proto::type_url::LISTENER.to_owned(),
        nonce: nonce.to_owned(),
        resources: listener
            .map(|l| ResourcePb {
                name: l.name.clone(),
                version: nonce.to_owned(),
                resource: Some(tollgate_proto::pack_any(l)),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_field_is_nacked_and_the_last_good_snapshot_stays() {
    let (_good, bad) = listeners();
    // First an empty LDS (a complete, empty snapshot), then the listener to reject.
    let (addr, server, mut requests) = serve_fake(vec![
        lds_response("lds-1", None),
        lds_response("lds-2", Some(&bad)),
    ])
    .await;
    let mut proxy = client(addr, "proxy-nack");

    let empty = snapshot_where(&mut proxy, "the empty configuration", |s| {
        s.listeners.is_empty() && s.version == "lds-1"
    })
    .await;

    // Read requests until the NACK of lds-2.
    let mut seen = requests_until_answer(&mut requests, "lds-2").await;
    let nack = seen.pop().unwrap();
    // The first request carried the node.
    let node = seen[0].node.as_ref().expect("first request without node");
    assert_eq!(node.user_agent_name, "tollgate");
    assert_eq!(node.id, "proxy-nack");
    assert_eq!(node.cluster, "edge");
    // LDS and CDS were wildcard subscriptions.
    for url in [
        tollgate_proto::type_url::LISTENER,
        tollgate_proto::type_url::CLUSTER,
    ] {
        let first = seen.iter().find(|r| r.type_url == url).unwrap();
        assert!(first.resource_names_subscribe.is_empty() && first.response_nonce.is_empty());
    }
    let detail = nack.error_detail.expect("lds-2 was ACKed");
    assert_eq!(detail.code, 3);
    assert_eq!(
        detail.message,
        "listener public: use_original_dst: not supported"
    );

    // The status says so, and the empty snapshot stays.
    first_lds_rejection_recorded(&proxy).await;
    {
        let status = proxy.status.borrow();
        let lds = &status.types[&Kind::Listener];
        assert_eq!(lds.nacks, 1);
        assert_eq!(lds.acked_version.as_deref(), Some("lds-1"));
        let last = lds.last_nack.as_ref().unwrap();
        assert_eq!(last.nonce, "lds-2");
        assert!(last.message.contains("use_original_dst"));
    }
    let current = proxy.snapshots.borrow().clone().unwrap();
    assert!(Arc::ptr_eq(&current, &empty));

    proxy.task.abort();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_first_listener_publishes_nothing() {
    let (_good, bad) = listeners();
    let (addr, server, mut requests) = serve_fake(vec![lds_response("lds-1", Some(&bad))]).await;
    let proxy = client(addr, "proxy-nack-first");
    let nack = requests_until_answer(&mut requests, "lds-1")
        .await
        .pop()
        .unwrap();
    assert!(
        nack.error_detail
            .unwrap()
            .message
            .contains("use_original_dst")
    );
    // CDS was accepted (empty), LDS rejected: nothing complete, nothing published.
    eventually("the CDS ACK is recorded", || {
        proxy
            .status
            .borrow()
            .types
            .get(&Kind::Cluster)
            .is_some_and(|t| t.acks == 1)
    })
    .await;
    assert!(proxy.snapshots.borrow().is_none());

    proxy.task.abort();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_nacked_naming_the_listener_and_an_acked_one_accepts_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The listener on a free port, then moved to the taken one.
    let (addr, server, mut requests) = serve_fake(vec![
        lds_response("lds-1", Some(&translated_listener(free_port))),
        lds_response("lds-2", Some(&translated_listener(taken_port))),
    ])
    .await;
    let proxy = xds::spawn_serving(client_config(addr, "proxy-bind"), Reservations::default());
    let mut answer = async |nonce: &str| {
        requests_until_answer(&mut requests, nonce)
            .await
            .pop()
            .unwrap()
    };

    let ack = answer("lds-1").await;
    assert_eq!(ack.error_detail, None, "lds-1 was NACKed");
    // Nothing runs listeners here: the socket bound before the ACK takes the connection.
    tokio::net::TcpStream::connect(("127.0.0.1", free_port))
        .await
        .expect("the ACKed listener's port does not accept");

    let nack = answer("lds-2").await;
    let detail = nack.error_detail.expect("lds-2 was ACKed");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.starts_with(&format!(
            "listener public: cannot bind 127.0.0.1:{taken_port}: "
        )),
        "{}",
        detail.message
    );

    // The listener stays where it was (lds-1; this server sends no routes, so no snapshot is
    // published), and its port is still held.
    first_lds_rejection_recorded(&proxy).await;
    assert_eq!(
        proxy.status.borrow().types[&Kind::Listener]
            .acked_version
            .as_deref(),
        Some("lds-1")
    );
    tokio::net::TcpStream::connect(("127.0.0.1", free_port))
        .await
        .expect("the kept listener's port no longer accepts");
    drop(taken);

    proxy.task.abort();
    server.abort();
}
