//! Listeners → LDS `Listener` with an HTTP connection manager that fetches its routes over RDS.

use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::listener::v3 as listener_pb;
use tollgate_proto::envoy::extensions::filters::http::router::v3 as router_pb;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use tollgate_proto::google::protobuf::BoolValue;

use crate::model::Listener;

pub(super) fn translate(listener: &Listener) -> listener_pb::Listener {
    let hcm = hcm_pb::HttpConnectionManager {
        stat_prefix: listener.name.clone(),
        codec_type: hcm_pb::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(
            hcm_pb::Rds {
                config_source: Some(super::ads_config_source()),
                route_config_name: listener.name.clone(),
            },
        )),
        http_filters: vec![hcm_pb::HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(
                tollgate_proto::pack_any(&router_pb::Router::default()),
            )),
            ..Default::default()
        }],
        // These proxies sit at the edge: the peer address is the client (Envoy's edge
        // best practices), and paths are normalised before matching so that `/a/../b` and
        // `//b` cannot slip past a route meant for `/b`.
        use_remote_address: Some(BoolValue { value: true }),
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        ..Default::default()
    };
    listener_pb::Listener {
        name: listener.name.clone(),
        address: Some(socket_address(&listener.address, listener.port)),
        filter_chains: vec![listener_pb::FilterChain {
            filters: vec![listener_pb::Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(listener_pb::filter::ConfigType::TypedConfig(
                    tollgate_proto::pack_any(&hcm),
                )),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(super) fn socket_address(address: &str, port: u16) -> core_pb::Address {
    core_pb::Address {
        address: Some(core_pb::address::Address::SocketAddress(
            core_pb::SocketAddress {
                address: address.to_owned(),
                port_specifier: Some(core_pb::socket_address::PortSpecifier::PortValue(
                    u32::from(port),
                )),
                ..Default::default()
            },
        )),
    }
}
