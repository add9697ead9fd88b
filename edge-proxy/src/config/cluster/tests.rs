use std::net::SocketAddr;
use std::time::Duration;

use cluster_pb::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbConfig};
use http_options_pb::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use tollgate_proto::google::protobuf::{
    Any, BoolValue, Duration as PbDuration, UInt32Value, UInt64Value,
};

use super::*;

// ---------------------------------------------------------------------------------------------
// Proto builders

fn ads() -> core_pb::ConfigSource {
    core_pb::ConfigSource {
        config_source_specifier: Some(core_pb::config_source::ConfigSourceSpecifier::Ads(
            core_pb::AggregatedConfigSource {},
        )),
        resource_api_version: core_pb::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn socket(address: &str, port: u32) -> core_pb::Address {
    core_pb::Address {
        address: Some(core_pb::address::Address::SocketAddress(
            core_pb::SocketAddress {
                address: address.into(),
                port_specifier: Some(core_pb::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            },
        )),
    }
}

fn lb_endpoint(address: &str, port: u32, weight: Option<u32>) -> endpoint_pb::LbEndpoint {
    endpoint_pb::LbEndpoint {
        host_identifier: Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(
            endpoint_pb::Endpoint {
                address: Some(socket(address, port)),
                ..Default::default()
            },
        )),
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        ..Default::default()
    }
}

fn locality(lb_endpoints: Vec<endpoint_pb::LbEndpoint>) -> endpoint_pb::LocalityLbEndpoints {
    endpoint_pb::LocalityLbEndpoints {
        lb_endpoints,
        ..Default::default()
    }
}

fn assignment(
    name: &str,
    lb_endpoints: Vec<endpoint_pb::LbEndpoint>,
) -> endpoint_pb::ClusterLoadAssignment {
    endpoint_pb::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![locality(lb_endpoints)],
        ..Default::default()
    }
}

fn of_type(kind: DiscoveryType) -> Option<ClusterDiscoveryType> {
    Some(ClusterDiscoveryType::Type(kind as i32))
}

fn ms(ms: i32) -> PbDuration {
    PbDuration {
        seconds: i64::from(ms / 1000),
        nanos: (ms % 1000) * 1_000_000,
    }
}

/// An EDS cluster shaped as the control plane's translator shapes it.
fn eds_cluster(name: &str) -> cluster_pb::Cluster {
    cluster_pb::Cluster {
        name: name.into(),
        connect_timeout: Some(ms(250)),
        cluster_discovery_type: of_type(DiscoveryType::Eds),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.into(),
        }),
        ..Default::default()
    }
}

/// A STRICT_DNS cluster shaped as the control plane's translator shapes it.
fn dns_cluster(name: &str, hosts: &[(&str, u32, u32)]) -> cluster_pb::Cluster {
    cluster_pb::Cluster {
        name: name.into(),
        connect_timeout: Some(ms(5000)),
        cluster_discovery_type: of_type(DiscoveryType::StrictDns),
        dns_lookup_family: cluster_pb::cluster::DnsLookupFamily::V4Preferred as i32,
        load_assignment: Some(assignment(
            name,
            hosts
                .iter()
                .map(|(host, port, weight)| lb_endpoint(host, *port, Some(*weight)))
                .collect(),
        )),
        ..Default::default()
    }
}

fn http_options(protocol: ProtocolConfig) -> http_options_pb::HttpProtocolOptions {
    http_options_pb::HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(protocol),
            },
        )),
        ..Default::default()
    }
}

fn http2() -> http_options_pb::HttpProtocolOptions {
    http_options(ProtocolConfig::Http2ProtocolOptions(Default::default()))
}

fn with_options(
    mut cluster: cluster_pb::Cluster,
    options: &http_options_pb::HttpProtocolOptions,
) -> cluster_pb::Cluster {
    cluster.typed_extension_protocol_options.insert(
        HTTP_PROTOCOL_OPTIONS.into(),
        tollgate_proto::pack_any(options),
    );
    cluster
}

fn build(proto: &cluster_pb::Cluster) -> Cluster {
    Cluster::try_from(proto).unwrap_or_else(|e| panic!("{e}"))
}

fn build_endpoints(proto: &endpoint_pb::ClusterLoadAssignment) -> Endpoints {
    Endpoints::try_from(proto).unwrap_or_else(|e| panic!("{e}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ep(address: &str, weight: u32) -> Endpoint {
    Endpoint {
        address: addr(address),
        weight,
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted configs

#[test]
fn eds_cluster_fields_and_envoys_defaults() {
    let cluster = build(&eds_cluster("users"));
    assert_eq!(
        cluster,
        Cluster {
            name: "users".into(),
            discovery: Discovery::Eds {
                service_name: "users".into()
            },
            connect_timeout: Duration::from_millis(250),
            lb_policy: LbPolicy::RoundRobin,
            protocol: UpstreamProtocol::Http1,
            circuit_breakers: CircuitBreakers {
                max_connections: 1024,
                max_pending_requests: 1024,
                max_requests: 1024,
                max_retries: 3,
            },
            health_check: None,
            outlier_detection: None,
            tls: None,
        }
    );
    assert_eq!(cluster.eds_service_name(), Some("users"));

    // No service name: Envoy asks EDS for the cluster's own name. No connect_timeout: 5 s.
    // AUTO is Envoy's spelling of v3.
    let mut proto = eds_cluster("users");
    proto.connect_timeout = None;
    let config = proto.eds_cluster_config.as_mut().unwrap();
    config.service_name.clear();
    config.eds_config.as_mut().unwrap().resource_api_version = core_pb::ApiVersion::Auto as i32;
    let cluster = build(&proto);
    assert_eq!(cluster.eds_service_name(), Some("users"));
    assert_eq!(cluster.connect_timeout, DEFAULT_CONNECT_TIMEOUT);

    let mut proto = eds_cluster("users");
    proto.eds_cluster_config.as_mut().unwrap().service_name = "users-v2".into();
    assert_eq!(build(&proto).eds_service_name(), Some("users-v2"));
}

#[test]
#[allow(deprecated)] // `dns_refresh_rate` is deprecated, and still honoured by Envoy
fn ignored_fields_are_cosmetic_or_dead_for_the_type() {
    let mut proto = eds_cluster("users");
    proto.alt_stat_name = "users_stats".into();
    proto.metadata = Some(Default::default());
    proto.track_cluster_stats = Some(Default::default());
    // Envoy reads these only for DNS (and ORIGINAL_DST) clusters.
    proto.dns_lookup_family = cluster_pb::cluster::DnsLookupFamily::V6Only as i32;
    proto.dns_refresh_rate = Some(ms(0));
    proto.cleanup_interval = Some(ms(1000));
    proto.wait_for_warm_on_init = Some(BoolValue { value: true });
    proto.common_lb_config = Some(Default::default());
    assert_eq!(build(&proto), build(&eds_cluster("users")));
}

#[test]
#[allow(deprecated)] // `dns_refresh_rate` is deprecated, and still honoured by Envoy
fn strict_dns_cluster_keeps_names_ports_and_weights() {
    let proto = dns_cluster(
        "legacy",
        &[
            ("legacy.internal", 80, 1),
            ("10.1.2.3", 8080, 5),
            ("_svc.example.com.", 443, 2),
        ],
    );
    let cluster = build(&proto);
    assert_eq!(
        cluster.discovery,
        Discovery::StrictDns {
            hosts: vec![
                DnsHost {
                    host: "legacy.internal".into(),
                    port: 80,
                    weight: 1
                },
                DnsHost {
                    host: "10.1.2.3".into(),
                    port: 8080,
                    weight: 5
                },
                DnsHost {
                    host: "_svc.example.com.".into(),
                    port: 443,
                    weight: 2
                },
            ],
            lookup_family: DnsLookupFamily::V4Preferred,
            refresh_rate: DEFAULT_DNS_REFRESH_RATE,
        }
    );
    assert_eq!(cluster.eds_service_name(), None);

    let mut proto = dns_cluster("legacy", &[("legacy.internal", 80, 1)]);
    proto.dns_refresh_rate = Some(ms(30_000));
    proto.dns_lookup_family = 0;
    let Discovery::StrictDns {
        refresh_rate,
        lookup_family,
        ..
    } = build(&proto).discovery
    else {
        panic!("strict dns")
    };
    assert_eq!(refresh_rate, Duration::from_secs(30));
    assert_eq!(lookup_family, DnsLookupFamily::Auto);

    // Envoy accepts a DNS cluster without endpoints.
    let mut proto = dns_cluster("empty", &[]);
    proto.load_assignment = None;
    assert!(matches!(
        build(&proto).discovery,
        Discovery::StrictDns { hosts, .. } if hosts.is_empty()
    ));
}

#[test]
fn static_cluster_is_the_default_type() {
    let proto = cluster_pb::Cluster {
        name: "fixed".into(),
        load_assignment: Some(assignment(
            "fixed",
            vec![
                lb_endpoint("127.0.0.1", 9000, None),
                lb_endpoint("::1", 9001, Some(7)),
            ],
        )),
        ..Default::default()
    };
    assert_eq!(
        build(&proto).discovery,
        Discovery::Static {
            endpoints: vec![ep("127.0.0.1:9000", 1), ep("[::1]:9001", 7)]
        }
    );
    let empty = cluster_pb::Cluster {
        name: "empty".into(),
        cluster_discovery_type: of_type(DiscoveryType::Static),
        ..Default::default()
    };
    assert_eq!(
        build(&empty).discovery,
        Discovery::Static { endpoints: vec![] }
    );
}

#[test]
fn lb_policies_with_envoys_defaults_and_settings() {
    use cluster_pb::cluster::LbPolicy as Pb;
    let with = |policy: Pb, config: Option<LbConfig>| {
        let mut proto = eds_cluster("c");
        proto.lb_policy = policy as i32;
        proto.lb_config = config;
        build(&proto).lb_policy
    };
    assert_eq!(with(Pb::RoundRobin, None), LbPolicy::RoundRobin);
    assert_eq!(
        with(
            Pb::RoundRobin,
            Some(LbConfig::RoundRobinLbConfig(Default::default()))
        ),
        LbPolicy::RoundRobin
    );
    assert_eq!(with(Pb::Random, None), LbPolicy::Random);
    assert_eq!(
        with(Pb::LeastRequest, None),
        LbPolicy::LeastRequest { choice_count: 2 }
    );
    assert_eq!(
        with(
            Pb::LeastRequest,
            Some(LbConfig::LeastRequestLbConfig(
                cluster_pb::cluster::LeastRequestLbConfig {
                    choice_count: Some(UInt32Value { value: 3 }),
                    ..Default::default()
                }
            ))
        ),
        LbPolicy::LeastRequest { choice_count: 3 }
    );
    assert_eq!(
        with(Pb::RingHash, None),
        LbPolicy::RingHash {
            minimum_ring_size: 1024,
            maximum_ring_size: 8_388_608
        }
    );
    assert_eq!(
        with(
            Pb::RingHash,
            Some(LbConfig::RingHashLbConfig(
                cluster_pb::cluster::RingHashLbConfig {
                    minimum_ring_size: Some(UInt64Value { value: 64 }),
                    maximum_ring_size: Some(UInt64Value { value: 4096 }),
                    ..Default::default()
                }
            ))
        ),
        LbPolicy::RingHash {
            minimum_ring_size: 64,
            maximum_ring_size: 4096
        }
    );
    assert_eq!(
        with(Pb::Maglev, None),
        LbPolicy::Maglev { table_size: 65_537 }
    );
    assert_eq!(
        with(
            Pb::Maglev,
            Some(LbConfig::MaglevLbConfig(
                cluster_pb::cluster::MaglevLbConfig {
                    table_size: Some(UInt64Value { value: 5_000_011 }),
                }
            ))
        ),
        LbPolicy::Maglev {
            table_size: 5_000_011
        }
    );
}

#[test]
fn primes_for_maglev_tables() {
    let primes: Vec<u64> = (0..30).filter(|n| is_prime(*n)).collect();
    assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    assert!(is_prime(65_537));
    assert!(is_prime(5_000_011));
    assert!(!is_prime(65_536));
    assert!(!is_prime(5_000_009)); // 7 × 714287
}

#[test]
fn upstream_protocol_from_http_protocol_options() {
    assert_eq!(build(&eds_cluster("c")).protocol, UpstreamProtocol::Http1);
    assert_eq!(
        build(&with_options(eds_cluster("c"), &http2())).protocol,
        UpstreamProtocol::Http2
    );
    let http1 = http_options(ProtocolConfig::HttpProtocolOptions(Default::default()));
    assert_eq!(
        build(&with_options(eds_cluster("c"), &http1)).protocol,
        UpstreamProtocol::Http1
    );
    // Empty common options are Envoy's defaults.
    let mut options = http2();
    options.common_http_protocol_options = Some(Default::default());
    assert_eq!(
        build(&with_options(dns_cluster("c", &[("a.b", 80, 1)]), &options)).protocol,
        UpstreamProtocol::Http2
    );
}

#[test]
fn circuit_breakers_take_the_first_default_priority_thresholds() {
    use cluster_pb::circuit_breakers::Thresholds;
    let value = |value| Some(UInt32Value { value });
    let mut proto = eds_cluster("c");
    proto.circuit_breakers = Some(cluster_pb::CircuitBreakers {
        thresholds: vec![
            Thresholds {
                priority: core_pb::RoutingPriority::High as i32,
                max_connections: value(1),
                ..Default::default()
            },
            Thresholds {
                max_connections: value(100),
                max_requests: value(50),
                track_remaining: true,
                ..Default::default()
            },
            Thresholds {
                max_connections: value(7),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    assert_eq!(
        build(&proto).circuit_breakers,
        CircuitBreakers {
            max_connections: 100,
            max_pending_requests: 1024,
            max_requests: 50,
            max_retries: 3,
        }
    );
    // Only HIGH thresholds: the default priority keeps Envoy's defaults.
    proto
        .circuit_breakers
        .as_mut()
        .unwrap()
        .thresholds
        .drain(1..);
    assert_eq!(build(&proto).circuit_breakers, CircuitBreakers::default());
}

#[test]
fn endpoints_from_a_load_assignment() {
    let mut proto = endpoint_pb::ClusterLoadAssignment {
        cluster_name: "users".into(),
        endpoints: vec![
            endpoint_pb::LocalityLbEndpoints {
                locality: Some(core_pb::Locality {
                    zone: "a".into(),
                    ..Default::default()
                }),
                lb_endpoints: vec![
                    lb_endpoint("10.0.0.1", 8080, Some(3)),
                    lb_endpoint("10.0.0.2", 8080, None),
                ],
                ..Default::default()
            },
            locality(vec![]),
            locality(vec![lb_endpoint("2001:db8::1", 443, Some(1))]),
        ],
        policy: Some(Default::default()),
        ..Default::default()
    };
    proto.endpoints[0].lb_endpoints[1].health_status = core_pb::HealthStatus::Healthy as i32;
    assert_eq!(
        build_endpoints(&proto),
        Endpoints {
            cluster_name: "users".into(),
            endpoints: vec![
                ep("10.0.0.1:8080", 3),
                ep("10.0.0.2:8080", 1),
                ep("[2001:db8::1]:443", 1),
            ],
        }
    );
    // An empty assignment: a cluster with no endpoints for now.
    assert!(
        build_endpoints(&assignment("users", vec![]))
            .endpoints
            .is_empty()
    );
}

#[test]
fn members_put_a_cluster_and_its_assignment_together() {
    let eds = build(&with_options(eds_cluster("users"), &http2()));
    let endpoints = build_endpoints(&assignment(
        "users",
        vec![lb_endpoint("10.0.0.1", 80, None)],
    ));
    assert_eq!(
        eds.members(|name| (name == "users").then_some(&endpoints)),
        Members::Endpoints(&[ep("10.0.0.1:80", 1)])
    );
    assert_eq!(eds.members(|_| None), Members::AwaitingAssignment);

    let dns = build(&dns_cluster("legacy", &[("legacy.internal", 80, 2)]));
    assert_eq!(
        dns.members(|_| panic!("not an EDS cluster")),
        Members::Resolve {
            hosts: &[DnsHost {
                host: "legacy.internal".into(),
                port: 80,
                weight: 2
            }],
            lookup_family: DnsLookupFamily::V4Preferred,
        }
    );
}

#[test]
fn the_options_key_in_error_paths_is_the_options_key() {
    assert_eq!(
        HTTP_PROTOCOL_OPTIONS_FIELD,
        format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS:?}]")
    );
    assert_eq!(
        format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"),
        http_options_pb::HttpProtocolOptions::type_url()
    );
}

// ---------------------------------------------------------------------------------------------
// Rejected configs

/// Breaks one thing in a valid config.
type Breaker<T> = Box<dyn Fn(&mut T)>;
/// Checks the reason a broken config was rejected for.
type Check<'a> = &'a dyn Fn(&Reason) -> bool;

fn unsupported(r: &Reason) -> bool {
    *r == Reason::Unsupported
}

fn unsupported_value(r: &Reason) -> bool {
    matches!(r, Reason::UnsupportedValue(_))
}

fn invalid(r: &Reason) -> bool {
    matches!(r, Reason::Invalid(_))
}

fn missing(r: &Reason) -> bool {
    *r == Reason::Missing
}

fn eds_config(c: &mut cluster_pb::Cluster) -> &mut core_pb::ConfigSource {
    c.eds_cluster_config
        .as_mut()
        .unwrap()
        .eds_config
        .as_mut()
        .unwrap()
}

fn first_lb_endpoint(a: &mut endpoint_pb::ClusterLoadAssignment) -> &mut endpoint_pb::LbEndpoint {
    &mut a.endpoints[0].lb_endpoints[0]
}

fn first_endpoint(a: &mut endpoint_pb::ClusterLoadAssignment) -> &mut endpoint_pb::Endpoint {
    match first_lb_endpoint(a).host_identifier.as_mut() {
        Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(e)) => e,
        _ => unreachable!(),
    }
}

fn first_socket(a: &mut endpoint_pb::ClusterLoadAssignment) -> &mut core_pb::SocketAddress {
    match first_endpoint(a)
        .address
        .as_mut()
        .and_then(|a| a.address.as_mut())
    {
        Some(core_pb::address::Address::SocketAddress(s)) => s,
        _ => unreachable!(),
    }
}

/// The control plane's HTTP/2 options, changed by `f`, installed in the cluster.
fn set_options(
    c: &mut cluster_pb::Cluster,
    f: impl FnOnce(&mut http_options_pb::HttpProtocolOptions),
) {
    let mut options = http2();
    f(&mut options);
    *c = with_options(c.clone(), &options);
}

fn set_http2(c: &mut cluster_pb::Cluster, f: impl FnOnce(&mut core_pb::Http2ProtocolOptions)) {
    let mut h2 = core_pb::Http2ProtocolOptions::default();
    f(&mut h2);
    set_options(c, |o| {
        *o = http_options(ProtocolConfig::Http2ProtocolOptions(h2))
    });
}

const OPTS: &str = HTTP_PROTOCOL_OPTIONS_FIELD;

#[test]
#[allow(deprecated)] // deprecated fields are set to prove they are refused
fn unsupported_or_invalid_clusters_are_rejected_naming_the_field() {
    use cluster_pb::cluster::LbPolicy as Pb;
    let opts = |rest: &str| format!("{OPTS}.{rest}");
    let cases: Vec<(String, Breaker<cluster_pb::Cluster>, Check<'_>)> = vec![
        // The cluster itself.
        ("name".into(), Box::new(|c| c.name.clear()), &missing),
        // Health checks, outlier detection and TLS have their own table, in `health`.
        (
            "transport_socket_matches".into(),
            Box::new(|c| c.transport_socket_matches = vec![Default::default()]),
            &unsupported,
        ),
        (
            "lb_subset_config".into(),
            Box::new(|c| c.lb_subset_config = Some(Default::default())),
            &unsupported,
        ),
        (
            "upstream_connection_options".into(),
            Box::new(|c| c.upstream_connection_options = Some(Default::default())),
            &unsupported,
        ),
        (
            "per_connection_buffer_limit_bytes".into(),
            Box::new(|c| c.per_connection_buffer_limit_bytes = Some(UInt32Value { value: 1 })),
            &unsupported,
        ),
        (
            "max_requests_per_connection".into(),
            Box::new(|c| c.max_requests_per_connection = Some(UInt32Value { value: 1 })),
            &unsupported,
        ),
        (
            "http2_protocol_options".into(),
            Box::new(|c| c.http2_protocol_options = Some(Default::default())),
            &unsupported,
        ),
        (
            "protocol_selection".into(),
            Box::new(|c| c.protocol_selection = 1),
            &unsupported,
        ),
        (
            "dns_resolvers".into(),
            Box::new(|c| c.dns_resolvers = vec![socket("8.8.8.8", 53)]),
            &unsupported,
        ),
        (
            "typed_dns_resolver_config".into(),
            Box::new(|c| c.typed_dns_resolver_config = Some(Default::default())),
            &unsupported,
        ),
        (
            "respect_dns_ttl".into(),
            Box::new(|c| c.respect_dns_ttl = true),
            &unsupported,
        ),
        (
            "wait_for_warm_on_init".into(),
            Box::new(|c| c.wait_for_warm_on_init = Some(BoolValue { value: false })),
            &unsupported_value,
        ),
        (
            "ignore_health_on_host_removal".into(),
            Box::new(|c| c.ignore_health_on_host_removal = true),
            &unsupported,
        ),
        (
            "filters".into(),
            Box::new(|c| c.filters = vec![Default::default()]),
            &unsupported,
        ),
        (
            "load_balancing_policy".into(),
            Box::new(|c| c.load_balancing_policy = Some(Default::default())),
            &unsupported,
        ),
        (
            "preconnect_policy".into(),
            Box::new(|c| c.preconnect_policy = Some(Default::default())),
            &unsupported,
        ),
        (
            "connect_timeout".into(),
            Box::new(|c| c.connect_timeout = Some(ms(0))),
            &invalid,
        ),
        (
            "connect_timeout".into(),
            Box::new(|c| {
                c.connect_timeout = Some(PbDuration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
            &invalid,
        ),
        // Circuit breakers.
        (
            "circuit_breakers.per_host_thresholds".into(),
            Box::new(|c| {
                c.circuit_breakers = Some(cluster_pb::CircuitBreakers {
                    per_host_thresholds: vec![Default::default()],
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        (
            "circuit_breakers.thresholds[1].retry_budget".into(),
            Box::new(|c| {
                c.circuit_breakers = Some(cluster_pb::CircuitBreakers {
                    thresholds: vec![
                        Default::default(),
                        cluster_pb::circuit_breakers::Thresholds {
                            retry_budget: Some(Default::default()),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        // Common load-balancer settings.
        (
            "common_lb_config.healthy_panic_threshold".into(),
            Box::new(|c| {
                c.common_lb_config = Some(cluster_pb::cluster::CommonLbConfig {
                    healthy_panic_threshold: Some(Default::default()),
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        (
            "common_lb_config.locality_weighted_lb_config".into(),
            Box::new(|c| {
                c.common_lb_config = Some(cluster_pb::cluster::CommonLbConfig {
                    locality_config_specifier: Some(
                        cluster_pb::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                            Default::default(),
                        ),
                    ),
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        // Discovery.
        (
            "type".into(),
            Box::new(|c| c.cluster_discovery_type = of_type(DiscoveryType::LogicalDns)),
            &unsupported_value,
        ),
        (
            "type".into(),
            Box::new(|c| c.cluster_discovery_type = of_type(DiscoveryType::OriginalDst)),
            &unsupported_value,
        ),
        (
            "type".into(),
            Box::new(|c| c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(42))),
            &invalid,
        ),
        (
            "cluster_type".into(),
            Box::new(|c| {
                c.cluster_discovery_type =
                    Some(ClusterDiscoveryType::ClusterType(Default::default()))
            }),
            &unsupported_value,
        ),
        (
            "eds_cluster_config".into(),
            Box::new(|c| c.eds_cluster_config = None),
            &missing,
        ),
        (
            "eds_cluster_config.eds_config".into(),
            Box::new(|c| c.eds_cluster_config.as_mut().unwrap().eds_config = None),
            &missing,
        ),
        (
            "eds_cluster_config.eds_config.api_config_source".into(),
            Box::new(|c| {
                eds_config(c).config_source_specifier = Some(
                    core_pb::config_source::ConfigSourceSpecifier::ApiConfigSource(
                        Default::default(),
                    ),
                )
            }),
            &unsupported,
        ),
        (
            "eds_cluster_config.eds_config.self".into(),
            Box::new(|c| {
                eds_config(c).config_source_specifier = Some(
                    core_pb::config_source::ConfigSourceSpecifier::Self_(Default::default()),
                )
            }),
            &unsupported,
        ),
        (
            "eds_cluster_config.eds_config.config_source_specifier".into(),
            Box::new(|c| eds_config(c).config_source_specifier = None),
            &invalid,
        ),
        (
            "eds_cluster_config.eds_config.initial_fetch_timeout".into(),
            Box::new(|c| eds_config(c).initial_fetch_timeout = Some(ms(1000))),
            &unsupported,
        ),
        (
            "eds_cluster_config.eds_config.resource_api_version".into(),
            Box::new(|c| eds_config(c).resource_api_version = core_pb::ApiVersion::V2 as i32),
            &unsupported_value,
        ),
        (
            "load_assignment".into(),
            Box::new(|c| c.load_assignment = Some(assignment("c", vec![]))),
            &invalid,
        ),
        (
            "eds_cluster_config".into(),
            Box::new(|c| {
                *c = {
                    let mut dns = dns_cluster("c", &[("a.example", 80, 1)]);
                    dns.eds_cluster_config = c.eds_cluster_config.clone();
                    dns
                }
            }),
            &invalid,
        ),
        // Inline load assignments.
        (
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
                .into(),
            Box::new(|c| *c = dns_cluster("c", &[("bad name!", 80, 1)])),
            &invalid,
        ),
        (
            "load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address"
                .into(),
            Box::new(|c| {
                *c = dns_cluster("c", &[("10.0.0.1", 80, 1), ("legacy.internal", 80, 1)]);
                c.cluster_discovery_type = of_type(DiscoveryType::Static);
            }),
            &invalid,
        ),
        (
            "load_assignment.cluster_name".into(),
            Box::new(|c| {
                *c = dns_cluster("c", &[("a.example", 80, 1)]);
                c.load_assignment.as_mut().unwrap().cluster_name.clear();
            }),
            &missing,
        ),
        (
            "dns_lookup_family".into(),
            Box::new(|c| {
                *c = dns_cluster("c", &[("a.example", 80, 1)]);
                c.dns_lookup_family = 9;
            }),
            &invalid,
        ),
        (
            "dns_refresh_rate".into(),
            Box::new(|c| {
                *c = dns_cluster("c", &[("a.example", 80, 1)]);
                c.dns_refresh_rate = Some(PbDuration {
                    seconds: 0,
                    nanos: 1000,
                });
            }),
            &invalid,
        ),
        // Load-balancing policies.
        (
            "lb_policy".into(),
            Box::new(|c| c.lb_policy = Pb::ClusterProvided as i32),
            &unsupported_value,
        ),
        ("lb_policy".into(), Box::new(|c| c.lb_policy = 4), &invalid),
        (
            "ring_hash_lb_config".into(),
            Box::new(|c| c.lb_config = Some(LbConfig::RingHashLbConfig(Default::default()))),
            &invalid,
        ),
        (
            "ring_hash_lb_config.hash_function".into(),
            Box::new(|c| {
                c.lb_policy = Pb::RingHash as i32;
                c.lb_config = Some(LbConfig::RingHashLbConfig(
                    cluster_pb::cluster::RingHashLbConfig {
                        hash_function:
                            cluster_pb::cluster::ring_hash_lb_config::HashFunction::MurmurHash2
                                as i32,
                        ..Default::default()
                    },
                ));
            }),
            &unsupported_value,
        ),
        (
            "ring_hash_lb_config.minimum_ring_size".into(),
            Box::new(|c| {
                c.lb_policy = Pb::RingHash as i32;
                c.lb_config = Some(LbConfig::RingHashLbConfig(
                    cluster_pb::cluster::RingHashLbConfig {
                        minimum_ring_size: Some(UInt64Value { value: 2048 }),
                        maximum_ring_size: Some(UInt64Value { value: 1024 }),
                        ..Default::default()
                    },
                ));
            }),
            &invalid,
        ),
        (
            "ring_hash_lb_config.maximum_ring_size".into(),
            Box::new(|c| {
                c.lb_policy = Pb::RingHash as i32;
                c.lb_config = Some(LbConfig::RingHashLbConfig(
                    cluster_pb::cluster::RingHashLbConfig {
                        maximum_ring_size: Some(UInt64Value { value: 8_388_609 }),
                        ..Default::default()
                    },
                ));
            }),
            &invalid,
        ),
        (
            "maglev_lb_config.table_size".into(),
            Box::new(|c| {
                c.lb_policy = Pb::Maglev as i32;
                c.lb_config = Some(LbConfig::MaglevLbConfig(
                    cluster_pb::cluster::MaglevLbConfig {
                        table_size: Some(UInt64Value { value: 65_536 }),
                    },
                ));
            }),
            &invalid,
        ),
        (
            "least_request_lb_config.choice_count".into(),
            Box::new(|c| {
                c.lb_policy = Pb::LeastRequest as i32;
                c.lb_config = Some(LbConfig::LeastRequestLbConfig(
                    cluster_pb::cluster::LeastRequestLbConfig {
                        choice_count: Some(UInt32Value { value: 1 }),
                        ..Default::default()
                    },
                ));
            }),
            &invalid,
        ),
        (
            "least_request_lb_config.active_request_bias".into(),
            Box::new(|c| {
                c.lb_policy = Pb::LeastRequest as i32;
                c.lb_config = Some(LbConfig::LeastRequestLbConfig(
                    cluster_pb::cluster::LeastRequestLbConfig {
                        active_request_bias: Some(Default::default()),
                        ..Default::default()
                    },
                ));
            }),
            &unsupported,
        ),
        (
            "round_robin_lb_config.slow_start_config".into(),
            Box::new(|c| {
                c.lb_config = Some(LbConfig::RoundRobinLbConfig(
                    cluster_pb::cluster::RoundRobinLbConfig {
                        slow_start_config: Some(Default::default()),
                    },
                ))
            }),
            &unsupported,
        ),
        // Upstream HTTP protocol options.
        (
            "typed_extension_protocol_options".into(),
            Box::new(|c| {
                c.typed_extension_protocol_options
                    .insert("envoy.filters.network.thrift_proxy".into(), Any::default());
            }),
            &unsupported_value,
        ),
        (
            opts("type_url"),
            Box::new(|c| {
                c.typed_extension_protocol_options.insert(
                    HTTP_PROTOCOL_OPTIONS.into(),
                    Any {
                        type_url: "type.googleapis.com/xds.type.v3.TypedStruct".into(),
                        value: vec![],
                    },
                );
            }),
            &unsupported_value,
        ),
        (
            opts("value"),
            Box::new(|c| {
                c.typed_extension_protocol_options.insert(
                    HTTP_PROTOCOL_OPTIONS.into(),
                    Any {
                        type_url: http_options_pb::HttpProtocolOptions::type_url(),
                        value: vec![0xff, 0xff, 0xff],
                    },
                );
            }),
            &invalid,
        ),
        (
            opts("upstream_protocol_options"),
            Box::new(|c| set_options(c, |o| o.upstream_protocol_options = None)),
            &invalid,
        ),
        (
            opts("auto_config"),
            Box::new(|c| {
                set_options(c, |o| {
                    o.upstream_protocol_options =
                        Some(UpstreamProtocolOptions::AutoConfig(Default::default()))
                })
            }),
            &unsupported,
        ),
        (
            opts("use_downstream_protocol_config"),
            Box::new(|c| {
                set_options(c, |o| {
                    o.upstream_protocol_options = Some(
                        UpstreamProtocolOptions::UseDownstreamProtocolConfig(Default::default()),
                    )
                })
            }),
            &unsupported,
        ),
        (
            opts("explicit_http_config.http3_protocol_options"),
            Box::new(|c| {
                set_options(c, |o| {
                    *o = http_options(ProtocolConfig::Http3ProtocolOptions(Default::default()))
                })
            }),
            &unsupported,
        ),
        (
            opts("explicit_http_config.protocol_config"),
            Box::new(|c| {
                set_options(c, |o| {
                    o.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                        Default::default(),
                    ))
                })
            }),
            &invalid,
        ),
        (
            opts("explicit_http_config.http2_protocol_options.max_concurrent_streams"),
            Box::new(|c| {
                set_http2(c, |h2| {
                    h2.max_concurrent_streams = Some(UInt32Value { value: 100 })
                })
            }),
            &unsupported,
        ),
        (
            opts("explicit_http_config.http2_protocol_options.connection_keepalive"),
            Box::new(|c| set_http2(c, |h2| h2.connection_keepalive = Some(Default::default()))),
            &unsupported,
        ),
        (
            opts("explicit_http_config.http_protocol_options.enable_trailers"),
            Box::new(|c| {
                set_options(c, |o| {
                    *o = http_options(ProtocolConfig::HttpProtocolOptions(
                        core_pb::Http1ProtocolOptions {
                            enable_trailers: true,
                            ..Default::default()
                        },
                    ))
                })
            }),
            &unsupported,
        ),
        (
            opts("common_http_protocol_options.idle_timeout"),
            Box::new(|c| {
                set_options(c, |o| {
                    o.common_http_protocol_options = Some(core_pb::HttpProtocolOptions {
                        idle_timeout: Some(ms(60_000)),
                        ..Default::default()
                    })
                })
            }),
            &unsupported,
        ),
        (
            opts("upstream_http_protocol_options"),
            Box::new(|c| {
                set_options(c, |o| {
                    o.upstream_http_protocol_options = Some(Default::default())
                })
            }),
            &unsupported,
        ),
        (
            opts("retry_policy"),
            Box::new(|c| set_options(c, |o| o.retry_policy = Some(Default::default()))),
            &unsupported,
        ),
    ];
    for (field, breaker, check) in cases {
        let mut proto = eds_cluster("c");
        breaker(&mut proto);
        let err = Cluster::try_from(&proto).expect_err(&field);
        assert_eq!(err.field, field, "{err}");
        assert!(check(&err.reason), "{err}");
        assert_eq!(err.resource, Resource::Cluster(proto.name.clone()));
        assert!(
            err.to_string()
                .starts_with(&format!("cluster {}: {field}: ", proto.name)),
            "{err}"
        );
    }
}

#[test]
fn unsupported_or_invalid_assignments_are_rejected_naming_the_field() {
    use core_pb::socket_address::{PortSpecifier, Protocol};
    let address = "endpoints[0].lb_endpoints[0].endpoint.address";
    let socket = |rest: &str| format!("{address}.socket_address.{rest}");
    let cases: Vec<(
        String,
        Breaker<endpoint_pb::ClusterLoadAssignment>,
        Check<'_>,
    )> = vec![
        (
            "cluster_name".into(),
            Box::new(|a| a.cluster_name.clear()),
            &missing,
        ),
        (
            "named_endpoints".into(),
            Box::new(|a| {
                a.named_endpoints.insert("e".into(), Default::default());
            }),
            &unsupported,
        ),
        (
            "policy.drop_overloads".into(),
            Box::new(|a| {
                a.policy = Some(endpoint_pb::cluster_load_assignment::Policy {
                    drop_overloads: vec![Default::default()],
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        (
            "policy.overprovisioning_factor".into(),
            Box::new(|a| {
                a.policy = Some(endpoint_pb::cluster_load_assignment::Policy {
                    overprovisioning_factor: Some(UInt32Value { value: 100 }),
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        (
            "endpoints[1].priority".into(),
            Box::new(|a| {
                let mut backup = locality(vec![lb_endpoint("10.0.0.9", 80, None)]);
                backup.priority = 1;
                a.endpoints.push(backup);
            }),
            &unsupported_value,
        ),
        (
            "endpoints[0].load_balancing_weight".into(),
            Box::new(|a| a.endpoints[0].load_balancing_weight = Some(UInt32Value { value: 10 })),
            &unsupported,
        ),
        (
            "endpoints[0].leds_cluster_locality_config".into(),
            Box::new(|a| {
                a.endpoints[0].lb_config = Some(
                    endpoint_pb::locality_lb_endpoints::LbConfig::LedsClusterLocalityConfig(
                        Default::default(),
                    ),
                )
            }),
            &unsupported,
        ),
        (
            "endpoints[0].lb_endpoints".into(),
            Box::new(|a| {
                a.endpoints[0].lb_endpoints = vec![
                    lb_endpoint("10.0.0.1", 80, Some(u32::MAX)),
                    lb_endpoint("10.0.0.2", 80, Some(1)),
                ]
            }),
            &invalid,
        ),
        (
            "endpoints[0].lb_endpoints[0].health_status".into(),
            Box::new(|a| {
                first_lb_endpoint(a).health_status = core_pb::HealthStatus::Unhealthy as i32
            }),
            &unsupported_value,
        ),
        (
            "endpoints[0].lb_endpoints[0].health_status".into(),
            Box::new(|a| {
                first_lb_endpoint(a).health_status = core_pb::HealthStatus::Draining as i32
            }),
            &unsupported_value,
        ),
        (
            "endpoints[0].lb_endpoints[0].load_balancing_weight".into(),
            Box::new(|a| {
                first_lb_endpoint(a).load_balancing_weight = Some(UInt32Value { value: 0 })
            }),
            &invalid,
        ),
        (
            "endpoints[0].lb_endpoints[0].endpoint".into(),
            Box::new(|a| first_lb_endpoint(a).host_identifier = None),
            &missing,
        ),
        (
            "endpoints[0].lb_endpoints[0].endpoint_name".into(),
            Box::new(|a| {
                first_lb_endpoint(a).host_identifier = Some(
                    endpoint_pb::lb_endpoint::HostIdentifier::EndpointName("e".into()),
                )
            }),
            &unsupported,
        ),
        (
            "endpoints[0].lb_endpoints[0].endpoint.hostname".into(),
            Box::new(|a| first_endpoint(a).hostname = "users-1.internal".into()),
            &unsupported,
        ),
        (
            "endpoints[0].lb_endpoints[0].endpoint.health_check_config".into(),
            Box::new(|a| first_endpoint(a).health_check_config = Some(Default::default())),
            &unsupported,
        ),
        (
            "endpoints[0].lb_endpoints[0].endpoint.additional_addresses".into(),
            Box::new(|a| first_endpoint(a).additional_addresses = vec![Default::default()]),
            &unsupported,
        ),
        (
            address.into(),
            Box::new(|a| first_endpoint(a).address = None),
            &missing,
        ),
        (
            format!("{address}.pipe"),
            Box::new(|a| {
                first_endpoint(a).address = Some(core_pb::Address {
                    address: Some(core_pb::address::Address::Pipe(core_pb::Pipe {
                        path: "/tmp/upstream.sock".into(),
                        mode: 0,
                    })),
                })
            }),
            &unsupported,
        ),
        (
            format!("{address}.envoy_internal_address"),
            Box::new(|a| {
                first_endpoint(a).address = Some(core_pb::Address {
                    address: Some(core_pb::address::Address::EnvoyInternalAddress(
                        Default::default(),
                    )),
                })
            }),
            &unsupported,
        ),
        (
            socket("address"),
            Box::new(|a| first_socket(a).address = "users-1.internal".into()),
            &invalid,
        ),
        (
            socket("address"),
            Box::new(|a| first_socket(a).address.clear()),
            &missing,
        ),
        (
            socket("protocol"),
            Box::new(|a| first_socket(a).protocol = Protocol::Udp as i32),
            &unsupported_value,
        ),
        (
            socket("resolver_name"),
            Box::new(|a| first_socket(a).resolver_name = "custom".into()),
            &unsupported,
        ),
        (
            socket("ipv4_compat"),
            Box::new(|a| first_socket(a).ipv4_compat = true),
            &unsupported,
        ),
        (
            socket("named_port"),
            Box::new(|a| {
                first_socket(a).port_specifier = Some(PortSpecifier::NamedPort("http".into()))
            }),
            &unsupported,
        ),
        (
            socket("port_value"),
            Box::new(|a| first_socket(a).port_specifier = Some(PortSpecifier::PortValue(65_536))),
            &invalid,
        ),
        (
            socket("port_value"),
            Box::new(|a| first_socket(a).port_specifier = Some(PortSpecifier::PortValue(0))),
            &invalid,
        ),
        (
            socket("port_value"),
            Box::new(|a| first_socket(a).port_specifier = None),
            &missing,
        ),
    ];
    for (field, breaker, check) in cases {
        let mut proto = assignment("users", vec![lb_endpoint("10.0.0.1", 8080, Some(2))]);
        breaker(&mut proto);
        let err = Endpoints::try_from(&proto).expect_err(&field);
        assert_eq!(err.field, field, "{err}");
        assert!(check(&err.reason), "{err}");
        assert_eq!(
            err.resource,
            Resource::Endpoints(proto.cluster_name.clone())
        );
    }
}

#[test]
fn rejection_messages_read_well() {
    // Envoy's success-rate detector is on unless turned off.
    let mut proto = eds_cluster("users");
    proto.outlier_detection = Some(Default::default());
    assert_eq!(
        Cluster::try_from(&proto).unwrap_err().to_string(),
        "cluster users: outlier_detection.enforcing_success_rate: not supported: 100% (100 when \
         unset): only consecutive-5xx ejection is implemented; set 0 to turn this detector off"
    );

    let proto = with_options(
        eds_cluster("users"),
        &http_options(ProtocolConfig::Http2ProtocolOptions(
            core_pb::Http2ProtocolOptions {
                initial_stream_window_size: Some(UInt32Value { value: 65_535 }),
                ..Default::default()
            },
        )),
    );
    assert_eq!(
        Cluster::try_from(&proto).unwrap_err().to_string(),
        "cluster users: typed_extension_protocol_options\
         [\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"]\
         .explicit_http_config.http2_protocol_options.initial_stream_window_size: not supported"
    );

    let proto = assignment(
        "users",
        vec![
            lb_endpoint("10.0.0.1", 8080, None),
            lb_endpoint("users-2.internal", 8080, None),
        ],
    );
    assert_eq!(
        Endpoints::try_from(&proto).unwrap_err().to_string(),
        "endpoints of cluster users: \
         endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address: \
         \"users-2.internal\" is not an IP address"
    );
}

// ---------------------------------------------------------------------------------------------
// What the control plane actually serves

#[test]
#[allow(clippy::single_range_in_vec_init)] // lists of status ranges
fn accepts_what_the_control_plane_translator_emits() {
    use prost::Message as _;
    use rustls::pki_types::pem::PemObject as _;
    use tollgate_control_plane::model::{
        CircuitBreakers as ModelCircuitBreakers, Cluster as ModelCluster,
        Endpoint as ModelEndpoint, LbPolicy as ModelLbPolicy, Listener, Route as ModelRoute,
        UpstreamTls as ModelTls,
    };
    use tollgate_control_plane::store::StoreSnapshot;
    use tollgate_control_plane::translate::{NodeGroup, NodeKind, ResourceType, translate};

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../control-plane/src/translate/testdata/basic.json"
    );
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let list = |key: &str| fixture[key].clone();
    let mut clusters: Vec<ModelCluster> = serde_json::from_value(list("clusters")).unwrap();
    let legacy_ca: Vec<Vec<u8>> = {
        let legacy = clusters.iter().find(|c| c.name == "legacy").unwrap();
        let pem = legacy.tls.as_ref().unwrap().trusted_ca.as_ref().unwrap();
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|der| der.unwrap().to_vec())
            .collect()
    };
    let routes: Vec<ModelRoute> = serde_json::from_value(list("routes")).unwrap();
    let listeners: Vec<Listener> = serde_json::from_value(list("listeners")).unwrap();
    // Beyond the fixture: every lb policy, IPv6, HTTP/2 over EDS and an empty cluster; health
    // check and outlier detection with the model's defaults; TLS without verification.
    let endpoint = |address: &str, port, weight| ModelEndpoint {
        address: address.into(),
        port,
        weight,
    };
    for (name, lb_policy, endpoints, http2) in [
        (
            "ring",
            ModelLbPolicy::RingHash,
            vec![endpoint("::1", 8443, 128)],
            true,
        ),
        (
            "maglev",
            ModelLbPolicy::Maglev,
            vec![endpoint("10.0.1.1", 80, 1)],
            false,
        ),
        (
            "random",
            ModelLbPolicy::Random,
            vec![endpoint("api.example.com", 443, 2)],
            false,
        ),
        ("nothing-yet", ModelLbPolicy::RoundRobin, vec![], false),
    ] {
        clusters.push(ModelCluster {
            name: name.into(),
            endpoints,
            lb_policy,
            connect_timeout_ms: 1_001,
            http2,
            health_check: None,
            outlier_detection: None,
            circuit_breakers: None,
            tls: None,
        });
    }
    fn model<'a>(clusters: &'a mut [ModelCluster], name: &str) -> &'a mut ModelCluster {
        clusters.iter_mut().find(|c| c.name == name).unwrap()
    }
    let maglev = model(&mut clusters, "maglev");
    maglev.health_check = Some(serde_json::from_value(serde_json::json!({"path": "/"})).unwrap());
    maglev.outlier_detection = Some(serde_json::from_value(serde_json::json!({})).unwrap());
    maglev.circuit_breakers = Some(ModelCircuitBreakers::default());
    model(&mut clusters, "random").tls = Some(ModelTls {
        sni: Some("API.example.com".into()),
        trusted_ca: None,
        verify: false,
    });
    model(&mut clusters, "ring").tls = Some(ModelTls {
        sni: None,
        trusted_ca: None,
        verify: false,
    });
    let store = StoreSnapshot {
        revision: 1,
        clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
        routes: routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
        listeners: listeners.into_iter().map(|l| (l.name.clone(), l)).collect(),
        // Certificates, consumers, bookkeeping: nothing clusters depend on.
        ..Default::default()
    };
    let node = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let snapshot = translate(&store, &node, &Default::default()).unwrap();

    let clusters: BTreeMap<String, Cluster> = snapshot
        .resources(ResourceType::Cluster)
        .iter()
        .map(|(name, resource)| {
            assert_eq!(resource.body.type_url, tollgate_proto::type_url::CLUSTER);
            let proto = cluster_pb::Cluster::decode(resource.body.value.as_slice()).unwrap();
            let cluster = Cluster::try_from(&proto).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&cluster.name, name);
            (name.clone(), cluster)
        })
        .collect();
    let assignments: BTreeMap<String, Endpoints> = snapshot
        .resources(ResourceType::Endpoint)
        .iter()
        .map(|(name, resource)| {
            assert_eq!(resource.body.type_url, tollgate_proto::type_url::ENDPOINT);
            let proto =
                endpoint_pb::ClusterLoadAssignment::decode(resource.body.value.as_slice()).unwrap();
            let endpoints = Endpoints::try_from(&proto).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&endpoints.cluster_name, name);
            (name.clone(), endpoints)
        })
        .collect();
    assert_eq!(
        clusters.keys().collect::<Vec<_>>(),
        ["legacy", "maglev", "nothing-yet", "random", "ring", "users"]
    );
    assert_eq!(
        assignments.keys().collect::<Vec<_>>(),
        ["maglev", "nothing-yet", "ring", "users"]
    );
    // Every EDS cluster finds its assignment.
    for cluster in clusters.values() {
        assert!(
            !matches!(
                cluster.members(|name| assignments.get(name)),
                Members::AwaitingAssignment
            ),
            "{}",
            cluster.name
        );
    }

    let users = &clusters["users"];
    assert_eq!(
        users,
        &Cluster {
            name: "users".into(),
            discovery: Discovery::Eds {
                service_name: "users".into()
            },
            connect_timeout: Duration::from_millis(250),
            lb_policy: LbPolicy::LeastRequest { choice_count: 2 },
            protocol: UpstreamProtocol::Http1,
            circuit_breakers: CircuitBreakers {
                max_connections: 100,
                max_pending_requests: 1024,
                max_requests: 200,
                max_retries: 3,
            },
            health_check: Some(HealthCheck {
                path: "/healthz".into(),
                host: Some("users.internal".into()),
                protocol: UpstreamProtocol::Http1,
                interval: Duration::from_secs(2),
                // The control plane probes at the interval, traffic or not.
                no_traffic_interval: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                healthy_threshold: 2,
                unhealthy_threshold: 3,
                expected_statuses: vec![200..202, 204..205],
            }),
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx: 3,
                interval: Duration::from_secs(5),
                base_ejection_time: Duration::from_secs(15),
                max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
                max_ejection_percent: 50,
            }),
            tls: None,
        }
    );
    assert_eq!(
        users.members(|name| assignments.get(name)),
        Members::Endpoints(&[ep("10.0.0.1:8080", 3), ep("10.0.0.2:8080", 1)])
    );

    assert_eq!(
        clusters["legacy"],
        Cluster {
            name: "legacy".into(),
            discovery: Discovery::StrictDns {
                hosts: vec![DnsHost {
                    host: "legacy.internal".into(),
                    port: 80,
                    weight: 1
                }],
                lookup_family: DnsLookupFamily::V4Preferred,
                refresh_rate: DEFAULT_DNS_REFRESH_RATE,
            },
            connect_timeout: Duration::from_secs(5),
            lb_policy: LbPolicy::RoundRobin,
            protocol: UpstreamProtocol::Http2,
            circuit_breakers: CircuitBreakers::default(),
            health_check: Some(HealthCheck {
                path: "/status?full=1".into(),
                // Envoy sends the cluster's name.
                host: None,
                // In the cluster's HTTP version.
                protocol: UpstreamProtocol::Http2,
                interval: Duration::from_secs(5),
                no_traffic_interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                healthy_threshold: 1,
                unhealthy_threshold: 2,
                // Any 2xx: the model's default, not Envoy's 200.
                expected_statuses: vec![200..300],
            }),
            outlier_detection: None,
            tls: Some(UpstreamTls {
                sni: Some("legacy.internal".into()),
                alpn: vec!["h2".into()],
                min_version: TlsVersion::Tls12,
                max_version: TlsVersion::Tls13,
                trusted_ca: Some(legacy_ca),
                subject_alt_names: vec!["legacy.internal".into()],
            }),
        }
    );

    let ring = &clusters["ring"];
    assert_eq!(
        (ring.lb_policy, ring.protocol, ring.connect_timeout),
        (
            LbPolicy::RingHash {
                minimum_ring_size: 1024,
                maximum_ring_size: 8_388_608
            },
            UpstreamProtocol::Http2,
            Duration::from_millis(1_001)
        )
    );
    assert_eq!(
        ring.members(|name| assignments.get(name)),
        Members::Endpoints(&[ep("[::1]:8443", 128)])
    );
    assert_eq!(
        clusters["maglev"].lb_policy,
        LbPolicy::Maglev { table_size: 65_537 }
    );
    // The model's defaults, as Envoy reads them.
    let maglev = &clusters["maglev"];
    assert_eq!(
        maglev.health_check,
        Some(HealthCheck {
            path: "/".into(),
            host: None,
            protocol: UpstreamProtocol::Http1,
            interval: Duration::from_secs(5),
            no_traffic_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            expected_statuses: vec![200..300],
        })
    );
    assert_eq!(
        maglev.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: 5,
            interval: DEFAULT_OUTLIER_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        })
    );
    assert_eq!(maglev.circuit_breakers, CircuitBreakers::default());
    // TLS without verification: no validation context, so any certificate.
    assert_eq!(
        clusters["random"].tls,
        Some(UpstreamTls {
            sni: Some("api.example.com".into()),
            alpn: vec!["http/1.1".into()],
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            trusted_ca: None,
            subject_alt_names: vec![],
        })
    );
    let ring_tls = clusters["ring"].tls.as_ref().unwrap();
    assert_eq!(
        (ring_tls.sni.as_deref(), ring_tls.alpn.as_slice()),
        (None, ["h2".to_owned()].as_slice())
    );
    assert_eq!(clusters["random"].lb_policy, LbPolicy::Random);
    assert!(matches!(
        clusters["random"].members(|_| None),
        Members::Resolve { hosts: [DnsHost { host, port: 443, weight: 2 }], .. } if host == "api.example.com"
    ));
    assert_eq!(
        clusters["nothing-yet"].members(|name| assignments.get(name)),
        Members::Endpoints(&[])
    );
}

mod health;
