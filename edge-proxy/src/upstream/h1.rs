//! HTTP/1 exchanges driven by the request's own task: the last step of "cluster → load balancer
//! → pooled connection" for the common HTTP/1 request, one without a streamed body or upgrade.
//!
//! hyper's HTTP/1 client runs each connection in a task of its own: a request travels there
//! through a channel, and the response head and every body chunk come back through others, so
//! each request wakes two tasks and crosses four queues. Here the task serving the client
//! writes the request to the upstream socket, reads the response head, and reads the body as
//! the client's connection polls it, as nginx and Envoy do on their event loops. Requests that
//! stream a body or upgrade the connection still go through hyper (see [`super::pool`]).
//!
//! Framing follows RFC 9112: a response to `HEAD`, a 1xx, 204 or 304 has no body; a
//! `Transfer-Encoding` ending in `chunked` is decoded (trailers included); otherwise a valid
//! `Content-Length` bounds the body; otherwise it runs to the end of the connection. Informational
//! responses other than 101 are skipped, as hyper's client does. A connection is used again only
//! when its response was read exactly to its end, nothing followed it, and neither side asked to
//! close it.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt as _, ReadBuf};

use super::connector::UpstreamIo;
use super::pool::Http1Pool;
use crate::header_maps;
use crate::proxy::headers::has_token;

/// The most bytes a response head may take (Envoy's default `max_response_headers_kb` is 60).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The most header fields a response head may have (hyper's default).
const MAX_HEADERS: usize = 100;

/// The most bytes a chunk-size line (with extensions) or the trailer section may take.
const MAX_LINE_BYTES: usize = 4 * 1024;

/// Bodies larger than this are written on their own rather than copied behind the head.
const SEPARATE_BODY_BYTES: usize = 16 * 1024;

/// How much room a read asks for at least.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange, or the body it started, failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The socket failed.
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before a byte of the response arrived.
    #[error("upstream closed the connection before responding")]
    ClosedBeforeResponse,
    /// The upstream closed the connection in the middle of a response.
    #[error("upstream closed the connection in the middle of the response")]
    Truncated,
    /// What the upstream sent is not an HTTP/1 response.
    #[error("invalid upstream response: {0}")]
    Invalid(&'static str),
}

/// Whether `request` can be sent by [`Connection::exchange`]: no upgrade, and a body that is
/// empty or already whole, with a length its headers agree with.
pub fn can_exchange(method: &Method, headers: &HeaderMap, body_len: Option<u64>) -> bool {
    let Some(len) = body_len else {
        return false;
    };
    if *method == Method::CONNECT
        || headers.contains_key(header::UPGRADE)
        || headers.contains_key(header::TRANSFER_ENCODING)
    {
        return false;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => true,
        (Some(value), None) => parse_length(value.as_bytes()) == Some(len),
        (Some(_), Some(_)) => false,
    }
}

/// A pooled HTTP/1 connection whose exchanges the requesting task drives itself.
#[derive(Debug)]
pub struct Connection {
    io: UpstreamIo,
    /// Bytes read from the upstream and not yet handed on.
    read: BytesMut,
    /// The request being written, kept for its capacity.
    write: Vec<u8>,
}

impl Connection {
    /// A connection over `io`, just opened.
    pub fn new(io: UpstreamIo) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
        }
    }

    /// Gives the socket back (to hand an idle connection to hyper); `None` when bytes are
    /// waiting in its buffer, which only a broken upstream sends between responses.
    pub fn into_io(self) -> Option<UpstreamIo> {
        self.read.is_empty().then_some(self.io)
    }

    /// Whether an idle connection may take a request: nothing arrived while it was idle (an
    /// upstream that closes an idle connection makes it readable). Costs no system call unless
    /// the socket was marked readable since the last read.
    pub fn is_reusable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.io.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        // Readiness can outlive the data that raised it (the last read filled its buffer
        // exactly): read once to tell.
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Sends `request` (whose body is `body`, already whole) and reads the response head. The
    /// request must carry its `Host`; the URI's path and query are sent.
    pub async fn exchange(
        mut self: Box<Self>,
        request: &Request<()>,
        body: &Bytes,
    ) -> Result<(Response<()>, ResponseBody), (ExchangeError, Progress)> {
        self.write.clear();
        encode_request(&mut self.write, request, body);
        // A small body goes out with the head, in one write.
        let separate_body = body.len() > SEPARATE_BODY_BYTES;
        if !separate_body {
            self.write.extend_from_slice(body);
        }
        let head_only = *request.method() == Method::HEAD;
        if let Err(error) = write_all(&mut self.io, &self.write).await {
            return Err((error.into(), Progress::Unsent));
        }
        if separate_body && let Err(error) = write_all(&mut self.io, body).await {
            return Err((error.into(), Progress::Sent));
        }
        self.read.clear();
        loop {
            match parse_head(&mut self.read, head_only) {
                Ok(Some(Parsed::Informational)) => continue,
                Ok(Some(Parsed::Final(response, kind, keep_alive))) => {
                    let body = ResponseBody {
                        connection: Some(self),
                        kind,
                        keep_alive: keep_alive && request_keeps_alive(request),
                        pool: None,
                    };
                    return Ok((response, body));
                }
                Ok(None) => {}
                Err(error) => return Err((error, Progress::Answered)),
            }
            if self.read.len() >= MAX_HEAD_BYTES {
                return Err((
                    ExchangeError::Invalid("response head too large"),
                    Progress::Answered,
                ));
            }
            let received = !self.read.is_empty();
            match read_more(&mut self.io, &mut self.read).await {
                Ok(0) if received => return Err((ExchangeError::Truncated, Progress::Answered)),
                Ok(0) => return Err((ExchangeError::ClosedBeforeResponse, Progress::Sent)),
                Ok(_) => {}
                Err(error) if received => return Err((error.into(), Progress::Answered)),
                Err(error) => return Err((error.into(), Progress::Sent)),
            }
        }
    }
}

/// How far a failed exchange got: what decides whether the request may go on another
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// No byte of the request left.
    Unsent,
    /// The request left; no byte of a response came back.
    Sent,
    /// Part of a response came back.
    Answered,
}

/// The response body of an exchange, read from the connection as it is polled; the connection
/// goes back to its pool when the body has been read to its end.
#[derive(Debug)]
pub struct ResponseBody {
    connection: Option<Box<Connection>>,
    kind: BodyKind,
    keep_alive: bool,
    pool: Option<Arc<Http1Pool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// The body is over (or there was none).
    Done,
    /// This many bytes are left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, up to an empty line.
    Trailers,
}

impl ResponseBody {
    /// Gives the connection back to `pool` when the body ends (at once when there is none).
    pub fn returning_to(mut self, pool: Arc<Http1Pool>) -> Self {
        self.pool = Some(pool);
        if self.kind == BodyKind::Done {
            self.finish();
        }
        self
    }

    /// The body ended: its connection goes back to the pool if it can take another request.
    fn finish(&mut self) {
        self.kind = BodyKind::Done;
        let Some(connection) = self.connection.take() else {
            return;
        };
        if let Some(pool) = &self.pool
            && self.keep_alive
            && connection.read.is_empty()
        {
            pool.put_back(connection);
        }
    }

    /// The next piece of the body: `Ok(None)` at its end.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, ExchangeError>> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            let read = &mut connection.read;
            match self.kind {
                BodyKind::Done => {
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
                BodyKind::Length(0) => {
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
                BodyKind::Length(left) => {
                    if !read.is_empty() {
                        let take = read.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let data = read.split_to(take).freeze();
                        let left = left - take as u64;
                        self.kind = BodyKind::Length(left);
                        if left == 0 {
                            // The last frame: the reader may stop polling after it.
                            self.finish();
                        }
                        return Poll::Ready(Ok(Some(Frame::data(data))));
                    }
                }
                BodyKind::UntilClose => {
                    if !read.is_empty() {
                        let data = read.split().freeze();
                        return Poll::Ready(Ok(Some(Frame::data(data))));
                    }
                }
                BodyKind::Chunked(state) => match decode_chunk(read, state)? {
                    Decoded::Data(data, next) => {
                        self.kind = BodyKind::Chunked(next);
                        return Poll::Ready(Ok(Some(Frame::data(data))));
                    }
                    Decoded::Moved(next) => {
                        self.kind = BodyKind::Chunked(next);
                        continue;
                    }
                    Decoded::End(trailers) => {
                        self.finish();
                        return Poll::Ready(Ok(trailers.map(Frame::trailers)));
                    }
                    Decoded::NeedMore => {}
                },
            }
            // Nothing buffered to hand on: read from the upstream.
            let connection = self.connection.as_mut().expect("checked above");
            let n = ready!(poll_read_more(&mut connection.io, &mut connection.read, cx))?;
            if n == 0 {
                return match self.kind {
                    BodyKind::UntilClose => {
                        // The end of this body, and of the connection.
                        self.keep_alive = false;
                        self.finish();
                        Poll::Ready(Ok(None))
                    }
                    _ => {
                        self.connection = None;
                        Poll::Ready(Err(ExchangeError::Truncated))
                    }
                };
            }
        }
    }

    /// Whether the body is over.
    pub fn is_end_stream(&self) -> bool {
        matches!(self.kind, BodyKind::Done | BodyKind::Length(0))
    }

    /// The body's length when it is known.
    pub fn size_hint(&self) -> SizeHint {
        match self.kind {
            BodyKind::Done => SizeHint::with_exact(0),
            BodyKind::Length(left) => SizeHint::with_exact(left),
            BodyKind::Chunked(_) | BodyKind::UntilClose => SizeHint::default(),
        }
    }

    /// Polls the next frame, for the [`hyper::body::Body`] wrapper.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        match ready!(self.poll_next(cx)) {
            Ok(frame) => Poll::Ready(frame.map(Ok)),
            Err(error) => {
                // A failed body leaves the connection in an unknown state: it is closed.
                self.connection = None;
                self.kind = BodyKind::Done;
                Poll::Ready(Some(Err(error)))
            }
        }
    }
}

/// What one step of the chunked decoder found in the buffer.
enum Decoded {
    Data(Bytes, Chunk),
    Moved(Chunk),
    End(Option<HeaderMap>),
    NeedMore,
}

/// One step of the chunked decoder (RFC 9112 §7.1) from `state` over the bytes in `read`.
fn decode_chunk(read: &mut BytesMut, state: Chunk) -> Result<Decoded, ExchangeError> {
    match state {
        Chunk::Size => {
            let Some(end) = find_crlf(read) else {
                return if read.len() > MAX_LINE_BYTES {
                    Err(ExchangeError::Invalid("chunk size line too long"))
                } else {
                    Ok(Decoded::NeedMore)
                };
            };
            let line = read.split_to(end + 2);
            let size = parse_chunk_size(&line[..end])?;
            Ok(Decoded::Moved(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(left) => {
            if read.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let take = read.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let data = read.split_to(take).freeze();
            let left = left - take as u64;
            let next = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Decoded::Data(data, next))
        }
        Chunk::DataEnd => {
            if read.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if &read[..2] != b"\r\n" {
                return Err(ExchangeError::Invalid("chunk data not followed by CRLF"));
            }
            read.advance(2);
            Ok(Decoded::Moved(Chunk::Size))
        }
        Chunk::Trailers => {
            // The trailer section ends with an empty line; without trailers that is all there is.
            if read.starts_with(b"\r\n") {
                read.advance(2);
                return Ok(Decoded::End(None));
            }
            let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                return if read.len() > MAX_LINE_BYTES {
                    Err(ExchangeError::Invalid("chunked trailers too long"))
                } else {
                    Ok(Decoded::NeedMore)
                };
            };
            let section = read.split_to(end + 4).freeze();
            Ok(Decoded::End(Some(parse_trailers(&section)?)))
        }
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// The size in a chunk-size line, extensions ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ExchangeError> {
    let invalid = ExchangeError::Invalid("invalid chunk size");
    let digits = line
        .iter()
        .position(|&b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(invalid);
    }
    let rest = &line[digits..];
    // Whitespace may precede an extension (`;name=value`); nothing else may follow the size.
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(invalid);
    }
    let digits = std::str::from_utf8(&line[..digits])
        .map_err(|_| ExchangeError::Invalid("invalid chunk size"))?;
    u64::from_str_radix(digits, 16).map_err(|_| invalid)
}

/// The trailer fields of a chunked body (`section` ends with the empty line).
fn parse_trailers(section: &Bytes) -> Result<HeaderMap, ExchangeError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(ExchangeError::Invalid("invalid chunked trailers")),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ExchangeError::Invalid("invalid trailer name"))?;
        let value = HeaderValue::from_maybe_shared(section.slice_ref(field.value))
            .map_err(|_| ExchangeError::Invalid("invalid trailer value"))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// A response head parsed off the front of the buffer.
enum Parsed {
    /// A 1xx other than 101, skipped.
    Informational,
    /// The response, how its body is framed, and whether the upstream keeps the connection.
    Final(Response<()>, BodyKind, bool),
}

/// Parses a response head from the front of `read` (removing it); `None` until it is whole.
fn parse_head(read: &mut BytesMut, head_only: bool) -> Result<Option<Parsed>, ExchangeError> {
    // Left uninitialised: httparse fills only as many as the head has.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let length = match config.parse_response_with_uninit_headers(&mut parsed, read, &mut fields) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Invalid("too many response headers"));
        }
        Err(_) => return Err(ExchangeError::Invalid("malformed response head")),
    };
    let code = parsed.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Invalid("invalid status"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ExchangeError::Invalid("101 without an upgrade request"));
    }
    if status.is_informational() {
        read.advance(length);
        return Ok(Some(Parsed::Informational));
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Where each field lies in the head, so that the head can become one shared buffer whose
    // slices are the values (no copy per value), as hyper's parser does. Heads are bounded
    // well below 4 GiB, so offsets fit in `u32`s, which keeps this table small.
    let base = read.as_ptr() as usize;
    let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let field_count = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        *span = (
            offset(field.name.as_bytes()),
            field.name.len() as u32,
            offset(field.value),
            field.value.len() as u32,
        );
    }
    let head = read.split_to(length).freeze();
    let mut headers = header_maps::take(field_count);
    let mut content_length: Option<u64> = None;
    let mut conflicting_length = false;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = version == Version::HTTP_10;
    for &(name_at, name_len, value_at, value_len) in &spans[..field_count] {
        let (name_at, value_at) = (name_at as usize, value_at as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len as usize])
            .map_err(|_| ExchangeError::Invalid("invalid header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len as usize))
                .map_err(|_| ExchangeError::Invalid("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            match (parse_length(value.as_bytes()), content_length) {
                (Some(n), None) => content_length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => conflicting_length = true,
            }
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding counts: `chunked` must be the final one.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let bodiless =
        head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let kind = if bodiless {
        BodyKind::Done
    } else if transfer_encoding {
        // Transfer-Encoding overrides Content-Length, and such a message must not be reused
        // (RFC 9112 §6.3).
        if content_length.is_some() || conflicting_length {
            close = true;
        }
        if chunked {
            BodyKind::Chunked(Chunk::Size)
        } else {
            close = true;
            BodyKind::UntilClose
        }
    } else if conflicting_length {
        return Err(ExchangeError::Invalid("invalid content-length"));
    } else if let Some(length) = content_length {
        if length == 0 {
            BodyKind::Done
        } else {
            BodyKind::Length(length)
        }
    } else {
        close = true;
        BodyKind::UntilClose
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Parsed::Final(response, kind, !close)))
}

/// A `Content-Length` value: digits only.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether the request lets the connection live on after its response.
fn request_keeps_alive(request: &Request<()>) -> bool {
    !has_token(request.headers(), &header::CONNECTION, "close")
}

/// Writes the request line and header fields of `request` into `out`, with a `Content-Length`
/// for a body that has none; as hyper's client writes them (lower-case names, in order).
fn encode_request(out: &mut Vec<u8>, request: &Request<()>, body: &Bytes) {
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() && !request.headers().contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes all of `bytes` and flushes them (TLS holds records back until a flush).
async fn write_all(io: &mut UpstreamIo, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

async fn read_more(io: &mut UpstreamIo, read: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| poll_read_more(io, read, cx)).await
}

/// Reads what the socket has into the spare room of `read`; `Ok(0)` at the end of the stream.
fn poll_read_more(
    io: &mut UpstreamIo,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < READ_CHUNK / 4 {
        read.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], head_only: bool) -> Result<Option<Parsed>, ExchangeError> {
        parse_head(&mut BytesMut::from(bytes), head_only)
    }

    /// The response, its body framing and whether the connection stays open.
    fn parsed(bytes: &[u8]) -> (Response<()>, BodyKind, bool) {
        match head(bytes, false) {
            Ok(Some(Parsed::Final(response, kind, keep_alive))) => (response, kind, keep_alive),
            other => panic!("{other:?}"),
        }
    }

    impl std::fmt::Debug for Parsed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Parsed::Informational => f.write_str("Informational"),
                Parsed::Final(response, kind, keep_alive) => {
                    write!(f, "Final({}, {kind:?}, {keep_alive})", response.status())
                }
            }
        }
    }

    #[test]
    fn content_length_frames_the_body_and_keeps_the_connection() {
        let (response, kind, keep_alive) =
            parsed(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello");
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(kind, BodyKind::Length(5));
        assert!(keep_alive);
        let values: Vec<_> = response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&[u8], bool, BodyKind, bool); 10] = [
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
                BodyKind::Chunked(Chunk::Size),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false,
                BodyKind::Chunked(Chunk::Size),
                true,
            ),
            // Transfer-Encoding wins over Content-Length, and the connection is not reused.
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
                BodyKind::Chunked(Chunk::Size),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                false,
                BodyKind::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                false,
                BodyKind::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                false,
                BodyKind::Done,
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
                false,
                BodyKind::Done,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
                true,
                BodyKind::Done,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                false,
                BodyKind::Done,
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n",
                false,
                BodyKind::Length(2),
                true,
            ),
        ];
        for (bytes, head_only, kind, keep_alive) in cases {
            let text = String::from_utf8_lossy(bytes);
            match head(bytes, head_only) {
                Ok(Some(Parsed::Final(_, k, keep))) => {
                    assert_eq!((k, keep), (kind, keep_alive), "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // HTTP/1.0 closes unless asked not to.
        let (_, _, keep_alive) = parsed(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n");
        assert!(!keep_alive);
    }

    #[test]
    fn informational_responses_are_skipped_and_101_refused() {
        let mut read = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut read, false),
            Ok(Some(Parsed::Informational))
        ));
        assert!(matches!(
            parse_head(&mut read, false),
            Ok(Some(Parsed::Final(..)))
        ));
        assert!(read.is_empty());
        assert!(matches!(
            head(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
                false
            ),
            Err(ExchangeError::Invalid(_))
        ));
    }

    #[test]
    fn a_partial_head_waits_and_a_bad_one_fails() {
        let whole = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        for cut in 0..whole.len() {
            assert!(
                matches!(head(&whole[..cut], false), Ok(None)),
                "cut at {cut}"
            );
        }
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad, false), Err(ExchangeError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let too_many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(matches!(
            head(too_many.as_bytes(), false),
            Err(ExchangeError::Invalid("too many response headers"))
        ));
    }

    /// Decodes a whole chunked body fed in pieces of `step` bytes: its data and trailers, and
    /// what was left after it.
    fn decode_all(
        body: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), ExchangeError> {
        let mut read = BytesMut::new();
        let mut fed = 0;
        let mut state = Chunk::Size;
        let mut data = Vec::new();
        loop {
            match decode_chunk(&mut read, state)? {
                Decoded::Data(bytes, next) => {
                    data.extend_from_slice(&bytes);
                    state = next;
                }
                Decoded::Moved(next) => state = next,
                Decoded::End(trailers) => return Ok((data, trailers, read)),
                Decoded::NeedMore => {
                    assert!(fed < body.len(), "ran out of input in {state:?}");
                    let end = (fed + step).min(body.len());
                    read.extend_from_slice(&body[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        let body = b"5;ext=1\r\nhello\r\n1a \r\n abcdefghijklmnopqrstuvwxy\r\n0\r\nx-checksum: 42\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, trailers, rest) = decode_all(body, step).unwrap();
            assert_eq!(data, b"hello abcdefghijklmnopqrstuvwxy", "step {step}");
            assert_eq!(trailers.unwrap()["x-checksum"], "42", "step {step}");
            // What follows the body is left for the connection to judge.
            assert!(b"NEXT".starts_with(&rest), "step {step}");
        }
        let (data, trailers, _) = decode_all(b"3\r\nabc\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(data, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn bad_chunk_framing_fails() {
        for bad in [
            &b"x\r\n"[..],
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(
                matches!(decode_all(bad, bad.len()), Err(ExchangeError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; MAX_LINE_BYTES + 2];
        let mut read = BytesMut::from(&long[..]);
        assert!(decode_chunk(&mut read, Chunk::Size).is_err());
    }

    #[test]
    fn requests_are_written_as_hyper_writes_them() {
        let mut out = Vec::new();
        let request = Request::post("/submit?x=1")
            .header(header::HOST, "upstream.test")
            .header("x-a", "1")
            .body(())
            .unwrap();
        encode_request(&mut out, &request, &Bytes::from_static(b"hello"));
        assert_eq!(
            out,
            b"POST /submit?x=1 HTTP/1.1\r\nhost: upstream.test\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
        );
        out.clear();
        let request = Request::get("http://upstream.test").body(()).unwrap();
        encode_request(&mut out, &request, &Bytes::new());
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn only_whole_bodies_without_upgrades_are_exchanged() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert!(can_exchange(&Method::GET, &headers(&[]), Some(0)));
        assert!(can_exchange(
            &Method::POST,
            &headers(&[("content-length", "3")]),
            Some(3)
        ));
        assert!(!can_exchange(
            &Method::POST,
            &headers(&[("content-length", "4")]),
            Some(3)
        ));
        assert!(!can_exchange(&Method::POST, &headers(&[]), None));
        assert!(!can_exchange(
            &Method::GET,
            &headers(&[("upgrade", "websocket")]),
            Some(0)
        ));
        assert!(!can_exchange(
            &Method::POST,
            &headers(&[("transfer-encoding", "chunked")]),
            Some(3)
        ));
        assert!(!can_exchange(&Method::CONNECT, &headers(&[]), Some(0)));
    }
}
