//! Upstream clusters: CDS `Cluster`s and EDS `ClusterLoadAssignment`s turned into the proxy's
//! own [`Cluster`] and [`Endpoints`].
//!
//! This is the last step of a request's trip through the config. Routing picks a cluster name
//! ([`super::route::Forward::pick_cluster`]); the upstream layer looks that name up in the
//! snapshot and finds a [`Cluster`]. The cluster says where the endpoints come from
//! ([`Discovery`]), how to pick one ([`LbPolicy`]), how long a connect may take, which HTTP
//! version to speak and when to refuse work ([`CircuitBreakers`]). For EDS clusters the
//! endpoints arrive separately, as [`Endpoints`]; [`Cluster::members`] puts the two together.
//!
//! Everything here is data: no load balancer, DNS lookup or connection lives in this module.
//!
//! As in the rest of [`super`], a field that would change behaviour and is not implemented
//! rejects the resource, naming the field. Envoy's defaults are spelled out where a field is
//! unset (`connect_timeout` 5 s, circuit-breaker thresholds 1024, ring sizes, …), so the data
//! path applies the same limits Envoy would, without reading the proto.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use prost::{Message as _, Name as _};
use tollgate_proto::envoy::config::cluster::v3 as cluster_pb;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::endpoint::v3 as endpoint_pb;
use tollgate_proto::envoy::extensions::upstreams::http::v3 as http_options_pb;
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
        (!health_checks.is_empty(), "health_checks"),
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
        (outlier_detection.is_some(), "outlier_detection"),
        (upstream_bind_config.is_some(), "upstream_bind_config"),
        (lb_subset_config.is_some(), "lb_subset_config"),
        (
            upstream_connection_options.is_some(),
            "upstream_connection_options",
        ),
        // Both only matter once endpoints can be unhealthy, and health checks and outlier
        // detection are rejected. Refused rather than ignored, so that implementing those
        // later cannot forget these.
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
    if let Some(socket) = transport_socket {
        return Err(Rejection::new(
            "transport_socket",
            Reason::UnsupportedValue(format!(
                "transport socket {:?}: upstream TLS is not implemented yet, endpoints are \
                 reached in plaintext only",
                socket.name
            )),
        ));
    }
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
    Ok(Cluster {
        name: name.clone(),
        discovery,
        connect_timeout,
        lb_policy,
        protocol,
        circuit_breakers,
    })
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
        // Read only by active health checks, which are rejected.
        (health_check_config.is_some(), "health_check_config"),
        // Read by auto_host_rewrite and health checks, both rejected; refused so that
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

/// Envoy's rule for strings that may end up in headers (`HTTP_HEADER_VALUE`): no NUL, CR or LF.
fn positive_duration(d: &pb::Duration) -> Result<Duration, Reason> {
    let d = duration(d)?;
    if d.is_zero() {
        return Err(Reason::Invalid("must be greater than 0".into()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
