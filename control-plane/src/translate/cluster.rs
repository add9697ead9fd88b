//! Clusters → CDS `Cluster` (+ EDS `ClusterLoadAssignment` when the endpoints are IPs), with
//! their health checks, outlier detection, circuit breakers and upstream TLS.

use tollgate_proto::envoy::config::cluster::v3 as cluster_pb;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::endpoint::v3 as endpoint_pb;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;
use tollgate_proto::envoy::extensions::upstreams::http::v3 as http_options_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
use tollgate_proto::envoy::r#type::v3 as type_pb;
use tollgate_proto::google::protobuf::UInt32Value;

use crate::model::{
    CircuitBreakers, Cluster, HealthCheck, LbPolicy, OutlierDetection, UpstreamTls,
};

/// The extension key Envoy reads upstream HTTP protocol options from.
pub(super) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Translates one cluster; the load assignment is returned separately when it travels over EDS.
pub(super) fn translate(
    cluster: &Cluster,
) -> (
    cluster_pb::Cluster,
    Option<endpoint_pb::ClusterLoadAssignment>,
) {
    let assignment = load_assignment(cluster);
    let mut out = cluster_pb::Cluster {
        name: cluster.name.clone(),
        connect_timeout: Some(super::duration_ms(cluster.connect_timeout_ms)),
        lb_policy: lb_policy(cluster.lb_policy) as i32,
        health_checks: cluster
            .health_check
            .iter()
            .map(|hc| health_check(hc, cluster.http2))
            .collect(),
        outlier_detection: cluster.outlier_detection.as_ref().map(outlier_detection),
        circuit_breakers: cluster.circuit_breakers.as_ref().map(circuit_breakers),
        transport_socket: cluster
            .tls
            .as_ref()
            .map(|tls| tls_transport_socket(tls, cluster.http2)),
        ..cluster_pb::Cluster::default()
    };
    if cluster.http2 {
        let options = http_options_pb::HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_options_pb::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_options_pb::http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_options_pb::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                core_pb::Http2ProtocolOptions::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
        out.typed_extension_protocol_options.insert(
            HTTP_PROTOCOL_OPTIONS.to_owned(),
            tollgate_proto::pack_any(&options),
        );
    }
    if cluster.all_endpoints_are_ips() {
        out.cluster_discovery_type = Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
            cluster_pb::cluster::DiscoveryType::Eds as i32,
        ));
        out.eds_cluster_config = Some(cluster_pb::cluster::EdsClusterConfig {
            eds_config: Some(super::ads_config_source()),
            service_name: cluster.name.clone(),
        });
        (out, Some(assignment))
    } else {
        // EDS carries only IP addresses; names are resolved by the proxy, as Envoy's
        // STRICT_DNS does (every address returned becomes an endpoint).
        out.cluster_discovery_type = Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
            cluster_pb::cluster::DiscoveryType::StrictDns as i32,
        ));
        out.dns_lookup_family = cluster_pb::cluster::DnsLookupFamily::V4Preferred as i32;
        out.load_assignment = Some(assignment);
        (out, None)
    }
}

/// An HTTP health check. Probes go over the cluster's own transport (TLS when it has `tls`),
/// in the cluster's HTTP version: an HTTP/1 probe to an endpoint that only speaks HTTP/2
/// (or that picks h2 by ALPN) would fail.
fn health_check(hc: &HealthCheck, http2: bool) -> core_pb::HealthCheck {
    use core_pb::health_check::{HealthChecker, HttpHealthCheck};
    let interval = super::duration_ms(hc.interval_ms);
    core_pb::HealthCheck {
        timeout: Some(super::duration_ms(hc.timeout_ms)),
        interval: Some(interval),
        // Envoy probes clusters that have not had traffic yet only every 60 s by default; an
        // endpoint's health should not depend on whether a request has been routed to it.
        no_traffic_interval: Some(interval),
        healthy_threshold: Some(UInt32Value {
            value: hc.healthy_threshold,
        }),
        unhealthy_threshold: Some(UInt32Value {
            value: hc.unhealthy_threshold,
        }),
        health_checker: Some(HealthChecker::HttpHealthCheck(HttpHealthCheck {
            host: hc.host.clone().unwrap_or_default(),
            path: hc.path.clone(),
            // Always explicit: Envoy's default is 200 only, the model's any 2xx.
            expected_statuses: hc
                .expected_ranges()
                .into_iter()
                .map(|range| type_pb::Int64Range {
                    start: i64::from(range.start),
                    end: i64::from(range.end),
                })
                .collect(),
            codec_client_type: if http2 {
                type_pb::CodecClientType::Http2
            } else {
                type_pb::CodecClientType::Http1
            } as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Consecutive-5xx ejection only. Envoy's success-rate detector is on by default (enforcing
/// 100%); it and every other detector are switched off explicitly, so that Envoy and the edge
/// proxy eject the same endpoints.
fn outlier_detection(od: &OutlierDetection) -> cluster_pb::OutlierDetection {
    let value = |value| Some(UInt32Value { value });
    cluster_pb::OutlierDetection {
        consecutive_5xx: value(od.consecutive_5xx),
        interval: Some(super::duration_ms(od.interval_ms)),
        base_ejection_time: Some(super::duration_ms(od.base_ejection_time_ms)),
        max_ejection_percent: value(od.max_ejection_percent),
        enforcing_consecutive_5xx: value(100),
        enforcing_success_rate: value(0),
        enforcing_consecutive_gateway_failure: value(0),
        enforcing_failure_percentage: value(0),
        // Only read with `split_external_local_origin_errors`, which stays off; zero anyway, so
        // that turning it on later cannot enable them by default.
        enforcing_consecutive_local_origin_failure: value(0),
        enforcing_local_origin_success_rate: value(0),
        enforcing_failure_percentage_local_origin: value(0),
        ..Default::default()
    }
}

/// One set of thresholds, for the default priority (the only one routes use).
fn circuit_breakers(cb: &CircuitBreakers) -> cluster_pb::CircuitBreakers {
    let limit = |value| Some(UInt32Value { value });
    cluster_pb::CircuitBreakers {
        thresholds: vec![cluster_pb::circuit_breakers::Thresholds {
            priority: core_pb::RoutingPriority::Default as i32,
            max_connections: limit(cb.max_connections),
            max_pending_requests: limit(cb.max_pending_requests),
            max_requests: limit(cb.max_requests),
            max_retries: limit(cb.max_retries),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The name Envoy knows its TLS transport socket by.
const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// Upstream TLS. With `verify`, the certificate must chain to `trusted_ca` and, when an SNI is
/// sent, carry that name: Envoy checks names only when told to, rustls (the edge proxy) always
/// does, so the name check is spelled out for both.
fn tls_transport_socket(tls: &UpstreamTls, http2: bool) -> core_pb::TransportSocket {
    use tls_pb::common_tls_context::ValidationContextType;
    use tls_pb::tls_parameters::TlsProtocol;
    let validation = match (&tls.trusted_ca, tls.verify) {
        (Some(pem), true) => Some(ValidationContextType::ValidationContext(
            tls_pb::CertificateValidationContext {
                trusted_ca: Some(core_pb::DataSource {
                    specifier: Some(core_pb::data_source::Specifier::InlineString(pem.clone())),
                    ..Default::default()
                }),
                match_typed_subject_alt_names: tls
                    .sni
                    .iter()
                    .map(|name| tls_pb::SubjectAltNameMatcher {
                        san_type: tls_pb::subject_alt_name_matcher::SanType::Dns as i32,
                        matcher: Some(matcher_pb::StringMatcher {
                            match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(
                                name.clone(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )),
        // Validation rejects `verify` without a CA; no validation context checks nothing.
        _ => None,
    };
    let context = tls_pb::UpstreamTlsContext {
        sni: tls.sni.clone().unwrap_or_default(),
        common_tls_context: Some(tls_pb::CommonTlsContext {
            // Envoy's client default is TLS 1.2 only; rustls also speaks 1.3, and so should Envoy.
            tls_params: Some(tls_pb::TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            alpn_protocols: vec![if http2 { "h2" } else { "http/1.1" }.to_owned()],
            validation_context_type: validation,
            ..Default::default()
        }),
        ..Default::default()
    };
    core_pb::TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(
            tollgate_proto::pack_any(&context),
        )),
    }
}

fn lb_policy(policy: LbPolicy) -> cluster_pb::cluster::LbPolicy {
    use cluster_pb::cluster::LbPolicy as Pb;
    match policy {
        LbPolicy::RoundRobin => Pb::RoundRobin,
        LbPolicy::LeastRequest => Pb::LeastRequest,
        LbPolicy::Random => Pb::Random,
        LbPolicy::RingHash => Pb::RingHash,
        LbPolicy::Maglev => Pb::Maglev,
    }
}

fn load_assignment(cluster: &Cluster) -> endpoint_pb::ClusterLoadAssignment {
    let lb_endpoints = cluster
        .endpoints
        .iter()
        .map(|e| endpoint_pb::LbEndpoint {
            host_identifier: Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(
                endpoint_pb::Endpoint {
                    address: Some(super::listener::socket_address(&e.address, e.port)),
                    ..Default::default()
                },
            )),
            load_balancing_weight: Some(UInt32Value { value: e.weight }),
            ..Default::default()
        })
        .collect();
    endpoint_pb::ClusterLoadAssignment {
        cluster_name: cluster.name.clone(),
        endpoints: vec![endpoint_pb::LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}
