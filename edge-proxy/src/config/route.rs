//! The route table: an RDS `RouteConfiguration` turned into an immutable matcher.
//!
//! Routing happens right after the HTTP server has parsed a request head. The server reads the
//! current snapshot once and calls [`RouteTable::find`]. It gets back the virtual host and route
//! whose [`RouteAction`] (forward to a cluster, redirect, or answer directly) and header
//! mutations the rest of the pipeline applies. Filters and upstreams come after this step.
//!
//! Matching follows Envoy's router (`source/common/router/config_impl.cc`):
//! - one virtual host per request, by `:authority`: exact domain, then the longest `*suffix`,
//!   then the longest `prefix*`, then `*`;
//! - then the first of its routes whose path, header and query matchers all match.
//!
//! Regexes are compiled once, when the table is built. A field that would change behaviour and
//! is not implemented fails the build (see [`super`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use regex::{Regex, RegexBuilder};
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;

use super::filters::{FilterOverrides, PerFilterConfig, filter_overrides};
use super::format::{FormatContext, HeaderFormat, header_format};
use super::{
    ConfigError, Reason, Rejection, Resource, Within as _, duration, no_control_chars, reject_if,
    reject_set,
};

/// Envoy's upstream timeout for a route that does not set one.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Envoy's default for `max_direct_response_body_size_bytes`.
const DEFAULT_MAX_DIRECT_RESPONSE_BODY: u32 = 4096;

/// Upper bound on a compiled regex. Envoy bounds RE2's "program size" instead (100 by default),
/// a different unit. This bound is looser, so a regex Envoy finds too large may be accepted
/// here. The bound exists so a hostile or careless pattern cannot eat the proxy's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The parts of a request that routing reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method, e.g. `GET`; what header matchers on `:method` see.
    pub method: &'a str,
    /// The scheme the client used, `http` or `https`. This is the value the proxy sends as
    /// `x-forwarded-proto`. Envoy reads redirects' scheme from `:scheme` and their port
    /// stripping from `x-forwarded-proto`. Both come from the downstream connection, so one
    /// value serves both.
    pub scheme: &'a str,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1), port included when the client sent one.
    pub authority: &'a str,
    /// The request target's path and query, e.g. `/items/7?canary=1`.
    pub path_and_query: &'a str,
    /// The request headers. Pseudo-headers are the fields above, not entries here.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    /// The path without query or fragment: what path matchers compare.
    pub fn path(&self) -> &'a str {
        &self.path_and_query[..path_len(self.path_and_query)]
    }

    /// Everything after the first `?`, as Envoy's query parameter matching reads it.
    fn query(&self) -> Option<&'a str> {
        self.path_and_query
            .find('?')
            .map(|i| &self.path_and_query[i + 1..])
    }
}

/// Length of the path part of a path-and-query: up to the first `?` or `#`, as Envoy's
/// `PathUtil::removeQueryAndFragment`.
fn path_len(path_and_query: &str) -> usize {
    path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len())
}

/// A validated, immutable route table, built once per RDS resource.
#[derive(Debug)]
pub struct RouteTable {
    name: String,
    virtual_hosts: Vec<VirtualHost>,
    hosts: HostIndex,
    ignore_port_in_host_matching: bool,
    validate_clusters: bool,
    most_specific_header_mutations_wins: bool,
    request_headers: HeaderMutations,
    response_headers: HeaderMutations,
}

/// What [`RouteTable::find`] found: the virtual host and its first matching route.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'t> {
    /// The virtual host chosen by `:authority`.
    pub virtual_host: &'t VirtualHost,
    /// The first route of that virtual host that matched.
    pub route: &'t Route,
    table: &'t RouteTable,
}

/// One virtual host: a set of domains and their routes, in match order.
#[derive(Debug)]
pub struct VirtualHost {
    /// The virtual host's name (for logs and stats).
    pub name: String,
    /// The domains it serves, as configured.
    pub domains: Vec<String>,
    /// Its routes; the first that matches wins.
    pub routes: Vec<Route>,
    /// Header changes applied to requests routed through this virtual host.
    pub request_headers: HeaderMutations,
    /// Header changes applied to responses of this virtual host.
    pub response_headers: HeaderMutations,
    /// Per-filter config (`typed_per_filter_config`), for the HTTP filters named.
    pub filter_overrides: FilterOverrides,
    index: RouteIndex,
}

/// One route: matchers, an action and header mutations.
#[derive(Debug)]
pub struct Route {
    /// The route's name (for logs and stats); shared with the access log records that name it.
    pub name: Arc<str>,
    matcher: RouteMatcher,
    /// What to do with a request that matches.
    pub action: RouteAction,
    /// Header changes applied to requests this route forwards.
    pub request_headers: HeaderMutations,
    /// Header changes applied to this route's responses, including redirects and direct ones.
    pub response_headers: HeaderMutations,
    /// Per-filter config (`typed_per_filter_config`), for the HTTP filters named.
    pub filter_overrides: FilterOverrides,
}

/// What a route does with the requests it matches.
#[derive(Debug)]
pub enum RouteAction {
    /// Forward upstream (Envoy's `route`).
    Forward(Forward),
    /// Answer with a redirect (Envoy's `redirect`).
    Redirect(Redirect),
    /// Answer with a fixed status and body (Envoy's `direct_response`).
    Direct(DirectResponse),
}

/// Forwarding to a cluster, or to one of several by weight.
#[derive(Debug)]
pub struct Forward {
    clusters: Clusters,
    /// Timeout for the whole upstream exchange. Unset in the config means
    /// [`DEFAULT_ROUTE_TIMEOUT`]; `0s` means `None`, no timeout.
    pub timeout: Option<Duration>,
    /// Retries: the route's own policy, or else its virtual host's (Envoy does not merge them).
    pub retry_policy: Option<RetryPolicy>,
    path_rewrite: Option<PathRewrite>,
    /// Replaces `:authority`/`Host` on the upstream request (`host_rewrite_literal`).
    pub host_rewrite: Option<HeaderValue>,
}

#[derive(Debug)]
enum Clusters {
    One(Arc<str>),
    /// Clusters with their weights, in config order; `total` is their sum, never 0.
    Weighted {
        clusters: Vec<(Arc<str>, u32)>,
        total: u64,
    },
}

/// When and how often to retry a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The conditions that trigger a retry, sorted, without duplicates.
    pub retry_on: Vec<RetryOn>,
    /// How many retries after the first attempt (Envoy's default is 1).
    pub num_retries: u32,
    /// Timeout of each attempt; `None` leaves only the route's overall timeout.
    pub per_try_timeout: Option<Duration>,
    /// Envoy's `retriable_request_headers`: when not empty, a request is retried only if it
    /// matches at least one of them. See [`RetryPolicy::retry_allowed`].
    pub retriable_request_headers: Vec<HeaderMatch>,
}

/// A retry condition, as named in Envoy's `retry_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryOn {
    /// `5xx`: any 5xx response, connect failure or reset.
    FiveXx,
    /// `gateway-error`: 502, 503 or 504.
    GatewayError,
    /// `reset`: no response (disconnect, reset, read timeout).
    Reset,
    /// `reset-before-request`: reset before the request was fully sent.
    ResetBeforeRequest,
    /// `connect-failure`: the connection could not be established.
    ConnectFailure,
    /// `retriable-4xx`: 409.
    Retriable4xx,
    /// `refused-stream`: HTTP/2 `REFUSED_STREAM`.
    RefusedStream,
}

/// A redirect answer; [`Redirect::location`] computes the `Location` header.
#[derive(Debug)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: RedirectPath,
    strip_query: bool,
}

#[derive(Debug)]
enum RedirectPath {
    /// The request's path (and query).
    Keep,
    /// `path_redirect`. A query in it replaces the request's and survives `strip_query`.
    Replace { path: String, has_query: bool },
    /// `prefix_rewrite` or `regex_rewrite` of the request's path.
    Rewrite(PathRewrite),
}

/// A fixed answer.
#[derive(Debug)]
pub struct DirectResponse {
    /// Status, 200 to 599.
    pub status: StatusCode,
    /// Body, possibly empty.
    pub body: Vec<u8>,
}

/// Header changes at one level (route configuration, virtual host, route), applied as Envoy's
/// `HeaderParser` does: removals first, then overwrites, then appends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMutations {
    /// Headers added or replaced.
    pub add: Vec<HeaderToAdd>,
    /// Headers removed.
    pub remove: Vec<HeaderName>,
    /// Whether a value reads the request (`%REQ()%`), worked out once.
    reads_request: bool,
    /// Whether a value reads the client's address, worked out once.
    reads_client_address: bool,
}

/// One header to add (Envoy's `HeaderValueOption`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderToAdd {
    /// The header's name, lower case.
    pub name: HeaderName,
    /// Its value: literal (`%%` in the config already unescaped to `%`), or a template.
    pub value: HeaderFormat,
    /// How it combines with values already there.
    pub action: AppendAction,
    /// Whether an empty value is still added; otherwise it is skipped.
    pub keep_empty_value: bool,
}

/// How an added header combines with existing values (Envoy's `HeaderAppendAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// Append a value, whether or not the header exists.
    AppendIfExistsOrAdd,
    /// Add only if the header is absent.
    AddIfAbsent,
    /// Replace all values, or add.
    OverwriteIfExistsOrAdd,
    /// Replace all values if the header exists; otherwise do nothing.
    OverwriteIfExists,
}

// ---------------------------------------------------------------------------------------------
// Matching

impl RouteTable {
    /// The `RouteConfiguration`'s name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All virtual hosts, in config order.
    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }

    /// Whether the config asks that routes to unknown clusters reject the whole table
    /// (`validate_clusters`); the snapshot builder checks [`RouteTable::clusters`] against CDS.
    pub fn validate_clusters(&self) -> bool {
        self.validate_clusters
    }

    /// Every cluster a route may forward to.
    pub fn clusters(&self) -> BTreeSet<&str> {
        self.virtual_hosts
            .iter()
            .flat_map(|vh| &vh.routes)
            .filter_map(|r| match &r.action {
                RouteAction::Forward(f) => Some(f),
                _ => None,
            })
            .flat_map(|f| f.clusters().map(|(name, _)| name))
            .collect()
    }

    /// The route for a request: its virtual host by `:authority`, then the first route there
    /// that matches. `None` is Envoy's 404 (no virtual host, or no route in it).
    pub fn find<'t>(&'t self, req: &RequestHead<'_>) -> Option<Matched<'t>> {
        let virtual_host = self.find_virtual_host(req.authority)?;
        let route = virtual_host.find_route(req)?;
        Some(Matched {
            virtual_host,
            route,
            table: self,
        })
    }

    /// The virtual host serving `authority`, as Envoy's `RouteMatcher::findVirtualHost`.
    pub fn find_virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        self.hosts
            .find(authority, self.ignore_port_in_host_matching)
            .map(|i| &self.virtual_hosts[i])
    }
}

impl<'t> Matched<'t> {
    /// The request header mutations in the order Envoy applies them: route, virtual host,
    /// route configuration. With `most_specific_header_mutations_wins` the order is reversed.
    /// Either way the last one applied wins where they overwrite the same header.
    pub fn request_header_mutations(&self) -> [&'t HeaderMutations; 3] {
        self.ordered(
            &self.route.request_headers,
            &self.virtual_host.request_headers,
            &self.table.request_headers,
        )
    }

    /// The response header mutations, in the order Envoy applies them (as for requests).
    pub fn response_header_mutations(&self) -> [&'t HeaderMutations; 3] {
        self.ordered(
            &self.route.response_headers,
            &self.virtual_host.response_headers,
            &self.table.response_headers,
        )
    }

    /// Applies all request header mutations; `cx` is what their templates read besides the
    /// headers. Envoy does this before the host and path rewrites, so call this first.
    pub fn apply_request_headers(
        &self,
        headers: &mut HeaderMap,
        cx: &FormatContext<'_>,
    ) -> Result<(), InvalidHeaderValue> {
        for mutations in self.request_header_mutations() {
            mutations.apply_request(headers, cx)?;
        }
        Ok(())
    }

    /// Applies all response header mutations; `%REQ()%` reads `request`, the request as sent
    /// upstream (or as the filters left it, for an answer made before forwarding).
    pub fn apply_response_headers(
        &self,
        headers: &mut HeaderMap,
        request: &HeaderMap,
        cx: &FormatContext<'_>,
    ) {
        for mutations in self.response_header_mutations() {
            mutations.apply_response(headers, request, cx);
        }
    }

    /// Whether the response header mutations read the request, which must then be kept until
    /// the response arrives.
    pub fn response_reads_request(&self) -> bool {
        self.response_header_mutations()
            .iter()
            .any(|m| m.reads_request())
    }

    /// Whether any header mutation reads the client's address, which is then worked out
    /// (from `x-forwarded-for` with trusted hops) for the request.
    pub fn reads_client_address(&self) -> bool {
        self.request_header_mutations()
            .iter()
            .chain(self.response_header_mutations().iter())
            .any(|m| m.reads_client_address())
    }

    /// The most specific per-filter config for the HTTP filter configured as `filter` (its
    /// `name` in the connection manager): the route's, else the virtual host's, as Envoy's
    /// `resolveMostSpecificPerFilterConfig`.
    pub fn filter_config(&self, filter: &str) -> Option<&'t PerFilterConfig> {
        self.route
            .filter_overrides
            .config(filter)
            .or_else(|| self.virtual_host.filter_overrides.config(filter))
    }

    /// Every per-filter config for `filter`, most specific first (route, then virtual host),
    /// for filters that merge levels field by field, as Envoy's CORS filter does.
    pub fn filter_configs(&self, filter: &str) -> [Option<&'t PerFilterConfig>; 2] {
        [
            self.route.filter_overrides.config(filter),
            self.virtual_host.filter_overrides.config(filter),
        ]
    }

    /// Whether the route or its virtual host disables `filter` (a `FilterConfig` with
    /// `disabled: true`); the most specific level that says either way decides.
    pub fn filter_disabled(&self, filter: &str) -> bool {
        self.route
            .filter_overrides
            .disabled(filter)
            .or_else(|| self.virtual_host.filter_overrides.disabled(filter))
            .unwrap_or(false)
    }

    fn ordered(
        &self,
        route: &'t HeaderMutations,
        vhost: &'t HeaderMutations,
        global: &'t HeaderMutations,
    ) -> [&'t HeaderMutations; 3] {
        if self.table.most_specific_header_mutations_wins {
            [global, vhost, route]
        } else {
            [route, vhost, global]
        }
    }
}

impl VirtualHost {
    /// The first route that matches, in config order.
    pub fn find_route(&self, req: &RequestHead<'_>) -> Option<&Route> {
        if self.index.is_empty() {
            return self.routes.iter().find(|r| r.matches(req));
        }
        // The first match in config order is the lowest matching index. Each candidate list
        // is ascending, so a list is read only up to its first match, or up to the best match
        // found so far: no route is checked twice, and nothing is collected or sorted.
        let mut best: Option<u32> = None;
        for list in self.index.candidate_lists(req.path()) {
            for &i in list {
                if best.is_some_and(|best| i >= best) {
                    break;
                }
                if self.routes[i as usize].matches(req) {
                    best = Some(i);
                    break;
                }
            }
        }
        best.map(|i| &self.routes[i as usize])
    }
}

/// Below this many routes a virtual host is scanned in order; the index only pays off above.
const ROUTE_INDEX_MIN_ROUTES: usize = 16;

/// Routes by the literal their path must start with, so that a request is checked only against
/// the routes that can match it, still in config order (first match wins).
///
/// A case-sensitive prefix or exact path matcher puts its route under that literal in a byte
/// trie; a path can only match routes found on its own walk down the trie. Routes whose
/// path matcher has no such literal (regexes, case-insensitive matchers) are candidates for
/// every path.
#[derive(Debug, Default)]
struct RouteIndex {
    /// The trie; node 0 is the root (the empty prefix).
    nodes: Vec<TrieNode>,
    /// Routes checked for every path.
    always: Vec<u32>,
}

#[derive(Debug, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    /// Routes whose literal ends at this node, ascending.
    routes: Vec<u32>,
}

impl RouteIndex {
    fn new(routes: &[Route]) -> Self {
        if routes.len() < ROUTE_INDEX_MIN_ROUTES {
            return Self::default();
        }
        let mut index = Self {
            nodes: vec![TrieNode::default()],
            always: Vec::new(),
        };
        for (i, route) in routes.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            match &route.matcher.path {
                PathMatch::Prefix {
                    prefix: literal,
                    ignore_case: false,
                }
                | PathMatch::Exact {
                    path: literal,
                    ignore_case: false,
                } => index.insert(literal.as_bytes(), i),
                _ => index.always.push(i),
            }
        }
        index
    }

    fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn insert(&mut self, literal: &[u8], route: u32) {
        let mut node = 0usize;
        for &byte in literal {
            let next = self.nodes[node]
                .children
                .iter()
                .find(|(b, _)| *b == byte)
                .map(|(_, n)| *n as usize);
            node = match next {
                Some(next) => next,
                None => {
                    let new = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[node]
                        .children
                        .push((byte, u32::try_from(new).unwrap_or(u32::MAX)));
                    new
                }
            };
        }
        self.nodes[node].routes.push(route);
    }

    /// The lists of routes that may match `path`, each ascending (config order): the routes
    /// checked for every path, then those of each trie node on the path's walk.
    fn candidate_lists<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a [u32]> {
        let mut node = 0usize;
        let walk = path.bytes().map_while(move |byte| {
            let &(_, next) = self.nodes[node].children.iter().find(|(b, _)| *b == byte)?;
            node = next as usize;
            Some(&self.nodes[node].routes[..])
        });
        [&self.always[..], &self.nodes[0].routes[..]]
            .into_iter()
            .chain(walk)
    }
}

impl Route {
    /// Whether this route matches the request (its virtual host already chosen).
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        self.matcher.matches(req)
    }

    /// The path-and-query to send upstream (for [`RouteAction::Forward`]). It is computed from
    /// a request this route matched. `None` means there is no rewrite: send the path unchanged.
    pub fn upstream_path(&self, path_and_query: &str) -> Option<String> {
        match &self.action {
            RouteAction::Forward(forward) => forward.rewrite_path(path_and_query),
            _ => None,
        }
    }
}

impl Forward {
    /// The cluster for a request, given a random number. `random % total weight` picks a
    /// cluster as Envoy does: cluster *i* owns the interval from the sum of the weights before
    /// it to that sum plus its own weight. A single cluster ignores `random`. The name is
    /// shared, so that access log records keep it without a copy.
    pub fn pick_cluster(&self, random: u64) -> &Arc<str> {
        match &self.clusters {
            Clusters::One(name) => name,
            Clusters::Weighted { clusters, total } => {
                let mut selected = random % total;
                for (name, weight) in clusters {
                    let weight = u64::from(*weight);
                    if selected < weight {
                        return name;
                    }
                    selected -= weight;
                }
                // Unreachable: `selected < total`, the sum of the weights.
                &clusters[clusters.len() - 1].0
            }
        }
    }

    /// The clusters this route may forward to, with their weights (1 for a single cluster).
    pub fn clusters(&self) -> impl Iterator<Item = (&str, u32)> {
        let (one, weighted) = match &self.clusters {
            Clusters::One(name) => (Some((&**name, 1)), None),
            Clusters::Weighted { clusters, .. } => (None, Some(clusters)),
        };
        one.into_iter().chain(
            weighted
                .into_iter()
                .flatten()
                .map(|(name, weight)| (&**name, *weight)),
        )
    }

    /// The sum of the weights: the exclusive upper bound of the numbers
    /// [`Forward::pick_cluster`] distinguishes (1 for a single cluster).
    pub fn total_weight(&self) -> u64 {
        match &self.clusters {
            Clusters::One(_) => 1,
            Clusters::Weighted { total, .. } => *total,
        }
    }

    /// The rewritten path-and-query (`prefix_rewrite` or `regex_rewrite`) of a request this
    /// route matched, or `None` when the path goes upstream unchanged.
    pub fn rewrite_path(&self, path_and_query: &str) -> Option<String> {
        self.path_rewrite.as_ref()?.apply(path_and_query)
    }
}

impl RetryPolicy {
    /// Whether `condition` triggers a retry.
    pub fn retries_on(&self, condition: RetryOn) -> bool {
        self.retry_on.contains(&condition)
    }

    /// Whether this request may be retried at all, whatever the failure: true when
    /// `retriable_request_headers` is empty or any one of them matches. Envoy's
    /// `RetryStateImpl` clears every `retry_on` condition (connect failures included) for a
    /// request that matches none. Envoy asks this of the request as it goes upstream: after the
    /// route's header mutations and rewrites. The control plane only emits a `:method` matcher,
    /// which neither changes.
    pub fn retry_allowed(&self, req: &RequestHead<'_>) -> bool {
        self.retriable_request_headers.is_empty()
            || self
                .retriable_request_headers
                .iter()
                .any(|h| h.matches(req))
    }
}

impl Redirect {
    /// The `Location` of the redirect, computed from the request as Envoy's
    /// `Http::Utility::newUri` does:
    /// - the scheme is `scheme_redirect`, else `https` for `https_redirect`, else the request's;
    /// - the host is `host_redirect`, else the request's authority. Its port is dropped when a
    ///   `port_redirect` is given, or when the scheme changes from the port's default (`:80`
    ///   for http, `:443` for https);
    /// - the path is `path_redirect`, or the request's path after `prefix_rewrite` /
    ///   `regex_rewrite`. The request's query is kept unless `strip_query`. A query in
    ///   `path_redirect` replaces it and is never stripped.
    pub fn location(&self, req: &RequestHead<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let host = match &self.host {
            Some(host) => host.as_str(),
            None => request_host(req.authority, req.scheme, scheme, !port.is_empty()),
        };
        let pq = req.path_and_query;
        let mut path: Cow<'_, str> = match &self.path {
            RedirectPath::Keep => Cow::Borrowed(pq),
            RedirectPath::Rewrite(rewrite) => {
                rewrite.apply(pq).map_or(Cow::Borrowed(pq), Cow::Owned)
            }
            RedirectPath::Replace {
                path,
                has_query: true,
            } => Cow::Borrowed(path),
            RedirectPath::Replace {
                path,
                has_query: false,
            } => match pq.find('?') {
                Some(q) => Cow::Owned(format!("{path}{}", &pq[q..])),
                None => Cow::Borrowed(path),
            },
        };
        if !path.starts_with('/') {
            path = Cow::Owned(format!("/{path}"));
        }
        let query_is_configured = matches!(
            self.path,
            RedirectPath::Replace {
                has_query: true,
                ..
            }
        );
        if self.strip_query
            && !query_is_configured
            && let Some(q) = path.find('?')
        {
            path = Cow::Owned(path[..q].to_owned());
        }
        format!("{scheme}://{host}{port}{path}")
    }
}

impl DirectResponse {
    /// The `Location` header Envoy adds to a direct response. It adds one only for 201 and
    /// 3xx statuses: the request's own URL.
    pub fn location(&self, req: &RequestHead<'_>) -> Option<String> {
        if self.status != StatusCode::CREATED && !self.status.is_redirection() {
            return None;
        }
        let path = req.path_and_query;
        let slash = if path.starts_with('/') { "" } else { "/" };
        Some(format!("{}://{}{slash}{path}", req.scheme, req.authority))
    }
}

/// The request's host for a redirect Location, as Envoy's `processRequestHost`. The port is
/// dropped when a new port replaces it. It is also dropped when it is the default of the
/// request's scheme and the redirect changes the scheme.
fn request_host<'a>(
    authority: &'a str,
    request_scheme: &str,
    new_scheme: &str,
    new_port: bool,
) -> &'a str {
    let port_start = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    let Some(port_start) = port_start else {
        return authority;
    };
    let port = &authority[port_start..];
    let mut remove = new_port;
    if new_scheme != request_scheme {
        remove |= request_scheme == "https" && port == ":443";
        remove |= request_scheme == "http" && port == ":80";
    }
    if remove {
        &authority[..port_start]
    } else {
        authority
    }
}

impl HeaderMutations {
    /// Whether nothing is changed.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether a value reads the request (`%REQ()%`), so that response headers need it kept.
    pub fn reads_request(&self) -> bool {
        self.reads_request
    }

    /// Whether a value reads the client's address.
    pub fn reads_client_address(&self) -> bool {
        self.reads_client_address
    }

    /// Applies these mutations to request headers, as Envoy's `HeaderParser::evaluateHeaders`
    /// does. Removals come first. Then each value is formatted and each addition decided
    /// against the headers as they are after the removals (so `%REQ()%` sees neither a header
    /// removed here nor one added here). Then all overwrites are applied, and last all appends.
    ///
    /// A formatted value that is not a valid header value fails the request, as Envoy 1.40's
    /// router does (503 `invalid header value for: NAME`).
    pub fn apply_request(
        &self,
        headers: &mut HeaderMap,
        cx: &FormatContext<'_>,
    ) -> Result<(), InvalidHeaderValue> {
        self.apply(headers, None, cx, true)
    }

    /// Applies these mutations to response headers, as [`HeaderMutations::apply_request`];
    /// `%REQ()%` reads `request`. A formatted value that is not a valid header value is left
    /// out (Envoy 1.40 writes it raw, splitting the response).
    pub fn apply_response(
        &self,
        headers: &mut HeaderMap,
        request: &HeaderMap,
        cx: &FormatContext<'_>,
    ) {
        // Not strict: nothing to report.
        let _ = self.apply(headers, Some(request), cx, false);
    }

    fn apply(
        &self,
        headers: &mut HeaderMap,
        request: Option<&HeaderMap>,
        cx: &FormatContext<'_>,
        strict: bool,
    ) -> Result<(), InvalidHeaderValue> {
        if self.is_empty() {
            return Ok(());
        }
        for name in &self.remove {
            headers.remove(name);
        }
        let mut overwrite = Vec::new();
        let mut append = Vec::new();
        for add in &self.add {
            let value = match &add.value {
                HeaderFormat::Literal(value) => Cow::Borrowed(value),
                HeaderFormat::Template(template) => {
                    let bytes = template.render(request.unwrap_or(headers), cx);
                    match HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)) {
                        Ok(value) => Cow::Owned(value),
                        Err(_) if strict => return Err(InvalidHeaderValue(add.name.clone())),
                        Err(_) => continue,
                    }
                }
            };
            if value.is_empty() && !add.keep_empty_value {
                continue;
            }
            match add.action {
                AppendAction::AppendIfExistsOrAdd => append.push((&add.name, value)),
                AppendAction::AddIfAbsent if !headers.contains_key(&add.name) => {
                    append.push((&add.name, value))
                }
                AppendAction::AddIfAbsent => {}
                AppendAction::OverwriteIfExists if !headers.contains_key(&add.name) => {}
                AppendAction::OverwriteIfExists | AppendAction::OverwriteIfExistsOrAdd => {
                    overwrite.push((&add.name, value))
                }
            }
        }
        for (name, value) in overwrite {
            headers.insert(name.clone(), value.into_owned());
        }
        for (name, value) in append {
            headers.append(name.clone(), value.into_owned());
        }
        Ok(())
    }
}

/// A request header value formatted from a template that is not a valid header value (a claim
/// with a control character, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid header value for: {0}")]
pub struct InvalidHeaderValue(pub HeaderName);

// ---------------------------------------------------------------------------------------------
// Matchers (private: the proto shapes stop at `TryFrom`)

/// Virtual hosts by domain, as Envoy's `RouteMatcher` indexes them. Domains are lower-cased.
#[derive(Debug, Default)]
struct HostIndex {
    exact: HashMap<String, usize>,
    /// `*suffix` domains by suffix length; searched longest first.
    suffixes: BTreeMap<usize, HashMap<String, usize>>,
    /// `prefix*` domains by prefix length; searched longest first.
    prefixes: BTreeMap<usize, HashMap<String, usize>>,
    /// The `*` virtual host.
    any: Option<usize>,
}

impl HostIndex {
    /// Registers `domain` (lower-cased) for virtual host `vhost`; on a duplicate, returns the
    /// virtual host that has it already.
    fn insert(&mut self, domain: &str, vhost: usize) -> Result<(), usize> {
        let slot = if domain == "*" {
            if let Some(first) = self.any {
                return Err(first);
            }
            self.any = Some(vhost);
            return Ok(());
        } else if let Some(suffix) = domain.strip_prefix('*') {
            self.suffixes
                .entry(suffix.len())
                .or_default()
                .entry(suffix.to_owned())
        } else if let Some(prefix) = domain.strip_suffix('*') {
            self.prefixes
                .entry(prefix.len())
                .or_default()
                .entry(prefix.to_owned())
        } else {
            self.exact.entry(domain.to_owned())
        };
        match slot {
            std::collections::hash_map::Entry::Occupied(first) => Err(*first.get()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(vhost);
                Ok(())
            }
        }
    }

    fn find(&self, authority: &str, ignore_port: bool) -> Option<usize> {
        // As Envoy: with only a `*` virtual host, the authority is not even looked at.
        if self.exact.is_empty() && self.suffixes.is_empty() && self.prefixes.is_empty() {
            return self.any;
        }
        let host = if ignore_port {
            strip_port(authority)
        } else {
            authority
        };
        let host = lower_ascii(host);
        if let Some(&i) = self.exact.get(host.as_ref()) {
            return Some(i);
        }
        // The wildcard must stand for at least one character: `*.foo.com` does not match
        // `.foo.com`, hence `len < host.len()`.
        let suffix = self
            .suffixes
            .iter()
            .rev()
            .filter(|(len, _)| **len < host.len())
            .find_map(|(len, domains)| domains.get(host.get(host.len() - len..)?).copied());
        if suffix.is_some() {
            return suffix;
        }
        let prefix = self
            .prefixes
            .iter()
            .rev()
            .filter(|(len, _)| **len < host.len())
            .find_map(|(len, domains)| domains.get(host.get(..*len)?).copied());
        prefix.or(self.any)
    }
}

/// The host without its port, as Envoy's `HeaderUtility::getPortStart`: cut at the last `:`
/// unless that colon is inside an IPv6 literal's brackets.
fn strip_port(authority: &str) -> &str {
    let Some(colon) = authority.rfind(':') else {
        return authority;
    };
    match authority.rfind(']') {
        Some(bracket) if bracket > colon => authority,
        _ => &authority[..colon],
    }
}

fn lower_ascii(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[derive(Debug)]
struct RouteMatcher {
    path: PathMatch,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
}

/// A `RouteMatch` used outside a route table, e.g. by jwt_authn's `rules`: the same path,
/// header and query matching as routes, on the request as the filter sees it.
#[derive(Debug)]
pub struct RequestMatcher(RouteMatcher);

impl RequestMatcher {
    /// Whether the request matches.
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        self.0.matches(req)
    }
}

/// Builds a [`RequestMatcher`]; the same subset of `RouteMatch` as routes is accepted.
pub(crate) fn request_matcher(proto: &route_pb::RouteMatch) -> Result<RequestMatcher, Rejection> {
    route_match(proto).map(|(matcher, _)| RequestMatcher(matcher))
}

impl RouteMatcher {
    fn matches(&self, req: &RequestHead<'_>) -> bool {
        if !self.path.matches(req.path()) || !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        let query = req.query();
        self.query.iter().all(|q| q.matches(query))
    }
}

#[derive(Debug)]
enum PathMatch {
    Prefix {
        prefix: String,
        ignore_case: bool,
    },
    Exact {
        path: String,
        ignore_case: bool,
    },
    /// Anchored at both ends: the whole path must match.
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix {
                prefix,
                ignore_case,
            } => starts_with(path, prefix, *ignore_case),
            Self::Exact {
                path: exact,
                ignore_case,
            } => {
                if *ignore_case {
                    path.eq_ignore_ascii_case(exact)
                } else {
                    path == exact
                }
            }
            Self::Regex(regex) => regex.is_match(path),
        }
    }
}

// Case-insensitive comparisons are ASCII-only, as absl's `*IgnoreCase` that Envoy uses.
fn starts_with(value: &str, prefix: &str, ignore_case: bool) -> bool {
    let (value, prefix) = (value.as_bytes(), prefix.as_bytes());
    value.len() >= prefix.len() && eq_bytes(&value[..prefix.len()], prefix, ignore_case)
}

fn ends_with(value: &str, suffix: &str, ignore_case: bool) -> bool {
    let (value, suffix) = (value.as_bytes(), suffix.as_bytes());
    value.len() >= suffix.len()
        && eq_bytes(&value[value.len() - suffix.len()..], suffix, ignore_case)
}

fn contains(value: &str, needle: &str, ignore_case: bool) -> bool {
    if !ignore_case {
        return value.contains(needle);
    }
    let needle = needle.as_bytes();
    needle.is_empty()
        || value
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

fn eq_bytes(a: &[u8], b: &[u8], ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// Envoy's `StringMatcher`; built from config only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatch {
    pattern: Pattern,
    /// For exact, prefix, suffix and contains; a regex ignores it, as in Envoy.
    ignore_case: bool,
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Anchored at both ends.
    Regex(Regex),
    /// The deprecated `exact_match: ""` of header matchers, which Envoy takes as any value.
    Any,
}

// By hand because `Regex` has no `PartialEq`: two regexes compiled from the same pattern are
// the same matcher.
impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b))
            | (Self::Prefix(a), Self::Prefix(b))
            | (Self::Suffix(a), Self::Suffix(b))
            | (Self::Contains(a), Self::Contains(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            (Self::Any, Self::Any) => true,
            _ => false,
        }
    }
}

impl Eq for Pattern {}

impl StringMatch {
    /// Whether `value` matches, as Envoy's `StringMatcherImpl::match`.
    pub fn matches(&self, value: &str) -> bool {
        let ic = self.ignore_case;
        match &self.pattern {
            Pattern::Exact(s) => eq_bytes(value.as_bytes(), s.as_bytes(), ic),
            Pattern::Prefix(s) => starts_with(value, s, ic),
            Pattern::Suffix(s) => ends_with(value, s, ic),
            Pattern::Contains(s) => contains(value, s, ic),
            Pattern::Regex(regex) => regex.is_match(value),
            Pattern::Any => true,
        }
    }
}

/// Envoy's `HeaderMatcher`, on a route or a retry policy; built from config only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    name: HeaderKey,
    rule: HeaderRule,
    invert: bool,
    treat_missing_as_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderKey {
    Method,
    /// `:authority`, and also `host`: Envoy's header map answers a lookup of `host` with
    /// `:authority` (checked against Envoy 1.40), which is the `Host` header in HTTP/1.1.
    Authority,
    Path,
    Scheme,
    /// A header whose values are matched one by one (Envoy 1.39+,
    /// `envoy.reloadable_features.match_headers_individually`).
    Each(HeaderName),
    /// A header Envoy's header map keeps as one entry ([`JOINED_HEADERS`]): repeated lines are
    /// joined with `,` as they arrive, so the matcher sees the joined value.
    Joined(HeaderName),
}

/// The request headers Envoy 1.40 keeps as one "inline" entry, so that lines repeating one are
/// appended to it with `,` before any matcher runs; every other header keeps one entry per line.
/// Envoy does not list them in one place (its core headers plus those its extensions register);
/// this list is what an Envoy 1.40 route table matched that way, over HTTP/1.1 and HTTP/2
/// alike, among some 180 common request header names. Sorted, for binary search.
const JOINED_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "access-control-request-headers",
    "access-control-request-method",
    "access-control-request-private-network",
    "authorization",
    "cache-control",
    "content-encoding",
    "content-type",
    "expect",
    "grpc-accept-encoding",
    "grpc-timeout",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "origin",
    "pragma",
    "proxy-status",
    "referer",
    "user-agent",
    "via",
    "x-client-trace-id",
    "x-envoy-attempt-count",
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-external-address",
    "x-envoy-is-timeout-retry",
    "x-envoy-original-host",
    "x-envoy-original-path",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-request-id",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderRule {
    Present(bool),
    /// `[start, end)` over the value parsed as a base-10 integer.
    Range {
        start: i64,
        end: i64,
    },
    String(StringMatch),
}

/// What a header matcher compares: one value, or each of several.
enum Values<'a> {
    One(Cow<'a, str>),
    Each(http::header::GetAll<'a, HeaderValue>),
}

impl HeaderKey {
    /// The header's values as Envoy's matcher sees them; `None` when the header is absent.
    fn values<'a>(&self, req: &RequestHead<'a>) -> Option<Values<'a>> {
        let one = |value: &'a str| Some(Values::One(Cow::Borrowed(value)));
        match self {
            Self::Method => one(req.method),
            Self::Authority => one(req.authority),
            Self::Path => one(req.path_and_query),
            Self::Scheme => one(req.scheme),
            Self::Each(name) => {
                let all = req.headers.get_all(name);
                all.iter().next().is_some().then_some(Values::Each(all))
            }
            // Envoy's `getAllOfHeaderAsString`, over the lines an inline entry was made of.
            Self::Joined(name) => {
                let mut values = req.headers.get_all(name).iter();
                let first = lossy(values.next()?);
                let Some(second) = values.next() else {
                    return Some(Values::One(first));
                };
                let mut joined = first.into_owned();
                for value in std::iter::once(second).chain(values) {
                    joined.push(',');
                    joined.push_str(&lossy(value));
                }
                Some(Values::One(Cow::Owned(joined)))
            }
        }
    }
}

fn lossy(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

impl HeaderMatch {
    /// Whether the request matches, as Envoy 1.40's `HeaderUtility` decides:
    /// - presence matchers look only at whether the header is there;
    /// - a value matcher on an absent header fails, inverted or not, unless
    ///   `treat_missing_header_as_empty`, which tests the empty string instead;
    /// - a header sent on several lines matches when any one of its values matches, and
    ///   `invert_match` then asks that none does. A single line `a,b` is one value. A few
    ///   standard headers (`user-agent`, `accept`, `x-forwarded-for`, …) are the exception:
    ///   Envoy joins their lines with `,` first, so they are matched joined.
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        let values = self.name.values(req);
        if let HeaderRule::Present(present) = self.rule {
            return (values.is_some() == present) != self.invert;
        }
        let matched = match values {
            Some(Values::One(value)) => self.rule_matches(&value),
            Some(Values::Each(all)) => all.iter().any(|v| self.rule_matches(&lossy(v))),
            None if self.treat_missing_as_empty => self.rule_matches(""),
            // A missing header fails a value matcher, inverted or not.
            None => return false,
        };
        matched != self.invert
    }

    fn rule_matches(&self, value: &str) -> bool {
        match &self.rule {
            HeaderRule::Range { start, end } => {
                value.parse::<i64>().is_ok_and(|v| *start <= v && v < *end)
            }
            HeaderRule::String(m) => m.matches(value),
            HeaderRule::Present(_) => unreachable!("presence is decided before values"),
        }
    }
}

/// Envoy's `QueryParameterMatcher`: the first `name=value` pair (or bare `name`) counts.
/// Neither names nor values are percent-decoded, as in Envoy.
#[derive(Debug)]
struct QueryMatch {
    name: String,
    /// `None`: presence is enough.
    value: Option<StringMatch>,
}

impl QueryMatch {
    fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else {
            return false;
        };
        let first = query.split('&').find_map(|param| {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            (name == self.name).then_some(value)
        });
        match (first, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(value), Some(m)) => m.matches(value),
        }
    }
}

/// `prefix_rewrite` or `regex_rewrite`, for a forwarded path or a redirect.
#[derive(Debug)]
enum PathRewrite {
    /// Replaces the part of the path the route matched.
    Prefix { matched: RewriteBase, with: String },
    /// Replaces every match in the path (not the query) with `substitution` (regex crate syntax).
    Regex { regex: Regex, substitution: String },
}

/// Which part of a matched path `prefix_rewrite` replaces: the configured prefix for `prefix`
/// routes, the whole path for `path` and `safe_regex` routes.
#[derive(Debug, Clone, Copy)]
enum RewriteBase {
    Prefix(usize),
    WholePath,
}

impl PathRewrite {
    fn apply(&self, path_and_query: &str) -> Option<String> {
        let path_end = path_len(path_and_query);
        match self {
            Self::Prefix { matched, with } => {
                let cut = match matched {
                    RewriteBase::Prefix(len) => *len,
                    RewriteBase::WholePath => path_end,
                };
                // `get` only fails for a path this route did not match.
                Some(format!("{with}{}", path_and_query.get(cut..)?))
            }
            Self::Regex {
                regex,
                substitution,
            } => {
                let (path, rest) = path_and_query.split_at(path_end);
                let new = regex.replace_all(path, substitution.as_str());
                // As Envoy: a rewrite that leaves nothing is no rewrite.
                (!new.is_empty()).then(|| format!("{new}{rest}"))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building: proto -> table. Every proto message is destructured without `..`, so a field added
// to Envoy's API breaks the build here instead of being ignored silently.

impl TryFrom<&route_pb::RouteConfiguration> for RouteTable {
    type Error = ConfigError;

    fn try_from(proto: &route_pb::RouteConfiguration) -> Result<Self, ConfigError> {
        route_table(proto).map_err(|e| e.into_error(Resource::RouteConfig(proto.name.clone())))
    }
}

fn route_table(proto: &route_pb::RouteConfiguration) -> Result<RouteTable, Rejection> {
    let route_pb::RouteConfiguration {
        name,
        virtual_hosts,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        validate_clusters,
        max_direct_response_body_size_bytes,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        metadata: _,
        route_specifiers,
    } = proto;
    reject_set(&[
        (vhds.is_some(), "vhds"),
        (!internal_only_headers.is_empty(), "internal_only_headers"),
        (
            !cluster_specifier_plugins.is_empty(),
            "cluster_specifier_plugins",
        ),
        (
            !request_mirror_policies.is_empty(),
            "request_mirror_policies",
        ),
        (!vhost_header.is_empty(), "vhost_header"),
        (
            *ignore_path_parameters_in_path_matching,
            "ignore_path_parameters_in_path_matching",
        ),
        (
            !typed_per_filter_config.is_empty(),
            "typed_per_filter_config",
        ),
        (!route_specifiers.is_empty(), "route_specifiers"),
    ])?;

    let request_headers = header_mutations(
        request_headers_to_add,
        request_headers_to_remove,
        ("request_headers_to_add", "request_headers_to_remove"),
    )?;
    let response_headers = header_mutations(
        response_headers_to_add,
        response_headers_to_remove,
        ("response_headers_to_add", "response_headers_to_remove"),
    )?;
    let max_body =
        max_direct_response_body_size_bytes.map_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY, |v| v.value);

    let mut hosts = HostIndex::default();
    let mut vhosts = Vec::with_capacity(virtual_hosts.len());
    for (i, proto) in virtual_hosts.iter().enumerate() {
        let vhost = virtual_host(proto, max_body).at("virtual_hosts", i)?;
        for (j, domain) in vhost.domains.iter().enumerate() {
            // Envoy lower-cases domains (`LowerCaseString`) and compares hosts lower-cased.
            let domain = domain.to_ascii_lowercase();
            if let Err(first) = hosts.insert(&domain, i) {
                return Err(Rejection::new_at(
                    "domains",
                    j,
                    Reason::DuplicateDomain { domain, first },
                )
                .at("virtual_hosts", i));
            }
        }
        vhosts.push(vhost);
    }
    Ok(RouteTable {
        name: name.clone(),
        virtual_hosts: vhosts,
        hosts,
        ignore_port_in_host_matching: *ignore_port_in_host_matching,
        // Unset means false for RDS-delivered tables, as in Envoy.
        validate_clusters: validate_clusters.is_some_and(|v| v.value),
        most_specific_header_mutations_wins: *most_specific_header_mutations_wins,
        request_headers,
        response_headers,
    })
}

#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn virtual_host(proto: &route_pb::VirtualHost, max_body: u32) -> Result<VirtualHost, Rejection> {
    let route_pb::VirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        // Virtual clusters only name request classes for Envoy's stats; no request changes.
        virtual_clusters: _,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        metadata: _,
        route_specifiers,
    } = proto;
    if name.is_empty() {
        return Err(Rejection::new("name", Reason::Missing));
    }
    if domains.is_empty() {
        return Err(Rejection::new("domains", Reason::Missing));
    }
    for (i, domain) in domains.iter().enumerate() {
        if let Err(reason) = no_control_chars(domain) {
            return Err(Rejection::new_at("domains", i, reason));
        }
    }
    reject_set(&[
        (matcher.is_some(), "matcher"),
        (*require_tls != 0, "require_tls"),
        (!rate_limits.is_empty(), "rate_limits"),
        (cors.is_some(), "cors"),
        (
            *include_request_attempt_count,
            "include_request_attempt_count",
        ),
        (
            *include_attempt_count_in_response,
            "include_attempt_count_in_response",
        ),
        (
            retry_policy_typed_config.is_some(),
            "retry_policy_typed_config",
        ),
        (hedge_policy.is_some(), "hedge_policy"),
        (
            *include_is_timeout_retry_header,
            "include_is_timeout_retry_header",
        ),
        (
            per_request_buffer_limit_bytes.is_some(),
            "per_request_buffer_limit_bytes",
        ),
        (
            request_body_buffer_limit.is_some(),
            "request_body_buffer_limit",
        ),
        (
            !request_mirror_policies.is_empty(),
            "request_mirror_policies",
        ),
        (!route_specifiers.is_empty(), "route_specifiers"),
    ])?;

    let retry = retry_policy
        .as_ref()
        .map(|p| self::retry_policy(p).within("retry_policy"))
        .transpose()?;
    let routes: Vec<Route> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(r, retry.as_ref(), max_body).at("routes", i))
        .collect::<Result<_, _>>()?;
    let filter_overrides =
        filter_overrides(typed_per_filter_config).within("typed_per_filter_config")?;
    Ok(VirtualHost {
        name: name.clone(),
        domains: domains.clone(),
        filter_overrides,
        index: RouteIndex::new(&routes),
        routes,
        request_headers: header_mutations(
            request_headers_to_add,
            request_headers_to_remove,
            ("request_headers_to_add", "request_headers_to_remove"),
        )?,
        response_headers: header_mutations(
            response_headers_to_add,
            response_headers_to_remove,
            ("response_headers_to_add", "response_headers_to_remove"),
        )?,
    })
}

#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn route(
    proto: &route_pb::Route,
    vhost_retry: Option<&RetryPolicy>,
    max_body: u32,
) -> Result<Route, Rejection> {
    use route_pb::route::Action;
    let route_pb::Route {
        name,
        r#match,
        metadata: _,
        decorator: _,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing,
        per_request_buffer_limit_bytes,
        stat_prefix: _,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = proto;
    reject_set(&[
        (tracing.is_some(), "tracing"),
        (
            per_request_buffer_limit_bytes.is_some(),
            "per_request_buffer_limit_bytes",
        ),
        (
            request_body_buffer_limit.is_some(),
            "request_body_buffer_limit",
        ),
        (!route_specifiers.is_empty(), "route_specifiers"),
    ])?;

    let m = r#match
        .as_ref()
        .ok_or_else(|| Rejection::new("match", Reason::Missing))?;
    let (matcher, matched) = route_match(m).within("match")?;
    let action = match action {
        None => {
            return Err(Rejection::new(
                "action",
                Reason::Invalid("one of route, redirect or direct_response is required".into()),
            ));
        }
        Some(Action::Route(action)) => {
            RouteAction::Forward(forward(action, matched, vhost_retry).within("route")?)
        }
        Some(Action::Redirect(action)) => {
            RouteAction::Redirect(redirect(action, matched).within("redirect")?)
        }
        Some(Action::DirectResponse(action)) => {
            RouteAction::Direct(direct_response(action, max_body).within("direct_response")?)
        }
        Some(Action::FilterAction(_)) => return Err(Rejection::unsupported("filter_action")),
        Some(Action::NonForwardingAction(_)) => {
            return Err(Rejection::unsupported("non_forwarding_action"));
        }
    };
    let filter_overrides =
        filter_overrides(typed_per_filter_config).within("typed_per_filter_config")?;
    Ok(Route {
        name: name.as_str().into(),
        matcher,
        action,
        filter_overrides,
        request_headers: header_mutations(
            request_headers_to_add,
            request_headers_to_remove,
            ("request_headers_to_add", "request_headers_to_remove"),
        )?,
        response_headers: header_mutations(
            response_headers_to_add,
            response_headers_to_remove,
            ("response_headers_to_add", "response_headers_to_remove"),
        )?,
    })
}

fn route_match(proto: &route_pb::RouteMatch) -> Result<(RouteMatcher, RewriteBase), Rejection> {
    use route_pb::route_match::PathSpecifier;
    let route_pb::RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = proto;
    reject_set(&[
        (runtime_fraction.is_some(), "runtime_fraction"),
        (!cookies.is_empty(), "cookies"),
        (grpc.is_some(), "grpc"),
        (tls_context.is_some(), "tls_context"),
        (!dynamic_metadata.is_empty(), "dynamic_metadata"),
        (!filter_state.is_empty(), "filter_state"),
    ])?;

    // `case_sensitive` applies to prefix and path; Envoy ignores it for safe_regex.
    let ignore_case = !case_sensitive.is_none_or(|v| v.value);
    let (path, matched) = match path_specifier {
        None => {
            return Err(Rejection::new(
                "path_specifier",
                Reason::Invalid("one of prefix, path or safe_regex is required".into()),
            ));
        }
        Some(PathSpecifier::Prefix(prefix)) => (
            PathMatch::Prefix {
                prefix: prefix.clone(),
                ignore_case,
            },
            RewriteBase::Prefix(prefix.len()),
        ),
        Some(PathSpecifier::Path(path)) => (
            PathMatch::Exact {
                path: path.clone(),
                ignore_case,
            },
            RewriteBase::WholePath,
        ),
        Some(PathSpecifier::SafeRegex(regex)) => (
            PathMatch::Regex(full_match_regex(regex).map_err(|r| Rejection::new("safe_regex", r))?),
            RewriteBase::WholePath,
        ),
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err(Rejection::unsupported("connect_matcher"));
        }
        Some(PathSpecifier::PathSeparatedPrefix(_)) => {
            return Err(Rejection::unsupported("path_separated_prefix"));
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(Rejection::unsupported("path_match_policy"));
        }
    };
    let headers = headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h).at("headers", i))
        .collect::<Result<_, _>>()?;
    let query = query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_matcher(q).at("query_parameters", i))
        .collect::<Result<_, _>>()?;
    Ok((
        RouteMatcher {
            path,
            headers,
            query,
        },
        matched,
    ))
}

#[allow(deprecated)] // the deprecated specifiers are still valid config that Envoy honours
fn header_matcher(proto: &route_pb::HeaderMatcher) -> Result<HeaderMatch, Rejection> {
    use route_pb::header_matcher::HeaderMatchSpecifier as Spec;
    let route_pb::HeaderMatcher {
        name,
        invert_match,
        treat_missing_header_as_empty,
        header_match_specifier,
    } = proto;
    let key = header_key(name).map_err(|r| Rejection::new("name", r))?;
    let string = |pattern| {
        HeaderRule::String(StringMatch {
            pattern,
            ignore_case: false,
        })
    };
    let non_empty = |field: &'static str, value: &String| {
        if value.is_empty() {
            Err(Rejection::new(field, Reason::Missing))
        } else {
            Ok(value.clone())
        }
    };
    let rule = match header_match_specifier {
        // Envoy: no specifier at all means `present_match: true`.
        None => HeaderRule::Present(true),
        Some(Spec::PresentMatch(present)) => HeaderRule::Present(*present),
        Some(Spec::RangeMatch(range)) => HeaderRule::Range {
            start: range.start,
            end: range.end,
        },
        // Envoy's `HeaderDataExactMatch` treats an empty expected value as "any value".
        Some(Spec::ExactMatch(value)) if value.is_empty() => string(Pattern::Any),
        Some(Spec::ExactMatch(value)) => string(Pattern::Exact(value.clone())),
        Some(Spec::PrefixMatch(value)) => {
            string(Pattern::Prefix(non_empty("prefix_match", value)?))
        }
        Some(Spec::SuffixMatch(value)) => {
            string(Pattern::Suffix(non_empty("suffix_match", value)?))
        }
        Some(Spec::ContainsMatch(value)) => {
            string(Pattern::Contains(non_empty("contains_match", value)?))
        }
        Some(Spec::SafeRegexMatch(regex)) => string(Pattern::Regex(
            full_match_regex(regex).map_err(|r| Rejection::new("safe_regex_match", r))?,
        )),
        Some(Spec::StringMatch(m)) => HeaderRule::String(string_matcher(m).within("string_match")?),
    };
    Ok(HeaderMatch {
        name: key,
        rule,
        invert: *invert_match,
        treat_missing_as_empty: *treat_missing_header_as_empty,
    })
}

fn header_key(name: &str) -> Result<HeaderKey, Reason> {
    // Envoy lower-cases matcher names (`LowerCaseString`).
    let name = name.to_ascii_lowercase();
    Ok(match name.as_str() {
        ":method" => HeaderKey::Method,
        ":authority" | "host" => HeaderKey::Authority,
        ":path" => HeaderKey::Path,
        ":scheme" => HeaderKey::Scheme,
        "" => return Err(Reason::Missing),
        pseudo if pseudo.starts_with(':') => {
            return Err(Reason::UnsupportedValue(format!("pseudo-header {pseudo}")));
        }
        _ => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) if JOINED_HEADERS.binary_search(&header.as_str()).is_ok() => {
                HeaderKey::Joined(header)
            }
            Ok(header) => HeaderKey::Each(header),
            Err(_) => return Err(Reason::Invalid(format!("{name:?} is not a header name"))),
        },
    })
}

fn query_matcher(proto: &route_pb::QueryParameterMatcher) -> Result<QueryMatch, Rejection> {
    use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as Spec;
    let route_pb::QueryParameterMatcher {
        name,
        query_parameter_match_specifier,
    } = proto;
    if name.is_empty() {
        return Err(Rejection::new("name", Reason::Missing));
    }
    let value = match query_parameter_match_specifier {
        None | Some(Spec::PresentMatch(true)) => None,
        // Envoy's implementation treats `present_match: false` as "present", contrary to its
        // name; refuse it rather than pick one reading.
        Some(Spec::PresentMatch(false)) => {
            return Err(Rejection::new(
                "present_match",
                Reason::UnsupportedValue("false".into()),
            ));
        }
        Some(Spec::StringMatch(m)) => Some(string_matcher(m).within("string_match")?),
    };
    Ok(QueryMatch {
        name: name.clone(),
        value,
    })
}

pub(crate) fn string_matcher(proto: &matcher_pb::StringMatcher) -> Result<StringMatch, Rejection> {
    use matcher_pb::string_matcher::MatchPattern;
    let matcher_pb::StringMatcher {
        ignore_case,
        match_pattern,
    } = proto;
    // Envoy (PGV) rejects empty prefix, suffix and contains patterns.
    let non_empty = |field: &'static str, value: &String| {
        if value.is_empty() {
            Err(Rejection::new(field, Reason::Missing))
        } else {
            Ok(value.clone())
        }
    };
    let pattern = match match_pattern {
        None => {
            return Err(Rejection::new(
                "match_pattern",
                Reason::Invalid(
                    "one of exact, prefix, suffix, contains or safe_regex is required".into(),
                ),
            ));
        }
        Some(MatchPattern::Exact(value)) => Pattern::Exact(value.clone()),
        Some(MatchPattern::Prefix(value)) => Pattern::Prefix(non_empty("prefix", value)?),
        Some(MatchPattern::Suffix(value)) => Pattern::Suffix(non_empty("suffix", value)?),
        Some(MatchPattern::Contains(value)) => Pattern::Contains(non_empty("contains", value)?),
        Some(MatchPattern::SafeRegex(regex)) => {
            Pattern::Regex(full_match_regex(regex).map_err(|r| Rejection::new("safe_regex", r))?)
        }
        Some(MatchPattern::Custom(_)) => return Err(Rejection::unsupported("custom")),
    };
    Ok(StringMatch {
        pattern,
        ignore_case: *ignore_case,
    })
}

/// Compiles a `RegexMatcher` for a full match, as RE2's `FullMatch` that Envoy uses.
///
/// The regex crate's syntax is close to RE2's; both forbid backreferences and lookaround. One
/// deliberate difference: `\d`, `\w`, `\s` and `\b` are Unicode-aware here and ASCII-only in
/// RE2. So they differ only on non-ASCII input, which percent-encoded paths do not contain.
fn full_match_regex(proto: &matcher_pb::RegexMatcher) -> Result<Regex, Reason> {
    // `engine_type` only carries RE2's deprecated program-size hint; nothing to honour here.
    let matcher_pb::RegexMatcher {
        regex,
        engine_type: _,
    } = proto;
    // Compiled alone first: a pattern like `a)|(b` must fail rather than escape the anchors
    // wrapped around it below.
    compile(regex)?;
    compile(&format!(r"\A(?:{regex})\z"))
}

fn compile(pattern: &str) -> Result<Regex, Reason> {
    if pattern.is_empty() {
        return Err(Reason::InvalidRegex("empty pattern".into()));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| Reason::InvalidRegex(e.to_string()))
}

/// A `RegexMatchAndSubstitute`. The substitution uses RE2's syntax, `\1` for a group and `\\`
/// for a backslash; it is translated to the regex crate's `${1}` once, here.
fn regex_rewrite(proto: &matcher_pb::RegexMatchAndSubstitute) -> Result<PathRewrite, Rejection> {
    let matcher_pb::RegexMatchAndSubstitute {
        pattern,
        substitution,
    } = proto;
    let pattern = pattern
        .as_ref()
        .ok_or_else(|| Rejection::new("pattern", Reason::Missing))?;
    let matcher_pb::RegexMatcher {
        regex,
        engine_type: _,
    } = pattern;
    let regex = compile(regex).map_err(|r| Rejection::new("pattern", r))?;
    let substitution = re2_substitution(substitution, regex.captures_len())
        .map_err(|r| Rejection::new("substitution", r))?;
    Ok(PathRewrite::Regex {
        regex,
        substitution,
    })
}

/// RE2 rewrite string → regex crate replacement. RE2 fails such a rewrite at request time
/// (leaving the path alone); a bad group number or escape is rejected here instead, at load.
fn re2_substitution(re2: &str, groups: usize) -> Result<String, Reason> {
    let mut out = String::with_capacity(re2.len());
    let mut chars = re2.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(digit @ '0'..='9') => {
                    let group = digit as usize - '0' as usize;
                    if group >= groups {
                        return Err(Reason::Invalid(format!(
                            "\\{group} refers to a group the pattern does not have"
                        )));
                    }
                    out.push_str(&format!("${{{group}}}"));
                }
                Some('\\') => out.push('\\'),
                _ => {
                    return Err(Reason::Invalid(
                        "a backslash must be followed by a digit or a backslash".into(),
                    ));
                }
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn forward(
    proto: &route_pb::RouteAction,
    matched: RewriteBase,
    vhost_retry: Option<&RetryPolicy>,
) -> Result<Forward, Rejection> {
    use route_pb::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let route_pb::RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = proto;
    reject_set(&[
        (
            *cluster_not_found_response_code != 0,
            "cluster_not_found_response_code",
        ),
        (metadata_match.is_some(), "metadata_match"),
        (path_rewrite_policy.is_some(), "path_rewrite_policy"),
        (!path_rewrite.is_empty(), "path_rewrite"),
        (*append_x_forwarded_host, "append_x_forwarded_host"),
        (idle_timeout.is_some(), "idle_timeout"),
        (flush_timeout.is_some(), "flush_timeout"),
        (early_data_policy.is_some(), "early_data_policy"),
        (
            retry_policy_typed_config.is_some(),
            "retry_policy_typed_config",
        ),
        (
            !request_mirror_policies.is_empty(),
            "request_mirror_policies",
        ),
        (*priority != 0, "priority"),
        (!rate_limits.is_empty(), "rate_limits"),
        (
            include_vh_rate_limits.is_some_and(|v| v.value),
            "include_vh_rate_limits",
        ),
        (!hash_policy.is_empty(), "hash_policy"),
        (cors.is_some(), "cors"),
        (max_grpc_timeout.is_some(), "max_grpc_timeout"),
        (grpc_timeout_offset.is_some(), "grpc_timeout_offset"),
        (!upgrade_configs.is_empty(), "upgrade_configs"),
        (
            internal_redirect_policy.is_some(),
            "internal_redirect_policy",
        ),
        (*internal_redirect_action != 0, "internal_redirect_action"),
        (max_internal_redirects.is_some(), "max_internal_redirects"),
        (hedge_policy.is_some(), "hedge_policy"),
        (max_stream_duration.is_some(), "max_stream_duration"),
    ])?;

    let clusters = match cluster_specifier {
        None => {
            return Err(Rejection::new(
                "cluster_specifier",
                Reason::Invalid("one of cluster or weighted_clusters is required".into()),
            ));
        }
        Some(ClusterSpecifier::Cluster(name)) if name.is_empty() => {
            return Err(Rejection::new("cluster", Reason::Missing));
        }
        Some(ClusterSpecifier::Cluster(name)) => Clusters::One(name.as_str().into()),
        Some(ClusterSpecifier::WeightedClusters(weighted)) => {
            weighted_clusters(weighted).within("weighted_clusters")?
        }
        Some(ClusterSpecifier::ClusterHeader(_)) => {
            return Err(Rejection::unsupported("cluster_header"));
        }
        Some(ClusterSpecifier::ClusterSpecifierPlugin(_)) => {
            return Err(Rejection::unsupported("cluster_specifier_plugin"));
        }
        Some(ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
            return Err(Rejection::unsupported("inline_cluster_specifier_plugin"));
        }
    };
    let timeout = match timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) => {
            Some(duration(d).map_err(|r| Rejection::new("timeout", r))?).filter(|d| !d.is_zero())
        }
    };
    let retry_policy = match retry_policy {
        Some(policy) => Some(self::retry_policy(policy).within("retry_policy")?),
        None => vhost_retry.cloned(),
    };
    if !prefix_rewrite.is_empty() && regex_rewrite.is_some() {
        return Err(Rejection::new(
            "regex_rewrite",
            Reason::Invalid("only one of prefix_rewrite or regex_rewrite may be set".into()),
        ));
    }
    let path_rewrite = if let Some(rewrite) = regex_rewrite {
        Some(self::regex_rewrite(rewrite).within("regex_rewrite")?)
    } else if !prefix_rewrite.is_empty() {
        no_control_chars(prefix_rewrite).map_err(|r| Rejection::new("prefix_rewrite", r))?;
        Some(PathRewrite::Prefix {
            matched,
            with: prefix_rewrite.clone(),
        })
    } else {
        None
    };
    let host_rewrite = match host_rewrite_specifier {
        None => None,
        // Envoy: an empty literal is no rewrite.
        Some(HostRewriteSpecifier::HostRewriteLiteral(host)) if host.is_empty() => None,
        Some(HostRewriteSpecifier::HostRewriteLiteral(host)) => {
            Some(HeaderValue::from_str(host).map_err(|_| {
                Rejection::new(
                    "host_rewrite_literal",
                    Reason::Invalid(format!("{host:?} is not a valid header value")),
                )
            })?)
        }
        Some(HostRewriteSpecifier::AutoHostRewrite(auto)) if !auto.value => None,
        Some(HostRewriteSpecifier::AutoHostRewrite(_)) => {
            return Err(Rejection::unsupported("auto_host_rewrite"));
        }
        Some(HostRewriteSpecifier::HostRewriteHeader(_)) => {
            return Err(Rejection::unsupported("host_rewrite_header"));
        }
        Some(HostRewriteSpecifier::HostRewritePathRegex(_)) => {
            return Err(Rejection::unsupported("host_rewrite_path_regex"));
        }
        Some(HostRewriteSpecifier::HostRewrite(_)) => {
            return Err(Rejection::unsupported("host_rewrite"));
        }
    };
    Ok(Forward {
        clusters,
        timeout,
        retry_policy,
        path_rewrite,
        host_rewrite,
    })
}

#[allow(deprecated)] // `total_weight` is deprecated, and read to document that it is ignored
fn weighted_clusters(proto: &route_pb::WeightedCluster) -> Result<Clusters, Rejection> {
    use route_pb::weighted_cluster::RandomValueSpecifier;
    let route_pb::WeightedCluster {
        clusters,
        // Envoy ignores it too and uses the sum of the weights, per the field's documentation.
        total_weight: _,
        runtime_key_prefix,
        random_value_specifier,
    } = proto;
    reject_if(!runtime_key_prefix.is_empty(), "runtime_key_prefix")?;
    match random_value_specifier {
        None => {}
        Some(RandomValueSpecifier::UseHashPolicy(use_hash)) if !use_hash.value => {}
        Some(RandomValueSpecifier::UseHashPolicy(_)) => {
            return Err(Rejection::unsupported("use_hash_policy"));
        }
        Some(RandomValueSpecifier::HeaderName(_)) => {
            return Err(Rejection::unsupported("header_name"));
        }
    }
    if clusters.is_empty() {
        return Err(Rejection::new("clusters", Reason::Missing));
    }
    let mut out = Vec::with_capacity(clusters.len());
    let mut total = 0u64;
    for (i, cluster) in clusters.iter().enumerate() {
        let (name, weight) = cluster_weight(cluster).at("clusters", i)?;
        total += u64::from(weight);
        out.push((Arc::from(name), weight));
    }
    if total == 0 {
        return Err(Rejection::new(
            "clusters",
            Reason::Invalid("the sum of the weights must be greater than 0".into()),
        ));
    }
    if total > u64::from(u32::MAX) {
        return Err(Rejection::new(
            "clusters",
            Reason::Invalid(format!("the sum of the weights exceeds {}", u32::MAX)),
        ));
    }
    Ok(Clusters::Weighted {
        clusters: out,
        total,
    })
}

fn cluster_weight(
    proto: &route_pb::weighted_cluster::ClusterWeight,
) -> Result<(String, u32), Rejection> {
    let route_pb::weighted_cluster::ClusterWeight {
        name,
        cluster_header,
        weight,
        metadata_match,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        typed_per_filter_config,
        host_rewrite_specifier,
    } = proto;
    reject_set(&[
        (!cluster_header.is_empty(), "cluster_header"),
        (metadata_match.is_some(), "metadata_match"),
        (!request_headers_to_add.is_empty(), "request_headers_to_add"),
        (
            !request_headers_to_remove.is_empty(),
            "request_headers_to_remove",
        ),
        (
            !response_headers_to_add.is_empty(),
            "response_headers_to_add",
        ),
        (
            !response_headers_to_remove.is_empty(),
            "response_headers_to_remove",
        ),
        (
            !typed_per_filter_config.is_empty(),
            "typed_per_filter_config",
        ),
        (host_rewrite_specifier.is_some(), "host_rewrite_literal"),
    ])?;
    if name.is_empty() {
        return Err(Rejection::new("name", Reason::Missing));
    }
    let weight = weight
        .as_ref()
        .ok_or_else(|| Rejection::new("weight", Reason::Missing))?;
    Ok((name.clone(), weight.value))
}

fn retry_policy(proto: &route_pb::RetryPolicy) -> Result<RetryPolicy, Rejection> {
    let route_pb::RetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = proto;
    reject_set(&[
        (per_try_idle_timeout.is_some(), "per_try_idle_timeout"),
        (retry_priority.is_some(), "retry_priority"),
        (!retry_host_predicate.is_empty(), "retry_host_predicate"),
        (
            !retry_options_predicates.is_empty(),
            "retry_options_predicates",
        ),
        (
            *host_selection_retry_max_attempts != 0,
            "host_selection_retry_max_attempts",
        ),
        (!retriable_status_codes.is_empty(), "retriable_status_codes"),
        (retry_back_off.is_some(), "retry_back_off"),
        (
            rate_limited_retry_back_off.is_some(),
            "rate_limited_retry_back_off",
        ),
        (!retriable_headers.is_empty(), "retriable_headers"),
        (*refresh_cluster_on_retry, "refresh_cluster_on_retry"),
    ])?;

    let mut conditions = Vec::new();
    for token in retry_on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let condition = match token {
            "5xx" => RetryOn::FiveXx,
            "gateway-error" => RetryOn::GatewayError,
            "reset" => RetryOn::Reset,
            "reset-before-request" => RetryOn::ResetBeforeRequest,
            "connect-failure" => RetryOn::ConnectFailure,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "refused-stream" => RetryOn::RefusedStream,
            "envoy-ratelimited"
            | "retriable-status-codes"
            | "retriable-headers"
            | "http3-post-connect-failure"
            | "cancelled"
            | "deadline-exceeded"
            | "internal"
            | "resource-exhausted"
            | "unavailable" => {
                return Err(Rejection::new(
                    "retry_on",
                    Reason::UnsupportedValue(format!("retry condition {token:?}")),
                ));
            }
            // Envoy skips unknown names; a typo here would silently disable retries, so it is
            // rejected instead (a deliberate difference).
            _ => {
                return Err(Rejection::new(
                    "retry_on",
                    Reason::Invalid(format!("unknown retry condition {token:?}")),
                ));
            }
        };
        conditions.push(condition);
    }
    conditions.sort_unstable();
    conditions.dedup();
    let per_try_timeout = per_try_timeout
        .as_ref()
        .map(duration)
        .transpose()
        .map_err(|r| Rejection::new("per_try_timeout", r))?
        .filter(|d| !d.is_zero());
    let retriable_request_headers = retriable_request_headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h).at("retriable_request_headers", i))
        .collect::<Result<_, _>>()?;
    Ok(RetryPolicy {
        retry_on: conditions,
        num_retries: num_retries.map_or(1, |n| n.value),
        per_try_timeout,
        retriable_request_headers,
    })
}

fn redirect(proto: &route_pb::RedirectAction, matched: RewriteBase) -> Result<Redirect, Rejection> {
    use route_pb::redirect_action::{
        PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
    };
    let route_pb::RedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = proto;
    let status = match RedirectResponseCode::try_from(*response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
        Ok(RedirectResponseCode::Found) => StatusCode::FOUND,
        Ok(RedirectResponseCode::SeeOther) => StatusCode::SEE_OTHER,
        Ok(RedirectResponseCode::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
        Ok(RedirectResponseCode::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
        Err(_) => {
            return Err(Rejection::new(
                "response_code",
                Reason::Invalid(format!("unknown response code {response_code}")),
            ));
        }
    };
    let scheme = match scheme_rewrite_specifier {
        None | Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(SchemeRewriteSpecifier::SchemeRedirect(scheme)) if scheme.is_empty() => None,
        Some(SchemeRewriteSpecifier::SchemeRedirect(scheme)) => {
            // RFC 3986 scheme syntax; anything else would corrupt the Location header.
            let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !valid {
                return Err(Rejection::new(
                    "scheme_redirect",
                    Reason::Invalid(format!("{scheme:?} is not a URI scheme")),
                ));
            }
            Some(scheme.clone())
        }
    };
    let host = if host_redirect.is_empty() {
        None
    } else if host_redirect.parse::<http::uri::Authority>().is_err() {
        return Err(Rejection::new(
            "host_redirect",
            Reason::Invalid(format!("{host_redirect:?} is not a host")),
        ));
    } else {
        Some(host_redirect.clone())
    };
    let port = match *port_redirect {
        0 => None,
        port => Some(u16::try_from(port).map_err(|_| {
            Rejection::new(
                "port_redirect",
                Reason::Invalid(format!("{port} is not a port")),
            )
        })?),
    };
    let path = match path_rewrite_specifier {
        None => RedirectPath::Keep,
        Some(PathRewriteSpecifier::PathRedirect(path)) if path.is_empty() => RedirectPath::Keep,
        Some(PathRewriteSpecifier::PathRedirect(path)) => {
            no_control_chars(path).map_err(|r| Rejection::new("path_redirect", r))?;
            RedirectPath::Replace {
                path: path.clone(),
                has_query: path.contains('?'),
            }
        }
        Some(PathRewriteSpecifier::PrefixRewrite(prefix)) if prefix.is_empty() => {
            RedirectPath::Keep
        }
        Some(PathRewriteSpecifier::PrefixRewrite(prefix)) => {
            no_control_chars(prefix).map_err(|r| Rejection::new("prefix_rewrite", r))?;
            RedirectPath::Rewrite(PathRewrite::Prefix {
                matched,
                with: prefix.clone(),
            })
        }
        Some(PathRewriteSpecifier::RegexRewrite(rewrite)) => {
            RedirectPath::Rewrite(regex_rewrite(rewrite).within("regex_rewrite")?)
        }
        Some(PathRewriteSpecifier::PathRewrite(_)) => {
            return Err(Rejection::unsupported("path_rewrite"));
        }
    };
    Ok(Redirect {
        status,
        scheme,
        host,
        port,
        path,
        strip_query: *strip_query,
    })
}

fn direct_response(
    proto: &route_pb::DirectResponseAction,
    max_body: u32,
) -> Result<DirectResponse, Rejection> {
    let route_pb::DirectResponseAction {
        status,
        body,
        body_format,
    } = proto;
    reject_if(body_format.is_some(), "body_format")?;
    let status = u16::try_from(*status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            Rejection::new(
                "status",
                Reason::Invalid(format!("{status} is not between 200 and 599")),
            )
        })?;
    let body = match body {
        None => Vec::new(),
        Some(source) => data_source(source).within("body")?,
    };
    if body.len() > max_body as usize {
        return Err(Rejection::new(
            "body",
            Reason::Invalid(format!(
                "{} bytes is more than max_direct_response_body_size_bytes ({max_body})",
                body.len()
            )),
        ));
    }
    Ok(DirectResponse { status, body })
}

fn data_source(proto: &core_pb::DataSource) -> Result<Vec<u8>, Rejection> {
    use core_pb::data_source::Specifier;
    let core_pb::DataSource {
        watched_directory,
        specifier,
    } = proto;
    reject_if(watched_directory.is_some(), "watched_directory")?;
    match specifier {
        None => Ok(Vec::new()),
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        // Reading files or the environment is I/O that config building does not do.
        Some(Specifier::Filename(_)) => Err(Rejection::unsupported("filename")),
        Some(Specifier::EnvironmentVariable(_)) => {
            Err(Rejection::unsupported("environment_variable"))
        }
    }
}

/// One level's `*_headers_to_add` and `*_headers_to_remove`; `fields` names them for errors.
fn header_mutations(
    add: &[core_pb::HeaderValueOption],
    remove: &[String],
    fields: (&'static str, &'static str),
) -> Result<HeaderMutations, Rejection> {
    let add: Vec<HeaderToAdd> = add
        .iter()
        .enumerate()
        .map(|(i, option)| header_to_add(option).at(fields.0, i))
        .collect::<Result<_, _>>()?;
    let remove = remove
        .iter()
        .enumerate()
        .map(|(i, name)| {
            mutable_header_name(name, "removed").map_err(|r| Rejection::new_at(fields.1, i, r))
        })
        .collect::<Result<_, _>>()?;
    let reads_request = add.iter().any(|a| a.value.reads_request());
    let reads_client_address = add.iter().any(|a| a.value.reads_client_address());
    Ok(HeaderMutations {
        add,
        remove,
        reads_request,
        reads_client_address,
    })
}

#[allow(deprecated)] // `append` is deprecated, and still honoured by Envoy
fn header_to_add(proto: &core_pb::HeaderValueOption) -> Result<HeaderToAdd, Rejection> {
    use core_pb::header_value_option::HeaderAppendAction;
    let core_pb::HeaderValueOption {
        header,
        append,
        append_action,
        keep_empty_value,
    } = proto;
    let header = header
        .as_ref()
        .ok_or_else(|| Rejection::new("header", Reason::Missing))?;
    let core_pb::HeaderValue {
        key,
        value,
        raw_value,
    } = header;
    let name = mutable_header_name(key, "modified")
        .map_err(|r| Rejection::new("key", r).within("header"))?;
    // Envoy's header parser reads `value` only; a `raw_value` would be dropped.
    reject_if(!raw_value.is_empty(), "raw_value").within("header")?;
    let value = header_format(value).map_err(|r| Rejection::new("value", r).within("header"))?;
    let action = match append {
        Some(_) if *append_action != HeaderAppendAction::AppendIfExistsOrAdd as i32 => {
            return Err(Rejection::new(
                "append",
                Reason::Invalid("append and append_action are both set".into()),
            ));
        }
        Some(append) if append.value => AppendAction::AppendIfExistsOrAdd,
        Some(_) => AppendAction::OverwriteIfExistsOrAdd,
        None => match HeaderAppendAction::try_from(*append_action) {
            Ok(HeaderAppendAction::AppendIfExistsOrAdd) => AppendAction::AppendIfExistsOrAdd,
            Ok(HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
            Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => AppendAction::OverwriteIfExistsOrAdd,
            Ok(HeaderAppendAction::OverwriteIfExists) => AppendAction::OverwriteIfExists,
            Err(_) => {
                return Err(Rejection::new(
                    "append_action",
                    Reason::Invalid(format!("unknown append action {append_action}")),
                ));
            }
        },
    };
    Ok(HeaderToAdd {
        name,
        value,
        action,
        keep_empty_value: *keep_empty_value,
    })
}

/// A header name that header mutations may touch. Envoy refuses pseudo-headers and `host`
/// (the path and authority have their own rewrites).
fn mutable_header_name(name: &str, verb: &str) -> Result<HeaderName, Reason> {
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        return Err(Reason::Invalid(format!(
            "{name}: :-prefixed or host headers may not be {verb}"
        )));
    }
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Reason::Invalid(format!("{name:?} is not a header name")))
}

/// Envoy's rule for strings that end up in headers (`HTTP_HEADER_VALUE`): no NUL, CR or LF.
#[cfg(test)]
mod tests;
