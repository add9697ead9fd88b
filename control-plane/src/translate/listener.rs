//! Listeners → LDS `Listener` with an HTTP connection manager that fetches its routes over RDS.

use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::listener::v3 as listener_pb;
use tollgate_proto::envoy::extensions::filters::http::router::v3 as router_pb;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use tollgate_proto::google::protobuf::BoolValue;

use tollgate_proto::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector_pb;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;

use crate::model::{Certificate, Listener};

/// The SDS secret carrying a certificate and its key.
pub(super) fn secret(certificate: &Certificate) -> tls_pb::Secret {
    let inline = |text: &str| core_pb::DataSource {
        specifier: Some(core_pb::data_source::Specifier::InlineString(
            text.to_owned(),
        )),
        ..Default::default()
    };
    tls_pb::Secret {
        name: certificate.name.clone(),
        r#type: Some(tls_pb::secret::Type::TlsCertificate(
            tls_pb::TlsCertificate {
                certificate_chain: Some(inline(&certificate.cert_pem)),
                private_key: Some(inline(certificate.key_pem.as_deref().unwrap_or_default())),
                ..Default::default()
            },
        )),
    }
}

/// A transport socket terminating TLS with one certificate, fetched over SDS (ADS).
fn tls_transport_socket(certificate: &Certificate) -> core_pb::TransportSocket {
    let context = tls_pb::DownstreamTlsContext {
        common_tls_context: Some(tls_pb::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![tls_pb::SdsSecretConfig {
                name: certificate.name.clone(),
                sds_config: Some(super::ads_config_source()),
            }],
            alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
            ..Default::default()
        }),
        ..Default::default()
    };
    core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(
            tollgate_proto::pack_any(&context),
        )),
    }
}

/// Builds the listener. With TLS, each certificate gets a filter chain matched on the SNI names
/// it covers, and the first certificate also serves as the default chain (no or unknown SNI).
pub(super) fn translate(
    listener: &Listener,
    certificates: &[&Certificate],
) -> listener_pb::Listener {
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
        // WebSocket works through the gateway, as Kong and nginx users expect.
        upgrade_configs: vec![hcm_pb::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }],
        use_remote_address: Some(BoolValue { value: true }),
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        ..Default::default()
    };
    let filters = vec![listener_pb::Filter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(listener_pb::filter::ConfigType::TypedConfig(
            tollgate_proto::pack_any(&hcm),
        )),
    }];
    let mut out = listener_pb::Listener {
        name: listener.name.clone(),
        address: Some(socket_address(&listener.address, listener.port)),
        ..Default::default()
    };
    let Some(default_certificate) = certificates.first() else {
        out.filter_chains = vec![listener_pb::FilterChain {
            filters,
            ..Default::default()
        }];
        return out;
    };
    // SNI-based chain selection needs the TLS inspector to read the ClientHello first.
    out.listener_filters = vec![listener_pb::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_owned(),
        config_type: Some(listener_pb::listener_filter::ConfigType::TypedConfig(
            tollgate_proto::pack_any(&tls_inspector_pb::TlsInspector::default()),
        )),
        ..Default::default()
    }];
    let mut claimed = std::collections::BTreeSet::new();
    for certificate in certificates {
        // A name two certificates cover goes to the first; Envoy refuses duplicate matches.
        let names: Vec<String> = certificate
            .info()
            .map(|info| info.server_names)
            .unwrap_or_default()
            .into_iter()
            .filter(|name| claimed.insert(name.clone()))
            .collect();
        if names.is_empty() {
            continue;
        }
        out.filter_chains.push(listener_pb::FilterChain {
            name: format!("tls:{}", certificate.name),
            filter_chain_match: Some(listener_pb::FilterChainMatch {
                server_names: names,
                ..Default::default()
            }),
            filters: filters.clone(),
            transport_socket: Some(tls_transport_socket(certificate)),
            ..Default::default()
        });
    }
    out.default_filter_chain = Some(listener_pb::FilterChain {
        name: format!("tls-default:{}", default_certificate.name),
        filters,
        transport_socket: Some(tls_transport_socket(default_certificate)),
        ..Default::default()
    });
    out
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
