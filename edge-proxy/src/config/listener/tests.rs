use std::collections::BTreeSet;

use prost::Message as _;
use tollgate_proto::envoy::config::accesslog::v3 as accesslog_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
use tollgate_proto::envoy::extensions::filters::listener::proxy_protocol::v3 as proxy_protocol_pb;
use tollgate_proto::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy_pb;
use tollgate_proto::envoy::extensions::transport_sockets::starttls::v3 as starttls_pb;
use tollgate_proto::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};
use tollgate_proto::pack_any;

use super::*;

// ---------------------------------------------------------------------------------------------
// Proto builders: the shapes the control plane emits (`control-plane/src/translate/listener.rs`)

fn ads() -> core_pb::ConfigSource {
    core_pb::ConfigSource {
        config_source_specifier: Some(core_pb::config_source::ConfigSourceSpecifier::Ads(
            core_pb::AggregatedConfigSource {},
        )),
        resource_api_version: core_pb::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn router_filter() -> hcm_pb::HttpFilter {
    hcm_pb::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(pack_any(
            &router_pb::Router::default(),
        ))),
        ..Default::default()
    }
}

/// A filter type the proxy does not implement.
fn buffer_filter() -> hcm_pb::HttpFilter {
    hcm_pb::HttpFilter {
        name: "envoy.filters.http.buffer".into(),
        config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(pb::Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer".into(),
            value: Vec::new(),
        })),
        ..Default::default()
    }
}

fn hcm(route_config_name: &str) -> hcm_pb::HttpConnectionManager {
    hcm_pb::HttpConnectionManager {
        stat_prefix: route_config_name.into(),
        codec_type: hcm_pb::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(
            hcm_pb::Rds {
                config_source: Some(ads()),
                route_config_name: route_config_name.into(),
            },
        )),
        http_filters: vec![router_filter()],
        use_remote_address: Some(BoolValue { value: true }),
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        ..Default::default()
    }
}

fn network_filter(name: &str, config: pb::Any) -> listener_pb::Filter {
    listener_pb::Filter {
        name: name.into(),
        config_type: Some(listener_pb::filter::ConfigType::TypedConfig(config)),
    }
}

fn hcm_filter(hcm: &hcm_pb::HttpConnectionManager) -> listener_pb::Filter {
    network_filter(
        "envoy.filters.network.http_connection_manager",
        pack_any(hcm),
    )
}

fn tls_context(certificate: &str) -> tls_pb::DownstreamTlsContext {
    tls_pb::DownstreamTlsContext {
        common_tls_context: Some(tls_pb::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![tls_pb::SdsSecretConfig {
                name: certificate.into(),
                sds_config: Some(ads()),
            }],
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tls_socket(context: &tls_pb::DownstreamTlsContext) -> core_pb::TransportSocket {
    core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(
            pack_any(context),
        )),
    }
}

fn socket_address(ip: &str, port: u32) -> core_pb::Address {
    core_pb::Address {
        address: Some(core_pb::address::Address::SocketAddress(
            core_pb::SocketAddress {
                address: ip.into(),
                port_specifier: Some(core_pb::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            },
        )),
    }
}

fn tls_inspector() -> listener_pb::ListenerFilter {
    listener_pb::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_pb::listener_filter::ConfigType::TypedConfig(
            pack_any(&tls_inspector_pb::TlsInspector::default()),
        )),
        ..Default::default()
    }
}

/// A plain HTTP listener, as the control plane sends one.
fn plain() -> listener_pb::Listener {
    listener_pb::Listener {
        name: "public".into(),
        address: Some(socket_address("0.0.0.0", 8080)),
        filter_chains: vec![listener_pb::FilterChain {
            filters: vec![hcm_filter(&hcm("public"))],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tls_chain(name: &str, certificate: &str, server_names: &[&str]) -> listener_pb::FilterChain {
    listener_pb::FilterChain {
        name: name.into(),
        filter_chain_match: (!server_names.is_empty()).then(|| listener_pb::FilterChainMatch {
            server_names: server_names.iter().map(|n| (*n).into()).collect(),
            ..Default::default()
        }),
        filters: vec![hcm_filter(&hcm("secure"))],
        transport_socket: Some(tls_socket(&tls_context(certificate))),
        ..Default::default()
    }
}

/// A TLS listener, as the control plane sends one: a chain per certificate, matched by SNI,
/// and the first certificate again as the default chain.
fn tls() -> listener_pb::Listener {
    listener_pb::Listener {
        name: "secure".into(),
        address: Some(socket_address("::", 8443)),
        listener_filters: vec![tls_inspector()],
        filter_chains: vec![
            tls_chain("tls:a", "a", &["a.example.com", "*.example.com"]),
            tls_chain("tls:b", "b", &["b.example.com", "*.b.example.com"]),
        ],
        default_filter_chain: Some(tls_chain("tls-default:a", "a", &[])),
        ..Default::default()
    }
}

fn build(proto: &listener_pb::Listener) -> Listener {
    Listener::try_from(proto).unwrap_or_else(|e| panic!("{e}"))
}

/// The Envoy defaults for a connection manager configured as the control plane does.
pub(crate) fn default_settings(route: &str) -> HttpSettings {
    HttpSettings {
        stat_prefix: route.into(),
        route_config_name: route.into(),
        codec: Codec::Auto,
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            kind: HttpFilterKind::Router,
        }],
        use_remote_address: true,
        xff_num_trusted_hops: 0,
        skip_xff_append: false,
        generate_request_id: true,
        preserve_external_request_id: false,
        always_set_request_id_in_response: false,
        normalize_path: true,
        merge_slashes: true,
        server_name: None,
        timeouts: HttpTimeouts {
            stream_idle: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            request: None,
            request_headers: None,
            max_stream_duration: None,
            connection_idle: Some(DEFAULT_CONNECTION_IDLE_TIMEOUT),
            max_connection_duration: None,
            drain: DEFAULT_DRAIN_TIMEOUT,
        },
        max_request_headers_kb: DEFAULT_MAX_REQUEST_HEADERS_KB,
        max_headers_count: DEFAULT_MAX_HEADERS_COUNT,
        websocket: false,
        access_log: None,
    }
}

fn secs(s: i64) -> PbDuration {
    PbDuration {
        seconds: s,
        nanos: 0,
    }
}

/// Decodes, edits and re-encodes an `Any` in place.
fn edit_any<T: prost::Message + Default>(any: &mut pb::Any, edit: impl FnOnce(&mut T)) {
    let mut message = T::decode(any.value.as_slice()).unwrap();
    edit(&mut message);
    any.value = message.encode_to_vec();
}

fn first_chain(l: &mut listener_pb::Listener) -> &mut listener_pb::FilterChain {
    &mut l.filter_chains[0]
}

fn filter_any(chain: &mut listener_pb::FilterChain) -> &mut pb::Any {
    match chain.filters[0].config_type.as_mut() {
        Some(listener_pb::filter::ConfigType::TypedConfig(any)) => any,
        _ => unreachable!(),
    }
}

/// Edits the first chain's connection manager.
fn edit_hcm(l: &mut listener_pb::Listener, edit: impl FnOnce(&mut hcm_pb::HttpConnectionManager)) {
    edit_any(filter_any(first_chain(l)), edit);
}

/// Edits the first chain's router config.
fn edit_router(l: &mut listener_pb::Listener, edit: impl FnOnce(&mut router_pb::Router)) {
    edit_hcm(l, |h| match h.http_filters[0].config_type.as_mut() {
        Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) => edit_any(any, edit),
        _ => unreachable!(),
    });
}

/// Edits the first chain's TLS context.
fn edit_tls(l: &mut listener_pb::Listener, edit: impl FnOnce(&mut tls_pb::DownstreamTlsContext)) {
    let socket = first_chain(l).transport_socket.as_mut().unwrap();
    match socket.config_type.as_mut() {
        Some(core_pb::transport_socket::ConfigType::TypedConfig(any)) => edit_any(any, edit),
        None => unreachable!(),
    }
}

fn edit_common_tls(
    l: &mut listener_pb::Listener,
    edit: impl FnOnce(&mut tls_pb::CommonTlsContext),
) {
    edit_tls(l, |t| edit(t.common_tls_context.as_mut().unwrap()));
}

fn edit_socket_address(
    l: &mut listener_pb::Listener,
    edit: impl FnOnce(&mut core_pb::SocketAddress),
) {
    match l.address.as_mut().unwrap().address.as_mut() {
        Some(core_pb::address::Address::SocketAddress(socket)) => edit(socket),
        _ => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted listeners

#[test]
fn a_plain_listener_serves_http_with_envoys_defaults() {
    let listener = build(&plain());
    assert_eq!(listener.name(), "public");
    assert_eq!(listener.address(), "0.0.0.0:8080".parse().unwrap());
    assert!(!listener.is_tls());
    assert_eq!(
        listener.chains(),
        [FilterChain {
            name: String::new(),
            server_names: vec![],
            tls: None,
            http: default_settings("public"),
        }]
    );
    assert!(listener.default_chain().is_none());
    // No SNI on plain TCP: the one chain serves every connection.
    assert_eq!(listener.chain_for(None), Some(&listener.chains()[0]));
    assert_eq!(
        listener.references(),
        References {
            route_configs: ["public"].into(),
            secrets: BTreeSet::new(),
            key_tables: BTreeSet::new(),
        }
    );
}

#[test]
fn connection_manager_settings_are_carried_with_defaults_filled_in() {
    use hcm_pb::http_connection_manager::{CodecType, PathWithEscapedSlashesAction};
    let mut proto = plain();
    edit_hcm(&mut proto, |h| {
        h.codec_type = CodecType::Http2 as i32;
        h.use_remote_address = None;
        h.xff_num_trusted_hops = 2;
        h.skip_xff_append = true;
        h.generate_request_id = Some(BoolValue { value: false });
        h.preserve_external_request_id = true;
        h.always_set_request_id_in_response = true;
        h.normalize_path = Some(BoolValue { value: false });
        h.merge_slashes = false;
        h.server_name = "tollgate".into();
        h.path_with_escaped_slashes_action = PathWithEscapedSlashesAction::KeepUnchanged as i32;
        h.stream_idle_timeout = Some(secs(0));
        h.request_timeout = Some(secs(30));
        h.request_headers_timeout = Some(PbDuration {
            seconds: 0,
            nanos: 500_000_000,
        });
        h.drain_timeout = Some(secs(1));
        h.max_request_headers_kb = Some(UInt32Value { value: 96 });
        h.common_http_protocol_options = Some(core_pb::HttpProtocolOptions {
            idle_timeout: Some(secs(0)),
            max_connection_duration: Some(secs(600)),
            max_stream_duration: Some(secs(60)),
            max_headers_count: Some(UInt32Value { value: 50 }),
            ..Default::default()
        });
        // Explicit defaults are no change.
        h.http_protocol_options = Some(Default::default());
        h.http2_protocol_options = Some(Default::default());
        h.strip_port_mode =
            Some(hcm_pb::http_connection_manager::StripPortMode::StripAnyHostPort(false));
        h.add_proxy_protocol_connection_state = Some(BoolValue { value: false });
        h.http_filters[0].is_optional = true;
    });
    let listener = build(&proto);
    assert_eq!(
        listener.chains()[0].http,
        HttpSettings {
            codec: Codec::Http2,
            use_remote_address: false,
            xff_num_trusted_hops: 2,
            skip_xff_append: true,
            generate_request_id: false,
            preserve_external_request_id: true,
            always_set_request_id_in_response: true,
            normalize_path: false,
            merge_slashes: false,
            server_name: Some("tollgate".into()),
            timeouts: HttpTimeouts {
                stream_idle: None,
                request: Some(Duration::from_secs(30)),
                request_headers: Some(Duration::from_millis(500)),
                max_stream_duration: Some(Duration::from_secs(60)),
                connection_idle: None,
                max_connection_duration: Some(Duration::from_secs(600)),
                drain: Duration::from_secs(1),
            },
            max_request_headers_kb: 96,
            max_headers_count: 50,
            ..default_settings("public")
        }
    );
}

#[test]
fn tls_chains_are_picked_by_sni_as_envoy_does() {
    let listener = build(&tls());
    assert_eq!(listener.name(), "secure");
    assert_eq!(listener.address(), "[::]:8443".parse().unwrap());
    assert!(listener.is_tls());
    let chain = |sni: Option<&str>| listener.chain_for(sni).map(|c| c.name.as_str());

    // Exact names, in any case.
    assert_eq!(chain(Some("a.example.com")), Some("tls:a"));
    assert_eq!(chain(Some("B.Example.COM")), Some("tls:b"));
    // The longest wildcard: `*.b.example.com` (chain b) beats `*.example.com` (chain a).
    assert_eq!(chain(Some("x.b.example.com")), Some("tls:b"));
    assert_eq!(chain(Some("x.y.b.example.com")), Some("tls:b"));
    assert_eq!(chain(Some("c.example.com")), Some("tls:a"));
    // A wildcard stands for at least one label.
    assert_eq!(chain(Some("example.com")), Some("tls-default:a"));
    // Unknown or no SNI: the default chain.
    assert_eq!(chain(Some("other.org")), Some("tls-default:a"));
    assert_eq!(chain(None), Some("tls-default:a"));

    let a = &listener.chains()[0];
    assert_eq!(a.server_names, ["a.example.com", "*.example.com"]);
    assert_eq!(
        a.tls,
        Some(TlsTermination {
            certificate: "a".into(),
            alpn: vec!["h2".into(), "http/1.1".into()],
        })
    );
    assert_eq!(a.http, default_settings("secure"));
    assert_eq!(
        listener.references(),
        References {
            route_configs: ["secure"].into(),
            secrets: ["a", "b"].into(),
            key_tables: BTreeSet::new(),
        }
    );

    // Without a default chain, an unmatched client has none (Envoy closes the connection);
    // a chain without server names catches what the others do not.
    let mut proto = tls();
    proto.default_filter_chain = None;
    assert_eq!(build(&proto).chain_for(Some("other.org")), None);
    proto.filter_chains.push(tls_chain("catch-all", "c", &[]));
    let listener = build(&proto);
    assert_eq!(
        listener
            .chain_for(Some("other.org"))
            .map(|c| c.name.as_str()),
        Some("catch-all")
    );
    assert_eq!(
        listener.chain_for(None).map(|c| c.name.as_str()),
        Some("catch-all")
    );
    assert_eq!(listener.references().secrets, ["a", "b", "c"].into());
}

#[test]
fn equivalent_spellings_are_accepted() {
    let mut proto = plain();
    // Envoy reads only the type name after the last `/` of a type URL.
    match first_chain(&mut proto).filters[0].config_type.as_mut() {
        Some(listener_pb::filter::ConfigType::TypedConfig(any)) => {
            any.type_url = format!(
                "example.com/x/{}",
                hcm_pb::HttpConnectionManager::full_name()
            );
        }
        _ => unreachable!(),
    }
    // The raw buffer socket is plain TCP; `self` is the ADS server that sent the listener.
    first_chain(&mut proto).transport_socket = Some(core_pb::TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(
            pack_any(&raw_buffer_pb::RawBuffer {}),
        )),
    });
    // Cosmetic fields are skipped.
    proto.stat_prefix = "edge".into();
    proto.traffic_direction = core_pb::TrafficDirection::Inbound as i32;
    proto.bind_to_port = Some(BoolValue { value: true });
    edit_hcm(&mut proto, |h| {
        let Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(rds)) =
            h.route_specifier.as_mut()
        else {
            unreachable!()
        };
        rds.config_source = Some(core_pb::ConfigSource {
            config_source_specifier: Some(core_pb::config_source::ConfigSourceSpecifier::Self_(
                core_pb::SelfConfigSource::default(),
            )),
            ..Default::default()
        });
    });
    let listener = build(&proto);
    assert_eq!(listener.chains()[0].tls, None);
    assert_eq!(listener.chains()[0].http, default_settings("public"));
}

// ---------------------------------------------------------------------------------------------
// Rejected listeners

/// Breaks one thing in a valid listener.
type Breaker = Box<dyn Fn(&mut listener_pb::Listener)>;
/// Checks the reason a broken listener was rejected for.
type Check<'a> = &'a dyn Fn(&Reason) -> bool;
/// A rejected case: the field path, the valid listener to start from, how to break it, and
/// the reason expected.
type Case<'a> = (String, fn() -> listener_pb::Listener, Breaker, Check<'a>);

/// The HCM of the first chain, as a field path.
const HCM: &str = "filter_chains[0].filters[0].typed_config";
/// The TLS context of the first chain, as a field path.
const TLS: &str = "filter_chains[0].transport_socket.typed_config";

#[test]
fn unsupported_or_invalid_listeners_are_rejected_naming_the_field() {
    let unsupported = |r: &Reason| *r == Reason::Unsupported;
    let invalid = |r: &Reason| matches!(r, Reason::Invalid(_));
    let missing = |r: &Reason| *r == Reason::Missing;
    let unsupported_value = |r: &Reason| matches!(r, Reason::UnsupportedValue(_));
    let names = |needle: &'static str| move |r: &Reason| matches!(r, Reason::UnsupportedValue(m) if m.contains(needle));
    let buffer_named = names("\"envoy.filters.http.buffer\"");
    let tcp_proxy = names("\"envoy.filters.network.tcp_proxy\"");
    let proxy_protocol = names("\"envoy.filters.listener.proxy_protocol\"");
    let starttls = names("\"envoy.transport_sockets.starttls\"");

    let cases: Vec<Case<'_>> = vec![
        // The listener itself.
        ("name".into(), plain, Box::new(|l| l.name.clear()), &missing),
        (
            "address".into(),
            plain,
            Box::new(|l| l.address = None),
            &missing,
        ),
        (
            "address.socket_address.protocol".into(),
            plain,
            Box::new(|l| {
                edit_socket_address(l, |s| {
                    s.protocol = core_pb::socket_address::Protocol::Udp as i32
                })
            }),
            &unsupported_value,
        ),
        (
            "address.socket_address.address".into(),
            plain,
            Box::new(|l| edit_socket_address(l, |s| s.address = "localhost".into())),
            &invalid,
        ),
        (
            "address.socket_address.port_value".into(),
            plain,
            Box::new(|l| *l.address.as_mut().unwrap() = socket_address("0.0.0.0", 70_000)),
            &invalid,
        ),
        (
            "address.socket_address.named_port".into(),
            plain,
            Box::new(|l| {
                edit_socket_address(l, |s| {
                    s.port_specifier = Some(core_pb::socket_address::PortSpecifier::NamedPort(
                        "http".into(),
                    ))
                })
            }),
            &unsupported,
        ),
        (
            "address.pipe".into(),
            plain,
            Box::new(|l| {
                l.address = Some(core_pb::Address {
                    address: Some(core_pb::address::Address::Pipe(Default::default())),
                })
            }),
            &unsupported,
        ),
        (
            "use_original_dst".into(),
            plain,
            Box::new(|l| l.use_original_dst = Some(BoolValue { value: true })),
            &unsupported,
        ),
        (
            "per_connection_buffer_limit_bytes".into(),
            plain,
            Box::new(|l| l.per_connection_buffer_limit_bytes = Some(UInt32Value { value: 1024 })),
            &unsupported,
        ),
        (
            "udp_listener_config".into(),
            plain,
            Box::new(|l| l.udp_listener_config = Some(Default::default())),
            &unsupported,
        ),
        (
            "api_listener".into(),
            plain,
            Box::new(|l| l.api_listener = Some(Default::default())),
            &unsupported,
        ),
        (
            "connection_balance_config".into(),
            plain,
            Box::new(|l| l.connection_balance_config = Some(Default::default())),
            &unsupported,
        ),
        (
            "enable_reuse_port".into(),
            plain,
            Box::new(|l| l.enable_reuse_port = Some(BoolValue { value: false })),
            &unsupported,
        ),
        (
            "socket_options".into(),
            plain,
            Box::new(|l| l.socket_options = vec![Default::default()]),
            &unsupported,
        ),
        (
            "access_log".into(),
            plain,
            Box::new(|l| l.access_log = vec![accesslog_pb::AccessLog::default()]),
            &unsupported,
        ),
        (
            "internal_listener".into(),
            plain,
            Box::new(|l| {
                l.listener_specifier = Some(
                    listener_pb::listener::ListenerSpecifier::InternalListener(Default::default()),
                )
            }),
            &unsupported,
        ),
        (
            "filter_chains".into(),
            plain,
            Box::new(|l| l.filter_chains.clear()),
            &missing,
        ),
        // Listener filters.
        (
            "listener_filters[1].typed_config".into(),
            tls,
            Box::new(|l| {
                l.listener_filters.push(listener_pb::ListenerFilter {
                    name: "envoy.filters.listener.proxy_protocol".into(),
                    config_type: Some(listener_pb::listener_filter::ConfigType::TypedConfig(
                        pack_any(&proxy_protocol_pb::ProxyProtocol::default()),
                    )),
                    ..Default::default()
                })
            }),
            &proxy_protocol,
        ),
        (
            "listener_filters[0].typed_config.enable_ja3_fingerprinting".into(),
            tls,
            Box::new(|l| {
                l.listener_filters[0] = listener_pb::ListenerFilter {
                    config_type: Some(listener_pb::listener_filter::ConfigType::TypedConfig(
                        pack_any(&tls_inspector_pb::TlsInspector {
                            enable_ja3_fingerprinting: Some(BoolValue { value: true }),
                            ..Default::default()
                        }),
                    )),
                    ..tls_inspector()
                }
            }),
            &unsupported,
        ),
        (
            "listener_filters[0].filter_disabled".into(),
            tls,
            Box::new(|l| l.listener_filters[0].filter_disabled = Some(Default::default())),
            &unsupported,
        ),
        // Filter chains and their matches.
        (
            "filter_chains[0].filter_chain_match.destination_port".into(),
            plain,
            Box::new(|l| {
                first_chain(l).filter_chain_match = Some(listener_pb::FilterChainMatch {
                    destination_port: Some(UInt32Value { value: 8080 }),
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        (
            "filter_chains[0].filter_chain_match.transport_protocol".into(),
            tls,
            Box::new(|l| {
                first_chain(l)
                    .filter_chain_match
                    .as_mut()
                    .unwrap()
                    .transport_protocol = "tls".into()
            }),
            &unsupported,
        ),
        (
            "filter_chains[0].filter_chain_match.application_protocols".into(),
            tls,
            Box::new(|l| {
                first_chain(l)
                    .filter_chain_match
                    .as_mut()
                    .unwrap()
                    .application_protocols = vec!["h2".into()]
            }),
            &unsupported,
        ),
        (
            "filter_chains[0].filter_chain_match.server_names[1]".into(),
            tls,
            Box::new(|l| {
                first_chain(l)
                    .filter_chain_match
                    .as_mut()
                    .unwrap()
                    .server_names[1] = "a.*.example.com".into()
            }),
            &invalid,
        ),
        (
            "filter_chains[1].filter_chain_match.server_names[2]".into(),
            tls,
            Box::new(|l| {
                l.filter_chains[1]
                    .filter_chain_match
                    .as_mut()
                    .unwrap()
                    .server_names
                    .push("A.example.com".into())
            }),
            &|r: &Reason| {
                *r == Reason::Invalid(
                    "duplicate server name \"a.example.com\", already in filter_chains[0]".into(),
                )
            },
        ),
        (
            "filter_chains[1].filter_chain_match".into(),
            plain,
            Box::new(|l| {
                let again = l.filter_chains[0].clone();
                l.filter_chains.push(again)
            }),
            &invalid,
        ),
        (
            "filter_chains[0].filter_chain_match.server_names".into(),
            plain,
            Box::new(|l| {
                first_chain(l).filter_chain_match = Some(listener_pb::FilterChainMatch {
                    server_names: vec!["a.example.com".into()],
                    ..Default::default()
                })
            }),
            &invalid,
        ),
        (
            "filter_chains[0].filter_chain_match.server_names".into(),
            tls,
            Box::new(|l| l.listener_filters.clear()),
            &invalid,
        ),
        (
            "default_filter_chain.filter_chain_match.server_names".into(),
            tls,
            Box::new(|l| l.default_filter_chain = Some(tls_chain("d", "a", &["d.example.com"]))),
            &invalid,
        ),
        (
            "default_filter_chain.transport_socket".into(),
            tls,
            Box::new(|l| l.default_filter_chain.as_mut().unwrap().transport_socket = None),
            &unsupported_value,
        ),
        (
            "filter_chains[0].transport_socket.typed_config".into(),
            plain,
            Box::new(|l| {
                first_chain(l).transport_socket = Some(core_pb::TransportSocket {
                    name: "envoy.transport_sockets.starttls".into(),
                    config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(
                        pack_any(&starttls_pb::StartTlsConfig::default()),
                    )),
                })
            }),
            &starttls,
        ),
        (
            "filter_chains[0].transport_socket_connect_timeout".into(),
            plain,
            Box::new(|l| first_chain(l).transport_socket_connect_timeout = Some(secs(5))),
            &unsupported,
        ),
        (
            "filter_chains[0].use_proxy_proto".into(),
            plain,
            #[allow(deprecated)]
            Box::new(|l| first_chain(l).use_proxy_proto = Some(BoolValue { value: true })),
            &unsupported,
        ),
        // Network filters.
        (
            "filter_chains[0].filters".into(),
            plain,
            Box::new(|l| first_chain(l).filters.clear()),
            &missing,
        ),
        (
            "filter_chains[0].filters[0].typed_config".into(),
            plain,
            Box::new(|l| {
                first_chain(l).filters.insert(
                    0,
                    network_filter(
                        "envoy.filters.network.tcp_proxy",
                        pack_any(&tcp_proxy_pb::TcpProxy::default()),
                    ),
                )
            }),
            &tcp_proxy,
        ),
        (
            "filter_chains[0].filters[0]".into(),
            plain,
            Box::new(|l| {
                let again = first_chain(l).filters[0].clone();
                first_chain(l).filters.push(again)
            }),
            &invalid,
        ),
        (
            "filter_chains[0].filters[0].config_discovery".into(),
            plain,
            Box::new(|l| {
                first_chain(l).filters[0].config_type = Some(
                    listener_pb::filter::ConfigType::ConfigDiscovery(Default::default()),
                )
            }),
            &unsupported,
        ),
        // TLS contexts.
        (
            format!("{TLS}.require_client_certificate"),
            tls,
            Box::new(|l| {
                edit_tls(l, |t| {
                    t.require_client_certificate = Some(BoolValue { value: true })
                })
            }),
            &unsupported,
        ),
        (
            format!("{TLS}.session_ticket_keys"),
            tls,
            Box::new(|l| {
                edit_tls(l, |t| {
                    t.session_ticket_keys_type = Some(
                        tls_pb::downstream_tls_context::SessionTicketKeysType::SessionTicketKeys(
                            Default::default(),
                        ),
                    )
                })
            }),
            &unsupported,
        ),
        (
            format!("{TLS}.ocsp_staple_policy"),
            tls,
            Box::new(|l| {
                edit_tls(l, |t| {
                    t.ocsp_staple_policy =
                        tls_pb::downstream_tls_context::OcspStaplePolicy::MustStaple as i32
                })
            }),
            &unsupported,
        ),
        (
            format!("{TLS}.common_tls_context"),
            tls,
            Box::new(|l| edit_tls(l, |t| t.common_tls_context = None)),
            &missing,
        ),
        (
            format!("{TLS}.common_tls_context.validation_context"),
            tls,
            Box::new(|l| {
                edit_common_tls(l, |c| {
                    c.validation_context_type = Some(
                        tls_pb::common_tls_context::ValidationContextType::ValidationContext(
                            Default::default(),
                        ),
                    )
                })
            }),
            &unsupported,
        ),
        (
            format!("{TLS}.common_tls_context.tls_certificates"),
            tls,
            Box::new(|l| edit_common_tls(l, |c| c.tls_certificates = vec![Default::default()])),
            &unsupported,
        ),
        (
            format!("{TLS}.common_tls_context.tls_params.tls_minimum_protocol_version"),
            tls,
            Box::new(|l| {
                edit_common_tls(l, |c| {
                    c.tls_params = Some(tls_pb::TlsParameters {
                        tls_minimum_protocol_version: tls_pb::tls_parameters::TlsProtocol::TlSv13
                            as i32,
                        ..Default::default()
                    })
                })
            }),
            &unsupported,
        ),
        (
            format!("{TLS}.common_tls_context.custom_handshaker"),
            tls,
            Box::new(|l| edit_common_tls(l, |c| c.custom_handshaker = Some(Default::default()))),
            &unsupported,
        ),
        (
            format!("{TLS}.common_tls_context.tls_certificate_sds_secret_configs"),
            tls,
            Box::new(|l| edit_common_tls(l, |c| c.tls_certificate_sds_secret_configs.clear())),
            &missing,
        ),
        (
            format!("{TLS}.common_tls_context.tls_certificate_sds_secret_configs"),
            tls,
            Box::new(|l| {
                edit_common_tls(l, |c| {
                    let again = c.tls_certificate_sds_secret_configs[0].clone();
                    c.tls_certificate_sds_secret_configs.push(again)
                })
            }),
            &unsupported_value,
        ),
        (
            format!("{TLS}.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config"),
            tls,
            Box::new(|l| {
                edit_common_tls(l, |c| {
                    c.tls_certificate_sds_secret_configs[0].sds_config = None
                })
            }),
            &missing,
        ),
        (
            format!(
                "{TLS}.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config\
                 .api_config_source"
            ),
            tls,
            Box::new(|l| {
                edit_common_tls(l, |c| {
                    c.tls_certificate_sds_secret_configs[0].sds_config =
                        Some(core_pb::ConfigSource {
                            config_source_specifier: Some(
                                core_pb::config_source::ConfigSourceSpecifier::ApiConfigSource(
                                    Default::default(),
                                ),
                            ),
                            ..Default::default()
                        })
                })
            }),
            &unsupported,
        ),
        (
            format!("{TLS}.common_tls_context.tls_certificate_sds_secret_configs[0].name"),
            tls,
            Box::new(|l| {
                edit_common_tls(l, |c| c.tls_certificate_sds_secret_configs[0].name.clear())
            }),
            &missing,
        ),
        (
            format!("{TLS}.common_tls_context.alpn_protocols[1]"),
            tls,
            Box::new(|l| edit_common_tls(l, |c| c.alpn_protocols[1] = "h3".into())),
            &unsupported_value,
        ),
        // The HTTP connection manager.
        (
            format!("{HCM}.stat_prefix"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.stat_prefix.clear())),
            &missing,
        ),
        (
            format!("{HCM}.route_config"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.route_specifier = Some(
                        hcm_pb::http_connection_manager::RouteSpecifier::RouteConfig(
                            route_pb::RouteConfiguration::default(),
                        ),
                    )
                })
            }),
            &unsupported,
        ),
        (
            format!("{HCM}.scoped_routes"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.route_specifier = Some(
                        hcm_pb::http_connection_manager::RouteSpecifier::ScopedRoutes(
                            Default::default(),
                        ),
                    )
                })
            }),
            &unsupported,
        ),
        (
            format!("{HCM}.rds"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.route_specifier = None)),
            &missing,
        ),
        (
            format!("{HCM}.rds.route_config_name"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.route_specifier = Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(
                        hcm_pb::Rds {
                            config_source: Some(ads()),
                            route_config_name: String::new(),
                        },
                    ))
                })
            }),
            &missing,
        ),
        (
            format!("{HCM}.rds.config_source.resource_api_version"),
            plain,
            #[allow(deprecated)]
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.route_specifier = Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(
                        hcm_pb::Rds {
                            config_source: Some(core_pb::ConfigSource {
                                resource_api_version: core_pb::ApiVersion::V2 as i32,
                                ..ads()
                            }),
                            route_config_name: "public".into(),
                        },
                    ))
                })
            }),
            &unsupported_value,
        ),
        (
            format!("{HCM}.access_log[0].typed_config"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.access_log = vec![Default::default()])),
            &missing,
        ),
        (
            format!("{HCM}.tracing"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.tracing = Some(Default::default()))),
            &unsupported,
        ),
        (
            format!("{HCM}.http_protocol_options.accept_http_10"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.http_protocol_options = Some(core_pb::Http1ProtocolOptions {
                        accept_http_10: true,
                        ..Default::default()
                    })
                })
            }),
            &unsupported,
        ),
        (
            format!("{HCM}.http2_protocol_options.max_concurrent_streams"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.http2_protocol_options = Some(core_pb::Http2ProtocolOptions {
                        max_concurrent_streams: Some(UInt32Value { value: 10 }),
                        ..Default::default()
                    })
                })
            }),
            &unsupported,
        ),
        (
            format!("{HCM}.upgrade_configs[0].upgrade_type"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.upgrade_configs = vec![Default::default()])),
            &unsupported_value,
        ),
        (
            format!("{HCM}.forward_client_cert_details"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.forward_client_cert_details =
                        hcm_pb::http_connection_manager::ForwardClientCertDetails::AppendForward
                            as i32
                })
            }),
            &unsupported,
        ),
        (
            format!("{HCM}.server_header_transformation"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.server_header_transformation =
                        hcm_pb::http_connection_manager::ServerHeaderTransformation::PassThrough
                            as i32
                })
            }),
            &unsupported,
        ),
        (
            format!("{HCM}.internal_address_config"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.internal_address_config = Some(Default::default()))),
            &unsupported,
        ),
        (
            format!("{HCM}.local_reply_config"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.local_reply_config = Some(Default::default()))),
            &unsupported,
        ),
        (
            format!("{HCM}.strip_any_host_port"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.strip_port_mode =
                        Some(hcm_pb::http_connection_manager::StripPortMode::StripAnyHostPort(true))
                })
            }),
            &unsupported,
        ),
        (
            format!("{HCM}.path_with_escaped_slashes_action"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.path_with_escaped_slashes_action =
                        hcm_pb::http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndRedirect
                            as i32
                })
            }),
            &|r: &Reason| *r == Reason::UnsupportedValue("UNESCAPE_AND_REDIRECT".into()),
        ),
        (
            format!("{HCM}.codec_type"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.codec_type = hcm_pb::http_connection_manager::CodecType::Http3 as i32
                })
            }),
            &unsupported_value,
        ),
        (
            format!("{HCM}.stream_idle_timeout"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.stream_idle_timeout = Some(secs(-1)))),
            &invalid,
        ),
        (
            format!("{HCM}.max_request_headers_kb"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.max_request_headers_kb = Some(UInt32Value { value: 0 })
                })
            }),
            &invalid,
        ),
        (
            format!("{HCM}.common_http_protocol_options.headers_with_underscores_action"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| {
                    h.common_http_protocol_options = Some(core_pb::HttpProtocolOptions {
                        headers_with_underscores_action:
                            core_pb::http_protocol_options::HeadersWithUnderscoresAction::DropHeader
                                as i32,
                        ..Default::default()
                    })
                })
            }),
            &unsupported,
        ),
        // HTTP filters.
        (
            format!("{HCM}.http_filters"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.http_filters.clear())),
            &missing,
        ),
        (
            format!("{HCM}.http_filters[0].typed_config"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.http_filters.insert(0, buffer_filter()))),
            &buffer_named,
        ),
        (
            format!("{HCM}.http_filters[0]"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.http_filters.push(router_filter()))),
            &invalid,
        ),
        (
            format!("{HCM}.http_filters[0].disabled"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.http_filters[0].disabled = true)),
            &unsupported,
        ),
        (
            format!("{HCM}.http_filters[0].typed_config"),
            plain,
            Box::new(|l| edit_hcm(l, |h| h.http_filters[0].config_type = None)),
            &missing,
        ),
        (
            format!("{HCM}.http_filters[0].typed_config.suppress_envoy_headers"),
            plain,
            Box::new(|l| edit_router(l, |r| r.suppress_envoy_headers = true)),
            &unsupported,
        ),
        (
            format!("{HCM}.http_filters[0].typed_config.upstream_log"),
            plain,
            Box::new(|l| edit_router(l, |r| r.upstream_log = vec![Default::default()])),
            &unsupported,
        ),
        (
            format!("{HCM}.http_filters[0].typed_config.value"),
            plain,
            Box::new(|l| {
                edit_hcm(l, |h| match h.http_filters[0].config_type.as_mut() {
                    Some(hcm_pb::http_filter::ConfigType::TypedConfig(any)) => {
                        any.value = vec![0xff, 0xff]
                    }
                    _ => unreachable!(),
                })
            }),
            &invalid,
        ),
    ];
    assert!(cases.len() >= 25);
    for (field, start, breaker, check) in cases {
        let mut proto = start();
        breaker(&mut proto);
        let err = Listener::try_from(&proto).expect_err(&field);
        assert_eq!(err.field, field, "{err}");
        assert!(check(&err.reason), "{err}");
        assert_eq!(err.resource, Resource::Listener(proto.name.clone()));
        assert!(
            err.to_string()
                .starts_with(&format!("listener {}: {field}: ", proto.name)),
            "{err}"
        );
    }
}

#[test]
fn rejection_messages_read_well() {
    let mut proto = tls();
    edit_hcm(&mut proto, |h| h.http_filters.insert(0, buffer_filter()));
    assert_eq!(
        Listener::try_from(&proto).unwrap_err().to_string(),
        "listener secure: filter_chains[0].filters[0].typed_config.http_filters[0].typed_config: \
         not supported: http filter \"envoy.filters.http.buffer\" \
         (type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer)"
    );
    let mut proto = plain();
    edit_hcm(&mut proto, |h| {
        h.upgrade_configs = vec![hcm_pb::http_connection_manager::UpgradeConfig {
            upgrade_type: "CONNECT".to_owned(),
            ..Default::default()
        }]
    });
    assert_eq!(
        Listener::try_from(&proto).unwrap_err().to_string(),
        "listener public: filter_chains[0].filters[0].typed_config.upgrade_configs[0].upgrade_type: \
         not supported: \"CONNECT\" (only websocket is)"
    );
    let mut proto = plain();
    edit_hcm(&mut proto, |h| {
        h.upgrade_configs = vec![hcm_pb::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }]
    });
    assert!(
        Listener::try_from(&proto).unwrap().chains()[0]
            .http
            .websocket
    );
}

// ---------------------------------------------------------------------------------------------
// Certificates (SDS)

/// A self-signed certificate for `hosts`: (certificate PEM, key PEM).
fn certificate(hosts: &[&str]) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(
        hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

fn inline(text: &str) -> core_pb::DataSource {
    core_pb::DataSource {
        specifier: Some(core_pb::data_source::Specifier::InlineString(text.into())),
        ..Default::default()
    }
}

/// An SDS secret, as the control plane sends one.
fn secret_pb(name: &str, chain_pem: &str, key_pem: &str) -> tls_pb::Secret {
    tls_pb::Secret {
        name: name.into(),
        r#type: Some(tls_pb::secret::Type::TlsCertificate(
            tls_pb::TlsCertificate {
                certificate_chain: Some(inline(chain_pem)),
                private_key: Some(inline(key_pem)),
                ..Default::default()
            },
        )),
    }
}

fn tls_certificate_of(secret: &mut tls_pb::Secret) -> &mut tls_pb::TlsCertificate {
    match secret.r#type.as_mut() {
        Some(tls_pb::secret::Type::TlsCertificate(c)) => c,
        _ => unreachable!(),
    }
}

/// The base64 body of a PEM block: what must never leak from a key.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn a_certificate_and_its_key_are_accepted_and_the_key_is_never_shown() {
    let (cert, key) = certificate(&["a.example.com"]);
    let certificate = TlsCertificate::try_from(&secret_pb("a", &cert, &key)).unwrap();
    assert_eq!(certificate.name(), "a");
    assert_eq!(certificate.chain_pem(), cert);
    assert_eq!(certificate.key_pem(), key);
    assert_eq!(certificate.certified_key().cert.len(), 1);
    let debug = format!("{certificate:?}");
    assert!(
        debug.contains("\"a\"") && debug.contains("<redacted>"),
        "{debug}"
    );
    assert!(!debug.contains("PRIVATE KEY") && !debug.contains(&pem_body(&key)[..40]));

    // Bytes work as well as strings.
    let mut secret = secret_pb("a", &cert, &key);
    tls_certificate_of(&mut secret).private_key = Some(core_pb::DataSource {
        specifier: Some(core_pb::data_source::Specifier::InlineBytes(
            key.clone().into_bytes(),
        )),
        ..Default::default()
    });
    assert!(TlsCertificate::try_from(&secret).is_ok());
}

#[test]
fn unsupported_or_invalid_secrets_are_rejected_naming_the_field() {
    let (cert, key) = certificate(&["a.example.com"]);
    let (other_cert, other_key) = certificate(&["b.example.com"]);
    let unsupported = |r: &Reason| *r == Reason::Unsupported;
    let missing = |r: &Reason| *r == Reason::Missing;
    let says = |message: &'static str| move |r: &Reason| *r == Reason::Invalid(message.into());
    let mismatch = says("does not match the certificate's public key");
    let not_a_key = says("is not a PEM private key (PKCS#8, PKCS#1 or SEC1)");
    let not_a_chain = says("holds no CERTIFICATE block");
    let bad_key = says("is not an RSA, ECDSA or Ed25519 key");
    let broken_key = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        &pem_body(&key)[..60]
    );

    type SecretBreaker = Box<dyn Fn(&mut tls_pb::Secret)>;
    let with_key = |key: String| -> SecretBreaker {
        Box::new(move |s| tls_certificate_of(s).private_key = Some(inline(&key)))
    };
    let cases: Vec<(&str, SecretBreaker, Check<'_>)> = vec![
        ("name", Box::new(|s| s.name.clear()), &missing),
        ("tls_certificate", Box::new(|s| s.r#type = None), &missing),
        (
            "validation_context",
            Box::new(|s| {
                s.r#type = Some(tls_pb::secret::Type::ValidationContext(Default::default()))
            }),
            &unsupported,
        ),
        (
            "generic_secret",
            Box::new(|s| s.r#type = Some(tls_pb::secret::Type::GenericSecret(Default::default()))),
            &unsupported,
        ),
        (
            "session_ticket_keys",
            Box::new(|s| {
                s.r#type = Some(tls_pb::secret::Type::SessionTicketKeys(Default::default()))
            }),
            &unsupported,
        ),
        (
            "tls_certificate.certificate_chain",
            Box::new(|s| tls_certificate_of(s).certificate_chain = None),
            &missing,
        ),
        (
            "tls_certificate.certificate_chain.filename",
            Box::new(|s| {
                tls_certificate_of(s).certificate_chain = Some(core_pb::DataSource {
                    specifier: Some(core_pb::data_source::Specifier::Filename(
                        "/etc/tls/a.pem".into(),
                    )),
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        (
            "tls_certificate.certificate_chain",
            Box::new(|s| tls_certificate_of(s).certificate_chain = Some(inline("hello"))),
            &not_a_chain,
        ),
        (
            "tls_certificate.private_key.inline_string",
            with_key(String::new()),
            &missing,
        ),
        (
            "tls_certificate.private_key.environment_variable",
            Box::new(|s| {
                tls_certificate_of(s).private_key = Some(core_pb::DataSource {
                    specifier: Some(core_pb::data_source::Specifier::EnvironmentVariable(
                        "KEY".into(),
                    )),
                    ..Default::default()
                })
            }),
            &unsupported,
        ),
        (
            "tls_certificate.private_key",
            with_key(other_key.clone()),
            &mismatch,
        ),
        (
            "tls_certificate.private_key",
            with_key(cert.clone()),
            &not_a_key,
        ),
        (
            "tls_certificate.private_key",
            with_key(broken_key.clone()),
            &bad_key,
        ),
        (
            "tls_certificate.private_key",
            Box::new({
                let other_cert = other_cert.clone();
                move |s| tls_certificate_of(s).certificate_chain = Some(inline(&other_cert))
            }),
            &mismatch,
        ),
        (
            "tls_certificate.pkcs12",
            Box::new(|s| tls_certificate_of(s).pkcs12 = Some(inline("x"))),
            &unsupported,
        ),
        (
            "tls_certificate.private_key_provider",
            Box::new(|s| tls_certificate_of(s).private_key_provider = Some(Default::default())),
            &unsupported,
        ),
        (
            "tls_certificate.ocsp_staple",
            Box::new(|s| tls_certificate_of(s).ocsp_staple = Some(inline("x"))),
            &unsupported,
        ),
    ];
    for (field, breaker, check) in cases {
        let mut secret = secret_pb("a", &cert, &key);
        breaker(&mut secret);
        let err = TlsCertificate::try_from(&secret).expect_err(field);
        assert_eq!(err.field, field, "{err}");
        assert!(check(&err.reason), "{err}");
        assert_eq!(err.resource, Resource::Secret(secret.name.clone()));
        assert!(
            err.to_string()
                .starts_with(&format!("secret {}: {field}: ", secret.name)),
            "{err}"
        );
    }
}

#[test]
fn a_rejected_secret_never_shows_its_key() {
    let (cert, key) = certificate(&["a.example.com"]);
    let (_, other_key) = certificate(&["b.example.com"]);
    let body = pem_body(&key);
    let broken_key = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        &body[..60]
    );
    let not_utf8 = {
        let mut bytes = key.clone().into_bytes();
        bytes.push(0xff);
        bytes
    };
    let keys: Vec<(Vec<u8>, String)> = vec![
        (other_key.clone().into_bytes(), pem_body(&other_key)),
        (broken_key.clone().into_bytes(), body[..60].to_owned()),
        (not_utf8, body.clone()),
        (body.clone().into_bytes(), body.clone()),
    ];
    for (key_bytes, secret_part) in keys {
        let mut secret = secret_pb("a", &cert, "");
        tls_certificate_of(&mut secret).private_key = Some(core_pb::DataSource {
            specifier: Some(core_pb::data_source::Specifier::InlineBytes(key_bytes)),
            ..Default::default()
        });
        let err = TlsCertificate::try_from(&secret).unwrap_err();
        assert!(
            err.field.starts_with("tls_certificate.private_key"),
            "{err}"
        );
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("PRIVATE KEY"), "{shown}");
            // Any 16 characters of the key's body would be a leak.
            for start in (0..secret_part.len().saturating_sub(16)).step_by(8) {
                assert!(!shown.contains(&secret_part[start..start + 16]), "{shown}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the control plane actually serves

#[test]
fn accepts_what_the_control_plane_translator_emits() {
    use tollgate_control_plane::model::{
        AccessLog, Certificate, Cluster, Listener as ModelListener, ListenerTls,
        Route as ModelRoute,
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
    let clusters: Vec<Cluster> = serde_json::from_value(list("clusters")).unwrap();
    let routes: Vec<ModelRoute> = serde_json::from_value(list("routes")).unwrap();
    let mut listeners: Vec<ModelListener> = serde_json::from_value(list("listeners")).unwrap();
    listeners.push(ModelListener {
        name: "secure".into(),
        address: "0.0.0.0".into(),
        port: 8443,
        node_cluster: None,
        tls: Some(ListenerTls {
            certificates: vec!["a".into(), "b".into()],
        }),
        access_log: Some(AccessLog {
            path: "stdout".into(),
            include_query: true,
        }),
        trusted_proxy_hops: 0,
        policies: Vec::new(),
    });
    let mut certificates = std::collections::BTreeMap::new();
    for (name, hosts) in [
        ("a", ["a.example.com", "shared.example.com"]),
        ("b", ["b.example.com", "shared.example.com"]),
    ] {
        let (cert_pem, key_pem) = certificate(&hosts);
        certificates.insert(
            name.to_owned(),
            Certificate {
                name: name.into(),
                cert_pem,
                key_pem: Some(key_pem),
            },
        );
    }
    let store = StoreSnapshot {
        revision: 1,
        clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
        routes: routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
        listeners: listeners.into_iter().map(|l| (l.name.clone(), l)).collect(),
        certificates: certificates.clone(),
        ..Default::default()
    };
    let node = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let snapshot = translate(&store, &node, &Default::default()).unwrap();

    let listeners: Vec<Listener> = snapshot
        .resources(ResourceType::Listener)
        .values()
        .map(|resource| {
            let proto = listener_pb::Listener::decode(resource.body.value.as_slice()).unwrap();
            build(&proto)
        })
        .collect();
    // `internal` is for the `mesh` node cluster only.
    let names: Vec<&str> = listeners.iter().map(Listener::name).collect();
    assert_eq!(names, ["public", "secure"]);

    let public = &listeners[0];
    assert_eq!(public.address(), "0.0.0.0:8080".parse().unwrap());
    assert!(!public.is_tls());
    assert_eq!(public.chains().len(), 1);
    // The control plane turns WebSocket upgrades on for every listener.
    let translated = |route: &str, access_log| HttpSettings {
        websocket: true,
        access_log: Some(access_log),
        ..default_settings(route)
    };
    // Every operator the translator writes is one the data path fills.
    let fields = |path| {
        [
            ("bytes_in", AccessLogField::BytesReceived),
            ("bytes_out", AccessLogField::BytesSent),
            ("cluster", AccessLogField::UpstreamCluster),
            ("consumer", AccessLogField::Consumer),
            ("duration_ms", AccessLogField::Duration),
            ("host", AccessLogField::Authority),
            ("method", AccessLogField::Method),
            ("path", path),
            ("protocol", AccessLogField::Protocol),
            ("quota", AccessLogField::Quota),
            ("request_id", AccessLogField::RequestId),
            ("route", AccessLogField::RouteName),
            ("status", AccessLogField::ResponseCode),
            ("time", AccessLogField::StartTime),
            ("upstream", AccessLogField::UpstreamHost),
        ]
        .map(|(k, f)| (k.to_owned(), f))
        .to_vec()
    };
    let public_log = AccessLogConfig {
        sink: AccessLogSink::File("/var/log/tollgate/access.log".into()),
        fields: fields(AccessLogField::Path),
    };
    let secure_log = AccessLogConfig {
        sink: AccessLogSink::Stdout,
        fields: fields(AccessLogField::PathWithQuery),
    };
    assert_eq!(public.chains()[0].http, translated("public", public_log));

    let secure = &listeners[1];
    assert_eq!(secure.address(), "0.0.0.0:8443".parse().unwrap());
    assert!(secure.is_tls());
    let summary: Vec<(&str, &[String], &str)> = secure
        .chains()
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.server_names.as_slice(),
                c.tls.as_ref().unwrap().certificate.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "tls:a",
                &["a.example.com".to_owned(), "shared.example.com".to_owned()][..],
                "a"
            ),
            ("tls:b", &["b.example.com".to_owned()][..], "b"),
        ]
    );
    for chain in secure.chains().iter().chain(secure.default_chain()) {
        assert_eq!(chain.http, translated("secure", secure_log.clone()));
        assert_eq!(
            chain.tls.as_ref().unwrap().alpn,
            ["h2".to_owned(), "http/1.1".to_owned()]
        );
    }
    let certificate_for = |sni: Option<&str>| {
        secure
            .chain_for(sni)
            .and_then(|c| c.tls.as_ref())
            .map(|t| t.certificate.as_str())
    };
    assert_eq!(certificate_for(Some("b.example.com")), Some("b"));
    assert_eq!(certificate_for(Some("shared.example.com")), Some("a"));
    assert_eq!(certificate_for(Some("unknown.example.com")), Some("a"));
    assert_eq!(certificate_for(None), Some("a"));

    // What the listeners reference is what the snapshot says clients must subscribe to.
    let mut routes = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for listener in &listeners {
        let references = listener.references();
        routes.extend(references.route_configs.into_iter().map(str::to_owned));
        secrets.extend(references.secrets.into_iter().map(str::to_owned));
    }
    assert_eq!(&secrets, snapshot.referenced(ResourceType::Secret));
    assert_eq!(routes, ["public".to_owned(), "secure".to_owned()].into());
    for name in &routes {
        assert!(snapshot.resources(ResourceType::Route).contains_key(name));
    }

    // Every secret is a valid certificate, with the key the control plane was given.
    let secrets = snapshot.resources(ResourceType::Secret);
    assert_eq!(secrets.keys().collect::<Vec<_>>(), ["a", "b"]);
    for (name, resource) in secrets {
        let proto = tls_pb::Secret::decode(resource.body.value.as_slice()).unwrap();
        let certificate = TlsCertificate::try_from(&proto).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(certificate.name(), name);
        assert_eq!(certificate.chain_pem(), certificates[name].cert_pem);
        assert_eq!(
            Some(certificate.key_pem()),
            certificates[name].key_pem.as_deref()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP filters

fn cors_filter(name: &str) -> hcm_pb::HttpFilter {
    hcm_pb::HttpFilter {
        name: name.into(),
        config_type: Some(hcm_pb::http_filter::ConfigType::TypedConfig(pack_any(
            &cors_pb::Cors::default(),
        ))),
        ..Default::default()
    }
}

#[test]
fn http_filters_run_in_order_with_the_router_last() {
    let mut proto = plain();
    edit_hcm(&mut proto, |h| {
        h.http_filters
            .insert(0, cors_filter("envoy.filters.http.cors"));
        h.http_filters.insert(1, cors_filter("cors-again"));
    });
    let listener = Listener::try_from(&proto).unwrap();
    let filters = &listener.chains()[0].http.http_filters;
    let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.cors",
            "cors-again",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(filters[0].kind, HttpFilterKind::Cors);
    assert!(filters[2].is_router());

    // Nothing may follow the router, and the chain must end with it.
    let mut proto = plain();
    edit_hcm(&mut proto, |h| h.http_filters.push(cors_filter("late")));
    assert_eq!(
        Listener::try_from(&proto).unwrap_err().to_string(),
        "listener public: filter_chains[0].filters[0].typed_config.http_filters[0]: the router \
         is terminal: it must be the last filter"
    );
    let mut proto = plain();
    edit_hcm(&mut proto, |h| h.http_filters = vec![cors_filter("only")]);
    assert_eq!(
        Listener::try_from(&proto).unwrap_err().to_string(),
        "listener public: filter_chains[0].filters[0].typed_config.http_filters[0]: the last \
         filter must be the router (envoy.extensions.filters.http.router.v3.Router)"
    );
}
