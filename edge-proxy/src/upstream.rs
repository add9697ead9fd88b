//! Upstreams: the last stage of the request flow, "cluster → load balancer → pooled
//! connection".
//!
//! [`Upstreams`] is built from each config snapshot. It holds, per cluster, the endpoints with
//! their connection pools and health, a [`balancer::Balancer`], and the circuit-breaker counters.
//! A new snapshot reuses what is unchanged: an endpoint that stays in its cluster keeps its
//! pooled connections, its health and its outlier state; a cluster keeps its counters.

pub mod balancer;
pub mod connector;
pub mod h1;
pub mod health;
pub mod pool;

use crate::NameMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::JoinHandle;

use crate::config::cluster::{
    CircuitBreakers, Cluster, DnsHost, DnsLookupFamily, HEALTHY_PANIC_THRESHOLD_PERCENT,
    Members as ConfigMembers, OutlierDetection, UpstreamProtocol,
};
use crate::proxy::body::PeerBody;
use crate::snapshot::Snapshot;
use balancer::Balancer;
use connector::{ConnectError, ConnectionCount, EndpointConnector};
use hyper::{Request, Response};

/// The body of a request sent upstream: streamed from the client, or buffered so that it can
/// be sent again on a retry.
pub type RequestBody = crate::proxy::body::UpstreamBody;

/// hyper's pooled HTTP client bound to one endpoint: for HTTP/2, whose connections it shares
/// between requests.
pub type SharedClient = Client<EndpointConnector, RequestBody>;

/// How requests reach one endpoint.
#[derive(Debug)]
pub enum EndpointClient {
    /// HTTP/1 through the proxy's own pool: a connection per request in flight.
    Http1(Arc<pool::Http1Pool>),
    /// HTTP/2, multiplexed by hyper's pooled client; also HTTP/1 over TLS that offers `h2` in
    /// its ALPN, where the upstream picks the version.
    Shared(Box<SharedClient>),
}

/// An upstream response and, for HTTP/1, the connection it arrived on: give it back with
/// [`pool::Checkin::release`] once the body has been read to its end.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// Status, headers and the streamed body.
    pub response: Response<PeerBody>,
    /// The HTTP/1 connection lent to this response.
    pub connection: Option<pool::Checkin>,
}

/// Why a request sent to an endpoint got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// From the HTTP/1 pool.
    #[error(transparent)]
    Http1(#[from] pool::SendError),
    /// From hyper's pooled client.
    #[error(transparent)]
    Shared(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// Whether no connection could be opened (refused, unreachable, timed out, or the
    /// connection circuit breaker open: see [`SendError::is_overflow`]).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Http1(pool::SendError::Connect(_)) => true,
            SendError::Http1(pool::SendError::Http(_) | pool::SendError::Exchange(_)) => false,
            SendError::Shared(error) => error.is_connect(),
        }
    }

    /// Whether the cluster's connection circuit breaker refused it.
    pub fn is_overflow(&self) -> bool {
        matches!(
            self.find_cause::<ConnectError>(),
            Some(ConnectError::Overflow)
        )
    }

    /// The first error of type `T` in its source chain, itself included.
    pub fn find_cause<T: std::error::Error + 'static>(&self) -> Option<&T> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(current) = source {
            if let Some(found) = current.downcast_ref::<T>() {
                return Some(found);
            }
            source = current.source();
        }
        None
    }
}

impl EndpointClient {
    /// Sends `request` on a pooled connection.
    pub async fn send(&self, request: Request<RequestBody>) -> Result<UpstreamResponse, SendError> {
        match self {
            EndpointClient::Http1(pool) => {
                let (response, connection) = pool.send(request).await?;
                Ok(UpstreamResponse {
                    response,
                    connection,
                })
            }
            EndpointClient::Shared(client) => Ok(UpstreamResponse {
                response: client.request(request).await?.map(PeerBody::from),
                connection: None,
            }),
        }
    }
}

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Milliseconds since the process started: the clock of ejections, and of the listeners'
/// idle timeouts, kept as plain integers so that atomics can hold them.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Every cluster of a snapshot, ready to take requests.
#[derive(Debug, Default)]
pub struct Upstreams {
    clusters: NameMap<String, Arc<UpstreamCluster>>,
}

impl Upstreams {
    /// Builds the upstreams of `snapshot`, reusing from `previous` what has not changed.
    /// Must run inside a Tokio runtime: DNS clusters and health checks start tasks.
    pub fn build(snapshot: &Snapshot, previous: Option<&Upstreams>) -> Upstreams {
        let clusters = snapshot
            .clusters
            .values()
            .map(|config| {
                let before = previous.and_then(|p| p.clusters.get(&config.name));
                let cluster = UpstreamCluster::build(config, snapshot, before);
                (config.name.clone(), cluster)
            })
            .collect();
        Upstreams { clusters }
    }

    /// The cluster called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<UpstreamCluster>> {
        self.clusters.get(name)
    }

    /// All clusters, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<UpstreamCluster>> {
        self.clusters.values()
    }
}

/// One cluster: its endpoints, balancer and circuit breakers.
#[derive(Debug)]
pub struct UpstreamCluster {
    /// The validated config it was built from.
    pub config: Cluster,
    members: ArcSwap<Members>,
    load: Arc<ClusterLoad>,
    tls: Option<connector::UpstreamTlsConnector>,
    /// The DNS resolver and health checker, started once the cluster exists (they hold it
    /// weakly, and would end at once if started while it was being built).
    tasks: OnceLock<Vec<JoinHandle<()>>>,
}

/// The endpoints a cluster has right now, with their balancer.
#[derive(Debug, Default)]
pub struct Members {
    /// Endpoints, in config order; index i is the balancer's endpoint i.
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Option<Balancer>,
}

/// Work in flight on a cluster, against its circuit breakers. Kept across snapshots.
#[derive(Debug)]
pub struct ClusterLoad {
    /// Whether any request has been routed here (health checks probe less often before).
    had_traffic: AtomicBool,
    requests: AtomicU32,
    retries: AtomicU32,
    /// Outlier ejections so far, for metrics.
    ejections: AtomicU64,
    limits: ArcSwap<CircuitBreakers>,
    connections: Arc<ConnectionCount>,
}

impl ClusterLoad {
    /// Nothing in flight yet, under `limits`.
    fn new(limits: CircuitBreakers) -> Self {
        Self {
            had_traffic: AtomicBool::new(false),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            limits: ArcSwap::from_pointee(limits),
            connections: Arc::new(ConnectionCount::new(
                limits.max_connections,
                limits.max_pending_requests,
            )),
        }
    }
}

/// One upstream endpoint: where to connect, its pool and its health.
#[derive(Debug)]
pub struct Endpoint {
    /// Its address.
    pub address: SocketAddr,
    /// Its load-balancing weight.
    pub weight: u32,
    client: EndpointClient,
    active: AtomicU64,
    /// Health as the active health checker and the outlier detector see it.
    pub health: EndpointHealth,
}

/// An endpoint's health: failed active health checks, and outlier ejections.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// The active health check has marked it unhealthy (new endpoints of a cluster with
    /// health checks start so, until their first passed probe).
    pub failed_check: AtomicBool,
    /// At least one probe has run.
    checked: AtomicBool,
    consecutive_5xx: AtomicU32,
    ejected_until_ms: AtomicU64,
    times_ejected: AtomicU32,
}

impl EndpointHealth {
    /// Whether the outlier detector has it ejected right now.
    pub fn is_ejected(&self) -> bool {
        // 0 when never ejected (or unejected): no clock read on the request path then.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    /// Whether it may take traffic.
    pub fn is_available(&self) -> bool {
        !self.failed_check.load(Ordering::Relaxed) && !self.is_ejected()
    }

    /// Ends an outlier ejection early.
    fn uneject(&self) {
        if self.ejected_until_ms.load(Ordering::Relaxed) != 0 {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            self.consecutive_5xx.store(0, Ordering::Relaxed);
        }
    }
}

/// What the data path learned from one upstream attempt, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not a 5xx.
    Success,
    /// A 5xx response, a reset or a connect failure: Envoy's "consecutive 5xx" counts all three.
    Failure,
}

/// A request in flight on a cluster; counted against `max_requests` until dropped.
#[derive(Debug)]
pub struct RequestSlot(Arc<ClusterLoad>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A retry in flight on a cluster; counted against `max_retries` until dropped.
#[derive(Debug)]
pub struct RetrySlot(Arc<ClusterLoad>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An attempt in flight on an endpoint, for `least_request`; dropped when the attempt ends.
#[derive(Debug)]
pub struct ActiveRequest(Arc<Endpoint>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn try_increment(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl UpstreamCluster {
    /// Whether its endpoints' clients take a request's target in origin form (the path alone,
    /// with `Host`), as the pooled HTTP/1 client does; hyper's pooled client needs it absolute.
    pub fn takes_origin_form(&self) -> bool {
        uses_http1_pool(&self.config)
    }

    fn build(
        config: &Cluster,
        snapshot: &Snapshot,
        before: Option<&Arc<UpstreamCluster>>,
    ) -> Arc<UpstreamCluster> {
        if let Some(before) = before
            && before.config == *config
            && before.has_members_of(config, snapshot)
        {
            // Most snapshots change routes, not clusters: keep tasks and state as they are.
            return Arc::clone(before);
        }
        let limits = config.circuit_breakers;
        let load = match before {
            Some(before) => {
                let load = Arc::clone(&before.load);
                load.limits.store(Arc::new(limits));
                load.connections
                    .set_limits(limits.max_connections, limits.max_pending_requests);
                load
            }
            None => Arc::new(ClusterLoad::new(limits)),
        };
        let tls = health::tls_connector(config);
        // Endpoints keep their pools and health only when the way to connect is unchanged.
        let reusable = before.filter(|b| connection_settings_equal(&b.config, config));
        let previous_endpoints = reusable.map(|b| b.members.load_full());
        let members = match config.members(|service| snapshot.endpoints.get(service)) {
            ConfigMembers::Endpoints(endpoints) => {
                let addresses: Vec<(SocketAddr, u32)> =
                    endpoints.iter().map(|e| (e.address, e.weight)).collect();
                members_for(
                    config,
                    &load,
                    tls.as_ref(),
                    &addresses,
                    previous_endpoints.as_deref(),
                )
            }
            // DNS names are resolved by a task, below; until then, the previous members.
            ConfigMembers::Resolve { .. } => match previous_endpoints {
                Some(previous) => members_for(
                    config,
                    &load,
                    tls.as_ref(),
                    &previous
                        .endpoints
                        .iter()
                        .map(|e| (e.address, e.weight))
                        .collect::<Vec<_>>(),
                    Some(&previous),
                ),
                None => Members::default(),
            },
            ConfigMembers::AwaitingAssignment => Members::default(),
        };
        let cluster = Arc::new(UpstreamCluster {
            config: config.clone(),
            members: ArcSwap::from_pointee(members),
            load,
            tls,
            tasks: OnceLock::new(),
        });
        let weak = Arc::downgrade(&cluster);
        let mut tasks = Vec::new();
        if let crate::config::cluster::Discovery::StrictDns {
            hosts,
            lookup_family,
            refresh_rate,
        } = &config.discovery
        {
            tasks.push(tokio::spawn(resolve_forever(
                weak.clone(),
                hosts.clone(),
                *lookup_family,
                *refresh_rate,
            )));
        }
        if let Some(task) = health::spawn_checker(config, weak) {
            tasks.push(task);
        }
        let _ = cluster.tasks.set(tasks);
        cluster
    }

    /// Whether the members are those `config` has in `snapshot` (DNS clusters always are:
    /// their resolver task keeps them current).
    fn has_members_of(&self, config: &Cluster, snapshot: &Snapshot) -> bool {
        let current = self.members.load();
        match config.members(|service| snapshot.endpoints.get(service)) {
            ConfigMembers::Endpoints(endpoints) => {
                current.endpoints.len() == endpoints.len()
                    && current
                        .endpoints
                        .iter()
                        .zip(endpoints)
                        .all(|(a, b)| a.address == b.address && a.weight == b.weight)
            }
            ConfigMembers::Resolve { .. } => true,
            ConfigMembers::AwaitingAssignment => current.endpoints.is_empty(),
        }
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The endpoints it has now.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Claims a request slot, or `None` when `max_requests` requests are in flight.
    pub fn try_start_request(&self) -> Option<RequestSlot> {
        if !self.load.had_traffic.load(Ordering::Relaxed) {
            self.load.had_traffic.store(true, Ordering::Relaxed);
        }
        let limit = self.load.limits.load().max_requests;
        try_increment(&self.load.requests, limit).then(|| RequestSlot(Arc::clone(&self.load)))
    }

    /// Claims a retry slot, or `None` when `max_retries` retries are in flight.
    pub fn try_start_retry(&self) -> Option<RetrySlot> {
        let limit = self.load.limits.load().max_retries;
        try_increment(&self.load.retries, limit).then(|| RetrySlot(Arc::clone(&self.load)))
    }

    /// Whether any request has been routed to the cluster yet.
    pub fn has_had_traffic(&self) -> bool {
        self.load.had_traffic.load(Ordering::Relaxed)
    }

    /// Endpoints ejected by outlier detection since the cluster first appeared.
    pub fn ejections(&self) -> u64 {
        self.load.ejections.load(Ordering::Relaxed)
    }

    /// Connections open to the cluster now.
    pub fn open_connections(&self) -> u32 {
        self.load.connections.open()
    }

    /// Picks an endpoint for a request, skipping unhealthy and ejected ones, unless fewer
    /// than half are available (Envoy's panic mode, which then uses them all). `hash` is
    /// the request's hash for consistent-hashing policies.
    pub fn pick(&self, hash: Option<u64>) -> Option<(Arc<Endpoint>, ActiveRequest)> {
        let members = self.members.load();
        let balancer = members.balancer.as_ref()?;
        let endpoints = &members.endpoints;
        let available_count = endpoints.iter().filter(|e| e.health.is_available()).count();
        // Envoy's panic threshold: below it, health is ignored and traffic goes to all
        // endpoints, so that a bad health check cannot drain a cluster.
        let panic =
            available_count * 100 < endpoints.len() * HEALTHY_PANIC_THRESHOLD_PERCENT as usize;
        let available = |i: usize| panic || endpoints[i].health.is_available();
        let load = |i: usize| endpoints[i].active.load(Ordering::Relaxed);
        let index = balancer.pick(hash, &available, &load)?;
        let endpoint = Arc::clone(&endpoints[index]);
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        let active = ActiveRequest(Arc::clone(&endpoint));
        Some((endpoint, active))
    }

    /// Records an attempt's outcome on `endpoint` for passive outlier detection.
    pub fn record(&self, endpoint: &Endpoint, outcome: Outcome) {
        health::record_outcome(self, endpoint, outcome);
    }

    fn replace_members(&self, members: Members) {
        self.members.store(Arc::new(members));
    }
}

impl Drop for UpstreamCluster {
    fn drop(&mut self) {
        for task in self.tasks.get().into_iter().flatten() {
            task.abort();
        }
    }
}

impl Endpoint {
    /// The pooled client that sends requests to this endpoint.
    pub fn client(&self) -> &EndpointClient {
        &self.client
    }

    /// Whether the active health check has it out.
    pub fn failed_health_check(&self) -> bool {
        self.health.failed_check.load(Ordering::Relaxed)
    }

    /// Attempts in flight on it now.
    pub fn active_requests(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Whether two cluster configs connect to endpoints the same way, so pools can be kept.
fn connection_settings_equal(a: &Cluster, b: &Cluster) -> bool {
    a.connect_timeout == b.connect_timeout && a.protocol == b.protocol && a.tls == b.tls
}

fn members_for(
    config: &Cluster,
    load: &Arc<ClusterLoad>,
    tls: Option<&connector::UpstreamTlsConnector>,
    addresses: &[(SocketAddr, u32)],
    previous: Option<&Members>,
) -> Members {
    let endpoints: Vec<Arc<Endpoint>> = addresses
        .iter()
        .map(|&(address, weight)| {
            let reused = previous.and_then(|p| {
                p.endpoints
                    .iter()
                    .find(|e| e.address == address && e.weight == weight)
            });
            match reused {
                Some(endpoint) => Arc::clone(endpoint),
                None => {
                    let health = EndpointHealth::default();
                    // Unhealthy until the first probe passes, as in Envoy; panic mode still
                    // sends traffic while a whole new cluster waits for its first probes.
                    health
                        .failed_check
                        .store(config.health_check.is_some(), Ordering::Relaxed);
                    Arc::new(Endpoint {
                        address,
                        weight,
                        client: endpoint_client(config, load, tls, address),
                        active: AtomicU64::new(0),
                        health,
                    })
                }
            }
        })
        .collect();
    let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
    let balancer = (!endpoints.is_empty()).then(|| Balancer::new(config.lb_policy, &weights));
    Members {
        endpoints,
        balancer,
    }
}

fn endpoint_client(
    config: &Cluster,
    load: &Arc<ClusterLoad>,
    tls: Option<&connector::UpstreamTlsConnector>,
    address: SocketAddr,
) -> EndpointClient {
    let connector = EndpointConnector::new(
        address,
        config.connect_timeout,
        tls.cloned(),
        Arc::clone(&load.connections),
    );
    if uses_http1_pool(config) {
        return EndpointClient::Http1(pool::Http1Pool::new(connector, POOL_IDLE_TIMEOUT));
    }
    EndpointClient::Shared(Box::new(
        client_builder(config.protocol)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector),
    ))
}

/// Whether a cluster's endpoints speak HTTP/1 through [`pool::Http1Pool`]: HTTP/1, unless TLS
/// may negotiate HTTP/2, which hyper's pooled client handles.
fn uses_http1_pool(config: &Cluster) -> bool {
    let may_negotiate_h2 = config
        .tls
        .as_ref()
        .is_some_and(|tls| tls.alpn.iter().any(|protocol| protocol == "h2"));
    config.protocol == UpstreamProtocol::Http1 && !may_negotiate_h2
}

/// A pooled-client builder for one endpoint's connections in `protocol`. The caller sets
/// `Host` (`:authority` comes from the URI), so the client does not.
fn client_builder(protocol: UpstreamProtocol) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false)
        .http2_only(protocol == UpstreamProtocol::Http2);
    builder
}

/// Resolves a `STRICT_DNS` cluster's names every `refresh_rate`, replacing its members when
/// the addresses change. Ends when the cluster is dropped.
async fn resolve_forever(
    cluster: Weak<UpstreamCluster>,
    hosts: Vec<DnsHost>,
    family: DnsLookupFamily,
    refresh_rate: Duration,
) {
    loop {
        let mut addresses = Vec::new();
        let mut failed = false;
        for host in &hosts {
            match tokio::net::lookup_host((host.host.as_str(), host.port)).await {
                Ok(found) => {
                    let found: Vec<SocketAddr> = found.collect();
                    for address in filter_family(found, family) {
                        if !addresses.iter().any(|(a, _)| *a == address) {
                            addresses.push((address, host.weight));
                        }
                    }
                }
                Err(error) => {
                    failed = true;
                    tracing::warn!(host = %host.host, %error, "DNS resolution failed");
                }
            }
        }
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let current = cluster.members();
        let unchanged = current.endpoints.len() == addresses.len()
            && current
                .endpoints
                .iter()
                .zip(&addresses)
                .all(|(e, (a, w))| e.address == *a && e.weight == *w);
        // A failed lookup keeps the last good addresses, as Envoy does.
        if !(unchanged || failed && addresses.is_empty()) {
            let members = members_for(
                &cluster.config,
                &cluster.load,
                cluster.tls.as_ref(),
                &addresses,
                Some(&current),
            );
            cluster.replace_members(members);
        }
        drop(cluster);
        tokio::time::sleep(refresh_rate).await;
    }
}

fn filter_family(found: Vec<SocketAddr>, family: DnsLookupFamily) -> Vec<SocketAddr> {
    let (v4, v6): (Vec<SocketAddr>, Vec<SocketAddr>) =
        found.into_iter().partition(SocketAddr::is_ipv4);
    match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::Auto if !v6.is_empty() => v6,
        DnsLookupFamily::Auto => v4,
        DnsLookupFamily::V4Preferred if !v4.is_empty() => v4,
        DnsLookupFamily::V4Preferred => v6,
        DnsLookupFamily::All => v4.into_iter().chain(v6).collect(),
    }
}

/// Ejects `endpoint` for `base_ejection_time × times ejected` (at most `max_ejection_time`),
/// unless that would put more than `max_ejection_percent` of the cluster out; as in Envoy, the
/// endpoint being ejected counts, so a small cluster with a low percentage ejects nothing.
fn eject(members: &Members, endpoint: &Endpoint, detection: &OutlierDetection) -> bool {
    let ejected = members
        .endpoints
        .iter()
        .filter(|e| e.health.is_ejected())
        .count();
    let total = members.endpoints.len().max(1);
    if (ejected + 1) * 100 > total * detection.max_ejection_percent as usize {
        return false;
    }
    let times = endpoint
        .health
        .times_ejected
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    let duration = detection
        .base_ejection_time
        .saturating_mul(times)
        .min(detection.max_ejection_time);
    let until = now_ms().saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    endpoint
        .health
        .ejected_until_ms
        .store(until, Ordering::Relaxed);
    endpoint.health.consecutive_5xx.store(0, Ordering::Relaxed);
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::cluster::{Discovery, Endpoint as ConfigEndpoint, LbPolicy};

    fn cluster(endpoints: usize, outlier: Option<OutlierDetection>) -> Cluster {
        Cluster {
            name: "c".to_owned(),
            discovery: Discovery::Static {
                endpoints: (0..endpoints)
                    .map(|i| ConfigEndpoint {
                        address: SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
                        weight: 1,
                    })
                    .collect(),
            },
            connect_timeout: Duration::from_secs(1),
            lb_policy: LbPolicy::RoundRobin,
            protocol: UpstreamProtocol::Http1,
            circuit_breakers: CircuitBreakers::default(),
            health_check: None,
            outlier_detection: outlier,
            tls: None,
        }
    }

    fn members(config: &Cluster) -> Members {
        let load = Arc::new(ClusterLoad::new(config.circuit_breakers));
        let Discovery::Static { endpoints } = &config.discovery else {
            unreachable!("the test clusters are static")
        };
        let addresses: Vec<(SocketAddr, u32)> =
            endpoints.iter().map(|e| (e.address, e.weight)).collect();
        members_for(config, &load, None, &addresses, None)
    }

    fn detection(max_ejection_percent: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 2,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent,
        }
    }

    #[test]
    fn ejection_respects_max_ejection_percent_counting_the_candidate() {
        let config = cluster(10, Some(detection(10)));
        let members = members(&config);
        assert!(eject(&members, &members.endpoints[0], &detection(10)));
        assert!(members.endpoints[0].health.is_ejected());
        // A second ejection would put 20 % out.
        assert!(!eject(&members, &members.endpoints[1], &detection(10)));
        // With 10 % a cluster of fewer than 10 endpoints ejects none, as in Envoy.
        let small = cluster(2, Some(detection(10)));
        let small_members = self::members(&small);
        assert!(!eject(
            &small_members,
            &small_members.endpoints[0],
            &detection(10)
        ));
        assert!(eject(
            &small_members,
            &small_members.endpoints[0],
            &detection(50)
        ));
    }

    #[test]
    fn ejections_grow_with_each_ejection_up_to_the_maximum() {
        let config = cluster(1, None);
        let members = members(&config);
        let endpoint = &members.endpoints[0];
        let mut last = 0;
        for _ in 0..3 {
            endpoint.health.uneject();
            assert!(eject(&members, endpoint, &detection(100)));
            let until = endpoint.health.ejected_until_ms.load(Ordering::Relaxed) - now_ms();
            assert!(until > last, "{until} ms after {last} ms");
            last = until;
        }
        for _ in 0..20 {
            endpoint.health.uneject();
            eject(&members, endpoint, &detection(100));
        }
        let until = endpoint.health.ejected_until_ms.load(Ordering::Relaxed) - now_ms();
        assert!(until <= 300_000, "capped at max_ejection_time: {until} ms");
    }

    #[tokio::test]
    async fn unhealthy_endpoints_get_no_traffic_until_panic_mode() {
        let config = cluster(3, None);
        let upstream = UpstreamCluster {
            members: ArcSwap::from_pointee(members(&config)),
            load: Arc::new(ClusterLoad::new(config.circuit_breakers)),
            config,
            tls: None,
            tasks: OnceLock::new(),
        };
        let endpoints = upstream.members().endpoints.clone();
        endpoints[0]
            .health
            .failed_check
            .store(true, Ordering::Relaxed);
        for _ in 0..30 {
            let (picked, _active) = upstream.pick(None).unwrap();
            assert_ne!(picked.address, endpoints[0].address);
        }
        // Two of three out: below the 50 % panic threshold every endpoint takes traffic.
        endpoints[1]
            .health
            .failed_check
            .store(true, Ordering::Relaxed);
        let picked: std::collections::HashSet<SocketAddr> = (0..30)
            .map(|_| upstream.pick(None).unwrap().0.address)
            .collect();
        assert_eq!(picked.len(), 3);
    }

    #[test]
    fn request_slots_follow_max_requests() {
        let load = ClusterLoad::new(CircuitBreakers {
            max_requests: 2,
            ..CircuitBreakers::default()
        });
        assert!(try_increment(&load.requests, 2));
        assert!(try_increment(&load.requests, 2));
        assert!(!try_increment(&load.requests, 2));
    }
}
