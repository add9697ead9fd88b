//! Clusters → CDS `Cluster` (+ EDS `ClusterLoadAssignment` when the endpoints are IPs).

use tollgate_proto::envoy::config::cluster::v3 as cluster_pb;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::endpoint::v3 as endpoint_pb;
use tollgate_proto::envoy::extensions::upstreams::http::v3 as http_options_pb;
use tollgate_proto::google::protobuf::UInt32Value;

use crate::model::{Cluster, LbPolicy};

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
