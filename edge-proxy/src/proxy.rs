//! The request path, from a parsed request to its response: route match on the current
//! snapshot → the listener's HTTP filters (`filters`: CORS, JWT, API keys, RBAC) → the route's action
//! (forward, redirect, direct response) → upstream attempts with
//! retries and timeouts → response header mutations → the access log line, written when the
//! response body ends ([`crate::access_log`]).
//!
//! Listeners ([`crate::listeners`]) call [`handle`] for every request. The snapshot is read
//! once per request, so a config change never splits one request across two configs.

pub mod body;
mod filters;
pub mod headers;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures::FutureExt;
use futures::future;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Body;
use tokio::time::Instant;

use crate::access_log::{AccessLogger, LoggedBody, LoggedPath, RequestLog};
use crate::config::filters::transform::BodyTransform;
use crate::config::format::FormatContext;
use crate::config::listener::HttpSettings;
use crate::config::route::{
    Forward, Matched, RequestHead, RetryOn, RetryPolicy, RouteAction, RouteTable,
};
use crate::filter::{Metadata, transform};
use crate::metrics::{self, Metrics};
use crate::snapshot::Snapshot;
use crate::trace::{ServerSpan, Tracer};
use crate::upstream::{Endpoint, Outcome, SendError, UpstreamCluster, UpstreamResponse, Upstreams};
use body::{ClientBody, DownstreamBody, TimedBody, UpstreamBody, full};

/// The config the data path runs on: a snapshot and the upstreams built from it.
#[derive(Debug)]
pub struct DataPlane {
    /// The validated config.
    pub snapshot: Arc<Snapshot>,
    /// Its clusters, with pools and health.
    pub upstreams: Arc<Upstreams>,
    /// The quota engines (process-wide: they outlive snapshots).
    pub quotas: crate::filter::rate_limit::Quotas,
}

/// The current [`DataPlane`], swapped whole on every new snapshot; `None` before the first.
pub type SharedDataPlane = Arc<ArcSwapOption<DataPlane>>;

/// What a request needs to know about the connection it came on.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as `x-forwarded-for` gets it, written once per connection.
    pub peer_address: HeaderValue,
    /// Whether the connection is TLS (the scheme is then `https`).
    pub tls: bool,
    /// The connection manager's settings, from the listener's filter chain.
    pub http: Arc<HttpSettings>,
    /// The `server` header every response gets (`server_name`, else `tollgate`).
    pub server: HeaderValue,
    /// Where requests are counted.
    pub metrics: Arc<Metrics>,
    /// Where requests are logged, when the connection manager has an access log.
    pub access_log: Option<Arc<AccessLogger>>,
    /// Starts each request's spans; `None` when tracing is off.
    pub tracer: Option<Tracer>,
}

impl Downstream {
    /// The connection's settings, with the `server` header computed once.
    pub fn new(
        peer: SocketAddr,
        tls: bool,
        http: Arc<HttpSettings>,
        metrics: Arc<Metrics>,
        tracer: Option<Tracer>,
    ) -> Self {
        let server = http
            .server_name
            .as_deref()
            .and_then(|name| HeaderValue::try_from(name).ok())
            .unwrap_or(HeaderValue::from_static("tollgate"));
        let access_log = http.access_log.as_ref().map(AccessLogger::new);
        Self {
            peer,
            peer_address: headers::address_value(peer.ip()),
            tls,
            http,
            server,
            metrics,
            access_log,
            tracer,
        }
    }
}

/// Request bodies up to this size are buffered when the route retries, so that a retry can send
/// them again; larger or unknown-length bodies are streamed and not retried.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// Envoy's default base interval between retries; each retry waits a random time up to
/// `base × 2^(n-1)`, at most ten times the base.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// How Envoy's answers start when no upstream response arrived.
const NO_RESPONSE_BODY: &str = "upstream connect error or disconnect/reset before headers.";

/// Serves one request on the current config.
pub async fn handle(
    plane: &SharedDataPlane,
    downstream: &Downstream,
    request: Request<ClientBody>,
) -> Response<LoggedBody> {
    let started = Instant::now();
    // The one check tracing costs when it is off.
    let mut span = downstream
        .tracer
        .as_ref()
        .map(|tracer| tracer.start_server(&request, downstream.peer, downstream.tls));
    let Some(plane) = plane.load_full() else {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        if let Some(span) = &mut span {
            span.respond(None, None, status);
        }
        return local_reply(status, "no configuration yet")
            .map(|body| LoggedBody::plain(body).traced(span));
    };
    let http = &downstream.http;
    let mut served = Served {
        route: None,
        cluster: None,
        upstream: None,
        // Only with an access log: no allocation per request otherwise.
        log: downstream.access_log.as_ref().map(|logger| {
            RequestLog::new(logger, started, request.method().clone(), request.version())
        }),
        span,
    };
    let mut response = match plane.snapshot.route_tables.get(&http.route_config_name) {
        Some(table) => match headers::authority(&request) {
            Some(authority) => {
                let response = route(
                    &plane,
                    table,
                    downstream,
                    request,
                    authority.as_str(),
                    started,
                    &mut served,
                )
                .await;
                if let Some(log) = &mut served.log {
                    log.authority = Some(authority);
                }
                response
            }
            None => local_reply(StatusCode::BAD_REQUEST, "missing host header"),
        },
        None => local_reply(StatusCode::NOT_FOUND, ""),
    };
    // Envoy's default `server_header_transformation`: overwrite.
    response
        .headers_mut()
        .insert(header::SERVER, downstream.server.clone());
    let status = response.status().as_u16();
    downstream.metrics.record_request(
        served.route.unwrap_or(metrics::NONE),
        served.cluster.unwrap_or(metrics::NONE),
        status,
        started.elapsed(),
    );
    if let Some(span) = &mut served.span {
        span.respond(served.route, served.cluster, response.status());
    }
    // The access log line is written, and the span ends, when the response body ends (see
    // `access_log`).
    let response = match served.log {
        None => response.map(LoggedBody::plain),
        Some(mut log) => {
            log.upstream = served.upstream;
            response.map(|body| LoggedBody::logged(body, log, status))
        }
    };
    response.map(|body| body.traced(served.span))
}

/// What served a request, for its metrics, access log and span: names from the config, `None` where
/// no route or no cluster took part.
#[derive(Debug)]
struct Served<'p> {
    route: Option<&'p str>,
    cluster: Option<&'p str>,
    /// The endpoint of the last upstream attempt.
    upstream: Option<SocketAddr>,
    /// The access log record, when the listener logs requests.
    log: Option<Box<RequestLog>>,
    /// The request's SERVER span, when tracing is on.
    span: Option<ServerSpan>,
}

/// Routes a request for `authority` (its `Host` or `:authority`) through `table` and runs the
/// matched route's action.
async fn route<'p>(
    plane: &'p DataPlane,
    table: &'p RouteTable,
    downstream: &Downstream,
    mut request: Request<ClientBody>,
    authority: &str,
    started: Instant,
    served: &mut Served<'p>,
) -> Response<DownstreamBody> {
    let http = &downstream.http;
    // A cheap clone (shared bytes), so the request's headers can change while it is borrowed.
    let Some(original_path) = request.uri().path_and_query().cloned() else {
        return local_reply(StatusCode::BAD_REQUEST, "missing path");
    };
    let Some(path_and_query) = headers::normalize_path(original_path.as_str(), http) else {
        return local_reply(StatusCode::BAD_REQUEST, "invalid path");
    };
    if let Some(log) = &mut served.log {
        log.path_and_query = Some(match &path_and_query {
            // Normalisation changed nothing: the request's own, shared.
            Cow::Borrowed(path) if path.len() == original_path.as_str().len() => {
                LoggedPath::Request(original_path.clone())
            }
            path => LoggedPath::Changed(path.clone().into_owned()),
        });
    }
    let scheme = if downstream.tls { "https" } else { "http" };
    let method = request.method().clone();

    // Envoy's connection manager edits the request headers before routing: routes may match
    // on x-forwarded-proto or x-request-id.
    let request_id = headers::prepare_request(request.headers_mut(), downstream, scheme);
    if let Some(log) = &mut served.log {
        log.request_id.clone_from(&request_id);
    }

    // Only WebSocket upgrades are proxied, and only where the listener allows them; Envoy
    // answers other upgrade requests with 403.
    if headers::requests_upgrade(request.headers())
        && !headers::websocket_upgrade(request.headers(), http.websocket)
    {
        return with_request_id(local_reply(StatusCode::FORBIDDEN, ""), &request_id, http);
    }
    let head = RequestHead {
        method: method.as_str(),
        scheme,
        authority,
        path_and_query: &path_and_query,
        headers: request.headers(),
    };
    let Some(matched) = table.find(&head) else {
        return with_request_id(local_reply(StatusCode::NOT_FOUND, ""), &request_id, http);
    };
    served.route = Some(&matched.route.name);
    if let Some(log) = &mut served.log {
        log.route = Some(Arc::clone(&matched.route.name));
    }
    // The client's address as Envoy determines it (`x-forwarded-for` with trusted hops), for
    // RBAC and for header templates.
    let addresses = headers::Addresses::new(downstream.peer.ip().to_canonical(), http);
    let client = if matched.reads_client_address() {
        addresses.client(request.headers())
    } else {
        addresses.peer
    };
    // What authentication finds out (JWT payloads, the API key's consumer): Envoy's dynamic
    // metadata, which RBAC and the route's header templates read.
    let mut metadata = Metadata::default();
    // The listener's HTTP filters (CORS, JWT…) run before the route's action, as Envoy's
    // decoder filters run before the router; they may change the head, or answer.
    let mut path_and_query = path_and_query;
    let mut work = filters::ResponseWork::default();
    // A filter's own answer, and whether it is a local reply.
    let mut answered = None;
    if filters::has_request_filters(&http.http_filters) {
        let mut req = crate::filter::Request {
            method: &method,
            scheme,
            authority,
            path_and_query: &mut path_and_query,
            headers: request.headers_mut(),
            addresses,
        };
        let outcome = filters::on_request(
            plane,
            &http.http_filters,
            &matched,
            &mut req,
            &mut work,
            &mut metadata,
        );
        let outcome = outcome.await;
        // The path as filters left it (without the API key or token they removed) is the one
        // logged, as Envoy logs `:path` after its filters; so is what they found out.
        if let Some(log) = &mut served.log {
            if log.path_and_query.as_ref().map(LoggedPath::as_str) != Some(&*path_and_query) {
                log.path_and_query = Some(LoggedPath::Changed(path_and_query.clone().into_owned()));
            }
            log.consumer = metadata.consumer.map(|c| c.name.clone());
            log.quota = metadata.quota;
        }
        if let filters::Outcome::Respond {
            response,
            local_reply,
        } = outcome
        {
            if let Some(rejection) = response.extensions().get::<crate::filter::Rejection>() {
                downstream.metrics.record_rejection(
                    &matched.route.name,
                    rejection.filter,
                    rejection.reason,
                );
            }
            answered = Some((response, local_reply));
        }
    }
    // What the route's header templates read besides the headers.
    let format = FormatContext {
        authority,
        method: method.as_str(),
        scheme,
        client,
        metadata: &metadata,
    };
    if let Some((mut response, local_reply)) = answered {
        // Envoy resolves a forwarding route's cluster (picking a weighted one) as it routes,
        // so its access log names it for a filter's answer too; metrics count no cluster.
        if let (Some(log), RouteAction::Forward(forward)) = (&mut served.log, &matched.route.action)
        {
            log.cluster = Some(Arc::clone(forward.pick_cluster(rand::random())));
        }
        // Envoy 1.40 gives a filter's local reply the route's response headers on forwarding
        // routes (checked against it), not on redirect or direct-response ones.
        if local_reply && matches!(matched.route.action, RouteAction::Forward(_)) {
            matched.apply_response_headers(response.headers_mut(), request.headers(), &format);
        }
        filters::on_response(&mut work, response.headers_mut());
        return with_request_id(response, &request_id, http);
    }
    let head = RequestHead {
        method: method.as_str(),
        scheme,
        authority,
        path_and_query: &path_and_query,
        headers: request.headers(),
    };
    // Response templates that read the request (`%REQ()%`) need it as it was sent upstream;
    // it is kept only for them.
    let keep_request = matched.response_reads_request();
    let mut sent: Option<SentRequest> = None;
    let mut response = match &matched.route.action {
        RouteAction::Direct(direct) => {
            let mut response = local_reply(direct.status, direct.body.clone());
            if let Some(location) = direct.location(&head)
                && let Ok(value) = HeaderValue::try_from(location)
            {
                response.headers_mut().insert(header::LOCATION, value);
            }
            if keep_request {
                sent = Some(SentRequest::new(request, authority));
            }
            response
        }
        RouteAction::Redirect(redirect) => {
            let mut response = local_reply(redirect.status, "");
            if let Ok(value) = HeaderValue::try_from(redirect.location(&head)) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            if keep_request {
                sent = Some(SentRequest::new(request, authority));
            }
            response
        }
        RouteAction::Forward(forward) => {
            let target = Target {
                authority,
                path_and_query: &path_and_query,
                shared_path: matches!(
                    &path_and_query,
                    Cow::Borrowed(path) if path.len() == original_path.as_str().len()
                )
                .then(|| original_path.clone()),
                retry_allowed: forward
                    .retry_policy
                    .as_ref()
                    .is_none_or(|p| p.retry_allowed(&head)),
                format,
                keep: keep_request.then_some(&mut sent),
                body_transforms: work
                    .transform
                    .map(|t| &t.request[..])
                    .filter(|t| !t.is_empty()),
            };
            forward_request(
                plane, &matched, forward, downstream, request, target, started, served,
            )
            .await
        }
    };
    // The transform filter's response side: first on the way back, as it is the last filter.
    if let Some(transforms) = work
        .transform
        .map(|t| &t.response[..])
        .filter(|t| !t.is_empty())
    {
        response = match transform::response(transforms, method == Method::HEAD, response).await {
            Ok(response) => response,
            Err(transform::ResponseFailure::Body(error)) => {
                tracing::debug!(%error, "response body failed before it could be transformed");
                UpstreamError::Reset.response(false)
            }
        };
    }
    match &sent {
        Some(sent) => matched.apply_response_headers(
            response.headers_mut(),
            &sent.headers,
            &FormatContext {
                authority: &sent.authority,
                ..format
            },
        ),
        None => matched.apply_response_headers(response.headers_mut(), &HeaderMap::new(), &format),
    }
    filters::on_response(&mut work, response.headers_mut());
    with_request_id(response, &request_id, http)
}

/// Where the client asked to go, after path normalization.
#[derive(Debug)]
struct Target<'a> {
    authority: &'a str,
    path_and_query: &'a str,
    /// The request's own path and query, shared, when `path_and_query` is it unchanged.
    shared_path: Option<PathAndQuery>,
    /// Whether the route's `retriable_request_headers` let this request be retried.
    retry_allowed: bool,
    /// What the route's header templates read besides the headers.
    format: FormatContext<'a>,
    /// Where to keep the request as sent upstream, when response templates read it.
    keep: Option<&'a mut Option<SentRequest>>,
    /// The request body transforms, when the transform filter ran and the route has some.
    body_transforms: Option<&'a [BodyTransform]>,
}

/// The request body on its way upstream.
enum Outgoing {
    /// As the client sends it, not read yet.
    Client(ClientBody),
    /// Read in part by the transform filter and passed on unchanged.
    Timed(TimedBody),
    /// Read whole (and transformed) by the transform filter.
    Buffered(Bytes),
}

/// The request as it went upstream (or as it was when answered without forwarding), for
/// response header templates that read it: Envoy's request header map, which the router's
/// mutations and host rewrite changed in place.
#[derive(Debug)]
struct SentRequest {
    headers: HeaderMap,
    /// `:authority` after any host rewrite.
    authority: String,
}

impl SentRequest {
    fn new<B>(request: Request<B>, authority: &str) -> Self {
        Self {
            headers: request.into_parts().0.headers,
            authority: authority.to_owned(),
        }
    }
}

/// Why an attempt produced no usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamError {
    /// No endpoint could be connected to.
    ConnectFailure,
    /// The connection broke before the response headers.
    Reset,
    /// The HTTP/2 upstream refused the stream (`REFUSED_STREAM`): it never processed it.
    RefusedStream,
    /// The attempt's own timeout (`per_try_timeout`) expired.
    PerTryTimeout,
    /// A circuit breaker is open.
    Overflow,
    /// The cluster has no endpoint that may take traffic.
    NoHealthyUpstream,
}

impl UpstreamError {
    /// A short name for the attempt's span (`error.type`).
    fn name(self) -> &'static str {
        match self {
            UpstreamError::ConnectFailure => "connect_failure",
            UpstreamError::Reset => "reset",
            UpstreamError::RefusedStream => "refused_stream",
            UpstreamError::PerTryTimeout => "per_try_timeout",
            UpstreamError::Overflow => "overflow",
            UpstreamError::NoHealthyUpstream => "no_healthy_upstream",
        }
    }

    /// The answer after the last attempt; `retried` says whether there were several, which
    /// Envoy's text mentions.
    fn response(self, retried: bool) -> Response<DownstreamBody> {
        let reset = |reason: &str| {
            let body = if retried {
                format!("{NO_RESPONSE_BODY} retried and the latest reset reason: {reason}")
            } else {
                format!("{NO_RESPONSE_BODY} reset reason: {reason}")
            };
            local_reply(StatusCode::SERVICE_UNAVAILABLE, body)
        };
        match self {
            UpstreamError::ConnectFailure => reset("remote connection failure"),
            UpstreamError::Reset => reset("connection termination"),
            UpstreamError::RefusedStream => reset("remote refused stream reset"),
            UpstreamError::PerTryTimeout => {
                local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            }
            UpstreamError::Overflow => {
                let mut response = reset("overflow");
                response
                    .headers_mut()
                    .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
                response
            }
            UpstreamError::NoHealthyUpstream => {
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
            }
        }
    }

    fn retriable(self, policy: &RetryPolicy) -> bool {
        let any = |conditions: &[RetryOn]| conditions.iter().any(|c| policy.retries_on(*c));
        match self {
            UpstreamError::ConnectFailure => any(&[
                RetryOn::FiveXx,
                RetryOn::GatewayError,
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::ResetBeforeRequest,
            ]),
            UpstreamError::Reset => any(&[RetryOn::FiveXx, RetryOn::GatewayError, RetryOn::Reset]),
            UpstreamError::RefusedStream => any(&[
                RetryOn::FiveXx,
                RetryOn::GatewayError,
                RetryOn::Reset,
                RetryOn::RefusedStream,
            ]),
            UpstreamError::PerTryTimeout => {
                any(&[RetryOn::FiveXx, RetryOn::GatewayError, RetryOn::Reset])
            }
            UpstreamError::Overflow | UpstreamError::NoHealthyUpstream => false,
        }
    }
}

/// Whether a response status asks for a retry under `policy`.
fn retriable_status(status: StatusCode, policy: &RetryPolicy) -> bool {
    let code = status.as_u16();
    (status.is_server_error() && policy.retries_on(RetryOn::FiveXx))
        || (matches!(code, 502..=504) && policy.retries_on(RetryOn::GatewayError))
        || (code == 409 && policy.retries_on(RetryOn::Retriable4xx))
}

/// Forwards a request to the route's cluster, with retries and timeouts.
#[allow(clippy::too_many_arguments)]
async fn forward_request<'p>(
    plane: &DataPlane,
    matched: &Matched<'_>,
    forward: &'p Forward,
    downstream: &Downstream,
    mut request: Request<ClientBody>,
    target: Target<'_>,
    started: Instant,
    served: &mut Served<'p>,
) -> Response<DownstreamBody> {
    let cluster_name = forward.pick_cluster(rand::random());
    served.cluster = Some(cluster_name);
    if let Some(log) = &mut served.log {
        log.cluster = Some(Arc::clone(cluster_name));
    }
    let cluster_name: &str = cluster_name;
    let metrics = &downstream.metrics;
    let Target {
        authority: target_authority,
        path_and_query: target_path,
        shared_path,
        retry_allowed,
        format,
        keep,
        body_transforms,
    } = target;
    let Some(cluster) = plane.upstreams.get(cluster_name) else {
        if let Some(keep) = keep {
            *keep = Some(SentRequest::new(request, target_authority));
        }
        // Envoy's `cluster_not_found_response_code` default.
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "");
    };
    let Some(_request_slot) = cluster.try_start_request() else {
        if let Some(keep) = keep {
            *keep = Some(SentRequest::new(request, target_authority));
        }
        return UpstreamError::Overflow.response(false);
    };
    let http = &downstream.http;
    let upgrade = headers::websocket_upgrade(request.headers(), http.websocket);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, incoming) = request.into_parts();
    let stream_deadline = stream_deadline(http, started);
    // Only a request with a body has request bytes to count.
    let bytes_in = match &mut served.log {
        Some(log) if !incoming.is_end_stream() => Some(log.bytes_in_counter()),
        _ => None,
    };

    // The transform filter, last before the router: the body is read and changed before the
    // route's header mutations, which Envoy's router applies.
    let body = match body_transforms.filter(|_| !upgrade) {
        None => Outgoing::Client(incoming),
        Some(transforms) => {
            let timed = TimedBody::new(incoming, http.timeouts.stream_idle, stream_deadline)
                .counting(bytes_in.clone());
            match transform::request(transforms, &mut parts.headers, timed).await {
                Ok(transform::RequestBody::Buffered(bytes)) => Outgoing::Buffered(bytes),
                Ok(transform::RequestBody::Streamed(timed)) => Outgoing::Timed(timed),
                Err(response) => {
                    if let Some(keep) = keep {
                        *keep = Some(SentRequest {
                            headers: parts.headers,
                            authority: target_authority.to_owned(),
                        });
                    }
                    return response;
                }
            }
        }
    };

    // Envoy applies the header mutations first, then the rewrites.
    let mutated = matched.apply_request_headers(&mut parts.headers, &format);
    // Where the request goes: the host rewrite, else where the client addressed it.
    let rewritten_host = forward
        .host_rewrite
        .as_ref()
        .and_then(|host| Some((host, host.to_str().ok()?)));
    let authority = rewritten_host.map_or(target_authority, |(_, host)| host);
    if let Err(invalid) = mutated {
        if let Some(keep) = keep {
            *keep = Some(SentRequest {
                headers: parts.headers,
                authority: authority.to_owned(),
            });
        }
        // As Envoy 1.40's router answers a formatted value it cannot send.
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, invalid.to_string());
    }
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(keep) = keep {
        *keep = Some(SentRequest {
            headers: parts.headers.clone(),
            authority: authority.to_owned(),
        });
    }
    // The client's path is sent as it came, shared, unless the route rewrites it.
    let path = match (forward.rewrite_path(target_path), shared_path) {
        (Some(rewritten), _) => PathAndQuery::try_from(rewritten),
        (None, Some(shared)) => Ok(shared),
        (None, None) => PathAndQuery::try_from(target_path),
    };
    let uri = path.ok().and_then(|path| {
        // The pooled HTTP/1 client sends the path alone, with the `Host` header set below.
        if cluster.takes_origin_form() && headers::is_plain_authority(authority) {
            return Some(Uri::from(path));
        }
        let scheme = if cluster.config.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
            .ok()
    });
    let Some(uri) = uri else {
        return local_reply(StatusCode::BAD_REQUEST, "invalid host or path");
    };
    let http2_upstream = cluster.config.protocol == crate::config::cluster::UpstreamProtocol::Http2;
    if http2_upstream {
        // `:authority` comes from the URI.
        parts.headers.remove(header::HOST);
    } else {
        // The client's own value, shared, when it is the authority; else a copy.
        let host = match rewritten_host {
            Some((host, _)) => Some(host.clone()),
            None => parts
                .headers
                .get(header::HOST)
                .filter(|host| host.as_bytes() == authority.as_bytes())
                .cloned(),
        };
        if let Some(host) = host.or_else(|| HeaderValue::try_from(authority).ok()) {
            parts.headers.insert(header::HOST, host);
        }
    }

    let deadline = forward.timeout.map(|t| started + t);
    // `retriable_request_headers` (the control plane's idempotent-methods rule) decides
    // whether this request may be retried at all, as in Envoy.
    let retrying = forward
        .retry_policy
        .as_ref()
        .filter(|p| p.num_retries > 0 && retry_allowed)
        .filter(|_| !upgrade);
    let per_try_timeout = forward
        .retry_policy
        .as_ref()
        .and_then(|p| p.per_try_timeout);
    let (policy, body) = match (retrying, body) {
        (Some(policy), Outgoing::Buffered(bytes)) => (policy, Ok(bytes)),
        (Some(policy), Outgoing::Client(incoming)) if retry_bufferable(&incoming) => {
            (policy, Err(incoming))
        }
        (_, body) => {
            // One attempt, the body streamed through (or sent as the transform left it).
            let body = match body {
                Outgoing::Client(incoming) => Either::Left(
                    TimedBody::new(incoming, http.timeouts.stream_idle, stream_deadline)
                        .counting(bytes_in.clone()),
                ),
                Outgoing::Timed(timed) => Either::Left(timed),
                Outgoing::Buffered(bytes) => Either::Right(Full::new(bytes)),
            };
            return finish_single_attempt(
                cluster,
                parts,
                uri,
                body,
                deadline,
                per_try_timeout,
                downstream_upgrade,
                http,
                stream_deadline,
                metrics,
                &mut served.upstream,
                served.span.as_mut(),
            )
            .await;
        }
    };
    let body = match body {
        Ok(bytes) => bytes,
        Err(incoming) => {
            let body = match Limited::new(incoming, RETRY_BUFFER_LIMIT as usize)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return local_reply(StatusCode::BAD_REQUEST, "request body failed"),
            };
            if let Some(log) = &mut served.log {
                log.bytes_in = body.len() as u64;
            }
            body
        }
    };
    let mut retry_slot = None;
    let mut attempt = 0u32;
    loop {
        let request = rebuild_request(&parts, &uri, upstream_version(cluster), body.clone());
        let result = with_deadline(
            deadline,
            attempt_once(
                cluster,
                request,
                policy.per_try_timeout,
                metrics,
                &mut served.upstream,
                served.span.as_mut(),
            ),
        )
        .await;
        let Some(result) = result else {
            return global_timeout();
        };
        let retry = match &result {
            Ok(sent) => retriable_status(sent.response.status(), policy),
            Err(failure) => failure.retriable(policy),
        };
        if retry && attempt < policy.num_retries {
            if retry_slot.is_none() {
                retry_slot = cluster.try_start_retry();
            }
            if retry_slot.is_some() {
                attempt += 1;
                let backoff = retry_backoff(attempt);
                if with_deadline(deadline, tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return global_timeout();
                }
                continue;
            }
        }
        return match result {
            Ok(response) => downstream_response(response, None, http, stream_deadline),
            Err(failure) => failure.response(attempt > 0),
        };
    }
}

/// Whether a request body is small enough, and of known size, to buffer for retries.
fn retry_bufferable(body: &ClientBody) -> bool {
    body.is_end_stream()
        || body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= RETRY_BUFFER_LIMIT)
}

/// The random wait before retry number `attempt` (from 1), Envoy's jittered back-off.
fn retry_backoff(attempt: u32) -> Duration {
    let ceiling = RETRY_BACKOFF_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(10))
        .min(RETRY_BACKOFF_BASE * 10);
    ceiling.mul_f64(rand::random_range(0.0..=1.0))
}

/// The end of a stream allowed by `max_stream_duration`.
fn stream_deadline(http: &HttpSettings, started: Instant) -> Option<Instant> {
    let max = http.timeouts.max_stream_duration;
    let request = http.timeouts.request;
    match (max, request) {
        (Some(a), Some(b)) => Some(started + a.min(b)),
        (a, b) => a.or(b).map(|d| started + d),
    }
}

/// Runs `future` until `deadline`; `None` when the deadline came first.
fn with_deadline<F: Future>(
    deadline: Option<Instant>,
    future: F,
) -> impl Future<Output = Option<F::Output>> {
    // Not an `async fn`: that would keep `future` twice in its state, once as the argument
    // and once inside the timeout, and every enclosing future would grow (and be copied) by it.
    match deadline {
        Some(deadline) => {
            future::Either::Left(tokio::time::timeout_at(deadline, future).map(Result::ok))
        }
        None => future::Either::Right(future.map(Some)),
    }
}

fn global_timeout() -> Response<DownstreamBody> {
    local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
}

/// A copy of the request for one attempt, with the buffered body.
fn rebuild_request(
    parts: &http::request::Parts,
    uri: &Uri,
    version: Version,
    body: Bytes,
) -> Request<UpstreamBody> {
    let mut request = Request::new(Either::Right(Full::new(body)));
    *request.version_mut() = version;
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = parts.headers.clone();
    request
}

/// The HTTP version spoken to the cluster, whatever the client spoke: the pooled client picks
/// its connection by it.
fn upstream_version(cluster: &UpstreamCluster) -> Version {
    match cluster.config.protocol {
        crate::config::cluster::UpstreamProtocol::Http2 => Version::HTTP_2,
        crate::config::cluster::UpstreamProtocol::Http1 => Version::HTTP_11,
    }
}

/// One attempt on one endpoint picked by the cluster's balancer; with tracing, in a CLIENT span
/// of its own that the request's `traceparent` names.
async fn attempt_once(
    cluster: &Arc<UpstreamCluster>,
    mut request: Request<UpstreamBody>,
    per_try_timeout: Option<Duration>,
    metrics: &Metrics,
    upstream: &mut Option<SocketAddr>,
    trace: Option<&mut ServerSpan>,
) -> Result<UpstreamResponse, UpstreamError> {
    let Some((endpoint, _active)) = cluster.pick(None) else {
        return Err(UpstreamError::NoHealthyUpstream);
    };
    *upstream = Some(endpoint.address);
    let span = trace
        .map(|trace| trace.start_attempt(request.headers_mut(), cluster.name(), endpoint.address));
    let sent_at = Instant::now();
    let sent = endpoint.client().send(request);
    let result = with_deadline(per_try_timeout.map(|t| sent_at + t), sent).await;
    metrics.record_upstream(cluster.name(), sent_at.elapsed());
    let result = match result {
        Some(result) => classify(cluster, &endpoint, result),
        None => {
            cluster.record(&endpoint, Outcome::Failure);
            Err(UpstreamError::PerTryTimeout)
        }
    };
    if let Some(span) = span {
        span.end(
            result
                .as_ref()
                .map(|sent| sent.response.status())
                .map_err(|e| e.name()),
        );
    }
    result
}

/// Turns the pooled client's result into a response or a [`UpstreamError`], and feeds the outlier
/// detector.
fn classify(
    cluster: &UpstreamCluster,
    endpoint: &Endpoint,
    result: Result<UpstreamResponse, SendError>,
) -> Result<UpstreamResponse, UpstreamError> {
    match result {
        Ok(sent) => {
            let outcome = if sent.response.status().is_server_error() {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            cluster.record(endpoint, outcome);
            Ok(sent)
        }
        Err(error) => {
            let failure = if error.is_overflow() {
                return Err(UpstreamError::Overflow);
            } else if error.is_connect() {
                UpstreamError::ConnectFailure
            } else if is_refused_stream(&error) {
                UpstreamError::RefusedStream
            } else {
                UpstreamError::Reset
            };
            tracing::debug!(
                cluster = %cluster.name(),
                endpoint = %endpoint.address,
                error = %error_chain(&error),
                "upstream attempt failed"
            );
            cluster.record(endpoint, Outcome::Failure);
            Err(failure)
        }
    }
}

/// Whether the HTTP/2 upstream reset the stream with `REFUSED_STREAM`.
fn is_refused_stream(error: &SendError) -> bool {
    error
        .find_cause::<h2::Error>()
        .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        out.push_str(": ");
        out.push_str(&current.to_string());
        source = current.source();
    }
    out
}

/// A streamed request: one attempt, no retries (the body cannot be sent twice).
#[allow(clippy::too_many_arguments)]
async fn finish_single_attempt(
    cluster: &Arc<UpstreamCluster>,
    parts: http::request::Parts,
    uri: Uri,
    body: UpstreamBody,
    deadline: Option<Instant>,
    per_try_timeout: Option<Duration>,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    http: &HttpSettings,
    stream_deadline: Option<Instant>,
    metrics: &Metrics,
    upstream: &mut Option<SocketAddr>,
    trace: Option<&mut ServerSpan>,
) -> Response<DownstreamBody> {
    let mut request = Request::from_parts(parts, body);
    *request.uri_mut() = uri;
    *request.version_mut() = upstream_version(cluster);
    let result = with_deadline(
        deadline,
        attempt_once(cluster, request, per_try_timeout, metrics, upstream, trace),
    )
    .await;
    match result {
        None => global_timeout(),
        Some(Err(failure)) => failure.response(false),
        Some(Ok(response)) => {
            downstream_response(response, downstream_upgrade, http, stream_deadline)
        }
    }
}

/// The upstream's response, ready for the client: hop-by-hop headers removed, the body bounded
/// by the stream timeouts, and a WebSocket upgrade spliced when the upstream switched.
fn downstream_response(
    sent: UpstreamResponse,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    http: &HttpSettings,
    stream_deadline: Option<Instant>,
) -> Response<DownstreamBody> {
    let UpstreamResponse {
        mut response,
        connection,
    } = sent;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    // An upgraded connection belongs to the splice from now on, never to the pool.
    let connection = connection.filter(|_| !switching);
    if let (true, Some(downstream_upgrade)) = (switching, downstream_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(splice_upgrade(downstream_upgrade, upstream_upgrade));
    }
    headers::strip_hop_by_hop(response.headers_mut(), switching);
    // The client gets the version of its own connection, not the upstream's (hyper's server
    // writes HTTP/1.1, or HTTP/1.0 for a 1.0 client, from the default).
    *response.version_mut() = Version::default();
    let (parts, incoming) = response.into_parts();
    let timed =
        TimedBody::new(incoming, http.timeouts.stream_idle, stream_deadline).releasing(connection);
    Response::from_parts(parts, Either::Left(timed))
}

/// Copies bytes both ways between an upgraded client and upstream until either side closes.
async fn splice_upgrade(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut downstream = hyper_util::rt::TokioIo::new(downstream);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended");
    }
}

/// A response the proxy makes itself.
pub fn local_reply(status: StatusCode, body: impl Into<Bytes>) -> Response<DownstreamBody> {
    let body: Bytes = body.into();
    let mut response = Response::new(full(body.clone()));
    *response.status_mut() = status;
    if !body.is_empty() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

fn with_request_id(
    mut response: Response<DownstreamBody>,
    request_id: &Option<HeaderValue>,
    http: &HttpSettings,
) -> Response<DownstreamBody> {
    if http.always_set_request_id_in_response
        && let Some(id) = request_id
    {
        response
            .headers_mut()
            .insert(headers::X_REQUEST_ID, id.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_ceiling() {
        for attempt in 1..20 {
            assert!(retry_backoff(attempt) <= RETRY_BACKOFF_BASE * 10);
        }
    }

    #[test]
    fn retry_conditions_follow_envoy() {
        let policy = |on: Vec<RetryOn>| RetryPolicy {
            retry_on: on,
            num_retries: 1,
            per_try_timeout: None,
            retriable_request_headers: Vec::new(),
        };
        let five_xx = policy(vec![RetryOn::FiveXx]);
        assert!(retriable_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            &five_xx
        ));
        assert!(!retriable_status(StatusCode::CONFLICT, &five_xx));
        let gateway = policy(vec![RetryOn::GatewayError]);
        assert!(!retriable_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            &gateway
        ));
        assert!(retriable_status(StatusCode::BAD_GATEWAY, &gateway));
        let connect = policy(vec![RetryOn::ConnectFailure]);
        assert!(UpstreamError::ConnectFailure.retriable(&connect));
        assert!(!UpstreamError::Reset.retriable(&connect));
        assert!(UpstreamError::Reset.retriable(&five_xx));
        assert!(UpstreamError::PerTryTimeout.retriable(&five_xx));
        assert!(!UpstreamError::PerTryTimeout.retriable(&connect));
        let refused = policy(vec![RetryOn::RefusedStream]);
        assert!(UpstreamError::RefusedStream.retriable(&refused));
        assert!(UpstreamError::RefusedStream.retriable(&five_xx));
        assert!(!UpstreamError::Reset.retriable(&refused));
        // Local refusals are final: another try would meet the same breaker or the same empty
        // cluster.
        assert!(!UpstreamError::Overflow.retriable(&five_xx));
        assert!(!UpstreamError::NoHealthyUpstream.retriable(&five_xx));
    }

    #[test]
    fn overflow_reply_is_marked_like_envoy() {
        let response = UpstreamError::Overflow.response(false);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["x-envoy-overloaded"], "true");
    }

    #[test]
    fn local_replies_have_a_content_type_only_with_a_body() {
        assert!(
            local_reply(StatusCode::NOT_FOUND, "")
                .headers()
                .get(header::CONTENT_TYPE)
                .is_none()
        );
        assert_eq!(
            local_reply(StatusCode::OK, "hi").headers()[header::CONTENT_TYPE],
            "text/plain"
        );
    }
}
