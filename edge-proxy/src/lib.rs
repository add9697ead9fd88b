//! The Tollgate edge proxy: the data plane, configured only by the control plane over xDS.
//!
//! The request flow, module by module:
//! - [`xds`] keeps a Delta ADS stream to the control plane; [`config`] validates every resource
//!   into Envoy-equivalent domain types (or a NACK naming the field), and [`snapshot`] joins
//!   them into one immutable snapshot.
//! - [`run`] turns each snapshot into a [`proxy::DataPlane`] (the snapshot plus its
//!   [`upstream::Upstreams`]) swapped behind one atomic pointer, and reconciles [`listeners`].
//! - [`listeners`] accept TCP and TLS (certificate by SNI), speak HTTP/1.1 and HTTP/2, and call
//!   [`proxy::handle`] for every request: route match, the HTTP filters ([`filter`]: CORS, JWT
//!   authentication, API keys, RBAC), redirect / direct response / forward with
//!   retries and timeouts, to an endpoint picked by [`upstream::balancer`] over a pooled
//!   connection.
//! - [`admin`] serves `/ready`, `/config_dump` and `/metrics` ([`metrics`]).
//! - [`trace`] continues the client's W3C trace in a SERVER span per request and a CLIENT span
//!   per upstream attempt, exported over OTLP, when an endpoint is configured.

pub mod access_log;
pub mod admin;
pub mod config;
pub mod filter;
mod header_maps;
pub mod listeners;
pub mod metrics;
pub mod proxy;
pub mod snapshot;
pub mod trace;
pub mod upstream;
pub mod xds;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::filter::rate_limit::Quotas;
use crate::listeners::{Listeners, Reservations};
use crate::metrics::Metrics;
use crate::proxy::{DataPlane, SharedDataPlane};
use crate::snapshot::Snapshot;
use crate::trace::{Tracing, TracingConfig};
use crate::upstream::Upstreams;
use crate::xds::XdsConfig;

/// A map looked up on every request by a config name (a cluster, a route's metric series):
/// foldhash instead of the default SipHash, whose flooding resistance keys that clients do
/// not choose do not need.
pub(crate) type NameMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Everything the edge proxy needs to start.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The control plane and this proxy's identity.
    pub xds: XdsConfig,
    /// Where the admin endpoint listens.
    pub admin_addr: SocketAddr,
    /// On shutdown, how long open connections get to finish their requests.
    pub drain_timeout: Duration,
    /// Whether each request is counted in `/metrics` (by route, cluster and status class, with
    /// its latency). Off, `/metrics` still serves the xDS, endpoint and process series.
    pub request_metrics: bool,
    /// Where spans go; `None` turns tracing off.
    pub tracing: Option<TracingConfig>,
    /// The engine `global` rate-limit policies count with: Redis shared with the fleet and
    /// the control plane's rate-limit service, or (`tollgate dev`) the control plane's own;
    /// `None` counts them in this process.
    pub global_quota: Option<tollgate_quota::Quota>,
}

/// A running proxy's handles, for embedding (`tollgate dev`) and tests.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    /// The admin endpoint's bound address.
    pub admin_addr: SocketAddr,
    /// The data plane in use.
    pub plane: SharedDataPlane,
}

/// Runs the edge proxy until `shutdown` completes, then drains: listeners stop accepting,
/// open connections finish their requests (at most `drain_timeout`), and the xDS stream ends.
/// `started` is called once the admin endpoint is bound.
pub async fn run(
    options: ProxyOptions,
    shutdown: impl Future<Output = ()>,
    started: impl FnOnce(ProxyHandle),
) -> io::Result<()> {
    let plane: SharedDataPlane = Arc::new(ArcSwapOption::empty());
    let metrics = Arc::new(Metrics::new(options.request_metrics));
    let admin_socket = admin::bind(options.admin_addr).await?;
    let admin_addr = admin_socket.local_addr()?;
    let tracing = match &options.tracing {
        Some(config) => {
            let tracing = Tracing::start(config).map_err(io::Error::other)?;
            tracing::info!(endpoint = %config.endpoint, sampling = config.sampling, "tracing on");
            Some(tracing)
        }
        None => None,
    };
    let quotas = match options.global_quota {
        Some(global) => Quotas {
            global,
            local: tollgate_quota::Quota::local(Default::default()),
        },
        None => Quotas::in_process(),
    };
    // Per-policy decisions in `/metrics`; an in-process `global` is the same engine as `local`.
    quotas.global.set_observer(metrics.clone());
    quotas.local.set_observer(metrics.clone());
    metrics.observe_quotas(&quotas);
    let reservations = Reservations::default();
    let xds = xds::spawn_serving(options.xds, reservations.clone());
    let admin_task = tokio::spawn(admin::serve(
        admin_socket,
        admin::AdminState {
            plane: plane.clone(),
            xds: xds.status.clone(),
            metrics: Arc::clone(&metrics),
        },
    ));
    started(ProxyHandle {
        admin_addr,
        plane: plane.clone(),
    });
    let mut listeners = Listeners::new(
        plane.clone(),
        Arc::clone(&metrics),
        tracing.as_ref().map(Tracing::tracer),
        reservations,
    );
    let mut snapshots = xds.snapshots.clone();
    tokio::pin!(shutdown);
    loop {
        let latest = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = latest {
            apply(&plane, &mut listeners, Arc::clone(&snapshot), &quotas).await;
            metrics.snapshot_applied(&snapshot.version);
            xds.mark_applied(snapshot);
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    tracing::error!("xDS client stopped");
                    break;
                }
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("draining");
    listeners.drain(options.drain_timeout).await;
    access_log::flush_all().await;
    if let Some(tracing) = tracing {
        tracing.shutdown().await;
    }
    admin_task.abort();
    xds.task.abort();
    Ok(())
}

/// Makes `snapshot` the data path's config: upstreams first (reusing pools and health), then
/// the pointer swap, then the listeners, so that a new listener never sees an older config.
async fn apply(
    plane: &SharedDataPlane,
    listeners: &mut Listeners,
    snapshot: Arc<Snapshot>,
    quotas: &Quotas,
) {
    let previous = plane.load_full();
    let upstreams = Upstreams::build(&snapshot, previous.as_deref().map(|p| &*p.upstreams));
    plane.store(Some(Arc::new(DataPlane {
        snapshot: Arc::clone(&snapshot),
        upstreams: Arc::new(upstreams),
        quotas: quotas.clone(),
    })));
    // JWKS fetched in the background (`async_fetch`) go through the upstreams just stored.
    filter::jwt::start_background_fetches(&snapshot, plane);
    listeners.apply(&snapshot.listeners).await;
    tracing::info!(version = %snapshot.version, "config applied");
}
