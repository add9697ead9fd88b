//! What the connection manager does to request headers before routing, as Envoy's
//! `ConnectionManagerUtility` does: `x-forwarded-for`, `x-forwarded-proto`, `x-request-id`,
//! path normalization, and hop-by-hop headers removed on the way up and down; and the client's
//! address as `x-forwarded-for` and `xff_num_trusted_hops` determine it ([`Addresses`]).

use std::borrow::Cow;
use std::net::IpAddr;

use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::Downstream;
use crate::config::listener::HttpSettings;

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection and are never forwarded (RFC 9110, 7.6.1), plus
/// `proxy-connection`, which some clients still send.
/// A `static`, not a `const`: a `const` would build (and drop) the array at each use.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// The request's authority: `:authority` (HTTP/2, or an HTTP/1.1 absolute-form target), else
/// `Host`.
pub fn authority<B>(request: &Request<B>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

/// The path as routes see it: dot segments removed (`normalize_path`, RFC 3986 5.2.4) and
/// repeated slashes merged (`merge_slashes`). `None` when the path is not an origin-form path.
pub fn normalize_path<'a>(path_and_query: &'a str, http: &HttpSettings) -> Option<Cow<'a, str>> {
    if !path_and_query.starts_with('/') {
        // `OPTIONS *` is the one legal non-slash target; Envoy rejects it on routed listeners too.
        return None;
    }
    let split = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    let (path, rest) = path_and_query.split_at(split);
    // Most paths have nothing to normalize: no copy for them.
    let dots = http.normalize_path && path.contains("/.");
    let slashes = http.merge_slashes && path.contains("//");
    if !dots && !slashes {
        return Some(Cow::Borrowed(path_and_query));
    }
    let mut path = if http.normalize_path {
        remove_dot_segments(path)
    } else {
        path.to_owned()
    };
    if http.merge_slashes {
        let mut merged = String::with_capacity(path.len());
        for c in path.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        path = merged;
    }
    Some(Cow::Owned(path + rest))
}

/// RFC 3986, section 5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                output.pop();
                trailing_slash = i == last;
            }
            other => {
                output.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &output {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// Applies the connection manager's request header rules and returns the request's id.
///
/// With `use_remote_address` every client is external, as in Envoy 1.40 without an
/// `internal_address_config` (which the proxy does not accept), so:
/// - `x-forwarded-for`: the client's address is appended (unless `skip_xff_append`);
/// - `x-forwarded-proto`: set to the connection's scheme;
/// - `x-request-id`: generated (with `generate_request_id`), unless
///   `preserve_external_request_id` keeps the client's;
/// - `x-envoy-*` headers are removed: they steer proxies (retries, timeouts) and a client must
///   not set them.
///
/// Without `use_remote_address` the proxy trusts what it is sent: `x-forwarded-proto` and
/// `x-request-id` are only added when absent.
pub fn prepare_request(
    headers: &mut HeaderMap,
    downstream: &Downstream,
    scheme: &'static str,
) -> Option<HeaderValue> {
    let http = &downstream.http;
    join_cookies(headers);
    let external = http.use_remote_address;
    if external {
        remove_envoy_headers(headers);
        if !http.skip_xff_append {
            append_forwarded_for(headers, &downstream.peer_address);
        }
    }
    if external || !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    let keep_id =
        headers.contains_key(X_REQUEST_ID) && (!external || http.preserve_external_request_id);
    if !keep_id && http.generate_request_id {
        headers.insert(X_REQUEST_ID, new_request_id());
    }
    headers.get(X_REQUEST_ID).cloned()
}

/// The `x-envoy-*` headers through which a request could steer a proxy; Envoy removes these
/// from external requests (its connection manager's and router's sanitizing), and other
/// `x-envoy-*` headers pass.
const ENVOY_CONTROL_HEADERS: [&str; 18] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-is-timeout-retry",
    "x-envoy-max-retries",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
];

/// HTTP/2 clients may send each cookie in its own `cookie` field; they are joined with `; `
/// into one (RFC 9113, 8.2.3), as an HTTP/1.1 upstream needs and as Envoy matches them.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

fn remove_envoy_headers(headers: &mut HeaderMap) {
    // Almost no request has any: one pass over the names instead of 18 lookups.
    if !headers.keys().any(|n| n.as_str().starts_with("x-envoy-")) {
        return;
    }
    for name in ENVOY_CONTROL_HEADERS {
        headers.remove(name);
    }
}

/// `ip` as a header value, as `x-forwarded-for` gets it: an IPv4-mapped IPv6 address as the
/// IPv4 address.
pub fn address_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_canonical().to_string())
        .expect("an IP address's text is a valid header value")
}

/// Appends `ip` (from [`address_value`]) to `x-forwarded-for`.
fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    // Most requests come without one: the value is the peer's, shared.
    if !headers.contains_key(X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, ip.clone());
        return;
    }
    // Several x-forwarded-for lines become one, joined with `,` as Envoy joins them.
    let mut value: Vec<u8> = Vec::new();
    for (i, line) in headers.get_all(X_FORWARDED_FOR).iter().enumerate() {
        if i > 0 {
            value.push(b',');
        }
        value.extend_from_slice(line.as_bytes());
    }
    // A client's empty line adds no empty hop.
    if !value.is_empty() {
        value.push(b',');
    }
    value.extend_from_slice(ip.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// What decides a request's client address (Envoy's downstream remote address, which RBAC's
/// `remote_ip` reads): the connection's peer, unless `x-forwarded-for` is trusted.
///
/// Worked out only when asked ([`Addresses::client`]), from the headers as
/// [`prepare_request`] left them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The connection's peer (Envoy's direct remote address).
    pub peer: IpAddr,
    use_remote_address: bool,
    xff_num_trusted_hops: u32,
    /// Whether [`prepare_request`] appended the peer to `x-forwarded-for`.
    appended: bool,
}

impl Addresses {
    /// The addresses of a request from `peer` on a connection manager with `http`'s settings.
    pub fn new(peer: IpAddr, http: &HttpSettings) -> Self {
        Self {
            peer,
            use_remote_address: http.use_remote_address,
            xff_num_trusted_hops: http.xff_num_trusted_hops,
            appended: http.use_remote_address && !http.skip_xff_append,
        }
    }

    /// A request whose client is its peer, whatever `x-forwarded-for` says.
    pub fn direct(peer: IpAddr) -> Self {
        Self {
            peer,
            use_remote_address: true,
            xff_num_trusted_hops: 0,
            appended: true,
        }
    }

    /// The client's address, as Envoy determines it. With `use_remote_address`, the peer,
    /// unless `xff_num_trusted_hops` is N > 0: then the Nth address from the right of the
    /// `x-forwarded-for` the client sent. Without it, the address after the last N in
    /// `x-forwarded-for` (Envoy's default XFF detection). When that address is absent or not
    /// an IP address, the peer.
    pub fn client(&self, headers: &HeaderMap) -> IpAddr {
        let skip = if self.use_remote_address {
            if self.xff_num_trusted_hops == 0 {
                return self.peer;
            }
            // Envoy reads the header before appending the peer; here the peer is its last
            // entry already.
            self.xff_num_trusted_hops - 1 + u32::from(self.appended)
        } else {
            self.xff_num_trusted_hops
        };
        forwarded_for(headers, skip).unwrap_or(self.peer)
    }
}

/// Envoy's `getLastAddressFromXFF`: the address after skipping `skip` entries from the right
/// of `x-forwarded-for` (its lines joined with `,`), spaces trimmed.
fn forwarded_for(headers: &HeaderMap, skip: u32) -> Option<IpAddr> {
    let mut lines = headers.get_all(X_FORWARDED_FOR).iter();
    let first = lines.next()?;
    let joined: std::borrow::Cow<'_, [u8]> = if lines.next().is_none() {
        first.as_bytes().into()
    } else {
        let all: Vec<&[u8]> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        all.join(&b","[..]).into()
    };
    let mut xff: &[u8] = &joined;
    for _ in 0..skip {
        let comma = xff.iter().rposition(|&b| b == b',')?;
        xff = &xff[..comma];
    }
    // A trailing comma leaves the whole rest, which does not parse: as Envoy.
    if let Some(comma) = xff.iter().rposition(|&b| b == b',')
        && comma + 1 < xff.len()
    {
        xff = &xff[comma + 1..];
    }
    std::str::from_utf8(xff).ok()?.trim().parse().ok()
}

/// A random UUID (version 4), as Envoy generates request ids.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    HeaderValue::from_bytes(&text).expect("hex digits and dashes are a valid header value")
}

/// Whether an HTTP/1.1 request asks to upgrade the connection (`Connection: upgrade` and an
/// `Upgrade` header).
pub fn requests_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has_upgrade(headers)
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &header::CONNECTION, "upgrade")
}

/// Whether a comma-separated list header (`Connection`, `TE`…), in any of its fields, holds
/// `token`, compared without regard to case.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the request asks for a WebSocket upgrade that the listener allows.
pub fn websocket_upgrade(headers: &HeaderMap, allowed: bool) -> bool {
    allowed
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && connection_has_upgrade(headers)
}

/// Removes hop-by-hop headers, and the headers the `Connection` header names. With `upgrade`,
/// `Connection: upgrade` and `Upgrade` stay, so the upgrade reaches the other side. `TE` stays
/// only as `trailers` (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names (a standard name compares as a tag) finds which of these the
    // message carries: most carry none, a response often `connection` alone. Only those are
    // looked up again, to be removed.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut te = false;
    for name in headers.keys() {
        if *name == header::TE {
            te = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    if !upgrade && !te && !present.contains(&true) {
        return;
    }
    // The headers the `connection` header names, except the hop-by-hop ones handled below
    // (`keep-alive`, or `upgrade`, which stays for an upgrade) and `close`, which names none:
    // most messages name nothing else.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|hop| token.eq_ignore_ascii_case(hop.as_str()))
        })
        .filter_map(|token| HeaderName::try_from(token).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if !present || (upgrade && (*name == header::CONNECTION || *name == header::UPGRADE)) {
            continue;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te {
        let te_trailers = headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        for (input, expected) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/../a", "/a"),
            ("/", "/"),
            ("/a//b", "/a//b"),
        ] {
            assert_eq!(remove_dot_segments(input), expected, "{input}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["x-kept"], "yes");
        assert_eq!(headers[header::TE], "trailers");
    }

    #[test]
    fn every_hop_by_hop_header_goes_whatever_connection_names() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Close, TE"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut headers, false);
        // `TE` named by `connection` goes whole, even as `trailers`.
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers["x-kept"], "yes");

        let mut headers = HeaderMap::new();
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1, "{headers:?}");
    }

    #[test]
    fn an_upgrade_keeps_its_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(websocket_upgrade(&headers, true));
        assert!(!websocket_upgrade(&headers, false));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::UPGRADE], "websocket");
    }

    #[test]
    fn cookies_sent_in_several_fields_become_one() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut headers);
        assert_eq!(
            headers.get_all(header::COOKIE).iter().collect::<Vec<_>>(),
            ["a=1; b=2"]
        );
    }

    #[test]
    fn the_client_address_trusts_as_many_forwarded_hops_as_configured() {
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        let addresses = |use_remote_address: bool, hops: u32, skip_append: bool| Addresses {
            peer,
            use_remote_address,
            xff_num_trusted_hops: hops,
            appended: use_remote_address && !skip_append,
        };
        let client = |addresses: Addresses, lines: &[&str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append(X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
            }
            // As the connection manager leaves the header before the filters run.
            if addresses.appended {
                append_forwarded_for(&mut headers, &address_value(peer));
            }
            addresses.client(&headers).to_string()
        };
        // use_remote_address, as the control plane configures: the peer, unless hops are
        // trusted; then the Nth address from the right of what the client sent.
        assert_eq!(
            client(addresses(true, 0, false), &["10.0.0.1"]),
            "192.0.2.9"
        );
        assert_eq!(client(addresses(true, 1, false), &["10.0.0.1"]), "10.0.0.1");
        assert_eq!(
            client(addresses(true, 1, false), &["10.0.0.1, 10.0.0.2"]),
            "10.0.0.2"
        );
        assert_eq!(
            client(addresses(true, 2, false), &["10.0.0.1, 10.0.0.2"]),
            "10.0.0.1"
        );
        // Several lines are one list.
        assert_eq!(
            client(addresses(true, 2, false), &["10.0.0.1", "10.0.0.2"]),
            "10.0.0.1"
        );
        // Too few hops, none, an empty or trailing entry, or garbage: the peer.
        assert_eq!(
            client(addresses(true, 3, false), &["10.0.0.1, 10.0.0.2"]),
            "192.0.2.9"
        );
        assert_eq!(client(addresses(true, 1, false), &[]), "192.0.2.9");
        assert_eq!(client(addresses(true, 1, false), &[""]), "192.0.2.9");
        assert_eq!(
            client(addresses(true, 1, false), &["10.0.0.1,"]),
            "192.0.2.9"
        );
        assert_eq!(client(addresses(true, 1, false), &["unknown"]), "192.0.2.9");
        assert_eq!(
            client(addresses(true, 1, false), &[" 2001:db8::1 "]),
            "2001:db8::1"
        );
        // skip_xff_append: the header as the client sent it.
        assert_eq!(
            client(addresses(true, 1, true), &["10.0.0.1, 10.0.0.2"]),
            "10.0.0.2"
        );
        // Without use_remote_address (Envoy's XFF detection): N hops skipped, then the last.
        assert_eq!(
            client(addresses(false, 0, false), &["10.0.0.1, 10.0.0.2"]),
            "10.0.0.2"
        );
        assert_eq!(
            client(addresses(false, 1, false), &["10.0.0.1, 10.0.0.2"]),
            "10.0.0.1"
        );
        assert_eq!(client(addresses(false, 0, false), &[]), "192.0.2.9");
        // A direct request is its peer's, whatever it says.
        assert_eq!(client(Addresses::direct(peer), &["10.0.0.1"]), "192.0.2.9");
    }

    #[test]
    fn forwarded_for_lines_are_joined_before_the_peer_is_appended() {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        append_forwarded_for(&mut headers, &address_value("192.0.2.9".parse().unwrap()));
        let lines: Vec<_> = headers.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(lines, ["10.0.0.1,10.0.0.2,192.0.2.9"]);
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, &address_value("192.0.2.9".parse().unwrap()));
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.9");
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static(""));
        append_forwarded_for(&mut headers, &address_value("192.0.2.9".parse().unwrap()));
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.9");
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = new_request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(new_request_id(), new_request_id());
    }
}
