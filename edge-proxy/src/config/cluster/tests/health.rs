//! Health checks, outlier detection and upstream TLS: the forms accepted, with Envoy's defaults,
//! and the ones refused, naming the field.

// Lists of one status range are meant: `vec![200..201]` is "200 only".
#![allow(clippy::single_range_in_vec_init)]

use core_pb::health_check::{HealthChecker, HttpHealthCheck};
use tls_pb::common_tls_context::ValidationContextType;
use tollgate_proto::envoy::r#type::v3::{CodecClientType, Int64Range};
use tollgate_proto::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};

use super::*;

// ---------------------------------------------------------------------------------------------
// Proto builders

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// An HTTP health check with only what Envoy requires.
fn minimal_health_check(path: &str) -> core_pb::HealthCheck {
    core_pb::HealthCheck {
        timeout: Some(ms(1000)),
        interval: Some(ms(5000)),
        healthy_threshold: u32v(1),
        unhealthy_threshold: u32v(2),
        health_checker: Some(HealthChecker::HttpHealthCheck(HttpHealthCheck {
            path: path.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn http_check(hc: &mut core_pb::HealthCheck) -> &mut HttpHealthCheck {
    match hc.health_checker.as_mut() {
        Some(HealthChecker::HttpHealthCheck(http)) => http,
        _ => unreachable!(),
    }
}

/// Outlier detection with every detector but consecutive 5xx off, as the control plane sends it.
fn consecutive_5xx_only() -> cluster_pb::OutlierDetection {
    cluster_pb::OutlierDetection {
        enforcing_success_rate: u32v(0),
        ..Default::default()
    }
}

fn ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["ca.example.com".to_owned()])
        .unwrap()
        .cert
        .pem()
}

fn inline_string(text: &str) -> core_pb::DataSource {
    core_pb::DataSource {
        specifier: Some(core_pb::data_source::Specifier::InlineString(text.into())),
        ..Default::default()
    }
}

fn dns_san(name: &str) -> tls_pb::SubjectAltNameMatcher {
    tls_pb::SubjectAltNameMatcher {
        san_type: tls_pb::subject_alt_name_matcher::SanType::Dns as i32,
        matcher: Some(matcher_pb::StringMatcher {
            match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(name.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn socket_of(any: Any) -> core_pb::TransportSocket {
    core_pb::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core_pb::transport_socket::ConfigType::TypedConfig(any)),
    }
}

fn tls_socket(context: &tls_pb::UpstreamTlsContext) -> core_pb::TransportSocket {
    socket_of(tollgate_proto::pack_any(context))
}

/// Upstream TLS as the control plane sends it with `verify`: a CA, the SNI as SAN, TLS 1.2–1.3.
fn verified_tls(pem: &str, sni: &str) -> tls_pb::UpstreamTlsContext {
    use tls_pb::tls_parameters::TlsProtocol;
    tls_pb::UpstreamTlsContext {
        sni: sni.into(),
        common_tls_context: Some(tls_pb::CommonTlsContext {
            tls_params: Some(tls_pb::TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            alpn_protocols: vec!["http/1.1".into()],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                tls_pb::CertificateValidationContext {
                    trusted_ca: Some(inline_string(pem)),
                    match_typed_subject_alt_names: vec![dns_san(sni)],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn der_of(pem: &str) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|der| der.unwrap().to_vec())
        .collect()
}

/// An EDS cluster with a health check, outlier detection and verified TLS: every table case
/// below breaks one thing in it.
fn full_cluster(pem: &str) -> cluster_pb::Cluster {
    let mut cluster = eds_cluster("c");
    cluster.health_checks = vec![minimal_health_check("/healthz")];
    cluster.outlier_detection = Some(consecutive_5xx_only());
    cluster.transport_socket = Some(tls_socket(&verified_tls(pem, "c.internal")));
    cluster
}

// ---------------------------------------------------------------------------------------------
// Accepted configs

#[test]
fn health_check_in_envoys_minimal_form_gets_envoys_defaults() {
    let mut proto = eds_cluster("users");
    proto.health_checks = vec![minimal_health_check("/healthz?deep=1")];
    let check = build(&proto).health_check.unwrap();
    assert_eq!(
        check,
        HealthCheck {
            path: "/healthz?deep=1".into(),
            host: None,
            protocol: UpstreamProtocol::Http1,
            interval: Duration::from_secs(5),
            no_traffic_interval: DEFAULT_NO_TRAFFIC_INTERVAL,
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            expected_statuses: vec![200..201],
        }
    );
    // Envoy's default passes 200 only.
    assert!(check.is_expected(200));
    assert!(!check.is_expected(204));
}

#[test]
fn health_check_settings_and_their_equivalent_spellings() {
    let mut hc = minimal_health_check("/hc");
    hc.no_traffic_interval = Some(ms(2000));
    // Each interval set to what it defaults to anyway.
    hc.no_traffic_healthy_interval = Some(ms(2000));
    hc.unhealthy_interval = Some(ms(5000));
    hc.unhealthy_edge_interval = Some(ms(5000));
    hc.healthy_edge_interval = Some(ms(5000));
    // Zero jitter is no jitter; connections are reused by default.
    hc.initial_jitter = Some(ms(0));
    hc.interval_jitter = Some(ms(0));
    hc.reuse_connection = Some(BoolValue { value: true });
    // Only read by the event loggers.
    hc.always_log_health_check_failures = true;
    let http = http_check(&mut hc);
    http.host = "users.internal:8443".into();
    http.codec_client_type = CodecClientType::Http2 as i32;
    http.method = core_pb::RequestMethod::Get as i32;
    http.expected_statuses = vec![
        Int64Range {
            start: 200,
            end: 300,
        },
        Int64Range {
            start: 404,
            end: 405,
        },
    ];
    // Only read with `receive`.
    http.response_buffer_size = Some(Default::default());
    let mut proto = eds_cluster("users");
    proto.health_checks = vec![hc];
    let check = build(&proto).health_check.unwrap();
    assert_eq!(check.host.as_deref(), Some("users.internal:8443"));
    assert_eq!(check.protocol, UpstreamProtocol::Http2);
    assert_eq!(check.no_traffic_interval, Duration::from_secs(2));
    assert_eq!(check.expected_statuses, vec![200..300, 404..405]);
    assert!(check.is_expected(299) && check.is_expected(404));
    assert!(!check.is_expected(300) && !check.is_expected(405));
}

#[test]
fn outlier_detection_with_envoys_defaults_once_success_rate_is_off() {
    let mut proto = eds_cluster("users");
    proto.outlier_detection = Some(consecutive_5xx_only());
    assert_eq!(
        build(&proto).outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: DEFAULT_CONSECUTIVE_5XX,
            interval: DEFAULT_OUTLIER_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        })
    );

    // The maximum ejection defaults to the base when that is longer than 300 s.
    proto.outlier_detection = Some(cluster_pb::OutlierDetection {
        base_ejection_time: Some(ms(400_000)),
        ..consecutive_5xx_only()
    });
    let od = build(&proto).outlier_detection.unwrap();
    assert_eq!(od.max_ejection_time, Duration::from_secs(400));

    // Everything set, and the other detectors off in each way Envoy allows.
    proto.outlier_detection = Some(cluster_pb::OutlierDetection {
        consecutive_5xx: u32v(3),
        enforcing_consecutive_5xx: u32v(100),
        interval: Some(ms(1000)),
        base_ejection_time: Some(ms(2000)),
        max_ejection_time: Some(ms(8000)),
        max_ejection_time_jitter: Some(ms(0)),
        max_ejection_percent: u32v(100),
        // Gateway failures: off by a zero count, whatever the enforcement.
        consecutive_gateway_failure: u32v(0),
        enforcing_consecutive_gateway_failure: u32v(100),
        enforcing_failure_percentage: u32v(0),
        // Dead without split_external_local_origin_errors.
        consecutive_local_origin_failure: u32v(1),
        enforcing_consecutive_local_origin_failure: u32v(100),
        successful_active_health_check_uneject_host: Some(BoolValue { value: true }),
        always_eject_one_host: Some(BoolValue { value: false }),
        detect_degraded_hosts: Some(BoolValue { value: false }),
        ..consecutive_5xx_only()
    });
    assert_eq!(
        build(&proto).outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: 3,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(2),
            max_ejection_time: Duration::from_secs(8),
            max_ejection_percent: 100,
        })
    );

    // With the consecutive-5xx detector off too, nothing is ever ejected.
    for off in [
        cluster_pb::OutlierDetection {
            consecutive_5xx: u32v(0),
            ..consecutive_5xx_only()
        },
        cluster_pb::OutlierDetection {
            enforcing_consecutive_5xx: u32v(0),
            ..consecutive_5xx_only()
        },
    ] {
        proto.outlier_detection = Some(off);
        assert_eq!(build(&proto).outlier_detection, None);
    }
}

#[test]
fn plaintext_sockets_and_upstream_tls() {
    let mut proto = eds_cluster("users");
    proto.transport_socket = Some(socket_of(tollgate_proto::pack_any(
        &raw_buffer_pb::RawBuffer {},
    )));
    assert_eq!(build(&proto).tls, None);

    // An empty context: TLS 1.2 only (Envoy's client default), no SNI, no ALPN, no checks.
    proto.transport_socket = Some(tls_socket(&Default::default()));
    let unverified = UpstreamTls {
        sni: None,
        alpn: vec![],
        min_version: TlsVersion::Tls12,
        max_version: TlsVersion::Tls12,
        trusted_ca: None,
        subject_alt_names: vec![],
    };
    assert_eq!(build(&proto).tls, Some(unverified.clone()));
    // A validation context with nothing in it checks nothing either.
    proto.transport_socket = Some(tls_socket(&tls_pb::UpstreamTlsContext {
        common_tls_context: Some(tls_pb::CommonTlsContext {
            validation_context_type: Some(ValidationContextType::ValidationContext(
                Default::default(),
            )),
            ..Default::default()
        }),
        ..Default::default()
    }));
    assert_eq!(build(&proto).tls, Some(unverified));

    let pem = ca_pem();
    let bundle = format!("{pem}{}", ca_pem());
    proto.transport_socket = Some(tls_socket(&verified_tls(&bundle, "Users.Internal")));
    assert_eq!(
        build(&proto).tls,
        Some(UpstreamTls {
            sni: Some("users.internal".into()),
            alpn: vec!["http/1.1".into()],
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            trusted_ca: Some(der_of(&bundle)),
            subject_alt_names: vec!["users.internal".into()],
        })
    );

    // A CA without names: the chain is checked, not the name. `auto_sni_san_validation`
    // replaces any names with the SNI.
    let mut context = verified_tls(&pem, "users.internal");
    let Some(ValidationContextType::ValidationContext(validation)) = context
        .common_tls_context
        .as_mut()
        .unwrap()
        .validation_context_type
        .as_mut()
    else {
        unreachable!()
    };
    validation.match_typed_subject_alt_names = vec![dns_san("other.internal")];
    // PEM as bytes is read the same.
    validation.trusted_ca = Some(core_pb::DataSource {
        specifier: Some(core_pb::data_source::Specifier::InlineBytes(
            pem.clone().into_bytes(),
        )),
        ..Default::default()
    });
    proto.transport_socket = Some(tls_socket(&context));
    let tls = build(&proto).tls.unwrap();
    assert_eq!(tls.subject_alt_names, ["other.internal"]);
    assert_eq!(tls.trusted_ca, Some(der_of(&pem)));
    context.auto_sni_san_validation = true;
    proto.transport_socket = Some(tls_socket(&context));
    assert_eq!(
        build(&proto).tls.unwrap().subject_alt_names,
        ["users.internal"]
    );
}

#[test]
fn the_full_cluster_is_accepted() {
    let cluster = build(&full_cluster(&ca_pem()));
    assert!(cluster.health_check.is_some());
    assert!(cluster.outlier_detection.is_some());
    assert!(cluster.tls.unwrap().trusted_ca.is_some());
}

// ---------------------------------------------------------------------------------------------
// Rejected configs

fn health(c: &mut cluster_pb::Cluster) -> &mut core_pb::HealthCheck {
    &mut c.health_checks[0]
}

fn outlier(c: &mut cluster_pb::Cluster) -> &mut cluster_pb::OutlierDetection {
    c.outlier_detection.as_mut().unwrap()
}

/// Changes the cluster's (decoded) upstream TLS context and packs it back.
fn set_tls(c: &mut cluster_pb::Cluster, f: impl FnOnce(&mut tls_pb::UpstreamTlsContext)) {
    let Some(core_pb::transport_socket::ConfigType::TypedConfig(any)) = c
        .transport_socket
        .as_ref()
        .and_then(|s| s.config_type.as_ref())
    else {
        unreachable!()
    };
    let mut context = tls_pb::UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    f(&mut context);
    c.transport_socket = Some(tls_socket(&context));
}

fn set_common(c: &mut cluster_pb::Cluster, f: impl FnOnce(&mut tls_pb::CommonTlsContext)) {
    set_tls(c, |t| f(t.common_tls_context.as_mut().unwrap()));
}

fn set_validation(
    c: &mut cluster_pb::Cluster,
    f: impl FnOnce(&mut tls_pb::CertificateValidationContext),
) {
    set_common(c, |common| match common.validation_context_type.as_mut() {
        Some(ValidationContextType::ValidationContext(v)) => f(v),
        _ => unreachable!(),
    });
}

#[test]
#[allow(deprecated)] // deprecated fields are set to prove they are refused
fn unsupported_or_invalid_health_settings_are_rejected_naming_the_field() {
    const HC: &str = "health_checks[0]";
    const HTTP: &str = "health_checks[0].http_health_check";
    const OD: &str = "outlier_detection";
    const TLS: &str = "transport_socket.typed_config";
    const COMMON: &str = "transport_socket.typed_config.common_tls_context";
    const VALIDATION: &str = "transport_socket.typed_config.common_tls_context.validation_context";
    let at = |base: &str, rest: &str| format!("{base}.{rest}");
    let pem = ca_pem();
    let cases: Vec<(String, Breaker<cluster_pb::Cluster>, Check<'_>)> = vec![
        // Health checks.
        (
            "health_checks".into(),
            Box::new(|c| c.health_checks.push(minimal_health_check("/other"))),
            &unsupported_value,
        ),
        (
            at(HC, "timeout"),
            Box::new(|c| health(c).timeout = None),
            &missing,
        ),
        (
            at(HC, "interval"),
            Box::new(|c| health(c).interval = Some(ms(0))),
            &invalid,
        ),
        (
            at(HC, "healthy_threshold"),
            Box::new(|c| health(c).healthy_threshold = None),
            &missing,
        ),
        (
            at(HC, "unhealthy_threshold"),
            Box::new(|c| health(c).unhealthy_threshold = u32v(0)),
            &invalid,
        ),
        (
            at(HC, "initial_jitter"),
            Box::new(|c| health(c).initial_jitter = Some(ms(100))),
            &unsupported,
        ),
        (
            at(HC, "interval_jitter_percent"),
            Box::new(|c| health(c).interval_jitter_percent = 10),
            &unsupported,
        ),
        (
            at(HC, "alt_port"),
            Box::new(|c| health(c).alt_port = u32v(8081)),
            &unsupported,
        ),
        (
            at(HC, "reuse_connection"),
            Box::new(|c| health(c).reuse_connection = Some(BoolValue { value: false })),
            &unsupported,
        ),
        (
            at(HC, "no_traffic_interval"),
            Box::new(|c| health(c).no_traffic_interval = Some(ms(0))),
            &invalid,
        ),
        (
            at(HC, "no_traffic_healthy_interval"),
            Box::new(|c| health(c).no_traffic_healthy_interval = Some(ms(1000))),
            &unsupported_value,
        ),
        (
            at(HC, "unhealthy_interval"),
            Box::new(|c| health(c).unhealthy_interval = Some(ms(1000))),
            &unsupported_value,
        ),
        (
            at(HC, "unhealthy_edge_interval"),
            Box::new(|c| health(c).unhealthy_edge_interval = Some(ms(1000))),
            &unsupported_value,
        ),
        (
            at(HC, "healthy_edge_interval"),
            Box::new(|c| health(c).healthy_edge_interval = Some(ms(1000))),
            &unsupported_value,
        ),
        (
            at(HC, "event_log_path"),
            Box::new(|c| health(c).event_log_path = "/tmp/hc.log".into()),
            &unsupported,
        ),
        (
            at(HC, "event_logger"),
            Box::new(|c| health(c).event_logger = vec![Default::default()]),
            &unsupported,
        ),
        (
            at(HC, "tls_options"),
            Box::new(|c| health(c).tls_options = Some(Default::default())),
            &unsupported,
        ),
        (
            at(HC, "transport_socket_match_criteria"),
            Box::new(|c| health(c).transport_socket_match_criteria = Some(Default::default())),
            &unsupported,
        ),
        (
            at(HC, "http_health_check"),
            Box::new(|c| health(c).health_checker = None),
            &missing,
        ),
        (
            at(HC, "tcp_health_check"),
            Box::new(|c| {
                health(c).health_checker = Some(HealthChecker::TcpHealthCheck(Default::default()))
            }),
            &unsupported,
        ),
        (
            at(HC, "grpc_health_check"),
            Box::new(|c| {
                health(c).health_checker = Some(HealthChecker::GrpcHealthCheck(Default::default()))
            }),
            &unsupported,
        ),
        (
            at(HTTP, "path"),
            Box::new(|c| http_check(health(c)).path.clear()),
            &missing,
        ),
        (
            at(HTTP, "path"),
            Box::new(|c| http_check(health(c)).path = "healthz".into()),
            &invalid,
        ),
        (
            at(HTTP, "host"),
            Box::new(|c| http_check(health(c)).host = "bad host".into()),
            &invalid,
        ),
        (
            at(HTTP, "send"),
            Box::new(|c| http_check(health(c)).send = Some(Default::default())),
            &unsupported,
        ),
        (
            at(HTTP, "receive"),
            Box::new(|c| http_check(health(c)).receive = vec![Default::default()]),
            &unsupported,
        ),
        (
            at(HTTP, "request_headers_to_add"),
            Box::new(|c| http_check(health(c)).request_headers_to_add = vec![Default::default()]),
            &unsupported,
        ),
        (
            at(HTTP, "request_headers_to_remove"),
            Box::new(|c| http_check(health(c)).request_headers_to_remove = vec!["x".into()]),
            &unsupported,
        ),
        (
            at(HTTP, "retriable_statuses"),
            Box::new(|c| {
                http_check(health(c)).retriable_statuses = vec![Int64Range {
                    start: 503,
                    end: 504,
                }]
            }),
            &unsupported,
        ),
        (
            at(HTTP, "service_name_matcher"),
            Box::new(|c| http_check(health(c)).service_name_matcher = Some(Default::default())),
            &unsupported,
        ),
        (
            at(HTTP, "method"),
            Box::new(|c| http_check(health(c)).method = core_pb::RequestMethod::Head as i32),
            &unsupported_value,
        ),
        (
            at(HTTP, "method"),
            Box::new(|c| http_check(health(c)).method = core_pb::RequestMethod::Connect as i32),
            &invalid,
        ),
        (
            at(HTTP, "codec_client_type"),
            Box::new(|c| http_check(health(c)).codec_client_type = CodecClientType::Http3 as i32),
            &unsupported_value,
        ),
        (
            at(HTTP, "expected_statuses[1]"),
            Box::new(|c| {
                http_check(health(c)).expected_statuses = vec![
                    Int64Range {
                        start: 200,
                        end: 300,
                    },
                    Int64Range {
                        start: 300,
                        end: 300,
                    },
                ]
            }),
            &invalid,
        ),
        (
            at(HTTP, "expected_statuses[0]"),
            Box::new(|c| {
                http_check(health(c)).expected_statuses = vec![Int64Range {
                    start: 99,
                    end: 200,
                }]
            }),
            &invalid,
        ),
        (
            at(HTTP, "expected_statuses[0]"),
            Box::new(|c| {
                http_check(health(c)).expected_statuses = vec![Int64Range {
                    start: 500,
                    end: 601,
                }]
            }),
            &invalid,
        ),
        // Outlier detection.
        (
            at(OD, "enforcing_success_rate"),
            Box::new(|c| outlier(c).enforcing_success_rate = None),
            &unsupported_value,
        ),
        (
            at(OD, "enforcing_failure_percentage"),
            Box::new(|c| outlier(c).enforcing_failure_percentage = u32v(50)),
            &unsupported_value,
        ),
        (
            at(OD, "enforcing_consecutive_gateway_failure"),
            Box::new(|c| outlier(c).enforcing_consecutive_gateway_failure = u32v(100)),
            &unsupported_value,
        ),
        (
            at(OD, "enforcing_consecutive_5xx"),
            Box::new(|c| outlier(c).enforcing_consecutive_5xx = u32v(50)),
            &unsupported_value,
        ),
        (
            at(OD, "split_external_local_origin_errors"),
            Box::new(|c| outlier(c).split_external_local_origin_errors = true),
            &unsupported,
        ),
        (
            at(OD, "max_ejection_time_jitter"),
            Box::new(|c| outlier(c).max_ejection_time_jitter = Some(ms(10))),
            &unsupported,
        ),
        (
            at(OD, "successful_active_health_check_uneject_host"),
            Box::new(|c| {
                outlier(c).successful_active_health_check_uneject_host =
                    Some(BoolValue { value: false })
            }),
            &unsupported,
        ),
        (
            at(OD, "monitors"),
            Box::new(|c| outlier(c).monitors = vec![Default::default()]),
            &unsupported,
        ),
        (
            at(OD, "always_eject_one_host"),
            Box::new(|c| outlier(c).always_eject_one_host = Some(BoolValue { value: true })),
            &unsupported,
        ),
        (
            at(OD, "detect_degraded_hosts"),
            Box::new(|c| outlier(c).detect_degraded_hosts = Some(BoolValue { value: true })),
            &unsupported,
        ),
        (
            at(OD, "max_ejection_percent"),
            Box::new(|c| outlier(c).max_ejection_percent = u32v(101)),
            &invalid,
        ),
        (
            at(OD, "failure_percentage_threshold"),
            Box::new(|c| outlier(c).failure_percentage_threshold = u32v(101)),
            &invalid,
        ),
        (
            at(OD, "interval"),
            Box::new(|c| outlier(c).interval = Some(ms(0))),
            &invalid,
        ),
        (
            at(OD, "base_ejection_time"),
            Box::new(|c| {
                outlier(c).base_ejection_time = Some(PbDuration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
            &invalid,
        ),
        (
            at(OD, "max_ejection_time"),
            Box::new(|c| {
                let od = outlier(c);
                od.base_ejection_time = Some(ms(10_000));
                od.max_ejection_time = Some(ms(5_000));
            }),
            &invalid,
        ),
        // Transport sockets.
        (
            "transport_socket.typed_config".into(),
            Box::new(|c| c.transport_socket.as_mut().unwrap().config_type = None),
            &missing,
        ),
        (
            "transport_socket.typed_config".into(),
            Box::new(|c| {
                c.transport_socket = Some(socket_of(tollgate_proto::pack_any(
                    &tls_pb::DownstreamTlsContext::default(),
                )))
            }),
            &unsupported_value,
        ),
        (
            "transport_socket.typed_config.value".into(),
            Box::new(|c| {
                c.transport_socket = Some(socket_of(Any {
                    type_url: tls_pb::UpstreamTlsContext::type_url(),
                    value: vec![0xff],
                }))
            }),
            &invalid,
        ),
        (
            at(TLS, "auto_host_sni"),
            Box::new(|c| set_tls(c, |t| t.auto_host_sni = true)),
            &unsupported,
        ),
        (
            at(TLS, "allow_renegotiation"),
            Box::new(|c| set_tls(c, |t| t.allow_renegotiation = true)),
            &unsupported,
        ),
        (
            at(TLS, "sni"),
            Box::new(|c| set_tls(c, |t| t.sni = "10.0.0.1".into())),
            &invalid,
        ),
        (
            at(TLS, "auto_sni_san_validation"),
            Box::new(|c| {
                set_tls(c, |t| {
                    t.sni.clear();
                    t.auto_sni_san_validation = true;
                })
            }),
            &unsupported_value,
        ),
        (
            at(TLS, "auto_sni_san_validation"),
            Box::new(|c| {
                set_tls(c, |t| {
                    t.auto_sni_san_validation = true;
                    t.common_tls_context
                        .as_mut()
                        .unwrap()
                        .validation_context_type = None;
                })
            }),
            &invalid,
        ),
        (
            at(COMMON, "tls_certificates"),
            Box::new(|c| set_common(c, |t| t.tls_certificates = vec![Default::default()])),
            &unsupported,
        ),
        (
            at(COMMON, "tls_certificate_sds_secret_configs"),
            Box::new(|c| {
                set_common(c, |t| {
                    t.tls_certificate_sds_secret_configs = vec![Default::default()]
                })
            }),
            &unsupported,
        ),
        (
            at(COMMON, "key_log"),
            Box::new(|c| set_common(c, |t| t.key_log = Some(Default::default()))),
            &unsupported,
        ),
        (
            at(COMMON, "alpn_protocols[1]"),
            Box::new(|c| set_common(c, |t| t.alpn_protocols.push("h3".into()))),
            &unsupported_value,
        ),
        (
            at(COMMON, "tls_params.cipher_suites"),
            Box::new(|c| {
                set_common(c, |t| {
                    t.tls_params.as_mut().unwrap().cipher_suites = vec!["AES128-SHA".into()]
                })
            }),
            &unsupported,
        ),
        (
            at(COMMON, "tls_params.tls_minimum_protocol_version"),
            Box::new(|c| {
                set_common(c, |t| {
                    t.tls_params.as_mut().unwrap().tls_minimum_protocol_version =
                        tls_pb::tls_parameters::TlsProtocol::TlSv11 as i32
                })
            }),
            &unsupported_value,
        ),
        (
            at(COMMON, "tls_params.tls_minimum_protocol_version"),
            Box::new(|c| {
                set_common(c, |t| {
                    let params = t.tls_params.as_mut().unwrap();
                    params.tls_minimum_protocol_version =
                        tls_pb::tls_parameters::TlsProtocol::TlSv13 as i32;
                    params.tls_maximum_protocol_version =
                        tls_pb::tls_parameters::TlsProtocol::TlSv12 as i32;
                })
            }),
            &invalid,
        ),
        (
            at(COMMON, "validation_context_sds_secret_config"),
            Box::new(|c| {
                set_common(c, |t| {
                    t.validation_context_type = Some(
                        ValidationContextType::ValidationContextSdsSecretConfig(Default::default()),
                    )
                })
            }),
            &unsupported,
        ),
        (
            at(COMMON, "combined_validation_context"),
            Box::new(|c| {
                set_common(c, |t| {
                    t.validation_context_type = Some(
                        ValidationContextType::CombinedValidationContext(Default::default()),
                    )
                })
            }),
            &unsupported,
        ),
        (
            at(VALIDATION, "trusted_ca"),
            Box::new(|c| set_validation(c, |v| v.trusted_ca = None)),
            &invalid,
        ),
        (
            at(VALIDATION, "trusted_ca.inline_string"),
            Box::new(|c| set_validation(c, |v| v.trusted_ca = Some(inline_string("")))),
            &missing,
        ),
        (
            at(VALIDATION, "trusted_ca.filename"),
            Box::new(|c| {
                set_validation(c, |v| {
                    v.trusted_ca = Some(core_pb::DataSource {
                        specifier: Some(core_pb::data_source::Specifier::Filename(
                            "/etc/ssl/ca.pem".into(),
                        )),
                        ..Default::default()
                    })
                })
            }),
            &unsupported,
        ),
        (
            at(VALIDATION, "trusted_ca"),
            Box::new(|c| set_validation(c, |v| v.trusted_ca = Some(inline_string("not pem")))),
            &invalid,
        ),
        (
            at(VALIDATION, "trusted_ca"),
            Box::new(|c| {
                let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
                set_validation(c, |v| v.trusted_ca = Some(inline_string(&key)))
            }),
            &unsupported_value,
        ),
        (
            at(VALIDATION, "trusted_ca"),
            Box::new(|c| {
                let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
                set_validation(c, |v| v.trusted_ca = Some(inline_string(garbage)))
            }),
            &invalid,
        ),
        (
            at(VALIDATION, "verify_certificate_spki"),
            Box::new(|c| set_validation(c, |v| v.verify_certificate_spki = vec!["x".into()])),
            &unsupported,
        ),
        (
            at(VALIDATION, "verify_certificate_hash"),
            Box::new(|c| set_validation(c, |v| v.verify_certificate_hash = vec!["x".into()])),
            &unsupported,
        ),
        (
            at(VALIDATION, "match_subject_alt_names"),
            Box::new(|c| {
                set_validation(c, |v| v.match_subject_alt_names = vec![Default::default()])
            }),
            &unsupported,
        ),
        (
            at(VALIDATION, "crl"),
            Box::new(|c| set_validation(c, |v| v.crl = Some(inline_string("crl")))),
            &unsupported,
        ),
        (
            at(VALIDATION, "allow_expired_certificate"),
            Box::new(|c| set_validation(c, |v| v.allow_expired_certificate = true)),
            &unsupported,
        ),
        (
            at(VALIDATION, "max_verify_depth"),
            Box::new(|c| set_validation(c, |v| v.max_verify_depth = u32v(3))),
            &unsupported,
        ),
        (
            at(VALIDATION, "system_root_certs"),
            Box::new(|c| set_validation(c, |v| v.system_root_certs = Some(Default::default()))),
            &unsupported,
        ),
        (
            at(VALIDATION, "trust_chain_verification"),
            Box::new(|c| {
                set_validation(c, |v| {
                    v.trust_chain_verification =
                        tls_pb::certificate_validation_context::TrustChainVerification::AcceptUntrusted
                            as i32
                })
            }),
            &unsupported_value,
        ),
        (
            at(VALIDATION, "match_typed_subject_alt_names[0].san_type"),
            Box::new(|c| {
                set_validation(c, |v| {
                    v.match_typed_subject_alt_names[0].san_type =
                        tls_pb::subject_alt_name_matcher::SanType::Uri as i32
                })
            }),
            &unsupported_value,
        ),
        (
            at(
                VALIDATION,
                "match_typed_subject_alt_names[0].matcher.prefix",
            ),
            Box::new(|c| {
                set_validation(c, |v| {
                    v.match_typed_subject_alt_names[0].matcher = Some(matcher_pb::StringMatcher {
                        match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Prefix(
                            "c.".into(),
                        )),
                        ..Default::default()
                    })
                })
            }),
            &unsupported,
        ),
        (
            at(VALIDATION, "match_typed_subject_alt_names[0].matcher.exact"),
            Box::new(|c| {
                set_validation(c, |v| {
                    v.match_typed_subject_alt_names[0] = dns_san("*.internal")
                })
            }),
            &invalid,
        ),
    ];
    for (field, breaker, check) in cases {
        let mut proto = full_cluster(&pem);
        breaker(&mut proto);
        let err = Cluster::try_from(&proto).expect_err(&field);
        assert_eq!(err.field, field, "{err}");
        assert!(check(&err.reason), "{err}");
        assert_eq!(err.resource, Resource::Cluster("c".into()));
    }
}

#[test]
fn health_rejections_read_well() {
    let mut proto = full_cluster(&ca_pem());
    http_check(health(&mut proto)).retriable_statuses = vec![Int64Range {
        start: 503,
        end: 504,
    }];
    assert_eq!(
        Cluster::try_from(&proto).unwrap_err().to_string(),
        "cluster c: health_checks[0].http_health_check.retriable_statuses: not supported"
    );

    let mut proto = full_cluster(&ca_pem());
    set_validation(&mut proto, |v| v.trusted_ca = None);
    assert_eq!(
        Cluster::try_from(&proto).unwrap_err().to_string(),
        "cluster c: transport_socket.typed_config.common_tls_context.validation_context.\
         trusted_ca: is required with match_typed_subject_alt_names: checking names without a \
         trusted CA is insecure, and Envoy refuses it too"
    );
}
