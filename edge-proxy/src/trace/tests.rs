use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Request, StatusCode};
use opentelemetry::trace::{TraceFlags, TracerProvider as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use super::*;

/// The example of the W3C Trace Context recommendation.
const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn parse(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    parse_traceparent(value.as_bytes())
}

#[test]
fn a_valid_traceparent_parses() {
    let (trace_id, span_id, flags) = parse(VALID).unwrap();
    assert_eq!(trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span_id.to_string(), "00f067aa0ba902b7");
    assert!(flags.is_sampled());
    let (_, _, flags) = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
    assert!(!flags.is_sampled());
}

#[test]
fn flags_other_than_sampled_are_dropped() {
    let (_, _, flags) = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
    assert_eq!(flags, TraceFlags::SAMPLED);
    let (_, _, flags) = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02").unwrap();
    assert_eq!(flags, TraceFlags::NOT_SAMPLED);
}

#[test]
fn invalid_traceparents_are_rejected() {
    for (value, why) in [
        ("", "empty"),
        ("00", "version only"),
        (&VALID[..54], "one character short"),
        (
            &format!("{VALID}0"),
            "version 00 with one character too many",
        ),
        (&format!("{VALID}-extra"), "version 00 with extra fields"),
        (
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "version ff",
        ),
        (
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "version not hex",
        ),
        (
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "uppercase version",
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "uppercase trace id",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "uppercase parent id",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "uppercase flags",
        ),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "all-zero trace id",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "all-zero parent id",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "trace id one digit short",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-701",
            "parent id one digit short",
        ),
        (
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "wrong separators",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "flags not hex",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "trace id not hex",
        ),
        (
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "leading space",
        ),
        (
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "a later version without a dash after the flags",
        ),
    ] {
        assert_eq!(parse(value), None, "{why}: {value:?}");
    }
}

#[test]
fn a_later_version_is_read_as_version_00() {
    let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(parse(later), parse(VALID));
    let with_more = format!("{later}-what-the-future-holds");
    assert_eq!(parse(&with_more), parse(VALID));
}

#[test]
fn endpoints_must_be_plain_http_with_a_port() {
    assert_eq!(
        parse_endpoint("http://otel-collector:4317").unwrap(),
        "http://otel-collector:4317"
    );
    assert_eq!(
        parse_endpoint("http://127.0.0.1:4317/").unwrap(),
        "http://127.0.0.1:4317"
    );
    for bad in [
        "",
        "otel-collector:4317",
        "https://otel-collector:4317",
        "grpc://otel-collector:4317",
        "http://otel-collector",
        "http://otel-collector:4317/v1/traces",
        "http://:4317",
    ] {
        let error = parse_endpoint(bad).unwrap_err();
        assert!(
            error.to_string().contains("OTLP endpoint"),
            "{bad}: {error}"
        );
    }
}

#[test]
fn sampling_is_a_ratio() {
    assert_eq!(parse_sampling("0").unwrap(), 0.0);
    assert_eq!(parse_sampling("0.25").unwrap(), 0.25);
    assert_eq!(parse_sampling("1.0").unwrap(), 1.0);
    for bad in ["-0.1", "1.01", "NaN", "inf", "half", ""] {
        assert!(parse_sampling(bad).is_err(), "{bad}");
    }
    assert!(parse_service_name("  ").is_err());
    assert_eq!(parse_service_name(" edge ").unwrap(), "edge");
}

/// A tracer that samples new traces at `ratio` and exports nowhere.
fn tracer(ratio: f64) -> Tracer {
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .build();
    Tracer(provider.tracer("test"))
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::get("/a/b?key=secret").header("host", "shop.example.com:8080");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000);
const ENDPOINT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8081);

/// The `traceparent` an attempt sends upstream, parsed, with the headers it went with.
fn attempt(span: &mut ServerSpan, incoming: &[(&str, &str)]) -> (TraceId, SpanId, bool, HeaderMap) {
    let mut headers = HeaderMap::new();
    for (name, value) in incoming {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let attempt = span.start_attempt(&mut headers, "main", ENDPOINT);
    attempt.end(Ok(StatusCode::OK));
    let sent = headers.get(TRACEPARENT).unwrap().to_str().unwrap();
    let (trace_id, span_id, flags) = parse(sent).unwrap();
    (trace_id, span_id, flags.is_sampled(), headers)
}

#[test]
fn a_request_continues_its_callers_trace() {
    let incoming = [("traceparent", VALID), ("tracestate", "vendor=opaque,b=2")];
    let mut span = tracer(1.0).start_server(&request(&incoming), PEER, false);
    let server = span.span_context();
    assert_eq!(server.trace_id().to_string(), &VALID[3..35]);
    assert_ne!(server.span_id().to_string(), &VALID[36..52]);
    assert!(server.is_sampled());
    assert_eq!(server.trace_state().header(), "vendor=opaque,b=2");

    let (trace_id, first, sampled, headers) = attempt(&mut span, &incoming);
    assert_eq!(trace_id, server.trace_id());
    assert_ne!(first, server.span_id());
    assert!(sampled);
    // The caller's tracestate goes on as it came.
    assert_eq!(headers[TRACESTATE], "vendor=opaque,b=2");
    // A retry is a span of its own.
    let (_, second, _, _) = attempt(&mut span, &incoming);
    assert_ne!(first, second);
    span.respond(Some("fwd"), Some("main"), StatusCode::OK);
}

#[test]
fn without_a_valid_traceparent_a_new_trace_starts() {
    let incoming = [
        (
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ),
        ("tracestate", "vendor=opaque"),
    ];
    let mut span = tracer(1.0).start_server(&request(&incoming), PEER, false);
    let server = span.span_context();
    assert!(server.is_valid());
    assert_ne!(server.trace_id(), TraceId::INVALID);
    let (trace_id, _, _, headers) = attempt(&mut span, &incoming);
    assert_eq!(trace_id, server.trace_id());
    // The caller's tracestate belonged to the trace that was not continued.
    assert!(headers.get(TRACESTATE).is_none());

    // Two traceparent fields are as bad as an invalid one.
    let twice = [("traceparent", VALID), ("traceparent", VALID)];
    let span = tracer(1.0).start_server(&request(&twice), PEER, false);
    assert_ne!(span.span_context().trace_id().to_string(), &VALID[3..35]);
}

#[test]
fn the_callers_sampling_decision_is_followed() {
    // Not sampled by the caller: not sampled here, even at ratio 1, and said so upstream.
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let incoming = [("traceparent", unsampled)];
    let mut span = tracer(1.0).start_server(&request(&incoming), PEER, false);
    assert!(!span.span_context().is_sampled());
    let (trace_id, _, sampled, _) = attempt(&mut span, &incoming);
    assert_eq!(trace_id.to_string(), &VALID[3..35]);
    assert!(!sampled);

    // Sampled by the caller: sampled here, even at ratio 0.
    let incoming = [("traceparent", VALID)];
    let mut span = tracer(0.0).start_server(&request(&incoming), PEER, false);
    assert!(span.span_context().is_sampled());
    let (_, _, sampled, _) = attempt(&mut span, &incoming);
    assert!(sampled);

    // A new trace at ratio 0 is not sampled, but still propagated.
    let mut span = tracer(0.0).start_server(&request(&[]), PEER, false);
    assert!(!span.span_context().is_sampled());
    let (trace_id, _, sampled, _) = attempt(&mut span, &[]);
    assert_eq!(trace_id, span.span_context().trace_id());
    assert!(!sampled);
}
