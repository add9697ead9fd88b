//! The HTTP/1.1 server the proxy runs first on every HTTP/1 connection, between the listener's
//! accepted socket and [`crate::proxy::handle`].
//!
//! It reads a request head, builds the request, awaits the proxy's response and writes it, all
//! in the connection's own task, with the response head and the start of its body in one write.
//! It serves only the plain requests that make up almost all API traffic: HTTP/1.1, no
//! `Transfer-Encoding`, no `Upgrade`, no `Expect`, not `CONNECT`, and a body (if any) that
//! arrived whole with its head. Any other request, and anything it cannot parse, hands the
//! connection, with every byte already read, over to hyper's server for the rest of its life
//! ([`Ended::HandOver`]): streamed bodies, upgrades, HTTP/1.0, HTTP/2's preface, malformed and
//! oversized heads are all answered exactly as hyper answers them.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;

use super::{Shutdown, Watchdog};
use crate::config::listener::HttpSettings;
use crate::header_maps;
use crate::proxy::body::ClientBody;
use crate::proxy::headers::has_token;
use crate::proxy::{self, Downstream, SharedDataPlane};
use crate::upstream::h1::parse_length;

/// hyper's default limit on a request's header fields, which this server shares: a request with
/// more is handed over, and hyper answers it.
const MAX_HEADERS: usize = 100;

/// hyper's default `header_read_timeout`, used when the listener sets none: a head must arrive
/// whole within it once its first bytes did.
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The read buffer's size: a request head and a small body fit in one read.
const READ_BUFFER: usize = 8 * 1024;

/// Response bytes gathered before they are written, when the body keeps its frames coming.
const WRITE_BATCH: usize = 64 * 1024;

/// The limits a connection's requests are read under (the connection manager's settings).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Header fields per request, at most.
    pub max_headers: usize,
    /// Bytes of a request head, at most; hyper's `max_buf_size`.
    pub max_head_bytes: usize,
    /// How long a started head may take to arrive whole.
    pub header_timeout: Option<Duration>,
}

impl Limits {
    /// The limits of `http` (`max_headers_count`, `max_request_headers_kb`,
    /// `request_headers_timeout`), which hyper's HTTP/1 server gets too.
    pub(super) fn of(http: &HttpSettings) -> Self {
        let header_bytes = http.max_request_headers_kb.saturating_mul(1024) as usize;
        Self {
            max_headers: usize::try_from(http.max_headers_count).unwrap_or(usize::MAX),
            // hyper's smallest buffer.
            max_head_bytes: header_bytes.max(8192),
            header_timeout: http.timeouts.request_headers,
        }
    }
}

/// What ends or drains a connection: the listener's shutdown signal and its idle and duration
/// limits, checked while the connection waits for a request.
pub(super) struct Lifetime<'a> {
    /// Resolves when the listener is removed or the proxy drains, for a connection waiting.
    pub shutdown: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
    /// The same signal, read without waiting after each response: cheaper than polling
    /// `shutdown`, which registers its waker each time.
    pub signals: &'a Shutdown,
    pub watchdog: &'a mut Watchdog,
}

/// How a connection left this server.
pub(super) enum Ended<I> {
    /// Closed: the client left or asked to close, a limit ran out, or the proxy shut it down.
    Closed,
    /// To be served by hyper from here on, the bytes `read` but not served first.
    HandOver { read: Bytes, io: I },
}

/// Serves plain HTTP/1.1 requests on `io` until the connection ends or a request needs hyper.
pub(super) async fn serve<I>(
    mut io: I,
    plane: &SharedDataPlane,
    downstream: &Downstream,
    limits: Limits,
    lifetime: &mut Lifetime<'_>,
) -> Ended<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut read = BytesMut::with_capacity(READ_BUFFER);
    let mut spans = Vec::new();
    let mut out = Vec::with_capacity(1024);
    let header_timeout = limits.header_timeout.unwrap_or(DEFAULT_HEADER_TIMEOUT);
    loop {
        // A whole head, or the reason to stop waiting for one.
        let mut head_timer: Option<Pin<Box<Sleep>>> = None;
        let parsed = loop {
            if !read.is_empty() {
                match parse(&mut read, &mut spans, &limits) {
                    Parse::Request(parsed) => break parsed,
                    Parse::Partial if read.len() < limits.max_head_bytes => {
                        if head_timer.is_none() {
                            head_timer = Some(Box::pin(tokio::time::sleep(header_timeout)));
                        }
                    }
                    // A head too large for the limit: hyper answers 431.
                    Parse::Partial | Parse::HandOver => {
                        let read = read.freeze();
                        return Ended::HandOver { read, io };
                    }
                }
            }
            if read.capacity() - read.len() < 1024 {
                read.reserve(READ_BUFFER);
            }
            let waiting = read.is_empty();
            tokio::select! {
                biased;
                result = io.read_buf(&mut read) => match result {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(_) => {}
                },
                // An idle connection closes at once; a started head is read to its end.
                () = lifetime.shutdown.as_mut(), if waiting => return Ended::Closed,
                _ = lifetime.watchdog.interval.tick(), if waiting => {
                    if lifetime.watchdog.expired() {
                        return Ended::Closed;
                    }
                }
                () = expiry(&mut head_timer) => return Ended::Closed,
            }
        };

        let Parsed {
            request,
            keep_alive,
            trailers,
        } = parsed;
        let head_request = request.method() == Method::HEAD;
        let handling = proxy::handle(plane, downstream, request);
        tokio::pin!(handling);
        // The client may send its next request, or leave: a client that leaves cancels its
        // request, as with hyper.
        let response = loop {
            tokio::select! {
                biased;
                response = &mut handling => break response,
                result = io.read_buf(&mut read), if read.len() < limits.max_head_bytes => {
                    match result {
                        Ok(0) | Err(_) => return Ended::Closed,
                        Ok(_) => {}
                    }
                }
            }
        };
        let keep_alive = keep_alive && !lifetime.signals.is_signalled();
        let keep_alive = write_response(
            &mut io,
            &mut out,
            response,
            head_request,
            keep_alive,
            trailers,
        )
        .await
        .unwrap_or(false);
        lifetime.watchdog.touch();
        if !keep_alive {
            let _ = io.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// Waits for the head's timer, or forever when no head has started.
async fn expiry(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A request this server serves, read whole.
struct Parsed {
    request: Request<ClientBody>,
    /// Whether the connection stays open after the response (no `Connection: close`).
    keep_alive: bool,
    /// Whether the client takes trailers (`TE: trailers`), for a chunked response.
    trailers: bool,
}

/// What [`parse`] made of the bytes read.
// Returned once per request and unpacked at once: a box would be an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parse {
    Request(Parsed),
    /// The head, or the body, has not fully arrived.
    Partial,
    /// The request is hyper's to serve (see the module's description).
    HandOver,
}

/// Where a request's parts lie in its head, kept while the parser's borrow of the buffer lasts.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(part: &[u8], base: *const u8) -> Self {
        let start = part.as_ptr() as usize - base as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Reads a request off the front of `read`, when one has arrived whole and this server serves
/// it; `spans` is scratch space kept across requests.
fn parse(read: &mut BytesMut, spans: &mut Vec<(HeaderName, Span)>, limits: &Limits) -> Parse {
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut []);
    spans.clear();
    let base = read.as_ptr();
    let head_len = match head.parse_with_uninit_headers(read, &mut slots[..max_headers]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::HandOver,
    };
    if head.version != Some(1) {
        return Parse::HandOver;
    }
    let (Some(method), Some(path)) = (head.method, head.path) else {
        return Parse::HandOver;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::HandOver;
    };
    if method == Method::CONNECT {
        return Parse::HandOver;
    }
    let path = Span::of(path.as_bytes(), base);
    let mut content_length = None;
    for field in head.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parse::HandOver;
        };
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Parse::HandOver;
        }
        if name == header::CONTENT_LENGTH {
            match (content_length, parse_length(field.value)) {
                (None, Some(length)) => content_length = Some(length),
                // Repeated or malformed: hyper decides.
                _ => return Parse::HandOver,
            }
        }
        spans.push((name, Span::of(field.value, base)));
    }
    let body_len = content_length.unwrap_or(0);
    let Some(whole) = usize::try_from(body_len)
        .ok()
        .and_then(|len| len.checked_add(head_len))
    else {
        return Parse::HandOver;
    };
    if read.len() < whole {
        // The body is still coming: hyper streams it, with the stream timeouts.
        return Parse::HandOver;
    }

    let bytes = read.split_to(head_len).freeze();
    let body = read.split_to(body_len as usize).freeze();
    let Some(request) = build(&bytes, method, path, spans, body) else {
        // Put everything back for hyper, which reads it from the start.
        let mut again = BytesMut::with_capacity(bytes.len() + read.len());
        again.extend_from_slice(&bytes);
        again.extend_from_slice(read);
        *read = again;
        return Parse::HandOver;
    };
    let keep_alive = !has_token(request.headers(), &header::CONNECTION, "close");
    let trailers = has_token(request.headers(), &header::TE, "trailers");
    Parse::Request(Parsed {
        request,
        keep_alive,
        trailers,
    })
}

/// How many headers [`build`] leaves room for beyond the request's own.
const ROOM_FOR_ADDED_HEADERS: usize = 6;

/// The request from its head's bytes: header values share `head`'s buffer, as hyper's do.
fn build(
    head: &Bytes,
    method: Method,
    path: Span,
    fields: &mut Vec<(HeaderName, Span)>,
    body: Bytes,
) -> Option<Request<ClientBody>> {
    let uri = Uri::from_maybe_shared(head.slice(path.range())).ok()?;
    // Room for the headers the proxy adds (x-forwarded-for, x-forwarded-proto, x-request-id…),
    // which would otherwise grow, and rehash, the map one by one.
    let mut headers = header_maps::take(fields.len() + ROOM_FOR_ADDED_HEADERS);
    for (name, span) in fields.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(span.range())).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(ClientBody::Whole(Full::new(body)));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Exactly this many bytes (none for a response that cannot have a body).
    Length(u64),
    Chunked,
}

/// Writes `response` as hyper's server would: its headers in order, lowercase, then the
/// framing hyper chooses (the body's known length as `content-length`, else chunked), then
/// `connection: close` when the connection ends and `date` when the response has none.
/// Returns whether the connection may serve another request.
async fn write_response<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Response<B>,
    head_request: bool,
    keep_alive: bool,
    trailers_wanted: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    out.clear();
    if status.is_informational() {
        // hyper cannot send a 1xx as the final response either: it answers 500.
        out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n");
        out.extend_from_slice(b"connection: close\r\n");
        write_date(out);
        out.extend_from_slice(b"\r\n");
        io.write_all(out).await?;
        return Ok(false);
    }
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(reason) => out.extend_from_slice(reason.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }

    let no_content = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_have_body = !head_request && !no_content;
    // hyper's reading of the body: none, a known length, or unknown.
    let declared = if body.is_end_stream() {
        None
    } else {
        Some(body.size_hint().exact())
    };
    let mut framing = None;
    let mut wrote_date = false;
    let wrote_close = has_token(&parts.headers, &header::CONNECTION, "close");
    let keep_alive = keep_alive && !wrote_close;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            let length = match declared {
                // No body: the field only stays on a response to HEAD.
                None if !head_request => continue,
                None => 0,
                Some(Some(known)) => known,
                Some(None) => match parse_length(value.as_bytes()) {
                    Some(length) => length,
                    None => return Err(io::Error::other("invalid content-length")),
                },
            };
            if framing.is_some() {
                continue;
            }
            framing = Some(Framing::Length(length));
        } else if name == header::TRANSFER_ENCODING {
            // The framing is this server's to choose, as below.
            continue;
        } else if name == header::DATE {
            wrote_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match framing {
        Some(framing) => framing,
        None => match declared {
            Some(None) if can_have_body => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            Some(None) => Framing::Length(0),
            None | Some(Some(0)) => {
                if !head_request && !no_content {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(Some(length)) => {
                if no_content {
                    Framing::Length(0)
                } else {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                    out.extend_from_slice(b"\r\n");
                    Framing::Length(length)
                }
            }
        },
    };
    let framing = if can_have_body {
        framing
    } else {
        Framing::Length(0)
    };
    if !keep_alive && !wrote_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        write_date(out);
    }
    out.extend_from_slice(b"\r\n");
    // The head is encoded: its map serves a later message.
    header_maps::give_back(parts.headers);

    let complete = write_body(io, out, &mut body, framing, trailers_wanted).await?;
    io.write_all(out).await?;
    io.flush().await?;
    Ok(keep_alive && complete)
}

/// Appends the body to `out` as `framing` says, writing whenever the body has to wait for more
/// or `out` has grown large, and leaves the rest in `out`. Returns whether the body was sent
/// whole, so that the connection can be reused.
async fn write_body<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    body: &mut B,
    framing: Framing,
    trailers_wanted: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let mut remaining = match framing {
        Framing::Length(0) => return Ok(true),
        Framing::Length(length) => length,
        Framing::Chunked => u64::MAX,
    };
    let mut trailers = None;
    loop {
        // What the body has now; the bytes gathered so far go out before waiting for more.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    io.flush().await?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            // The response cannot be finished: the connection closes, as hyper's does.
            Some(Err(_)) => return Ok(false),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) if framing == Framing::Chunked => {
                if !data.is_empty() {
                    write_hex(out, data.len());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                }
            }
            Ok(data) => {
                let fits = (data.len() as u64).min(remaining) as usize;
                out.extend_from_slice(&data[..fits]);
                remaining -= fits as u64;
                if fits < data.len() {
                    // More than its content-length: what fits is sent, and no more.
                    return Ok(false);
                }
            }
            Err(frame) => {
                if let Ok(fields) = frame.into_trailers() {
                    trailers = Some(fields);
                }
            }
        }
        if out.len() >= WRITE_BATCH {
            io.write_all(out).await?;
            out.clear();
        }
    }
    match framing {
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n");
            if let Some(fields) = trailers.filter(|_| trailers_wanted) {
                for (name, value) in &fields {
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"\r\n");
            Ok(true)
        }
        // A body shorter than its content-length leaves the client waiting: close.
        Framing::Length(_) => Ok(remaining == 0),
    }
}

/// A chunk size, in lowercase hex.
fn write_hex(out: &mut Vec<u8>, value: usize) {
    let digits = (usize::BITS - value.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(value >> (shift * 4)) & 0xf]);
    }
}

/// Appends `date: <now>` in the IMF-fixdate format, formatted once a second per thread.
fn write_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second {
            *cached_second = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::task::Context;

    use arc_swap::ArcSwapOption;
    use hyper::body::{Frame, SizeHint};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::now_ms;

    const LIMITS: Limits = Limits {
        max_headers: 100,
        max_head_bytes: 8192,
        header_timeout: None,
    };

    fn parse_all(bytes: &[u8]) -> (Parse, BytesMut) {
        let mut read = BytesMut::from(bytes);
        let parsed = parse(&mut read, &mut Vec::new(), &LIMITS);
        (parsed, read)
    }

    fn served(parse: Parse) -> Parsed {
        match parse {
            Parse::Request(parsed) => parsed,
            Parse::Partial => panic!("partial"),
            Parse::HandOver => panic!("handed over"),
        }
    }

    #[tokio::test]
    async fn a_plain_request_is_read_with_its_headers_in_order() {
        let head = b"GET /a/b?c=d HTTP/1.1\r\nHost: api.test\r\nX-Two: 1\r\nx-two: 2\r\nTE: trailers\r\n\r\n";
        let (parsed, rest) = parse_all(head);
        let parsed = served(parsed);
        assert!(rest.is_empty());
        assert!(parsed.keep_alive);
        assert!(parsed.trailers);
        let request = parsed.request;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "api.test");
        let twos: Vec<_> = request.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert!(request.body().is_end_stream());
        assert_eq!(request.body().size_hint().exact(), Some(0));

        let (parsed, _) =
            parse_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!served(parsed).keep_alive);
    }

    #[test]
    fn a_head_cut_anywhere_waits_for_the_rest() {
        let head = b"GET /path HTTP/1.1\r\nHost: api.test\r\nAccept: */*\r\n\r\n";
        for cut in 1..head.len() {
            let (parsed, rest) = parse_all(&head[..cut]);
            assert!(matches!(parsed, Parse::Partial), "cut at {cut}");
            assert_eq!(&rest[..], &head[..cut]);
        }
    }

    #[tokio::test]
    async fn a_body_that_arrived_whole_is_read_and_the_next_request_stays() {
        let bytes =
            b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\n";
        let (parsed, rest) = parse_all(bytes);
        let request = served(parsed).request;
        assert_eq!(&rest[..], b"GET /next HTTP/1.1\r\n");
        assert_eq!(request.body().size_hint().exact(), Some(5));
        let body = http_body_util::BodyExt::collect(request.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"hello");
    }

    #[test]
    fn requests_this_server_does_not_serve_are_handed_over_untouched() {
        let cases: [&[u8]; 10] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
        ];
        for case in cases {
            let (parsed, rest) = parse_all(case);
            assert!(
                matches!(parsed, Parse::HandOver),
                "{}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(&rest[..], case);
        }
        // More header fields than the listener allows: hyper answers 431.
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..5 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut read = BytesMut::from(&many[..]);
        let limits = Limits {
            max_headers: 4,
            ..LIMITS
        };
        assert!(matches!(
            parse(&mut read, &mut Vec::new(), &limits),
            Parse::HandOver
        ));
        assert_eq!(&read[..], &many[..]);
    }

    /// A body given out frame by frame, with a wait before each, of unknown length.
    struct Frames(VecDeque<Frame<Bytes>>, bool);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            // Every other poll waits, so that both the gathering and the waiting paths run.
            self.1 = !self.1;
            if self.1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::default()
        }
    }

    /// The bytes written for `response`, with the `date` value blanked.
    async fn written<B: Body<Data = Bytes> + Unpin>(
        response: Response<B>,
        head_request: bool,
        keep_alive: bool,
        trailers: bool,
    ) -> (String, bool) {
        let mut io = Vec::new();
        let mut out = Vec::new();
        let reusable = write_response(
            &mut io,
            &mut out,
            response,
            head_request,
            keep_alive,
            trailers,
        )
        .await
        .unwrap();
        let text = String::from_utf8(io).unwrap();
        let start = text.find("date: ").expect("a date") + 6;
        let date = &text[start..start + 29];
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let text = format!("{}DATE{}", &text[..start], &text[start + 29..]);
        (text, reusable)
    }

    fn response<B>(status: u16, body: B) -> Response<B> {
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
            .headers_mut()
            .insert("x-b", HeaderValue::from_static("B"));
        response
    }

    /// A 200 whose `content-length` says 3, with `data` as a body of unknown length.
    fn declaring_three(data: &'static [u8]) -> Response<Frames> {
        let frames = Frames(
            VecDeque::from([Frame::data(Bytes::from_static(data))]),
            false,
        );
        let mut response = response(200, frames);
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        response
    }

    #[tokio::test]
    async fn responses_are_framed_as_hyper_frames_them() {
        let body = || Full::new(Bytes::from_static(b"hello"));
        assert_eq!(
            written(response(200, body()), false, true, false).await,
            (
                "HTTP/1.1 200 OK\r\nx-b: B\r\ncontent-length: 5\r\ndate: DATE\r\n\r\nhello".into(),
                true
            )
        );
        // HEAD: the length of the body that would have been, no body.
        assert_eq!(
            written(response(200, body()), true, true, false).await.0,
            "HTTP/1.1 200 OK\r\nx-b: B\r\ncontent-length: 5\r\ndate: DATE\r\n\r\n"
        );
        assert_eq!(
            written(response(204, Full::new(Bytes::new())), false, true, false)
                .await
                .0,
            "HTTP/1.1 204 No Content\r\nx-b: B\r\ndate: DATE\r\n\r\n"
        );
        assert_eq!(
            written(response(404, Full::new(Bytes::new())), false, false, false).await,
            (
                "HTTP/1.1 404 Not Found\r\nx-b: B\r\ncontent-length: 0\r\nconnection: close\r\ndate: DATE\r\n\r\n".into(),
                false
            )
        );
        // A content-length field on a body of unknown length is the framing.
        assert_eq!(
            written(declaring_three(b"abc"), false, true, false).await,
            (
                "HTTP/1.1 200 OK\r\nx-b: B\r\ncontent-length: 3\r\ndate: DATE\r\n\r\nabc".into(),
                true
            )
        );
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_chunked_with_trailers_when_asked() {
        let frames = || {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            Frames(
                VecDeque::from([
                    Frame::data(Bytes::from_static(b"hello ")),
                    Frame::data(Bytes::new()),
                    Frame::data(Bytes::from(vec![b'x'; 26])),
                    Frame::trailers(trailers),
                ]),
                false,
            )
        };
        let head = "HTTP/1.1 200 OK\r\nx-b: B\r\ntransfer-encoding: chunked\r\ndate: DATE\r\n\r\n";
        let chunks = format!("6\r\nhello \r\n1a\r\n{}\r\n0\r\n", "x".repeat(26));
        assert_eq!(
            written(response(200, frames()), false, true, true).await,
            (format!("{head}{chunks}grpc-status: 0\r\n\r\n"), true)
        );
        assert_eq!(
            written(response(200, frames()), false, true, false).await.0,
            format!("{head}{chunks}\r\n")
        );
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_length_ends_the_connection() {
        let (text, reusable) = written(declaring_three(b"ab"), false, true, false).await;
        assert!(text.ends_with("\r\n\r\nab"), "{text}");
        assert!(!reusable);
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (value, hex) in [(0, "0"), (9, "9"), (10, "a"), (255, "ff"), (4096, "1000")] {
            let mut out = Vec::new();
            write_hex(&mut out, value);
            assert_eq!(out, hex.as_bytes());
        }
    }

    /// Serves one connection with no configuration (every request answers 503) and returns
    /// how it ended, with the client's end.
    async fn serve_one() -> (tokio::task::JoinHandle<Option<Bytes>>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let plane: SharedDataPlane = Arc::new(ArcSwapOption::empty());
            let http = Arc::new(crate::config::listener::tests::default_settings("r"));
            let downstream =
                Downstream::new(peer, false, http, Arc::new(Metrics::new(false)), None);
            let mut shutdown = std::pin::pin!(std::future::pending::<()>());
            let signals = Shutdown {
                stopped: tokio::sync::watch::channel(false).1,
            };
            let activity = Arc::new(AtomicU64::new(now_ms()));
            let mut watchdog = Watchdog::new(&downstream.http, activity);
            let mut lifetime = Lifetime {
                shutdown: shutdown.as_mut(),
                signals: &signals,
                watchdog: &mut watchdog,
            };
            match serve(stream, &plane, &downstream, LIMITS, &mut lifetime).await {
                Ended::Closed => None,
                Ended::HandOver { read, .. } => Some(read),
            }
        });
        let client = TcpStream::connect(address).await.unwrap();
        (server, client)
    }

    /// Reads from `client` until `count` responses of `body` have arrived whole.
    async fn read_responses(client: &mut TcpStream, count: usize, body: &str) -> String {
        let mut text = String::new();
        let mut buf = [0; 4096];
        while text.matches(body).count() < count {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {text}");
            text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        text
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_then_a_streamed_one_is_handed_over() {
        let (server, mut client) = serve_one().await;
        client
            .write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let text = read_responses(&mut client, 2, "no configuration yet").await;
        assert_eq!(
            text.matches("HTTP/1.1 503 Service Unavailable\r\n").count(),
            2
        );
        assert_eq!(text.matches("content-length: 20\r\n").count(), 2);
        assert!(!text.contains("connection: close"));

        let streamed = b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        client.write_all(streamed).await.unwrap();
        let prefix = server.await.unwrap().expect("handed over");
        assert_eq!(&prefix[..], streamed);
    }

    #[tokio::test]
    async fn a_client_asking_to_close_gets_its_answer_then_the_end() {
        let (server, mut client) = serve_one().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = Vec::new();
        client.read_to_end(&mut text).await.unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.ends_with("no configuration yet"), "{text}");
        assert!(server.await.unwrap().is_none());
    }
}
