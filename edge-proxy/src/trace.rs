//! Distributed tracing: W3C Trace Context in and out, OpenTelemetry spans exported over
//! OTLP/gRPC.
//!
//! Where it sits in the request flow: [`crate::proxy::handle`] starts a SERVER span
//! ([`ServerSpan`]) as a request arrives, a child of the client's `traceparent` when that is
//! valid, else the root of a new trace. Every upstream attempt, retries included, gets a CLIENT
//! child ([`AttemptSpan`]) whose ids go upstream in a new `traceparent`; the client's
//! `tracestate` goes with it unchanged. The response headers set the server span's name, route,
//! cluster and status, and the span ends when the response body has gone
//! ([`crate::access_log::LoggedBody`]), as the access log line is written. Finished spans are
//! batched and exported by the SDK's batch span processor on a thread of its own.
//!
//! Tracing is off without `--otlp-endpoint`: no [`Tracing`] is built, every request checks one
//! `Option` ([`crate::proxy::Downstream::tracer`]) and builds nothing, and `traceparent` and
//! `tracestate` travel upstream untouched like any other header, as through Envoy without a
//! tracer.
//!
//! Attributes follow OpenTelemetry's HTTP semantic conventions. Span names stay low in
//! cardinality: the method and the route's name from the config (`GET catch-all`), never a
//! path. Query strings never reach a span: they often carry API keys.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `service.name` spans carry unless `--service-name` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "tollgate-edge-proxy";

/// How long one export to the collector may take; a slow collector costs spans, never requests.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// On shutdown, how long the spans still queued get to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What is wrong with a tracing setting.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The OTLP endpoint is not an `http://host:port` URL.
    #[error("OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The URL as given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The sampling ratio is not a number from 0.0 to 1.0.
    #[error("trace sampling ratio {0:?}: must be a number from 0.0 to 1.0")]
    Sampling(String),
    /// The service name is empty.
    #[error("service name: must not be empty")]
    ServiceName,
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Checks an OTLP/gRPC endpoint: `http://HOST:PORT`, without a path. TLS to the collector is not
/// built in; run the collector (or its agent) next to the proxy.
pub fn parse_endpoint(endpoint: &str) -> Result<String, TraceError> {
    let error = |reason| TraceError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let uri: Uri = endpoint
        .parse()
        .map_err(|_| error("not a URL (expected http://HOST:PORT)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(error(
                "https is not supported: send to a collector on the host or in the pod over http://",
            ));
        }
        _ => return Err(error("expected http://HOST:PORT")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| error("expected http://HOST:PORT"))?;
    if authority.host().is_empty() {
        return Err(error("has no host"));
    }
    if authority.port_u16().is_none() {
        return Err(error(
            "has no port (OTLP/gRPC listens on 4317 by default: http://HOST:4317)",
        ));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(error("must not have a path: OTLP/gRPC has a fixed one"));
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

/// Parses a sampling ratio: a number from 0.0 (no new trace is sampled here) to 1.0 (all are).
pub fn parse_sampling(text: &str) -> Result<f64, TraceError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .ok_or_else(|| TraceError::Sampling(text.to_owned()))
}

/// Checks a `service.name`: any non-empty text.
pub fn parse_service_name(text: &str) -> Result<String, TraceError> {
    let name = text.trim();
    if name.is_empty() {
        return Err(TraceError::ServiceName);
    }
    Ok(name.to_owned())
}

/// How the proxy traces: where spans go, what share of new traces is sampled, and who is
/// tracing.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector, `http://HOST:PORT` (see [`parse_endpoint`]).
    pub endpoint: String,
    /// The share of traces started here that are sampled, 0.0 to 1.0. A request that arrives
    /// with a `traceparent` keeps its caller's decision.
    pub sampling: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The `service.instance.id` resource attribute: the proxy's node id.
    pub instance_id: String,
}

/// The export pipeline: the SDK's tracer provider with a batch span processor in front of the
/// OTLP exporter. Built once per process; [`Tracing::shutdown`] flushes it.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

impl Tracing {
    /// Builds the pipeline. Call it within the Tokio runtime: the gRPC channel's tasks run on
    /// it. The collector is connected to lazily, so a collector that is down delays nothing.
    pub fn start(config: &TracingConfig) -> Result<Self, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        // Parent-based: a caller's sampled flag decides; the ratio only applies to new traces.
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sampling)));
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes([
                KeyValue::new("service.instance.id", config.instance_id.clone()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        // The batch processor's queue, batch size and delay follow the standard
        // `OTEL_BSP_*` environment variables.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let scope = InstrumentationScope::builder("tollgate-edge-proxy")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = Tracer(provider.tracer_with_scope(scope));
        Ok(Self { provider, tracer })
    }

    /// The tracer requests start their spans with.
    pub fn tracer(&self) -> Tracer {
        self.tracer.clone()
    }

    /// Exports the spans still queued (waiting at most a few seconds) and stops the pipeline;
    /// spans started afterwards are not recorded.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The SDK's shutdown blocks until its export thread is done, and that export needs the
        // runtime to drive the gRPC connection: block elsewhere.
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match done {
            Ok(Ok(())) => tracing::info!("trace exporter flushed"),
            Ok(Err(error)) => tracing::warn!(%error, "trace exporter did not flush"),
            Err(error) => tracing::warn!(%error, "trace exporter shutdown failed"),
        }
    }
}

/// Starts the spans of requests; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracer(SdkTracer);

impl Tracer {
    /// Starts the SERVER span of a request that just arrived from `peer`: the child of its
    /// valid `traceparent`, or the root of a new trace.
    pub fn start_server<B>(&self, request: &Request<B>, peer: SocketAddr, tls: bool) -> ServerSpan {
        let headers = request.headers();
        let parent = incoming_parent(headers);
        let method = known_method(request.method());
        let mut attributes = Vec::with_capacity(10);
        attributes.push(KeyValue::new(
            "http.request.method",
            method.unwrap_or("_OTHER"),
        ));
        if method.is_none() {
            attributes.push(KeyValue::new(
                "http.request.method_original",
                request.method().as_str().to_owned(),
            ));
        }
        attributes.push(KeyValue::new("url.path", request.uri().path().to_owned()));
        attributes.push(KeyValue::new(
            "url.scheme",
            if tls { "https" } else { "http" },
        ));
        if let Some((host, port)) = server_address(request) {
            attributes.push(KeyValue::new("server.address", host));
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        attributes.push(KeyValue::new(
            "network.peer.address",
            peer.ip().to_canonical().to_string(),
        ));
        attributes.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
        attributes.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(request.version()),
        ));
        let name = method.unwrap_or("HTTP");
        let continued = parent.is_some();
        let parent_cx = match parent {
            Some(parent) => Context::new().with_remote_span_context(parent),
            None => Context::new(),
        };
        let span = self
            .0
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.0, &parent_cx);
        ServerSpan {
            cx: Context::new().with_span(span),
            tracer: self.0.clone(),
            name,
            continued,
            attempts: 0,
            responded: false,
        }
    }
}

/// The SERVER span of one request; ends when dropped (after the response body has gone).
#[derive(Debug)]
pub struct ServerSpan {
    /// Holds the span, and is the parent of the attempts' spans.
    cx: Context,
    tracer: SdkTracer,
    /// The method part of span names: the method, or `HTTP` for one outside RFC 9110.
    name: &'static str,
    /// Whether the request continued its caller's trace; when not, the caller's `tracestate`
    /// belongs to no trace and is not forwarded.
    continued: bool,
    /// Upstream attempts started so far.
    attempts: u32,
    responded: bool,
}

impl ServerSpan {
    /// The span's context: its trace and span id, and whether it is sampled.
    pub fn span_context(&self) -> SpanContext {
        self.cx.span().span_context().clone()
    }

    /// Starts the CLIENT span of the next attempt to send the request to `endpoint` of
    /// `cluster`, and names it in the attempt's `traceparent`.
    pub fn start_attempt(
        &mut self,
        headers: &mut HeaderMap,
        cluster: &str,
        endpoint: SocketAddr,
    ) -> AttemptSpan {
        self.attempts += 1;
        let mut attributes = Vec::with_capacity(7);
        attributes.push(KeyValue::new(
            "http.request.method",
            self.method_attribute(),
        ));
        attributes.push(KeyValue::new(
            "server.address",
            endpoint.ip().to_canonical().to_string(),
        ));
        attributes.push(KeyValue::new("server.port", i64::from(endpoint.port())));
        attributes.push(KeyValue::new(
            "network.peer.address",
            endpoint.ip().to_canonical().to_string(),
        ));
        attributes.push(KeyValue::new(
            "network.peer.port",
            i64::from(endpoint.port()),
        ));
        attributes.push(KeyValue::new("tollgate.cluster", cluster.to_owned()));
        if self.attempts > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(self.attempts - 1),
            ));
        }
        let span = self
            .tracer
            .span_builder(self.name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        headers.insert(TRACEPARENT, traceparent(span.span_context()));
        if !self.continued {
            headers.remove(TRACESTATE);
        }
        AttemptSpan { span: Some(span) }
    }

    /// Records how the request was answered, as its response headers leave: the route that
    /// took it (which names the span), the cluster, and the status (5xx is an error).
    pub fn respond(&mut self, route: Option<&str>, cluster: Option<&str>, status: StatusCode) {
        self.responded = true;
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        if let Some(route) = route {
            span.update_name(format!("{} {route}", self.name));
            span.set_attribute(KeyValue::new("tollgate.route", route.to_owned()));
        }
        if let Some(cluster) = cluster {
            span.set_attribute(KeyValue::new("tollgate.cluster", cluster.to_owned()));
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        // On a server span only 5xx is an error: a 4xx is the client's.
        if status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
            span.set_status(Status::error(""));
        }
    }

    /// `http.request.method`: the method, or `_OTHER`.
    fn method_attribute(&self) -> &'static str {
        if self.name == "HTTP" {
            "_OTHER"
        } else {
            self.name
        }
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        let span = self.cx.span();
        if !self.responded {
            // The request future was dropped before an answer: the client went away.
            span.set_attribute(KeyValue::new("error.type", "cancelled"));
            span.set_status(Status::error("the client went away before the response"));
        }
        span.end();
    }
}

/// The CLIENT span of one upstream attempt.
#[derive(Debug)]
pub struct AttemptSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl AttemptSpan {
    /// Ends the span with the attempt's outcome: the upstream's status (4xx and 5xx are
    /// errors, as for any HTTP client span), or why no response came (`connect_failure`, …).
    pub fn end(mut self, outcome: Result<StatusCode, &'static str>) {
        let Some(mut span) = self.span.take() else {
            return;
        };
        if span.is_recording() {
            match outcome {
                Ok(status) => {
                    span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status.as_u16()),
                    ));
                    if status.is_client_error() || status.is_server_error() {
                        span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
                        span.set_status(Status::error(""));
                    }
                }
                Err(kind) => {
                    span.set_attribute(KeyValue::new("error.type", kind));
                    span.set_status(Status::error(kind));
                }
            }
        }
        span.end();
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            // Not ended with an outcome: the route's timeout expired or the client went away
            // while the attempt was in flight.
            span.set_attribute(KeyValue::new("error.type", "cancelled"));
            span.set_status(Status::error("the attempt was abandoned"));
            span.end();
        }
    }
}

/// The caller's span from a request's `traceparent` (with its `tracestate`), when the request
/// has exactly one `traceparent` and it is valid.
fn incoming_parent(headers: &HeaderMap) -> Option<SpanContext> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let (trace_id, span_id, flags) = parse_traceparent(value.as_bytes())?;
    // Several `tracestate` fields are one list (RFC 9110 field combination). One that does not
    // parse is left out of the span, but still forwarded as it came.
    let state = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let state = TraceState::from_str(&state).unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// Parses a W3C `traceparent`: `VERSION-TRACEID-PARENTID-FLAGS` in lowercase hex. Version `ff`
/// is invalid, version `00` is exactly 55 characters, a later version may append fields after a
/// `-` (read as version `00`, per the spec's forward compatibility). Ids of all zeros are
/// invalid. Only the `sampled` flag is kept: the others are not defined by version `00`.
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_u8(&value[0..2])?;
    match version {
        0xff => return None,
        0x00 if value.len() != 55 => return None,
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_bytes(hex_bytes(&value[3..35])?);
    let span_id = SpanId::from_bytes(hex_bytes(&value[36..52])?);
    let flags = hex_u8(&value[53..55])?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some((
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
    ))
}

/// The `traceparent` (version `00`) naming `span`.
fn traceparent(span: &SpanContext) -> HeaderValue {
    let value = format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    );
    // Hex digits and dashes only.
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn hex_bytes<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = hex_u8(pair)?;
    }
    Some(out)
}

/// Two lowercase hex digits; uppercase is invalid in Trace Context.
fn hex_u8(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    match pair {
        [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
        _ => None,
    }
}

/// The method's name if RFC 9110 (or RFC 5789, `PATCH`) defines it; others stay out of span
/// names, which must not take arbitrary values.
fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return None,
    })
}

/// The host and port the client addressed: `:authority` or `Host`.
fn server_address<B>(request: &Request<B>) -> Option<(String, Option<u16>)> {
    if let Some(authority) = request.uri().authority() {
        return Some((authority.host().to_owned(), authority.port_u16()));
    }
    let host = request.headers().get(http::header::HOST)?.to_str().ok()?;
    let authority: http::uri::Authority = host.parse().ok()?;
    Some((authority.host().to_owned(), authority.port_u16()))
}

/// `network.protocol.version`.
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests;
