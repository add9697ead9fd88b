//! Upstream clusters: CDS `Cluster`s and EDS `ClusterLoadAssignment`s turned into the proxy's
//! own [`Cluster`] and [`Endpoints`].
//!
//! This is the last step of a request's trip through the config. Routing picks a cluster name
//! ([`super::route::Forward::pick_cluster`]); the upstream layer looks that name up in the
//! snapshot and finds a [`Cluster`]. The cluster says where the endpoints come from
//! ([`Discovery`]), how to pick one ([`LbPolicy`]), how long a connect may take, which HTTP
//! version to speak, when to refuse work ([`CircuitBreakers`]), how endpoints are checked for
//! health, actively ([`HealthCheck`]) and passively ([`OutlierDetection`]), and whether they
//! are reached over TLS ([`UpstreamTls`]). For EDS clusters the endpoints arrive separately, as
//! [`Endpoints`]; [`Cluster::members`] puts the two together.
//!
//! Everything here is data: no load balancer, health checker, DNS lookup or connection lives
//! in this module.
//!
//! As in the rest of [`super`], a field that would change behaviour and is not implemented
//! rejects the resource, naming the field. Envoy's defaults are spelled out where a field is
//! unset (`connect_timeout` 5 s, circuit-breaker thresholds 1024, ring sizes, the health
//! check's 60 s no-traffic interval, the 200-only expected status, …), so the data path
//! applies the same limits Envoy would, without reading the proto.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use prost::{Message, Name};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{PemObject as _, SectionKind};
use tollgate_proto::envoy::config::cluster::v3 as cluster_pb;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::endpoint::v3 as endpoint_pb;
use tollgate_proto::envoy::extensions::transport_sockets::raw_buffer::v3 as raw_buffer_pb;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use tollgate_proto::envoy::extensions::upstreams::http::v3 as http_options_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
use tollgate_proto::envoy::r#type::v3 as type_pb;
use tollgate_proto::google::protobuf as pb;

use super::http_options::{http1_options, http2_options};
use super::{
    ConfigError, Reason, Rejection, Resource, Within as _, duration, no_control_chars, reject_if,
    reject_set,
};

/// Envoy's `connect_timeout` when a cluster does not set one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Envoy's `dns_refresh_rate` when a `STRICT_DNS` cluster does not set one.
pub const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);

/// The `typed_extension_protocol_options` key Envoy reads upstream HTTP options from.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The path segment naming the [`HTTP_PROTOCOL_OPTIONS`] entry in error messages. Field paths
/// are built from `&'static str` segments, so the map key is spelled out once here.
const HTTP_PROTOCOL_OPTIONS_FIELD: &str =
    "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"]";

/// Envoy's health-check `no_traffic_interval` when unset: how often endpoints of a cluster that
/// has never had traffic are probed.
pub const DEFAULT_NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);

/// Envoy's HTTP health check passes only status 200 when `expected_statuses` is unset.
pub const DEFAULT_EXPECTED_STATUSES: Range<u16> = 200..201;

/// Envoy's outlier-detection defaults: sweep `interval`, `base_ejection_time`,
/// `max_ejection_percent`, and `consecutive_5xx`.
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
/// See [`DEFAULT_OUTLIER_INTERVAL`].
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// See [`DEFAULT_OUTLIER_INTERVAL`].
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// See [`DEFAULT_OUTLIER_INTERVAL`].
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Envoy caps an ejection at this, or at `base_ejection_time` when that is longer, unless
/// `max_ejection_time` says otherwise.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// Envoy's healthy panic threshold (`common_lb_config.healthy_panic_threshold`, which is
/// rejected when set): when fewer than this percentage of a cluster's endpoints are healthy
/// (neither failing active health checks nor ejected), Envoy balances over all of them,
/// healthy or not, rather than overload the few that are left.
pub const HEALTHY_PANIC_THRESHOLD_PERCENT: u32 = 50;

/// Envoy's ring hash bounds: default minimum 1024 entries, maximum (and default maximum) 8M.
const DEFAULT_MIN_RING_SIZE: u64 = 1024;
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// Envoy's Maglev table size: 65537 by default, a prime no larger than 5000011.
const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65_537;
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// A validated upstream cluster, built once per CDS resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's name; routes refer to it.
    pub name: String,
    /// Where the endpoints come from.
    pub discovery: Discovery,
    /// Time allowed to establish a connection to an endpoint.
    pub connect_timeout: Duration,
    /// How an endpoint is picked for a request.
    pub lb_policy: LbPolicy,
    /// The HTTP version spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// Limits on the work in flight to this cluster (for the default routing priority).
    pub circuit_breakers: CircuitBreakers,
    /// Active health checking of every endpoint, if configured.
    pub health_check: Option<HealthCheck>,
    /// Passive health checking (ejection on consecutive errors), if configured.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the endpoints; `None` is plaintext (`raw_buffer`, or no transport socket).
    pub tls: Option<UpstreamTls>,
}

/// Where a cluster's endpoints come from (Envoy's discovery `type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// `EDS`: the endpoints arrive as a `ClusterLoadAssignment` named `service_name`, over ADS.
    Eds {
        /// The EDS resource to subscribe to: `eds_cluster_config.service_name`, or the cluster's
        /// name when that is empty.
        service_name: String,
    },
    /// `STRICT_DNS`: each host name is resolved, and every address it resolves to becomes an
    /// endpoint with the host's weight. Re-resolved every `refresh_rate`.
    StrictDns {
        /// The names to resolve, in config order.
        hosts: Vec<DnsHost>,
        /// Which address families to ask for.
        lookup_family: DnsLookupFamily,
        /// How often the names are resolved again.
        refresh_rate: Duration,
    },
    /// `STATIC`: the endpoints are fixed in the cluster itself.
    Static {
        /// The endpoints, in config order.
        endpoints: Vec<Endpoint>,
    },
}

/// A host name of a `STRICT_DNS` cluster, with the port and weight its addresses get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHost {
    /// A DNS name, or an IP literal (which resolves to itself).
    pub host: String,
    /// The port every resolved address is given.
    pub port: u16,
    /// The load-balancing weight every resolved address is given (at least 1).
    pub weight: u32,
}

/// Address families a `STRICT_DNS` cluster resolves, as Envoy's `DnsLookupFamily`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    /// IPv6 first; IPv4 only when there is no IPv6 address (Envoy's default).
    Auto,
    /// IPv4 only.
    V4Only,
    /// IPv6 only.
    V6Only,
    /// IPv4 first; IPv6 only when there is no IPv4 address.
    V4Preferred,
    /// Both families, all addresses (Envoy then connects with Happy Eyeballs).
    All,
}

/// How an endpoint is picked, with the settings Envoy lets each policy have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// The least loaded of `choice_count` random endpoints (power of two choices by default).
    LeastRequest {
        /// How many random endpoints are compared; at least 2.
        choice_count: u32,
    },
    /// Weighted random.
    Random,
    /// Consistent hashing on a ketama ring (xxHash).
    RingHash {
        /// The ring has at least this many entries.
        minimum_ring_size: u64,
        /// The ring has at most this many entries.
        maximum_ring_size: u64,
    },
    /// Maglev consistent hashing.
    Maglev {
        /// Size of the lookup table; a prime.
        table_size: u64,
    },
}

/// The HTTP version spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, Envoy's default.
    Http1,
    /// HTTP/2 with prior knowledge (`http2_protocol_options`).
    Http2,
}

/// Envoy's circuit breakers for one cluster: when a limit is reached, new work fails fast
/// (503) instead of queueing. Envoy applies these defaults even when nothing is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// Connections to all the cluster's endpoints together (default 1024).
    pub max_connections: u32,
    /// Requests waiting for a connection (default 1024).
    pub max_pending_requests: u32,
    /// Requests in flight (default 1024).
    pub max_requests: u32,
    /// Retries in flight (default 3).
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Active HTTP health checking (Envoy's `health_checks[0].http_health_check`), with Envoy's
/// semantics, which the data path must follow:
///
/// - every endpoint is probed with `GET path` (`Host: host`), in `protocol`, over the cluster's
///   own transport (TLS when [`Cluster::tls`] is set), at most `timeout` per probe, on a
///   connection of its own that is kept for the next probe (Envoy's `reuse_connection`
///   default; `false` is rejected), outside the cluster's pool and circuit breakers;
/// - probes run every `interval`, or every `no_traffic_interval` while the cluster has never
///   had a request routed to it;
/// - an endpoint starts unhealthy and becomes healthy on its first passed probe; afterwards it
///   takes `unhealthy_threshold` failed probes in a row to turn unhealthy and
///   `healthy_threshold` passed ones to turn healthy again;
/// - a probe passes on a status in `expected_statuses`. Any other status makes the endpoint
///   unhealthy at once, whatever `unhealthy_threshold` says; only timeouts and connection
///   failures count towards the threshold;
/// - unhealthy endpoints get no traffic, unless fewer than
///   [`HEALTHY_PANIC_THRESHOLD_PERCENT`] of the endpoints are healthy (panic mode: all get
///   traffic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The request path (with any query), e.g. `/healthz`.
    pub path: String,
    /// The `Host` (`:authority`) sent; `None` (an empty `http_health_check.host`) means the
    /// cluster's name, as in Envoy. Either is checked to be a valid authority.
    pub host: Option<String>,
    /// The HTTP version of the probes (`codec_client_type`).
    pub protocol: UpstreamProtocol,
    /// Time between probes of one endpoint.
    pub interval: Duration,
    /// Time between probes while the cluster has had no traffic yet (Envoy's default: 60 s).
    pub no_traffic_interval: Duration,
    /// Time a probe may take; past it, the probe failed.
    pub timeout: Duration,
    /// Passed probes in a row that make an unhealthy endpoint healthy (at least 1).
    pub healthy_threshold: u32,
    /// Failed probes in a row that make a healthy endpoint unhealthy (at least 1).
    pub unhealthy_threshold: u32,
    /// The statuses that pass, as half-open ranges, in config order (Envoy's default:
    /// [`DEFAULT_EXPECTED_STATUSES`]).
    pub expected_statuses: Vec<Range<u16>>,
}

impl HealthCheck {
    /// Whether a probe answered with `status` passed.
    pub fn is_expected(&self, status: u16) -> bool {
        self.expected_statuses.iter().any(|r| r.contains(&status))
    }
}

/// Passive health checking (Envoy's `outlier_detection`), limited to what is implemented: the
/// consecutive-5xx detector. In Envoy's default mode, which is the only one accepted (no
/// `split_external_local_origin_errors`), connection failures, timeouts and resets count as
/// 5xx responses too. An `outlier_detection` whose every detector is off ejects nothing, and
/// becomes `None` in [`Cluster::outlier_detection`].
///
/// Every `interval` the detector sweeps: endpoints whose ejection time has passed return. An
/// endpoint is ejected as soon as it reaches `consecutive_5xx`, unless ejecting it would put
/// more than `max_ejection_percent` of the cluster's endpoints out (Envoy counts the one being
/// ejected: with 10 %, a cluster of fewer than 10 endpoints never ejects any); it stays out
/// for `base_ejection_time` times the number of times it has been ejected, at most
/// `max_ejection_time`. Returning resets its error count. A 5xx counts only when the endpoint
/// answered it (or failed to connect, timed out, reset), not when the proxy made it up. A passed active health check
/// returns an ejected endpoint at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// 5xx responses (or local failures) in a row that eject an endpoint; at least 1.
    pub consecutive_5xx: u32,
    /// Time between sweeps.
    pub interval: Duration,
    /// The first ejection's length; each further ejection of the same endpoint lasts one more
    /// multiple of it (Envoy lowers the multiple again while the endpoint behaves).
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts: `max_ejection_time`, or the longer of 300 s and
    /// `base_ejection_time`.
    pub max_ejection_time: Duration,
    /// The largest share of the cluster's endpoints ejected at once, in percent (0 to 100).
    pub max_ejection_percent: u32,
}

/// TLS to a cluster's endpoints (Envoy's `envoy.transport_sockets.tls` with an
/// `UpstreamTlsContext`). No client certificate is presented.
///
/// The endpoint's certificate is checked as Envoy checks it: not at all without `trusted_ca`;
/// with it, the chain must lead to one of its certificates (any of them is a trust anchor,
/// intermediates included) and be valid now, and, when `subject_alt_names` is not empty, the
/// certificate must carry one of those names as a DNS SAN (wildcard SANs match as RFC 6125
/// says). With `trusted_ca` but no `subject_alt_names`, **no name is checked**, not even the
/// SNI: rustls' default verifier, which checks the name it connects to, is stricter than Envoy
/// there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The server name sent (SNI), a lower-case DNS name; none is sent when `None`.
    pub sni: Option<String>,
    /// ALPN protocols offered, in order (`h2`, `http/1.1`); none when empty. The HTTP version
    /// spoken is [`Cluster::protocol`] whatever ALPN picks, as with Envoy's explicit HTTP
    /// config.
    pub alpn: Vec<String>,
    /// The oldest TLS version offered (Envoy's default: 1.2).
    pub min_version: TlsVersion,
    /// The newest TLS version offered (Envoy's default for upstreams: 1.2).
    pub max_version: TlsVersion,
    /// The trust anchors (DER certificates, in config order, each checked at load to be
    /// usable as a rustls trust anchor); `None`: any certificate is accepted.
    pub trusted_ca: Option<Vec<Vec<u8>>>,
    /// DNS names, lower case, one of which the certificate must carry; empty: any name. Only
    /// ever set together with `trusted_ca` (Envoy refuses names without a CA).
    pub subject_alt_names: Vec<String>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// The endpoints of an EDS cluster, from one `ClusterLoadAssignment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The assignment's name: the EDS `service_name` of the cluster(s) it is for.
    pub cluster_name: String,
    /// All endpoints, in config order (localities flattened: all are priority 0).
    pub endpoints: Vec<Endpoint>,
}

/// One upstream endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// Load-balancing weight, at least 1 (1 when unset).
    pub weight: u32,
}

/// What [`Cluster::members`] found: the endpoints a cluster has right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members<'a> {
    /// Fixed addresses: a `STATIC` cluster's, or an EDS cluster's from its assignment.
    Endpoints(&'a [Endpoint]),
    /// Names that the upstream layer resolves (`STRICT_DNS`).
    Resolve {
        /// The names, with their ports and weights.
        hosts: &'a [DnsHost],
        /// Which address families to ask for.
        lookup_family: DnsLookupFamily,
    },
    /// An EDS cluster whose assignment has not arrived: no endpoints yet.
    AwaitingAssignment,
}

impl Cluster {
    /// The EDS resource this cluster needs, if it is an EDS cluster.
    pub fn eds_service_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }

    /// The cluster's endpoints. `assignment` looks up an EDS assignment by service name; it is
    /// only called for EDS clusters.
    pub fn members<'a>(
        &'a self,
        assignment: impl FnOnce(&str) -> Option<&'a Endpoints>,
    ) -> Members<'a> {
        match &self.discovery {
            Discovery::Static { endpoints } => Members::Endpoints(endpoints),
            Discovery::StrictDns {
                hosts,
                lookup_family,
                ..
            } => Members::Resolve {
                hosts,
                lookup_family: *lookup_family,
            },
            Discovery::Eds { service_name } => match assignment(service_name) {
                Some(endpoints) => Members::Endpoints(&endpoints.endpoints),
                None => Members::AwaitingAssignment,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building: proto -> cluster. Every proto message is destructured without `..`, so a field added
// to Envoy's API breaks the build here instead of being ignored silently.

impl TryFrom<&cluster_pb::Cluster> for Cluster {
    type Error = ConfigError;

    fn try_from(proto: &cluster_pb::Cluster) -> Result<Self, ConfigError> {
        cluster(proto).map_err(|e| e.into_error(Resource::Cluster(proto.name.clone())))
    }
}

impl TryFrom<&endpoint_pb::ClusterLoadAssignment> for Endpoints {
    type Error = ConfigError;

    fn try_from(proto: &endpoint_pb::ClusterLoadAssignment) -> Result<Self, ConfigError> {
        let assignment = load_assignment(proto, ip_host)
            .map_err(|e| e.into_error(Resource::Endpoints(proto.cluster_name.clone())))?;
        Ok(Endpoints {
            cluster_name: proto.cluster_name.clone(),
            endpoints: assignment.into_endpoints(),
        })
    }
}

#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn cluster(proto: &cluster_pb::Cluster) -> Result<Cluster, Rejection> {
    use cluster_pb::cluster::{ClusterDiscoveryType, DiscoveryType};
    let cluster_pb::Cluster {
        transport_socket_matches,
        transport_socket_matcher,
        name,
        alt_stat_name: _,
        stats_matcher: _,
        eds_cluster_config,
        connect_timeout,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        lb_policy,
        load_assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        dns_refresh_rate,
        dns_jitter,
        dns_failure_refresh_rate,
        respect_dns_ttl,
        dns_lookup_family,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        wait_for_warm_on_init,
        outlier_detection,
        // Only read by ORIGINAL_DST clusters, which are rejected.
        cleanup_interval: _,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        metadata: _,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        // Stats only.
        track_timeout_budgets: _,
        upstream_config,
        // Stats only.
        track_cluster_stats: _,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = proto;
    if name.is_empty() {
        return Err(Rejection::new("name", Reason::Missing));
    }
    no_control_chars(name).map_err(|r| Rejection::new("name", r))?;
    reject_set(&[
        (
            !transport_socket_matches.is_empty(),
            "transport_socket_matches",
        ),
        (
            transport_socket_matcher.is_some(),
            "transport_socket_matcher",
        ),
        (
            per_connection_buffer_limit_bytes.is_some(),
            "per_connection_buffer_limit_bytes",
        ),
        (
            per_connection_buffer_high_watermark_timeout.is_some(),
            "per_connection_buffer_high_watermark_timeout",
        ),
        (
            max_requests_per_connection.is_some(),
            "max_requests_per_connection",
        ),
        // The deprecated protocol fields: the control plane uses
        // `typed_extension_protocol_options`, which is read below.
        (
            upstream_http_protocol_options.is_some(),
            "upstream_http_protocol_options",
        ),
        (
            common_http_protocol_options.is_some(),
            "common_http_protocol_options",
        ),
        (http_protocol_options.is_some(), "http_protocol_options"),
        (http2_protocol_options.is_some(), "http2_protocol_options"),
        (*protocol_selection != 0, "protocol_selection"),
        (dns_jitter.is_some(), "dns_jitter"),
        (
            dns_failure_refresh_rate.is_some(),
            "dns_failure_refresh_rate",
        ),
        (*respect_dns_ttl, "respect_dns_ttl"),
        (!dns_resolvers.is_empty(), "dns_resolvers"),
        (*use_tcp_for_dns_lookups, "use_tcp_for_dns_lookups"),
        (dns_resolution_config.is_some(), "dns_resolution_config"),
        (
            typed_dns_resolver_config.is_some(),
            "typed_dns_resolver_config",
        ),
        (upstream_bind_config.is_some(), "upstream_bind_config"),
        (lb_subset_config.is_some(), "lb_subset_config"),
        (
            upstream_connection_options.is_some(),
            "upstream_connection_options",
        ),
        // Both change what happens when endpoints turn unhealthy or are removed; only Envoy's
        // defaults are accepted.
        (
            *close_connections_on_host_health_failure,
            "close_connections_on_host_health_failure",
        ),
        (
            *ignore_health_on_host_removal,
            "ignore_health_on_host_removal",
        ),
        (!filters.is_empty(), "filters"),
        (load_balancing_policy.is_some(), "load_balancing_policy"),
        (lrs_server.is_some(), "lrs_server"),
        (
            !lrs_report_endpoint_metrics.is_empty(),
            "lrs_report_endpoint_metrics",
        ),
        (upstream_config.is_some(), "upstream_config"),
        (preconnect_policy.is_some(), "preconnect_policy"),
        (
            *connection_pool_per_downstream_connection,
            "connection_pool_per_downstream_connection",
        ),
        (queuing_policies.is_some(), "queuing_policies"),
    ])?;
    if wait_for_warm_on_init.is_some_and(|w| !w.value) {
        return Err(Rejection::new(
            "wait_for_warm_on_init",
            Reason::UnsupportedValue("false".into()),
        ));
    }
    if let Some(common) = common_lb_config {
        self::common_lb_config(common).within("common_lb_config")?;
    }

    let connect_timeout = match connect_timeout {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(d) => positive_duration(d).map_err(|r| Rejection::new("connect_timeout", r))?,
    };

    let kind = match cluster_discovery_type {
        // `type` is an enum whose zero value is STATIC: unset means STATIC, as in Envoy.
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(kind)) => DiscoveryType::try_from(*kind).map_err(|_| {
            Rejection::new(
                "type",
                Reason::Invalid(format!("unknown discovery type {kind}")),
            )
        })?,
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(Rejection::new(
                "cluster_type",
                Reason::UnsupportedValue(format!("custom cluster type {:?}", custom.name)),
            ));
        }
    };
    let not_eds = || match eds_cluster_config {
        Some(_) => Err(Rejection::new(
            "eds_cluster_config",
            Reason::Invalid("only EDS clusters may set it".into()),
        )),
        None => Ok(()),
    };
    let discovery = match kind {
        DiscoveryType::Eds => {
            if load_assignment.is_some() {
                return Err(Rejection::new(
                    "load_assignment",
                    Reason::Invalid(
                        "an EDS cluster takes its endpoints from a ClusterLoadAssignment \
                         resource, not inline"
                            .into(),
                    ),
                ));
            }
            let config = eds_cluster_config
                .as_ref()
                .ok_or_else(|| Rejection::new("eds_cluster_config", Reason::Missing))?;
            eds(config, name).within("eds_cluster_config")?
        }
        DiscoveryType::Static => {
            not_eds()?;
            // No `load_assignment` is a cluster without endpoints, which Envoy accepts.
            let endpoints = match load_assignment {
                None => Vec::new(),
                Some(assignment) => self::load_assignment(assignment, ip_host)
                    .within("load_assignment")?
                    .into_endpoints(),
            };
            Discovery::Static { endpoints }
        }
        DiscoveryType::StrictDns => {
            not_eds()?;
            let hosts = match load_assignment {
                None => Vec::new(),
                Some(assignment) => self::load_assignment(assignment, dns_host)
                    .within("load_assignment")?
                    .members
                    .into_iter()
                    .map(|(host, port, weight)| DnsHost { host, port, weight })
                    .collect(),
            };
            let lookup_family = self::dns_lookup_family(*dns_lookup_family)
                .map_err(|r| Rejection::new("dns_lookup_family", r))?;
            let refresh_rate = match dns_refresh_rate {
                None => DEFAULT_DNS_REFRESH_RATE,
                Some(d) => {
                    let rate = duration(d).map_err(|r| Rejection::new("dns_refresh_rate", r))?;
                    if rate < Duration::from_millis(1) {
                        return Err(Rejection::new(
                            "dns_refresh_rate",
                            Reason::Invalid("must be at least 1ms".into()),
                        ));
                    }
                    rate
                }
            };
            // Envoy ignores `dns_lookup_family` and `dns_refresh_rate` for the other types, and
            // so does this: they are read for STRICT_DNS only.
            Discovery::StrictDns {
                hosts,
                lookup_family,
                refresh_rate,
            }
        }
        DiscoveryType::LogicalDns | DiscoveryType::OriginalDst => {
            return Err(Rejection::new(
                "type",
                Reason::UnsupportedValue(kind.as_str_name().into()),
            ));
        }
    };

    let lb_policy = self::lb_policy(*lb_policy, lb_config.as_ref())?;
    let protocol = self::protocol(typed_extension_protocol_options)?;
    let circuit_breakers = match circuit_breakers {
        None => CircuitBreakers::default(),
        Some(breakers) => self::circuit_breakers(breakers).within("circuit_breakers")?,
    };
    let health_check = match health_checks.as_slice() {
        [] => None,
        [one] => Some(self::health_check(one, name).at("health_checks", 0)?),
        // Envoy runs them all, and an endpoint is healthy only if every one passes.
        [_, _, ..] => {
            return Err(Rejection::new(
                "health_checks",
                Reason::UnsupportedValue("more than one health check".into()),
            ));
        }
    };
    let outlier_detection = match outlier_detection {
        None => None,
        Some(od) => self::outlier_detection(od).within("outlier_detection")?,
    };
    let tls = match transport_socket {
        None => None,
        Some(socket) => self::transport_socket(socket).within("transport_socket")?,
    };
    Ok(Cluster {
        name: name.clone(),
        discovery,
        connect_timeout,
        lb_policy,
        protocol,
        circuit_breakers,
        health_check,
        outlier_detection,
        tls,
    })
}

// ---------------------------------------------------------------------------------------------
// Active health checks

#[allow(deprecated)] // `event_log_path` is deprecated, and still writes a log when set
fn health_check(proto: &core_pb::HealthCheck, cluster: &str) -> Result<HealthCheck, Rejection> {
    use core_pb::health_check::HealthChecker;
    let core_pb::HealthCheck {
        timeout,
        interval,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        alt_port,
        reuse_connection,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        event_log_path,
        event_logger,
        event_service,
        // Only read by the event loggers, which are rejected.
        always_log_health_check_failures: _,
        always_log_health_check_success: _,
        tls_options,
        transport_socket_match_criteria,
        health_checker,
    } = proto;
    reject_set(&[
        // Randomised probe times (jitter) are not implemented; zero jitter is no jitter.
        (is_nonzero(initial_jitter.as_ref()), "initial_jitter"),
        (is_nonzero(interval_jitter.as_ref()), "interval_jitter"),
        (*interval_jitter_percent != 0, "interval_jitter_percent"),
        (alt_port.is_some(), "alt_port"),
        (
            reuse_connection.is_some_and(|r| !r.value),
            "reuse_connection",
        ),
        (!event_log_path.is_empty(), "event_log_path"),
        (!event_logger.is_empty(), "event_logger"),
        (event_service.is_some(), "event_service"),
        (tls_options.is_some(), "tls_options"),
        (
            transport_socket_match_criteria.is_some(),
            "transport_socket_match_criteria",
        ),
    ])?;
    // Envoy requires all four.
    let timeout = required_positive(timeout.as_ref(), "timeout")?;
    let interval = required_positive(interval.as_ref(), "interval")?;
    let threshold = |value: &Option<pb::UInt32Value>, field| match value {
        None => Err(Rejection::new(field, Reason::Missing)),
        Some(v) if v.value == 0 => Err(Rejection::new(
            field,
            Reason::Invalid("must be at least 1".into()),
        )),
        Some(v) => Ok(v.value),
    };
    let unhealthy_threshold = threshold(unhealthy_threshold, "unhealthy_threshold")?;
    let healthy_threshold = threshold(healthy_threshold, "healthy_threshold")?;
    let no_traffic_interval = match no_traffic_interval {
        None => DEFAULT_NO_TRAFFIC_INTERVAL,
        Some(d) => positive_duration(d).map_err(|r| Rejection::new("no_traffic_interval", r))?,
    };
    // The other intervals, for particular host states, default to one of the two above; only
    // those defaults are implemented, so each may be set only to the value it defaults to.
    same_as(
        no_traffic_healthy_interval.as_ref(),
        no_traffic_interval,
        "no_traffic_healthy_interval",
        "no_traffic_interval",
    )?;
    same_as(
        unhealthy_interval.as_ref(),
        interval,
        "unhealthy_interval",
        "interval",
    )?;
    same_as(
        unhealthy_edge_interval.as_ref(),
        interval,
        "unhealthy_edge_interval",
        "interval",
    )?;
    same_as(
        healthy_edge_interval.as_ref(),
        interval,
        "healthy_edge_interval",
        "interval",
    )?;
    let http = match health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => http,
        None => return Err(Rejection::new("http_health_check", Reason::Missing)),
        Some(HealthChecker::TcpHealthCheck(_)) => {
            return Err(Rejection::unsupported("tcp_health_check"));
        }
        Some(HealthChecker::GrpcHealthCheck(_)) => {
            return Err(Rejection::unsupported("grpc_health_check"));
        }
        Some(HealthChecker::CustomHealthCheck(_)) => {
            return Err(Rejection::unsupported("custom_health_check"));
        }
    };
    let (path, host, protocol, expected_statuses) =
        http_health_check(http, cluster).within("http_health_check")?;
    Ok(HealthCheck {
        path,
        host,
        protocol,
        interval,
        no_traffic_interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        expected_statuses,
    })
}

/// The path, `Host`, HTTP version and expected statuses of an HTTP health check.
type HttpCheck = (String, Option<String>, UpstreamProtocol, Vec<Range<u16>>);

fn http_health_check(
    proto: &core_pb::health_check::HttpHealthCheck,
    cluster: &str,
) -> Result<HttpCheck, Rejection> {
    use core_pb::RequestMethod;
    use type_pb::CodecClientType;
    let core_pb::health_check::HttpHealthCheck {
        host,
        path,
        send,
        receive,
        // Only read when matching `receive`, which is rejected.
        response_buffer_size: _,
        request_headers_to_add,
        request_headers_to_remove,
        expected_statuses,
        retriable_statuses,
        codec_client_type,
        service_name_matcher,
        method,
    } = proto;
    reject_set(&[
        (send.is_some(), "send"),
        (!receive.is_empty(), "receive"),
        (!request_headers_to_add.is_empty(), "request_headers_to_add"),
        (
            !request_headers_to_remove.is_empty(),
            "request_headers_to_remove",
        ),
        (!retriable_statuses.is_empty(), "retriable_statuses"),
        (service_name_matcher.is_some(), "service_name_matcher"),
    ])?;
    if path.is_empty() {
        return Err(Rejection::new("path", Reason::Missing));
    }
    // Envoy sends any header-safe string; one that is not an origin-form path and query would
    // not make a valid request here.
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(Rejection::new(
            "path",
            Reason::Invalid(format!("{path:?} is not a path (with an optional query)")),
        ));
    }
    // Envoy sends the cluster's name when no host is given.
    let host_field = if host.is_empty() { cluster } else { host };
    if host_field.parse::<http::uri::Authority>().is_err() {
        return Err(Rejection::new(
            "host",
            Reason::Invalid(if host.is_empty() {
                format!("is empty, and the cluster name {cluster:?} is not a valid Host")
            } else {
                format!("{host:?} is not a valid Host")
            }),
        ));
    }
    match RequestMethod::try_from(*method) {
        Ok(RequestMethod::MethodUnspecified | RequestMethod::Get) => {}
        Ok(RequestMethod::Connect) => {
            return Err(Rejection::new(
                "method",
                Reason::Invalid("CONNECT cannot be used for health checks".into()),
            ));
        }
        Ok(other) => {
            return Err(Rejection::new(
                "method",
                Reason::UnsupportedValue(format!(
                    "{} (only GET is implemented)",
                    other.as_str_name()
                )),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "method",
                Reason::Invalid(format!("unknown method {method}")),
            ));
        }
    }
    let protocol = match CodecClientType::try_from(*codec_client_type) {
        Ok(CodecClientType::Http1) => UpstreamProtocol::Http1,
        Ok(CodecClientType::Http2) => UpstreamProtocol::Http2,
        Ok(CodecClientType::Http3) => {
            return Err(Rejection::new(
                "codec_client_type",
                Reason::UnsupportedValue("HTTP3".into()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "codec_client_type",
                Reason::Invalid(format!("unknown codec client type {codec_client_type}")),
            ));
        }
    };
    let expected_statuses = if expected_statuses.is_empty() {
        vec![DEFAULT_EXPECTED_STATUSES]
    } else {
        expected_statuses
            .iter()
            .enumerate()
            .map(|(i, range)| {
                status_range(range).map_err(|r| Rejection::new_at("expected_statuses", i, r))
            })
            .collect::<Result<_, _>>()?
    };
    let host = (!host.is_empty()).then(|| host.clone());
    Ok((path.clone(), host, protocol, expected_statuses))
}

/// A half-open status range, with Envoy's rules: `start < end`, `start >= 100`, `end <= 600`.
fn status_range(proto: &type_pb::Int64Range) -> Result<Range<u16>, Reason> {
    let type_pb::Int64Range { start, end } = *proto;
    if start >= end {
        return Err(Reason::Invalid(format!(
            "start ({start}) must be less than end ({end})"
        )));
    }
    if start < 100 || end > 600 {
        return Err(Reason::Invalid(format!(
            "[{start}, {end}) is outside [100, 600)"
        )));
    }
    // Both are within 100..=600 now.
    Ok(start as u16..end as u16)
}

// ---------------------------------------------------------------------------------------------
// Outlier detection

/// The outlier detection, or `None` when no detector is on (then Envoy ejects nothing).
fn outlier_detection(
    proto: &cluster_pb::OutlierDetection,
) -> Result<Option<OutlierDetection>, Rejection> {
    let cluster_pb::OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        // Parameters of detectors that must be off (checked below): dead.
        success_rate_minimum_hosts: _,
        success_rate_request_volume: _,
        success_rate_stdev_factor: _,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        // The local-origin detectors run only with `split_external_local_origin_errors`, which
        // is rejected; without it, Envoy ignores these (local failures count as 5xx instead).
        consecutive_local_origin_failure: _,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts: _,
        failure_percentage_request_volume: _,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = proto;
    reject_set(&[
        (
            *split_external_local_origin_errors,
            "split_external_local_origin_errors",
        ),
        (
            is_nonzero(max_ejection_time_jitter.as_ref()),
            "max_ejection_time_jitter",
        ),
        (
            successful_active_health_check_uneject_host.is_some_and(|v| !v.value),
            "successful_active_health_check_uneject_host",
        ),
        (!monitors.is_empty(), "monitors"),
        (
            always_eject_one_host.is_some_and(|v| v.value),
            "always_eject_one_host",
        ),
        (
            detect_degraded_hosts.is_some_and(|v| v.value),
            "detect_degraded_hosts",
        ),
    ])?;
    // Envoy validates every percentage, even of detectors that are off.
    for (value, field) in [
        (
            enforcing_consecutive_local_origin_failure,
            "enforcing_consecutive_local_origin_failure",
        ),
        (
            enforcing_local_origin_success_rate,
            "enforcing_local_origin_success_rate",
        ),
        (failure_percentage_threshold, "failure_percentage_threshold"),
        (
            enforcing_failure_percentage_local_origin,
            "enforcing_failure_percentage_local_origin",
        ),
    ] {
        percent(value.as_ref(), 0, field)?;
    }
    // Detectors other than consecutive 5xx must be off. Success rate is on by default.
    let off = |field: &'static str, value: u32, default: &str| {
        if value == 0 {
            Ok(())
        } else {
            Err(Rejection::new(
                field,
                Reason::UnsupportedValue(format!(
                    "{value}% ({default}): only consecutive-5xx ejection is implemented; set 0 \
                     to turn this detector off"
                )),
            ))
        }
    };
    let success_rate = percent(
        enforcing_success_rate.as_ref(),
        100,
        "enforcing_success_rate",
    )?;
    off("enforcing_success_rate", success_rate, "100 when unset")?;
    let failure_percentage = percent(
        enforcing_failure_percentage.as_ref(),
        0,
        "enforcing_failure_percentage",
    )?;
    off(
        "enforcing_failure_percentage",
        failure_percentage,
        "0 when unset",
    )?;
    let gateway = percent(
        enforcing_consecutive_gateway_failure.as_ref(),
        0,
        "enforcing_consecutive_gateway_failure",
    )?;
    // A count of 0 turns the detector off as well.
    if consecutive_gateway_failure.map_or(5, |v| v.value) != 0 {
        off(
            "enforcing_consecutive_gateway_failure",
            gateway,
            "0 when unset",
        )?;
    }

    let enforcing_5xx = percent(
        enforcing_consecutive_5xx.as_ref(),
        100,
        "enforcing_consecutive_5xx",
    )?;
    let consecutive_5xx = match (
        consecutive_5xx.map_or(DEFAULT_CONSECUTIVE_5XX, |v| v.value),
        enforcing_5xx,
    ) {
        // The one implemented detector is off as well; the rest is still validated.
        (0, _) | (_, 0) => None,
        (count, 100) => Some(count),
        // Ejecting with a probability is not implemented.
        (_, partial) => {
            return Err(Rejection::new(
                "enforcing_consecutive_5xx",
                Reason::UnsupportedValue(format!("{partial}% (only 0 and 100 are implemented)")),
            ));
        }
    };
    let interval = match interval {
        None => DEFAULT_OUTLIER_INTERVAL,
        Some(d) => positive_duration(d).map_err(|r| Rejection::new("interval", r))?,
    };
    let base_ejection_time = match base_ejection_time {
        None => DEFAULT_BASE_EJECTION_TIME,
        Some(d) => positive_duration(d).map_err(|r| Rejection::new("base_ejection_time", r))?,
    };
    let max_ejection_time = match max_ejection_time {
        None => DEFAULT_MAX_EJECTION_TIME.max(base_ejection_time),
        Some(d) => {
            let max = positive_duration(d).map_err(|r| Rejection::new("max_ejection_time", r))?;
            if max < base_ejection_time {
                return Err(Rejection::new(
                    "max_ejection_time",
                    Reason::Invalid("cannot be smaller than base_ejection_time".into()),
                ));
            }
            max
        }
    };
    let max_ejection_percent = percent(
        max_ejection_percent.as_ref(),
        DEFAULT_MAX_EJECTION_PERCENT,
        "max_ejection_percent",
    )?;
    Ok(consecutive_5xx.map(|consecutive_5xx| OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_time,
        max_ejection_percent,
    }))
}

/// A percentage (0 to 100), `default` when unset.
fn percent(
    value: Option<&pb::UInt32Value>,
    default: u32,
    field: &'static str,
) -> Result<u32, Rejection> {
    match value {
        None => Ok(default),
        Some(v) if v.value <= 100 => Ok(v.value),
        Some(v) => Err(Rejection::new(
            field,
            Reason::Invalid(format!("{} is more than 100", v.value)),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream TLS

/// TLS to the endpoints, or `None` for the raw buffer (plaintext) socket.
fn transport_socket(proto: &core_pb::TransportSocket) -> Result<Option<UpstreamTls>, Rejection> {
    use core_pb::transport_socket::ConfigType;
    let core_pb::TransportSocket { name, config_type } = proto;
    let any = match config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Err(Rejection::new("typed_config", Reason::Missing)),
    };
    if is_type::<raw_buffer_pb::RawBuffer>(any) {
        let raw_buffer_pb::RawBuffer {} = decode(any).within("typed_config")?;
        return Ok(None);
    }
    if !is_type::<tls_pb::UpstreamTlsContext>(any) {
        return Err(Rejection::new(
            "typed_config",
            Reason::UnsupportedValue(format!("transport socket {name:?} ({})", any.type_url)),
        ));
    }
    let context = decode(any).within("typed_config")?;
    upstream_tls(&context).within("typed_config").map(Some)
}

#[allow(deprecated)] // `enforce_rsa_key_usage` is deprecated (and ignored by Envoy)
fn upstream_tls(proto: &tls_pb::UpstreamTlsContext) -> Result<UpstreamTls, Rejection> {
    let tls_pb::UpstreamTlsContext {
        common_tls_context,
        sni,
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        // Session resumption only saves handshakes; it changes no request's outcome.
        max_session_keys: _,
        // Deprecated and ignored by Envoy, which always enforces key usage.
        enforce_rsa_key_usage: _,
    } = proto;
    reject_set(&[
        (*auto_host_sni, "auto_host_sni"),
        (*allow_renegotiation, "allow_renegotiation"),
    ])?;
    let sni = if sni.is_empty() {
        None
    } else {
        Some(dns_name(sni).map_err(|r| Rejection::new("sni", r))?)
    };
    let default = tls_pb::CommonTlsContext::default();
    let common = common_tls_context.as_ref().unwrap_or(&default);
    let mut tls = upstream_common_tls(common).within("common_tls_context")?;
    tls.sni = sni;
    if *auto_sni_san_validation {
        // The certificate must carry the SNI sent, whatever SAN matchers say.
        match (&tls.sni, &tls.trusted_ca) {
            (Some(sni), Some(_)) => tls.subject_alt_names = vec![sni.clone()],
            (None, _) => {
                return Err(Rejection::new(
                    "auto_sni_san_validation",
                    Reason::UnsupportedValue("without an sni".into()),
                ));
            }
            (Some(_), None) => {
                return Err(Rejection::new(
                    "auto_sni_san_validation",
                    Reason::Invalid(
                        "checking names without a trusted_ca is insecure; Envoy refuses it too"
                            .into(),
                    ),
                ));
            }
        }
    }
    Ok(tls)
}

/// The upstream side of a `CommonTlsContext`: no client certificate, default ciphers; ALPN,
/// protocol versions and server certificate verification. The SNI is filled in by the caller.
#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn upstream_common_tls(proto: &tls_pb::CommonTlsContext) -> Result<UpstreamTls, Rejection> {
    use tls_pb::common_tls_context::ValidationContextType;
    let tls_pb::CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = proto;
    // Client certificates (mutual TLS to the endpoints) are not implemented.
    reject_set(&[
        (!tls_certificates.is_empty(), "tls_certificates"),
        (
            !tls_certificate_sds_secret_configs.is_empty(),
            "tls_certificate_sds_secret_configs",
        ),
        (
            tls_certificate_provider_instance.is_some(),
            "tls_certificate_provider_instance",
        ),
        (
            custom_tls_certificate_selector.is_some(),
            "custom_tls_certificate_selector",
        ),
        (
            tls_certificate_certificate_provider.is_some(),
            "tls_certificate_certificate_provider",
        ),
        (
            tls_certificate_certificate_provider_instance.is_some(),
            "tls_certificate_certificate_provider_instance",
        ),
        (custom_handshaker.is_some(), "custom_handshaker"),
        (key_log.is_some(), "key_log"),
    ])?;
    let (min_version, max_version) = match tls_params {
        None => (TlsVersion::Tls12, TlsVersion::Tls12),
        Some(params) => self::tls_params(params).within("tls_params")?,
    };
    let alpn = alpn_protocols
        .iter()
        .enumerate()
        .map(|(i, protocol)| match protocol.as_str() {
            "h2" | "http/1.1" => Ok(protocol.clone()),
            _ => Err(Rejection::new_at(
                "alpn_protocols",
                i,
                Reason::UnsupportedValue(format!("ALPN protocol {protocol:?}")),
            )),
        })
        .collect::<Result<_, _>>()?;
    let (trusted_ca, subject_alt_names) = match validation_context_type {
        None => (None, Vec::new()),
        Some(ValidationContextType::ValidationContext(context)) => {
            validation_context(context).within("validation_context")?
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(_)) => {
            return Err(Rejection::unsupported(
                "validation_context_sds_secret_config",
            ));
        }
        Some(ValidationContextType::CombinedValidationContext(_)) => {
            return Err(Rejection::unsupported("combined_validation_context"));
        }
        Some(ValidationContextType::ValidationContextCertificateProvider(_)) => {
            return Err(Rejection::unsupported(
                "validation_context_certificate_provider",
            ));
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(_)) => {
            return Err(Rejection::unsupported(
                "validation_context_certificate_provider_instance",
            ));
        }
    };
    Ok(UpstreamTls {
        sni: None,
        alpn,
        min_version,
        max_version,
        trusted_ca,
        subject_alt_names,
    })
}

/// The protocol versions offered, `(min, max)`; cipher suites, curves and signature algorithms
/// must be the defaults. Envoy's upstream default is TLS 1.2 only (`TLS_AUTO` means that).
fn tls_params(proto: &tls_pb::TlsParameters) -> Result<(TlsVersion, TlsVersion), Rejection> {
    use tls_pb::tls_parameters::TlsProtocol;
    let tls_pb::TlsParameters {
        tls_minimum_protocol_version,
        tls_maximum_protocol_version,
        cipher_suites,
        ecdh_curves,
        signature_algorithms,
        compliance_policies,
    } = proto;
    reject_set(&[
        (!cipher_suites.is_empty(), "cipher_suites"),
        (!ecdh_curves.is_empty(), "ecdh_curves"),
        (!signature_algorithms.is_empty(), "signature_algorithms"),
        (!compliance_policies.is_empty(), "compliance_policies"),
    ])?;
    let version = |value: i32, field: &'static str| match TlsProtocol::try_from(value) {
        Ok(TlsProtocol::TlsAuto | TlsProtocol::TlSv12) => Ok(TlsVersion::Tls12),
        Ok(TlsProtocol::TlSv13) => Ok(TlsVersion::Tls13),
        // rustls speaks neither.
        Ok(old @ (TlsProtocol::TlSv10 | TlsProtocol::TlSv11)) => Err(Rejection::new(
            field,
            Reason::UnsupportedValue(old.as_str_name().into()),
        )),
        Err(_) => Err(Rejection::new(
            field,
            Reason::Invalid(format!("unknown TLS version {value}")),
        )),
    };
    let min = version(
        *tls_minimum_protocol_version,
        "tls_minimum_protocol_version",
    )?;
    let max = version(
        *tls_maximum_protocol_version,
        "tls_maximum_protocol_version",
    )?;
    if min > max {
        return Err(Rejection::new(
            "tls_minimum_protocol_version",
            Reason::Invalid("is newer than tls_maximum_protocol_version".into()),
        ));
    }
    Ok((min, max))
}

/// [`UpstreamTls::trusted_ca`] and [`UpstreamTls::subject_alt_names`].
type Verification = (Option<Vec<Vec<u8>>>, Vec<String>);

/// The trust anchors and DNS names to check; `(None, [])` when nothing is to be checked (no
/// `trusted_ca`, no SAN matchers: Envoy then accepts any certificate).
#[allow(deprecated)] // `match_subject_alt_names` is deprecated, and still read by Envoy
fn validation_context(
    proto: &tls_pb::CertificateValidationContext,
) -> Result<Verification, Rejection> {
    use tls_pb::certificate_validation_context::TrustChainVerification;
    let tls_pb::CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        // Only changes what a server sends in a CertificateRequest; this is a client.
        suppress_client_ca_list: _,
    } = proto;
    reject_set(&[
        (
            ca_certificate_provider_instance.is_some(),
            "ca_certificate_provider_instance",
        ),
        (system_root_certs.is_some(), "system_root_certs"),
        (watched_directory.is_some(), "watched_directory"),
        (
            !verify_certificate_spki.is_empty(),
            "verify_certificate_spki",
        ),
        (
            !verify_certificate_hash.is_empty(),
            "verify_certificate_hash",
        ),
        (
            !match_subject_alt_names.is_empty(),
            "match_subject_alt_names",
        ),
        (
            require_signed_certificate_timestamp.is_some_and(|v| v.value),
            "require_signed_certificate_timestamp",
        ),
        (crl.is_some(), "crl"),
        (*allow_expired_certificate, "allow_expired_certificate"),
        (custom_validator_config.is_some(), "custom_validator_config"),
        (*only_verify_leaf_cert_crl, "only_verify_leaf_cert_crl"),
        (max_verify_depth.is_some(), "max_verify_depth"),
    ])?;
    match TrustChainVerification::try_from(*trust_chain_verification) {
        Ok(TrustChainVerification::VerifyTrustChain) => {}
        Ok(other) => {
            return Err(Rejection::new(
                "trust_chain_verification",
                Reason::UnsupportedValue(other.as_str_name().into()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "trust_chain_verification",
                Reason::Invalid(format!(
                    "unknown trust chain verification {trust_chain_verification}"
                )),
            ));
        }
    }
    let subject_alt_names = match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, matcher)| san_matcher(matcher).at("match_typed_subject_alt_names", i))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(trusted_ca) = trusted_ca else {
        if subject_alt_names.is_empty() {
            return Ok((None, subject_alt_names));
        }
        return Err(Rejection::new(
            "trusted_ca",
            Reason::Invalid(
                "is required with match_typed_subject_alt_names: checking names without a \
                 trusted CA is insecure, and Envoy refuses it too"
                    .into(),
            ),
        ));
    };
    let pem = inline_text(trusted_ca).within("trusted_ca")?;
    let trusted_ca = self::trusted_ca(&pem).map_err(|r| Rejection::new("trusted_ca", r))?;
    Ok((Some(trusted_ca), subject_alt_names))
}

/// A SAN matcher: an exact DNS name (wildcards in the certificate match it, as in Envoy).
fn san_matcher(proto: &tls_pb::SubjectAltNameMatcher) -> Result<String, Rejection> {
    use matcher_pb::string_matcher::MatchPattern;
    use tls_pb::subject_alt_name_matcher::SanType;
    let tls_pb::SubjectAltNameMatcher {
        san_type,
        matcher,
        // Only read for OTHER_NAME, which is rejected.
        oid: _,
    } = proto;
    match SanType::try_from(*san_type) {
        Ok(SanType::Dns) => {}
        Ok(SanType::Unspecified) => return Err(Rejection::new("san_type", Reason::Missing)),
        Ok(other) => {
            return Err(Rejection::new(
                "san_type",
                Reason::UnsupportedValue(other.as_str_name().into()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "san_type",
                Reason::Invalid(format!("unknown SAN type {san_type}")),
            ));
        }
    }
    let matcher = matcher
        .as_ref()
        .ok_or_else(|| Rejection::new("matcher", Reason::Missing))?;
    let matcher_pb::StringMatcher {
        match_pattern,
        // DNS names compare without case either way.
        ignore_case: _,
    } = matcher;
    let unsupported = match match_pattern {
        Some(MatchPattern::Exact(name)) => {
            return dns_name(name).map_err(|r| Rejection::new("exact", r).within("matcher"));
        }
        None => return Err(Rejection::new("exact", Reason::Missing).within("matcher")),
        Some(MatchPattern::Prefix(_)) => "prefix",
        Some(MatchPattern::Suffix(_)) => "suffix",
        Some(MatchPattern::SafeRegex(_)) => "safe_regex",
        Some(MatchPattern::Contains(_)) => "contains",
        Some(MatchPattern::Custom(_)) => "custom",
    };
    Err(Rejection::unsupported(unsupported).within("matcher"))
}

/// CA certificates from a PEM bundle: certificates only (Envoy would also read CRLs from it,
/// which are not implemented), each usable as a trust anchor.
fn trusted_ca(pem: &str) -> Result<Vec<Vec<u8>>, Reason> {
    let mut certificates = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) = section.map_err(|e| Reason::Invalid(format!("is not PEM: {e}")))?;
        if kind != SectionKind::Certificate {
            return Err(Reason::UnsupportedValue(format!(
                "a {kind:?} block (only CERTIFICATE blocks are read)"
            )));
        }
        rustls::RootCertStore::empty()
            .add(CertificateDer::from(der.as_slice()))
            .map_err(|e| {
                Reason::Invalid(format!(
                    "certificate {} cannot be a trust anchor: {e}",
                    certificates.len() + 1
                ))
            })?;
        certificates.push(der);
    }
    if certificates.is_empty() {
        return Err(Reason::Invalid("holds no CERTIFICATE block".into()));
    }
    Ok(certificates)
}

/// A DNS name as rustls sends it in SNI and matches it against certificates, lower-cased.
fn dns_name(name: &str) -> Result<String, Reason> {
    use rustls::pki_types::ServerName;
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => Ok(name.to_ascii_lowercase()),
        _ => Err(Reason::Invalid(format!("{name:?} is not a DNS name"))),
    }
}

/// The text of an inline `DataSource`; files and environment variables are not read.
fn inline_text(proto: &core_pb::DataSource) -> Result<String, Rejection> {
    use core_pb::data_source::Specifier;
    let core_pb::DataSource {
        watched_directory,
        specifier,
    } = proto;
    reject_if(watched_directory.is_some(), "watched_directory")?;
    match specifier {
        Some(Specifier::InlineString(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Specifier::InlineBytes(b)) if !b.is_empty() => String::from_utf8(b.clone())
            .map_err(|_| Rejection::new("inline_bytes", Reason::Invalid("is not PEM".into()))),
        None | Some(Specifier::InlineString(_) | Specifier::InlineBytes(_)) => {
            Err(Rejection::new("inline_string", Reason::Missing))
        }
        // Reading files or the environment is I/O that config building does not do.
        Some(Specifier::Filename(_)) => Err(Rejection::unsupported("filename")),
        Some(Specifier::EnvironmentVariable(_)) => {
            Err(Rejection::unsupported("environment_variable"))
        }
    }
}

fn eds(
    proto: &cluster_pb::cluster::EdsClusterConfig,
    cluster: &str,
) -> Result<Discovery, Rejection> {
    let cluster_pb::cluster::EdsClusterConfig {
        eds_config,
        service_name,
    } = proto;
    let source = eds_config
        .as_ref()
        .ok_or_else(|| Rejection::new("eds_config", Reason::Missing))?;
    ads_config_source(source).within("eds_config")?;
    // Envoy asks EDS for the cluster's own name when no service name is given.
    let service_name = if service_name.is_empty() {
        cluster
    } else {
        service_name
    };
    Ok(Discovery::Eds {
        service_name: service_name.to_owned(),
    })
}

/// The proxy speaks xDS over one ADS stream only, so a config source must say `ads`.
#[allow(deprecated)] // the deprecated `path` specifier must still be matched
fn ads_config_source(proto: &core_pb::ConfigSource) -> Result<(), Rejection> {
    use core_pb::config_source::ConfigSourceSpecifier as Spec;
    let core_pb::ConfigSource {
        authorities,
        initial_fetch_timeout,
        resource_api_version,
        config_source_specifier,
    } = proto;
    reject_set(&[
        (!authorities.is_empty(), "authorities"),
        (initial_fetch_timeout.is_some(), "initial_fetch_timeout"),
    ])?;
    match core_pb::ApiVersion::try_from(*resource_api_version) {
        // Envoy reads AUTO as v3, the only version there is.
        Ok(core_pb::ApiVersion::Auto | core_pb::ApiVersion::V3) => {}
        Ok(other) => {
            return Err(Rejection::new(
                "resource_api_version",
                Reason::UnsupportedValue(other.as_str_name().into()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "resource_api_version",
                Reason::Invalid(format!("unknown API version {resource_api_version}")),
            ));
        }
    }
    match config_source_specifier {
        Some(Spec::Ads(core_pb::AggregatedConfigSource {})) => Ok(()),
        None => Err(Rejection::new(
            "config_source_specifier",
            Reason::Invalid("ads is required".into()),
        )),
        Some(Spec::Path(_)) => Err(Rejection::unsupported("path")),
        Some(Spec::PathConfigSource(_)) => Err(Rejection::unsupported("path_config_source")),
        Some(Spec::ApiConfigSource(_)) => Err(Rejection::unsupported("api_config_source")),
        // Envoy does not implement `self` either (`not-implemented-hide`).
        Some(Spec::Self_(_)) => Err(Rejection::unsupported("self")),
    }
}

fn dns_lookup_family(family: i32) -> Result<DnsLookupFamily, Reason> {
    use cluster_pb::cluster::DnsLookupFamily as Pb;
    match Pb::try_from(family) {
        Ok(Pb::Auto) => Ok(DnsLookupFamily::Auto),
        Ok(Pb::V4Only) => Ok(DnsLookupFamily::V4Only),
        Ok(Pb::V6Only) => Ok(DnsLookupFamily::V6Only),
        Ok(Pb::V4Preferred) => Ok(DnsLookupFamily::V4Preferred),
        Ok(Pb::All) => Ok(DnsLookupFamily::All),
        Err(_) => Err(Reason::Invalid(format!("unknown lookup family {family}"))),
    }
}

/// `common_lb_config` is accepted only when every field is unset: each one changes how hosts
/// are picked or when updates apply.
fn common_lb_config(proto: &cluster_pb::cluster::CommonLbConfig) -> Result<(), Rejection> {
    use cluster_pb::cluster::common_lb_config::LocalityConfigSpecifier as Spec;
    let cluster_pb::cluster::CommonLbConfig {
        healthy_panic_threshold,
        update_merge_window,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    } = proto;
    reject_set(&[
        (healthy_panic_threshold.is_some(), "healthy_panic_threshold"),
        (update_merge_window.is_some(), "update_merge_window"),
        (
            *ignore_new_hosts_until_first_hc,
            "ignore_new_hosts_until_first_hc",
        ),
        (
            *close_connections_on_host_set_change,
            "close_connections_on_host_set_change",
        ),
        (
            consistent_hashing_lb_config.is_some(),
            "consistent_hashing_lb_config",
        ),
        (override_host_status.is_some(), "override_host_status"),
        (
            matches!(locality_config_specifier, Some(Spec::ZoneAwareLbConfig(_))),
            "zone_aware_lb_config",
        ),
        (
            matches!(
                locality_config_specifier,
                Some(Spec::LocalityWeightedLbConfig(_))
            ),
            "locality_weighted_lb_config",
        ),
    ])
}

fn lb_policy(
    policy: i32,
    config: Option<&cluster_pb::cluster::LbConfig>,
) -> Result<LbPolicy, Rejection> {
    use cluster_pb::cluster::LbConfig;
    use cluster_pb::cluster::LbPolicy as Pb;
    let policy = Pb::try_from(policy).map_err(|_| {
        Rejection::new(
            "lb_policy",
            Reason::Invalid(format!("unknown lb_policy {policy}")),
        )
    })?;
    // A config for another policy than the one chosen: Envoy's docs call it an error.
    let mismatch = |field: &'static str, wanted: Pb| {
        Err(Rejection::new(
            field,
            Reason::Invalid(format!("requires lb_policy {}", wanted.as_str_name())),
        ))
    };
    match (policy, config) {
        (Pb::ClusterProvided | Pb::LoadBalancingPolicyConfig, _) => Err(Rejection::new(
            "lb_policy",
            Reason::UnsupportedValue(policy.as_str_name().into()),
        )),
        (_, Some(LbConfig::OriginalDstLbConfig(_))) => {
            Err(Rejection::unsupported("original_dst_lb_config"))
        }

        (Pb::RoundRobin, None) => Ok(LbPolicy::RoundRobin),
        (Pb::RoundRobin, Some(LbConfig::RoundRobinLbConfig(c))) => {
            let cluster_pb::cluster::RoundRobinLbConfig { slow_start_config } = c;
            reject_if(slow_start_config.is_some(), "slow_start_config")
                .within("round_robin_lb_config")?;
            Ok(LbPolicy::RoundRobin)
        }
        (_, Some(LbConfig::RoundRobinLbConfig(_))) => {
            mismatch("round_robin_lb_config", Pb::RoundRobin)
        }

        (Pb::LeastRequest, None) => Ok(LbPolicy::LeastRequest { choice_count: 2 }),
        (Pb::LeastRequest, Some(LbConfig::LeastRequestLbConfig(c))) => {
            least_request(c).within("least_request_lb_config")
        }
        (_, Some(LbConfig::LeastRequestLbConfig(_))) => {
            mismatch("least_request_lb_config", Pb::LeastRequest)
        }

        (Pb::Random, None) => Ok(LbPolicy::Random),

        (Pb::RingHash, None) => Ok(LbPolicy::RingHash {
            minimum_ring_size: DEFAULT_MIN_RING_SIZE,
            maximum_ring_size: MAX_RING_SIZE,
        }),
        (Pb::RingHash, Some(LbConfig::RingHashLbConfig(c))) => {
            ring_hash(c).within("ring_hash_lb_config")
        }
        (_, Some(LbConfig::RingHashLbConfig(_))) => mismatch("ring_hash_lb_config", Pb::RingHash),

        (Pb::Maglev, None) => Ok(LbPolicy::Maglev {
            table_size: DEFAULT_MAGLEV_TABLE_SIZE,
        }),
        (Pb::Maglev, Some(LbConfig::MaglevLbConfig(c))) => maglev(c).within("maglev_lb_config"),
        (_, Some(LbConfig::MaglevLbConfig(_))) => mismatch("maglev_lb_config", Pb::Maglev),
    }
}

fn least_request(proto: &cluster_pb::cluster::LeastRequestLbConfig) -> Result<LbPolicy, Rejection> {
    let cluster_pb::cluster::LeastRequestLbConfig {
        choice_count,
        active_request_bias,
        slow_start_config,
    } = proto;
    reject_set(&[
        (active_request_bias.is_some(), "active_request_bias"),
        (slow_start_config.is_some(), "slow_start_config"),
    ])?;
    let choice_count = choice_count.map_or(2, |c| c.value);
    if choice_count < 2 {
        return Err(Rejection::new(
            "choice_count",
            Reason::Invalid("must be at least 2".into()),
        ));
    }
    Ok(LbPolicy::LeastRequest { choice_count })
}

fn ring_hash(proto: &cluster_pb::cluster::RingHashLbConfig) -> Result<LbPolicy, Rejection> {
    use cluster_pb::cluster::ring_hash_lb_config::HashFunction;
    let cluster_pb::cluster::RingHashLbConfig {
        minimum_ring_size,
        hash_function,
        maximum_ring_size,
    } = proto;
    match HashFunction::try_from(*hash_function) {
        Ok(HashFunction::XxHash) => {}
        Ok(other) => {
            return Err(Rejection::new(
                "hash_function",
                Reason::UnsupportedValue(other.as_str_name().into()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "hash_function",
                Reason::Invalid(format!("unknown hash function {hash_function}")),
            ));
        }
    }
    let size = |field: &'static str, value: Option<&pb::UInt64Value>, default: u64| {
        let size = value.map_or(default, |v| v.value);
        if size > MAX_RING_SIZE {
            return Err(Rejection::new(
                field,
                Reason::Invalid(format!("{size} is more than {MAX_RING_SIZE}")),
            ));
        }
        Ok(size)
    };
    let minimum_ring_size = size(
        "minimum_ring_size",
        minimum_ring_size.as_ref(),
        DEFAULT_MIN_RING_SIZE,
    )?;
    let maximum_ring_size = size(
        "maximum_ring_size",
        maximum_ring_size.as_ref(),
        MAX_RING_SIZE,
    )?;
    if minimum_ring_size > maximum_ring_size {
        return Err(Rejection::new(
            "minimum_ring_size",
            Reason::Invalid(format!(
                "{minimum_ring_size} is more than maximum_ring_size ({maximum_ring_size})"
            )),
        ));
    }
    Ok(LbPolicy::RingHash {
        minimum_ring_size,
        maximum_ring_size,
    })
}

fn maglev(proto: &cluster_pb::cluster::MaglevLbConfig) -> Result<LbPolicy, Rejection> {
    let cluster_pb::cluster::MaglevLbConfig { table_size } = proto;
    let table_size = table_size.map_or(DEFAULT_MAGLEV_TABLE_SIZE, |v| v.value);
    if table_size > MAX_MAGLEV_TABLE_SIZE || !is_prime(table_size) {
        return Err(Rejection::new(
            "table_size",
            Reason::Invalid(format!(
                "{table_size} is not a prime number up to {MAX_MAGLEV_TABLE_SIZE}"
            )),
        ));
    }
    Ok(LbPolicy::Maglev { table_size })
}

/// Trial division; the table size is at most 5000011, so this is at most ~1100 divisions.
fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

fn circuit_breakers(proto: &cluster_pb::CircuitBreakers) -> Result<CircuitBreakers, Rejection> {
    use core_pb::RoutingPriority;
    let cluster_pb::CircuitBreakers {
        thresholds,
        per_host_thresholds,
    } = proto;
    reject_if(!per_host_thresholds.is_empty(), "per_host_thresholds")?;
    let mut default = None;
    for (i, proto) in thresholds.iter().enumerate() {
        let (priority, limits) = self::thresholds(proto).at("thresholds", i)?;
        // Envoy uses the first thresholds given for a priority. Every request has the default
        // priority (routes setting `priority` are rejected), so HIGH thresholds are checked and
        // otherwise have no effect, as in Envoy.
        if priority == RoutingPriority::Default && default.is_none() {
            default = Some(limits);
        }
    }
    Ok(default.unwrap_or_default())
}

fn thresholds(
    proto: &cluster_pb::circuit_breakers::Thresholds,
) -> Result<(core_pb::RoutingPriority, CircuitBreakers), Rejection> {
    let cluster_pb::circuit_breakers::Thresholds {
        priority,
        max_connections,
        max_pending_requests,
        max_requests,
        max_retries,
        retry_budget,
        // Stats only.
        track_remaining: _,
        max_connection_pools,
    } = proto;
    reject_set(&[
        (retry_budget.is_some(), "retry_budget"),
        (max_connection_pools.is_some(), "max_connection_pools"),
    ])?;
    let priority = core_pb::RoutingPriority::try_from(*priority).map_err(|_| {
        Rejection::new(
            "priority",
            Reason::Invalid(format!("unknown routing priority {priority}")),
        )
    })?;
    let defaults = CircuitBreakers::default();
    let or = |value: &Option<pb::UInt32Value>, default: u32| value.map_or(default, |v| v.value);
    Ok((
        priority,
        CircuitBreakers {
            max_connections: or(max_connections, defaults.max_connections),
            max_pending_requests: or(max_pending_requests, defaults.max_pending_requests),
            max_requests: or(max_requests, defaults.max_requests),
            max_retries: or(max_retries, defaults.max_retries),
        },
    ))
}

/// The upstream protocol, from `typed_extension_protocol_options`: HTTP/1.1 unless the
/// `HttpProtocolOptions` entry asks for HTTP/2.
fn protocol(
    options: &std::collections::HashMap<String, pb::Any>,
) -> Result<UpstreamProtocol, Rejection> {
    // Sorted, so that with several unknown keys the error names the same one every time.
    let options: BTreeMap<_, _> = options.iter().collect();
    let mut protocol = UpstreamProtocol::Http1;
    for (key, any) in options {
        if key != HTTP_PROTOCOL_OPTIONS {
            return Err(Rejection::new(
                "typed_extension_protocol_options",
                Reason::UnsupportedValue(format!("extension {key:?}")),
            ));
        }
        protocol = http_protocol_options(any).within(HTTP_PROTOCOL_OPTIONS_FIELD)?;
    }
    Ok(protocol)
}

fn http_protocol_options(any: &pb::Any) -> Result<UpstreamProtocol, Rejection> {
    use http_options_pb::http_protocol_options::UpstreamProtocolOptions as Options;
    let expected = http_options_pb::HttpProtocolOptions::type_url();
    if any.type_url != expected {
        return Err(Rejection::new(
            "type_url",
            Reason::UnsupportedValue(format!("{:?} (expected {expected:?})", any.type_url)),
        ));
    }
    let proto = http_options_pb::HttpProtocolOptions::decode(any.value.as_slice())
        .map_err(|e| Rejection::new("value", Reason::Invalid(format!("cannot decode: {e}"))))?;
    let http_options_pb::HttpProtocolOptions {
        common_http_protocol_options,
        upstream_http_protocol_options,
        http_filters,
        header_validation_config,
        outlier_detection,
        request_mirror_policies,
        hash_policy,
        retry_policy,
        upstream_protocol_options,
    } = &proto;
    reject_set(&[
        (
            upstream_http_protocol_options.is_some(),
            "upstream_http_protocol_options",
        ),
        (!http_filters.is_empty(), "http_filters"),
        (
            header_validation_config.is_some(),
            "header_validation_config",
        ),
        (outlier_detection.is_some(), "outlier_detection"),
        (
            !request_mirror_policies.is_empty(),
            "request_mirror_policies",
        ),
        (!hash_policy.is_empty(), "hash_policy"),
        (retry_policy.is_some(), "retry_policy"),
    ])?;
    if let Some(common) = common_http_protocol_options {
        common_options(common).within("common_http_protocol_options")?;
    }
    match upstream_protocol_options {
        None => Err(Rejection::new(
            "upstream_protocol_options",
            Reason::Invalid(
                "one of explicit_http_config, use_downstream_protocol_config or auto_config is \
                 required"
                    .into(),
            ),
        )),
        Some(Options::ExplicitHttpConfig(explicit)) => {
            explicit_http_config(explicit).within("explicit_http_config")
        }
        // Choosing the protocol per request (downstream's, or by ALPN) is not implemented.
        Some(Options::UseDownstreamProtocolConfig(_)) => {
            Err(Rejection::unsupported("use_downstream_protocol_config"))
        }
        Some(Options::AutoConfig(_)) => Err(Rejection::unsupported("auto_config")),
    }
}

/// Envoy's `HttpProtocolOptions` shared by both HTTP versions; accepted only with every field
/// unset (idle timeouts, connection lifetimes and header limits are not implemented).
fn common_options(proto: &core_pb::HttpProtocolOptions) -> Result<(), Rejection> {
    let core_pb::HttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = proto;
    reject_set(&[
        (idle_timeout.is_some(), "idle_timeout"),
        (max_connection_duration.is_some(), "max_connection_duration"),
        (
            max_connection_duration_jitter.is_some(),
            "max_connection_duration_jitter",
        ),
        (max_headers_count.is_some(), "max_headers_count"),
        (max_response_headers_kb.is_some(), "max_response_headers_kb"),
        (max_stream_duration.is_some(), "max_stream_duration"),
        (
            *headers_with_underscores_action != 0,
            "headers_with_underscores_action",
        ),
        (
            max_requests_per_connection.is_some(),
            "max_requests_per_connection",
        ),
    ])
}

fn explicit_http_config(
    proto: &http_options_pb::http_protocol_options::ExplicitHttpConfig,
) -> Result<UpstreamProtocol, Rejection> {
    use http_options_pb::http_protocol_options::explicit_http_config::ProtocolConfig;
    let http_options_pb::http_protocol_options::ExplicitHttpConfig { protocol_config } = proto;
    match protocol_config {
        None => Err(Rejection::new(
            "protocol_config",
            Reason::Invalid(
                "one of http_protocol_options or http2_protocol_options is required".into(),
            ),
        )),
        Some(ProtocolConfig::HttpProtocolOptions(options)) => {
            http1_options(options).within("http_protocol_options")?;
            Ok(UpstreamProtocol::Http1)
        }
        Some(ProtocolConfig::Http2ProtocolOptions(options)) => {
            http2_options(options).within("http2_protocol_options")?;
            Ok(UpstreamProtocol::Http2)
        }
        Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
            Err(Rejection::unsupported("http3_protocol_options"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load assignments: EDS resources, and the inline ones of STATIC and STRICT_DNS clusters.

/// A validated load assignment; `H` is the host as the cluster type wants it (an IP for EDS
/// and STATIC, a name for STRICT_DNS).
struct Assignment<H> {
    /// `(host, port, weight)`, in config order.
    members: Vec<(H, u16, u32)>,
}

impl Assignment<IpAddr> {
    fn into_endpoints(self) -> Vec<Endpoint> {
        self.members
            .into_iter()
            .map(|(ip, port, weight)| Endpoint {
                address: SocketAddr::new(ip, port),
                weight,
            })
            .collect()
    }
}

/// Endpoints of EDS and STATIC clusters are IP addresses, as Envoy requires.
fn ip_host(address: &str) -> Result<IpAddr, Reason> {
    address
        .parse()
        .map_err(|_| Reason::Invalid(format!("{address:?} is not an IP address")))
}

/// A STRICT_DNS host: an IP literal, or a name made of DNS labels. Envoy hands any string to
/// its resolver and fails later; a malformed name is rejected here instead, at load.
fn dns_host(address: &str) -> Result<String, Reason> {
    let name = address.strip_suffix('.').unwrap_or(address);
    let valid = address.parse::<IpAddr>().is_ok()
        || (!name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
    if valid {
        Ok(address.to_owned())
    } else {
        Err(Reason::Invalid(format!(
            "{address:?} is neither an IP address nor a DNS name"
        )))
    }
}

fn load_assignment<H>(
    proto: &endpoint_pb::ClusterLoadAssignment,
    host: fn(&str) -> Result<H, Reason>,
) -> Result<Assignment<H>, Rejection> {
    let endpoint_pb::ClusterLoadAssignment {
        cluster_name,
        endpoints,
        named_endpoints,
        policy,
    } = proto;
    if cluster_name.is_empty() {
        return Err(Rejection::new("cluster_name", Reason::Missing));
    }
    reject_if(!named_endpoints.is_empty(), "named_endpoints")?;
    if let Some(policy) = policy {
        assignment_policy(policy).within("policy")?;
    }
    let mut members = Vec::new();
    for (i, locality) in endpoints.iter().enumerate() {
        locality_endpoints(locality, host, &mut members).at("endpoints", i)?;
    }
    Ok(Assignment { members })
}

/// The assignment's `policy`: every field changes which hosts get traffic (drops, priority
/// failover, staleness), so only an empty policy is accepted.
fn assignment_policy(
    proto: &endpoint_pb::cluster_load_assignment::Policy,
) -> Result<(), Rejection> {
    let endpoint_pb::cluster_load_assignment::Policy {
        drop_overloads,
        overprovisioning_factor,
        endpoint_stale_after,
        weighted_priority_health,
    } = proto;
    reject_set(&[
        (!drop_overloads.is_empty(), "drop_overloads"),
        (overprovisioning_factor.is_some(), "overprovisioning_factor"),
        (endpoint_stale_after.is_some(), "endpoint_stale_after"),
        (*weighted_priority_health, "weighted_priority_health"),
    ])
}

/// One locality's endpoints, appended to `out`. Localities are flattened: with one priority
/// and no locality-weighted or zone-aware balancing (both rejected), Envoy balances over the
/// hosts of all localities as one set.
#[allow(deprecated)] // `load_balancer_endpoints` is deprecated, and must still be refused
fn locality_endpoints<H>(
    proto: &endpoint_pb::LocalityLbEndpoints,
    host: fn(&str) -> Result<H, Reason>,
    out: &mut Vec<(H, u16, u32)>,
) -> Result<(), Rejection> {
    let endpoint_pb::LocalityLbEndpoints {
        // A label: only zone-aware and locality-weighted balancing read it.
        locality: _,
        metadata: _,
        lb_endpoints,
        load_balancing_weight,
        priority,
        // Not implemented by Envoy either (`not-implemented-hide`).
        proximity: _,
        lb_config,
    } = proto;
    // Envoy reads locality weights only with locality-weighted balancing, which is rejected;
    // a control plane that sends them presumably means them, so they are refused, not ignored.
    use endpoint_pb::locality_lb_endpoints::LbConfig;
    reject_set(&[
        (load_balancing_weight.is_some(), "load_balancing_weight"),
        (
            matches!(lb_config, Some(LbConfig::LoadBalancerEndpoints(_))),
            "load_balancer_endpoints",
        ),
        (
            matches!(lb_config, Some(LbConfig::LedsClusterLocalityConfig(_))),
            "leds_cluster_locality_config",
        ),
    ])?;
    if *priority != 0 {
        return Err(Rejection::new(
            "priority",
            Reason::UnsupportedValue(format!("priority {priority} (only 0 is implemented)")),
        ));
    }
    // Envoy: the weights of one locality's endpoints must add up to at most u32::MAX.
    let mut sum = 0u64;
    for (i, proto) in lb_endpoints.iter().enumerate() {
        let member = lb_endpoint(proto, host).at("lb_endpoints", i)?;
        sum += u64::from(member.2);
        if sum > u64::from(u32::MAX) {
            return Err(Rejection::new(
                "lb_endpoints",
                Reason::Invalid(format!("the sum of the weights exceeds {}", u32::MAX)),
            ));
        }
        out.push(member);
    }
    Ok(())
}

fn lb_endpoint<H>(
    proto: &endpoint_pb::LbEndpoint,
    host: fn(&str) -> Result<H, Reason>,
) -> Result<(H, u16, u32), Rejection> {
    use core_pb::HealthStatus;
    use endpoint_pb::lb_endpoint::HostIdentifier;
    let endpoint_pb::LbEndpoint {
        health_status,
        // Only subset load balancing and transport socket matches read it; both are rejected.
        metadata: _,
        load_balancing_weight,
        host_identifier,
    } = proto;
    match HealthStatus::try_from(*health_status) {
        Ok(HealthStatus::Unknown | HealthStatus::Healthy) => {}
        // Unhealthy, draining, timed-out and degraded hosts are excluded or de-prioritised by
        // Envoy's balancers, with panic thresholds: not implemented.
        Ok(status) => {
            return Err(Rejection::new(
                "health_status",
                Reason::UnsupportedValue(status.as_str_name().into()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "health_status",
                Reason::Invalid(format!("unknown health status {health_status}")),
            ));
        }
    }
    let weight = match load_balancing_weight {
        None => 1,
        Some(w) if w.value == 0 => {
            return Err(Rejection::new(
                "load_balancing_weight",
                Reason::Invalid("must be at least 1".into()),
            ));
        }
        Some(w) => w.value,
    };
    let (host, port) = match host_identifier {
        None => return Err(Rejection::new("endpoint", Reason::Missing)),
        Some(HostIdentifier::Endpoint(endpoint)) => {
            self::endpoint(endpoint, host).within("endpoint")?
        }
        Some(HostIdentifier::EndpointName(_)) => {
            return Err(Rejection::unsupported("endpoint_name"));
        }
    };
    Ok((host, port, weight))
}

fn endpoint<H>(
    proto: &endpoint_pb::Endpoint,
    host: fn(&str) -> Result<H, Reason>,
) -> Result<(H, u16), Rejection> {
    use core_pb::address::Address;
    let endpoint_pb::Endpoint {
        address,
        health_check_config,
        hostname,
        additional_addresses,
        observability_name: _,
    } = proto;
    reject_set(&[
        // Per-endpoint health-check settings (port, Host, address): not implemented.
        (health_check_config.is_some(), "health_check_config"),
        // Read by auto_host_rewrite and auto_host_sni, both rejected; refused so that
        // implementing them cannot silently miss it.
        (!hostname.is_empty(), "hostname"),
        (!additional_addresses.is_empty(), "additional_addresses"),
    ])?;
    let address = address
        .as_ref()
        .ok_or_else(|| Rejection::new("address", Reason::Missing))?;
    let core_pb::Address { address } = address;
    match address {
        None => Err(Rejection::new("address", Reason::Missing)),
        Some(Address::SocketAddress(socket)) => socket_address(socket, host)
            .within("socket_address")
            .within("address"),
        Some(Address::Pipe(_)) => Err(Rejection::unsupported("pipe").within("address")),
        Some(Address::EnvoyInternalAddress(_)) => {
            Err(Rejection::unsupported("envoy_internal_address").within("address"))
        }
    }
}

fn socket_address<H>(
    proto: &core_pb::SocketAddress,
    host: fn(&str) -> Result<H, Reason>,
) -> Result<(H, u16), Rejection> {
    use core_pb::socket_address::{PortSpecifier, Protocol};
    let core_pb::SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    } = proto;
    match Protocol::try_from(*protocol) {
        Ok(Protocol::Tcp) => {}
        Ok(other) => {
            return Err(Rejection::new(
                "protocol",
                Reason::UnsupportedValue(other.as_str_name().into()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "protocol",
                Reason::Invalid(format!("unknown protocol {protocol}")),
            ));
        }
    }
    reject_set(&[
        (!resolver_name.is_empty(), "resolver_name"),
        (*ipv4_compat, "ipv4_compat"),
        (
            !network_namespace_filepath.is_empty(),
            "network_namespace_filepath",
        ),
    ])?;
    if address.is_empty() {
        return Err(Rejection::new("address", Reason::Missing));
    }
    let host = host(address).map_err(|r| Rejection::new("address", r))?;
    let port = match port_specifier {
        None => return Err(Rejection::new("port_value", Reason::Missing)),
        Some(PortSpecifier::PortValue(port)) => u16::try_from(*port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                Rejection::new(
                    "port_value",
                    Reason::Invalid(format!("{port} is not between 1 and 65535")),
                )
            })?,
        Some(PortSpecifier::NamedPort(_)) => return Err(Rejection::unsupported("named_port")),
    };
    Ok((host, port))
}

// ---------------------------------------------------------------------------------------------
// Small helpers (route.rs has its own private copies; the two modules do not share internals).

/// A duration that must be more than zero (Envoy's `gt: {}`).
fn positive_duration(d: &pb::Duration) -> Result<Duration, Reason> {
    let d = duration(d)?;
    if d.is_zero() {
        return Err(Reason::Invalid("must be greater than 0".into()));
    }
    Ok(d)
}

/// A duration Envoy requires (`required: true, gt: {}`).
fn required_positive(d: Option<&pb::Duration>, field: &'static str) -> Result<Duration, Rejection> {
    let d = d.ok_or_else(|| Rejection::new(field, Reason::Missing))?;
    positive_duration(d).map_err(|r| Rejection::new(field, r))
}

/// Whether an optional duration is set to something other than zero (negative counts).
fn is_nonzero(d: Option<&pb::Duration>) -> bool {
    d.is_some_and(|d| d.seconds != 0 || d.nanos != 0)
}

/// An optional duration that defaults to `default` (the value of `default_field`) and is
/// accepted only when unset or equal to it: other values would need behaviour not implemented.
fn same_as(
    value: Option<&pb::Duration>,
    default: Duration,
    field: &'static str,
    default_field: &str,
) -> Result<(), Rejection> {
    let Some(value) = value else {
        return Ok(());
    };
    let value = positive_duration(value).map_err(|r| Rejection::new(field, r))?;
    if value == default {
        Ok(())
    } else {
        Err(Rejection::new(
            field,
            Reason::UnsupportedValue(format!(
                "{value:?} (only the same as {default_field}, {default:?}, is implemented)"
            )),
        ))
    }
}

fn is_type<T: Name>(any: &pb::Any) -> bool {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    name == T::full_name()
}

fn decode<T: Message + Default>(any: &pb::Any) -> Result<T, Rejection> {
    T::decode(any.value.as_slice()).map_err(|e| {
        Rejection::new(
            "value",
            Reason::Invalid(format!("undecodable {}: {e}", any.type_url)),
        )
    })
}

#[cfg(test)]
mod tests;
