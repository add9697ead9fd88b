//! What the connection manager does to request headers before routing, as Envoy's
//! `ConnectionManagerUtility` does: `x-forwarded-for`, `x-forwarded-proto`, `x-request-id`,
//! path normalization, and hop-by-hop headers removed on the way up and down; and the client's
//! address as `x-forwarded-for` and `xff_num_trusted_hops` determine it ([`Addresses`]).

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use http::Request;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

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
/// `Host`. Shares the request's bytes: no copy.
pub fn authority<B>(request: &Request<B>) -> Option<Authority> {
    if let Some(authority) = request.uri().authority() {
        return Some(Authority::Uri(authority.clone()));
    }
    request
        .headers()
        .get(header::HOST)
        .filter(|h| !h.is_empty() && h.to_str().is_ok())
        .cloned()
        .map(Authority::Host)
}

/// Where a request is addressed, as [`authority`] found it.
#[derive(Debug, Clone)]
pub enum Authority {
    /// The target's authority.
    Uri(http::uri::Authority),
    /// The `Host` header's value, visible ASCII.
    Host(HeaderValue),
}

impl Authority {
    /// The authority's text.
    pub fn as_str(&self) -> &str {
        match self {
            Authority::Uri(authority) => authority.as_str(),
            // Checked by `authority`: never empty here.
            Authority::Host(value) => value.to_str().unwrap_or_default(),
        }
    }
}

/// Whether `authority` is a plain `host[:port]`: letters, digits, `.`, `-` and `_`, then at most
/// a port of digits. Such an authority is valid in a URI, which is known here without
/// building one (a copy); others are left to [`http::uri::Authority`]'s parser.
pub fn is_plain_authority(authority: &str) -> bool {
    let (host, port) = authority.split_once(':').unwrap_or((authority, "1"));
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && (1..=5).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
}

/// The path as routes see it: dot segments removed (`normalize_path`, RFC 3986 5.2.4) and
/// repeated slashes merged (`merge_slashes`). `None` when the path is not an origin-form path.
pub fn normalize_path<'a>(path_and_query: &'a str, http: &HttpSettings) -> Option<Cow<'a, str>> {
    if !path_and_query.starts_with('/') {
        // `OPTIONS *` is the one legal non-slash target; Envoy rejects it on routed listeners too.
        return None;
    }
    let bytes = path_and_query.as_bytes();
    let split = bytes
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(bytes.len());
    // Most paths have nothing to normalize: one pass over the bytes, and no copy, for them.
    let (mut dots, mut slashes) = (false, false);
    for pair in bytes[..split].windows(2) {
        if pair[0] == b'/' {
            dots |= pair[1] == b'.';
            slashes |= pair[1] == b'/';
        }
    }
    let dots = dots && http.normalize_path;
    let slashes = slashes && http.merge_slashes;
    if !dots && !slashes {
        return Some(Cow::Borrowed(path_and_query));
    }
    let (path, rest) = path_and_query.split_at(split);
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
    let proto = HeaderValue::from_static(scheme);
    if external {
        headers.insert(X_FORWARDED_PROTO, proto);
    } else {
        headers.entry(X_FORWARDED_PROTO).or_insert(proto);
    }
    // One lookup for the check and the insertion: each hashes the name anew.
    match headers.entry(X_REQUEST_ID) {
        Entry::Occupied(mut id) => {
            if external && !http.preserve_external_request_id && http.generate_request_id {
                id.insert(new_request_id());
            }
            Some(id.get().clone())
        }
        Entry::Vacant(slot) if http.generate_request_id => {
            Some(slot.insert(new_request_id()).clone())
        }
        Entry::Vacant(_) => None,
    }
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
    if let Entry::Vacant(slot) = headers.entry(X_FORWARDED_FOR) {
        slot.insert(ip.clone());
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
    // Owned by the value's one allocation, so the clones the request, its response and its log
    // take share it (a value copied from a slice allocates again on its first clone).
    HeaderValue::from_maybe_shared(Bytes::from_owner(text))
        .expect("hex digits and dashes are a valid header value")
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
    // most messages name nothing else, and most say just `keep-alive` or `close`.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let value = value.as_bytes();
        if value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close") {
            continue;
        }
        let tokens = value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        named.extend(
            tokens
                .filter(|token| {
                    !token.eq_ignore_ascii_case(b"close")
                        && !HOP_BY_HOP
                            .iter()
                            .any(|hop| token.eq_ignore_ascii_case(hop.as_str().as_bytes()))
                })
                .filter_map(|token| HeaderName::from_bytes(token).ok()),
        );
    }
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

    /// `prepare_request` on a request that carries `client_id`, with the connection manager's
    /// request id settings: the id it returns, and whether that is the client's.
    fn request_id_after(
        client_id: Option<&str>,
        use_remote_address: bool,
        preserve: bool,
        generate: bool,
    ) -> (Option<HeaderValue>, bool) {
        let mut http = crate::config::listener::tests::default_settings("r");
        http.use_remote_address = use_remote_address;
        http.preserve_external_request_id = preserve;
        http.generate_request_id = generate;
        let downstream = Downstream::new(
            "192.0.2.9:4000".parse().unwrap(),
            false,
            std::sync::Arc::new(http),
            std::sync::Arc::new(crate::metrics::Metrics::new(false)),
            None,
        );
        let mut headers = HeaderMap::new();
        if let Some(id) = client_id {
            headers.insert(X_REQUEST_ID, HeaderValue::from_str(id).unwrap());
        }
        let id = prepare_request(&mut headers, &downstream, "http");
        assert_eq!(
            headers.get(X_REQUEST_ID),
            id.as_ref(),
            "the header is the id returned"
        );
        assert_eq!(
            headers.get_all(X_REQUEST_ID).iter().count(),
            usize::from(id.is_some())
        );
        let kept = id
            .as_ref()
            .is_some_and(|id| Some(id.as_bytes()) == client_id.map(str::as_bytes));
        (id, kept)
    }

    #[test]
    fn a_request_id_is_kept_replaced_or_made_as_envoy_does() {
        // An external client's id is replaced, unless preserved.
        assert!(!request_id_after(Some("mine"), true, false, true).1);
        assert!(request_id_after(Some("mine"), true, true, true).1);
        // An internal (trusted) client's id is kept.
        assert!(request_id_after(Some("mine"), false, false, true).1);
        // Without generation an untrusted id stays, and none is made up.
        assert!(request_id_after(Some("mine"), true, false, false).1);
        assert_eq!(request_id_after(None, true, false, false).0, None);
        // Without a client id one is made, trusted or not.
        for external in [true, false] {
            let (id, _) = request_id_after(None, external, false, true);
            assert_eq!(id.unwrap().len(), 36);
        }
    }

    #[test]
    fn plain_authorities_are_told_apart_without_a_parser() {
        for plain in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "a_b-c.d",
            "x:1",
        ] {
            assert!(is_plain_authority(plain), "{plain}");
            assert!(http::uri::Authority::try_from(plain).is_ok(), "{plain}");
        }
        // Left to the parser, which accepts some (IPv6, userinfo) and refuses others.
        for other in [
            "",
            ":80",
            "host:",
            "host:123456",
            "[::1]:80",
            "u@host",
            "a b",
            "h:8:9",
        ] {
            assert!(!is_plain_authority(other), "{other}");
        }
    }

    #[test]
    fn an_authority_shares_the_request_s_bytes() {
        let request = Request::get("/x")
            .header(header::HOST, "example.com")
            .body(())
            .unwrap();
        let found = authority(&request).unwrap();
        assert!(matches!(found, Authority::Host(_)));
        assert_eq!(found.as_str(), "example.com");
        let request = Request::get("http://target.example:81/x")
            .header(header::HOST, "example.com")
            .body(())
            .unwrap();
        assert_eq!(authority(&request).unwrap().as_str(), "target.example:81");
        // An empty or non-visible-ASCII Host is no authority.
        for host in [&b""[..], b"caf\xc3\xa9"] {
            let request = Request::get("/x")
                .header(header::HOST, HeaderValue::from_bytes(host).unwrap())
                .body(())
                .unwrap();
            assert!(authority(&request).is_none());
        }
    }

    #[test]
    fn only_paths_with_dot_segments_or_repeated_slashes_are_copied() {
        let http = crate::config::listener::tests::default_settings("r");
        for unchanged in ["/", "/a/b.c", "/a./b", "/a?x=/./y", "/a#//"] {
            let normalized = normalize_path(unchanged, &http);
            assert!(matches!(normalized, Some(Cow::Borrowed(_))), "{unchanged}");
        }
        // A segment that starts with a dot is looked at, and left as it is.
        assert_eq!(normalize_path("/.well", &http).as_deref(), Some("/.well"));
        assert_eq!(normalize_path("/a/./b", &http).as_deref(), Some("/a/b"));
        assert_eq!(
            normalize_path("/a//b?c//d", &http).as_deref(),
            Some("/a/b?c//d")
        );
        let mut off = http.clone();
        off.normalize_path = false;
        off.merge_slashes = false;
        assert!(matches!(
            normalize_path("/a/./b//c", &off),
            Some(Cow::Borrowed(_))
        ));
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
