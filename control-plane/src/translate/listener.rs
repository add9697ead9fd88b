//! Listeners → LDS `Listener` with an HTTP connection manager that fetches its routes over RDS.

use prost::Message as _;
use tollgate_proto::envoy::config::accesslog::v3 as accesslog_pb;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::listener::v3 as listener_pb;
use tollgate_proto::envoy::extensions::access_loggers::file::v3 as file_log_pb;
use tollgate_proto::envoy::extensions::access_loggers::stream::v3 as stream_log_pb;
use tollgate_proto::envoy::extensions::filters::http::router::v3 as router_pb;
use tollgate_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use tollgate_proto::google::protobuf::{self as pb, BoolValue};

use tollgate_proto::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector_pb;
use tollgate_proto::envoy::extensions::transport_sockets::tls::v3 as tls_pb;

use crate::model::{AccessLog, Certificate, Listener};

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
    filters: &super::policy::ListenerFilters<'_>,
    node: super::NodeKind,
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
        http_filters: filters.http_filters(
            node,
            hcm_pb::HttpFilter {
                name: "envoy.filters.http.router".to_owned(),
                config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(
                    tollgate_proto::pack_any(&router_pb::Router::default()),
                )),
                ..Default::default()
            },
        ),
        // These proxies sit at the edge: the peer address is the client (Envoy's edge
        // best practices), and paths are normalised before matching so that `/a/../b` and
        // `//b` cannot slip past a route meant for `/b`.
        // WebSocket works through the gateway, as Kong and nginx users expect.
        upgrade_configs: vec![hcm_pb::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }],
        use_remote_address: Some(BoolValue { value: true }),
        xff_num_trusted_hops: listener.trusted_proxy_hops,
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        access_log: listener.access_log.iter().map(access_log).collect(),
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

/// The fields of an access log line and the Envoy command operator that fills each. The edge
/// proxy accepts exactly these operators; keep the two lists in step.
///
/// The path is the one routing saw: normalised, before any route rewrite (Envoy keeps the
/// pre-rewrite path in `x-envoy-original-path`, which it strips from external requests so a
/// client cannot forge it). `%PATH(NQ)%` reads that header, else `:path`, and drops the query.
///
/// The consumer is the API key's, from the control plane's ext_authz answer; the quota
/// decision is the one the RLS answered ([`crate::rls`]), both read from Envoy's dynamic
/// metadata (`null` when the request had no such policy).
const ACCESS_LOG_FIELDS: [(&str, &str); 15] = [
    ("time", "%START_TIME%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("method", "%REQ(:METHOD)%"),
    ("host", "%REQ(:AUTHORITY)%"),
    ("path", PATH_WITHOUT_QUERY),
    ("protocol", "%PROTOCOL%"),
    ("status", "%RESPONSE_CODE%"),
    ("bytes_in", "%BYTES_RECEIVED%"),
    ("bytes_out", "%BYTES_SENT%"),
    ("duration_ms", "%DURATION%"),
    ("upstream", "%UPSTREAM_HOST%"),
    ("route", "%ROUTE_NAME%"),
    ("cluster", "%UPSTREAM_CLUSTER%"),
    (
        "consumer",
        "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:consumer)%",
    ),
    (
        "quota",
        "%DYNAMIC_METADATA(envoy.filters.http.ratelimit:quota)%",
    ),
];

/// The original path without its query string.
const PATH_WITHOUT_QUERY: &str = "%PATH(NQ)%";

/// The original path with its query string (`include_query`).
const PATH_WITH_QUERY: &str = "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%";

/// The connection manager's access log: one JSON line per request, to stdout or a file.
fn access_log(log: &AccessLog) -> accesslog_pb::AccessLog {
    let path = if log.include_query {
        PATH_WITH_QUERY
    } else {
        PATH_WITHOUT_QUERY
    };
    let fields = ACCESS_LOG_FIELDS.map(|(key, operator)| match key {
        "path" => (key, path),
        _ => (key, operator),
    });
    let (name, type_url, value) = if log.is_stdout() {
        let value = encode_json_format(&fields, |format| stream_log_pb::StdoutAccessLog {
            access_log_format: Some(
                stream_log_pb::stdout_access_log::AccessLogFormat::LogFormat(format),
            ),
        });
        (
            "envoy.access_loggers.stdout",
            <stream_log_pb::StdoutAccessLog as prost::Name>::type_url(),
            value,
        )
    } else {
        let mut value = file_log_pb::FileAccessLog {
            path: log.path.clone(),
            access_log_format: None,
        }
        .encode_to_vec();
        value.extend(encode_json_format(&fields, |format| {
            file_log_pb::FileAccessLog {
                path: String::new(),
                access_log_format: Some(file_log_pb::file_access_log::AccessLogFormat::LogFormat(
                    format,
                )),
            }
        }));
        (
            "envoy.access_loggers.file",
            <file_log_pb::FileAccessLog as prost::Name>::type_url(),
            value,
        )
    };
    accesslog_pb::AccessLog {
        name: name.to_owned(),
        filter: None,
        config_type: Some(accesslog_pb::access_log::ConfigType::TypedConfig(pb::Any {
            type_url,
            value,
        })),
    }
}

/// Encodes the access logger `wrap` builds around a `json_format` of `fields`, with the keys
/// in sorted order.
///
/// A `Struct`'s fields are a `HashMap`, which prost encodes in its random iteration order;
/// the same listener would then get different bytes, and a new version, on every translation.
/// Instead each field is encoded as a logger of its own, and the encodings are concatenated:
/// protobuf parses repeated embedded messages by merging them, so the result is one logger
/// whose `json_format` holds every field.
fn encode_json_format<M: prost::Message>(
    fields: &[(&str, &str)],
    wrap: impl Fn(core_pb::SubstitutionFormatString) -> M,
) -> Vec<u8> {
    let mut sorted = fields.to_vec();
    sorted.sort_unstable();
    let mut out = Vec::new();
    for (key, operator) in sorted {
        let json = pb::Struct {
            fields: [(
                key.to_owned(),
                pb::Value {
                    kind: Some(pb::value::Kind::StringValue(operator.to_owned())),
                },
            )]
            .into(),
        };
        let format = core_pb::SubstitutionFormatString {
            format: Some(core_pb::substitution_format_string::Format::JsonFormat(
                json,
            )),
            ..Default::default()
        };
        out.extend(wrap(format).encode_to_vec());
    }
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

#[cfg(test)]
mod tests {
    use super::ACCESS_LOG_FIELDS;

    #[test]
    fn access_log_metadata_operators_read_where_the_answers_write() {
        let operator =
            |namespace: &str, key: &str| format!("%DYNAMIC_METADATA({namespace}:{key})%");
        let field = |name: &str| {
            ACCESS_LOG_FIELDS
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, operator)| *operator)
        };
        assert_eq!(
            field("consumer"),
            Some(
                operator(
                    super::super::policy::EXT_AUTHZ_FILTER,
                    super::super::CONSUMER_KEY
                )
                .as_str()
            )
        );
        assert_eq!(
            field("quota"),
            Some(
                operator(
                    "envoy.filters.http.ratelimit",
                    super::super::QUOTA_OUTCOME_KEY
                )
                .as_str()
            )
        );
    }
}
