//! Access logs: one JSON line per request, written after the response.
//!
//! This sits at the very end of the request flow. [`crate::proxy::handle`] starts a
//! [`RequestLog`] when the request arrives (only on listeners whose connection manager has an
//! `access_log`), fills it while routing and forwarding, and hands it to [`LoggedBody`] with
//! the response headers. The line is written when the response body ends, or when hyper drops
//! the body (client gone, stream reset), so `bytes_out` and `duration_ms` cover the whole
//! response as Envoy's `%BYTES_SENT%` and `%DURATION%` do.
//!
//! Lines are rendered straight into a buffer shared with one writer thread per distinct sink
//! (stdout, or a file opened for appending), as Envoy has its flush thread. The thread is woken
//! only when a batch of [`BATCH_BYTES`] has built up, at least every [`FLUSH_INTERVAL`], and on
//! [`flush_all`]: a request costs an uncontended lock and a copy, not a channel send and a task
//! wake-up, and a batch goes to the sink in one `write` from the buffer it was rendered in (no
//! hop through Tokio's blocking pool, no copy). A request never waits on the disk: when
//! [`MAX_PENDING_BYTES`] are waiting, lines are dropped. A sink that cannot be opened or
//! written is reported once in the process log, not once per line.
//!
//! Only the fields configured are written, and none of them holds a header other than the
//! request id and the host: `Authorization`, API keys and cookies never reach a log line, and
//! the query string (where API keys often travel) only with `include_query`.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tollgate_quota::PolicyOutcome;

use crate::config::listener::{AccessLogConfig, AccessLogField, AccessLogSink};
use crate::proxy::body::DownstreamBody;
use crate::trace::ServerSpan;

/// How often a writer flushes buffered lines, at most.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How many bytes of lines may wait for a writer before new lines are dropped (about 16,000
/// lines).
pub const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;

/// How many bytes of lines wake the writer before its next tick: batches keep the writer's
/// wake-ups and writes to a few hundred a second on a busy proxy, and the flush interval still
/// bounds the delay.
pub const BATCH_BYTES: usize = 64 * 1024;

/// How long [`flush_all`] waits for each sink's writer, at most.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer of each sink, shared by every listener that logs there.
static WRITERS: LazyLock<Mutex<HashMap<AccessLogSink, Writer>>> = LazyLock::new(Default::default);

/// A listener's access log: its config and the writer of its sink.
#[derive(Debug)]
pub struct AccessLogger {
    config: AccessLogConfig,
    /// Each field's key, rendered once: `"key":`, with the `,` before it from the second on.
    keys: Vec<Box<[u8]>>,
    writer: Writer,
}

impl AccessLogger {
    /// The logger for `config`, starting its sink's writer thread on first use.
    pub fn new(config: &AccessLogConfig) -> Arc<Self> {
        let mut writers = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
        let writer = writers
            .entry(config.sink.clone())
            .or_insert_with(|| Writer::start(config.sink.clone()))
            .clone();
        let keys = config
            .fields
            .iter()
            .enumerate()
            .map(|(i, (key, _))| {
                let mut rendered = Vec::with_capacity(key.len() + 4);
                if i > 0 {
                    rendered.push(b',');
                }
                json_string(&mut rendered, key);
                rendered.push(b':');
                rendered.into_boxed_slice()
            })
            .collect();
        Arc::new(Self {
            config: config.clone(),
            keys,
            writer,
        })
    }
}

/// Hands lines to a sink's writer task.
#[derive(Debug, Clone)]
struct Writer {
    shared: Arc<Shared>,
}

/// What request paths and a writer thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Lines not yet written, and the clock their times are read from.
    pending: Mutex<Pending>,
    /// Whether the writer has been asked to write now: a batch is ready, or a flush is asked
    /// for. Guarded with `wake`.
    woken: Mutex<bool>,
    /// Wakes the writer.
    wake: Condvar,
    /// Callers of [`flush_all`] waiting for the lines before them to be written.
    flushes: Mutex<Vec<oneshot::Sender<()>>>,
    /// Whether dropped lines have been reported already.
    overflow_reported: AtomicBool,
}

/// What a request appends to, under one lock.
#[derive(Debug, Default)]
struct Pending {
    /// Lines not yet written.
    lines: Vec<u8>,
    /// The wall clock, as the writer last read it.
    clock: WallClock,
}

/// Wall-clock times for log lines, read from the monotonic clock that requests already time
/// themselves with: a request pays no clock read for its start time. The writer reads both
/// clocks again each time it wakes (at least every [`FLUSH_INTERVAL`]), so a step of the system
/// clock shows in the lines within that interval, as Envoy's cached time source does.
#[derive(Debug)]
struct WallClock {
    /// A moment on the monotonic clock…
    anchor: std::time::Instant,
    /// …and the same moment on the system clock, since the Unix epoch.
    anchor_since_epoch: Duration,
    /// The text of the second lines were last written in.
    second: SecondText,
}

impl Default for WallClock {
    fn default() -> Self {
        let (anchor, anchor_since_epoch) = read_both_clocks();
        Self {
            anchor,
            anchor_since_epoch,
            second: SecondText::default(),
        }
    }
}

/// The monotonic clock and the system clock (since the Unix epoch), read one after the other.
fn read_both_clocks() -> (std::time::Instant, Duration) {
    let monotonic = std::time::Instant::now();
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (monotonic, since_epoch)
}

impl WallClock {
    /// Reads both clocks again; the second's text stays.
    fn read_again(&mut self) {
        (self.anchor, self.anchor_since_epoch) = read_both_clocks();
    }

    /// `at` on the system clock, since the Unix epoch.
    fn since_epoch(&self, at: std::time::Instant) -> Duration {
        match at.checked_duration_since(self.anchor) {
            Some(after) => self.anchor_since_epoch + after,
            None => self
                .anchor_since_epoch
                .saturating_sub(self.anchor.duration_since(at)),
        }
    }

    /// Writes `at` as RFC 3339 in UTC with milliseconds (`2026-11-22T19:50:21.867Z`), as
    /// Envoy's `%START_TIME%`.
    fn write_rfc3339(&mut self, out: &mut Vec<u8>, at: std::time::Instant) {
        self.second.write(out, self.since_epoch(at));
    }
}

/// The text of one second, `2026-11-22T19:50:21.`: lines of the same second copy it rather
/// than work out the date again.
#[derive(Debug)]
struct SecondText {
    second: u64,
    text: Vec<u8>,
}

impl Default for SecondText {
    fn default() -> Self {
        Self {
            // No second yet: the first line renders its own.
            second: u64::MAX,
            text: Vec::with_capacity(20),
        }
    }
}

impl SecondText {
    /// Writes `since_epoch` as RFC 3339 in UTC with milliseconds.
    fn write(&mut self, out: &mut Vec<u8>, since_epoch: Duration) {
        let secs = since_epoch.as_secs();
        if secs != self.second {
            self.second = secs;
            self.text.clear();
            write_date_and_second(&mut self.text, secs);
        }
        out.extend_from_slice(&self.text);
        write_padded(out, u64::from(since_epoch.subsec_millis()), 3);
        out.push(b'Z');
    }
}

impl Shared {
    fn wake(&self) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_one();
    }
}

impl Writer {
    fn start(sink: AccessLogSink) -> Self {
        let shared = Arc::new(Shared::default());
        let writer = Arc::clone(&shared);
        let started = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&sink, &writer));
        if let Err(error) = started {
            tracing::error!(%error, "cannot start the access log writer; its lines are dropped");
        }
        Self { shared }
    }

    /// Appends one line, rendered by `render` straight into the pending buffer.
    fn send(&self, render: impl FnOnce(&mut Pending)) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if pending.lines.len() >= MAX_PENDING_BYTES {
            drop(pending);
            if !self.shared.overflow_reported.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    pending_bytes = MAX_PENDING_BYTES,
                    "access log writer is behind; dropping lines"
                );
            }
            return;
        }
        let before = pending.lines.len();
        render(&mut pending);
        // Wake the writer once per batch, when this line crosses the threshold.
        let wake = before < BATCH_BYTES && pending.lines.len() >= BATCH_BYTES;
        drop(pending);
        if wake {
            self.shared.wake();
        }
    }
}

/// Flushes every access log (waiting up to [`FLUSH_TIMEOUT`] for each); the proxy calls it on
/// shutdown, after draining.
pub async fn flush_all() {
    let writers: Vec<Writer> = WRITERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for writer in writers {
        let (done, flushed) = oneshot::channel();
        writer
            .shared
            .flushes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(done);
        writer.shared.wake();
        // A sink stuck in a write (or a writer that never started) must not hold shutdown up.
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, flushed).await;
    }
}

/// The writer thread of one sink: writes what built up, when woken and every
/// [`FLUSH_INTERVAL`]. It lives as long as the process.
fn write_lines(sink: &AccessLogSink, shared: &Shared) {
    let mut out: Option<Box<dyn std::io::Write + Send>> = match sink {
        AccessLogSink::Stdout => Some(Box::new(std::io::stdout())),
        AccessLogSink::File(path) => match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            Ok(file) => Some(Box::new(file)),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot open access log; its lines are dropped");
                None
            }
        },
    };
    let mut failed = false;
    let mut batch = Vec::with_capacity(BATCH_BYTES * 2);
    loop {
        {
            let woken = shared.woken.lock().unwrap_or_else(|e| e.into_inner());
            let (mut woken, _) = shared
                .wake
                .wait_timeout_while(woken, FLUSH_INTERVAL, |woken| !*woken)
                .unwrap_or_else(|e| e.into_inner());
            *woken = false;
        }
        // Flushes asked for before this point are covered by the lines taken now.
        let flushes =
            std::mem::take(&mut *shared.flushes.lock().unwrap_or_else(|e| e.into_inner()));
        {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            // Swap buffers: the request paths go on filling the (empty, allocated) other one.
            std::mem::swap(&mut pending.lines, &mut batch);
            pending.clock.read_again();
        }
        if !batch.is_empty()
            && let Some(out) = &mut out
        {
            let result = out.write_all(&batch).and_then(|()| out.flush());
            report(sink, result, &mut failed);
        }
        batch.clear();
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Logs a write error once per sink, and again only after writes recovered.
fn report(sink: &AccessLogSink, result: std::io::Result<()>, failed: &mut bool) {
    match result {
        Ok(()) => *failed = false,
        Err(error) if !*failed => {
            *failed = true;
            tracing::error!(?sink, %error, "cannot write access log; lines are dropped until it recovers");
        }
        Err(_) => {}
    }
}

/// What is known of a request for its access log line; filled as the request goes through the
/// proxy, written by [`LoggedBody`]. It is boxed once, when the request arrives, and moves by
/// pointer from there; names from the config are shared, not copied.
#[derive(Debug)]
pub struct RequestLog {
    logger: Arc<AccessLogger>,
    started: Instant,
    method: Method,
    version: Version,
    /// The `Host` or `:authority`, as the client sent it.
    pub authority: Option<crate::proxy::headers::Authority>,
    /// The normalised path and query as the HTTP filters left it (an API key or token they
    /// removed is not in it), before rewrites.
    pub path_and_query: Option<LoggedPath>,
    /// The `x-request-id` the request went on with.
    pub request_id: Option<HeaderValue>,
    /// The route that matched.
    pub route: Option<Arc<str>>,
    /// The cluster picked.
    pub cluster: Option<Arc<str>>,
    /// The endpoint of the last upstream attempt.
    pub upstream: Option<SocketAddr>,
    /// The API key's consumer.
    pub consumer: Option<String>,
    /// What the quota filter decided.
    pub quota: Option<PolicyOutcome>,
    /// Request body bytes read from the client in one piece (a body buffered for retries).
    pub bytes_in: u64,
    /// Request body bytes counted as the body streams upstream; only for requests with a body.
    bytes_in_counter: Option<Arc<AtomicU64>>,
    status: u16,
    bytes_out: u64,
}

/// The path a log line shows: the request's own (shared, not copied) when no normalisation or
/// filter changed it.
#[derive(Debug)]
pub enum LoggedPath {
    /// The request target as received.
    Request(http::uri::PathAndQuery),
    /// What normalisation or a filter made of it.
    Changed(String),
}

impl LoggedPath {
    /// The path and query.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Request(path) => path.as_str(),
            Self::Changed(path) => path,
        }
    }
}

impl RequestLog {
    /// Starts the record of a request that arrived at `started`.
    pub fn new(
        logger: &Arc<AccessLogger>,
        started: Instant,
        method: Method,
        version: Version,
    ) -> Box<Self> {
        Box::new(Self {
            logger: Arc::clone(logger),
            started,
            method,
            version,
            authority: None,
            path_and_query: None,
            request_id: None,
            route: None,
            cluster: None,
            upstream: None,
            consumer: None,
            quota: None,
            bytes_in: 0,
            bytes_in_counter: None,
            status: 0,
            bytes_out: 0,
        })
    }

    /// The counter a streamed request body adds its bytes to.
    pub fn bytes_in_counter(&mut self) -> Arc<AtomicU64> {
        Arc::clone(self.bytes_in_counter.get_or_insert_with(Arc::default))
    }

    /// Appends the line, newline included, to the pending lines.
    fn render(&self, pending: &mut Pending, duration: Duration) {
        let line = &mut pending.lines;
        line.push(b'{');
        let keys = self.logger.keys.iter();
        for (key, (_, field)) in keys.zip(&self.logger.config.fields) {
            line.extend_from_slice(key);
            let path = |with_query: bool| {
                self.path_and_query
                    .as_ref()
                    .map(|p| match p.as_str().split_once('?') {
                        Some((path, _)) if !with_query => path,
                        _ => p.as_str(),
                    })
            };
            match field {
                AccessLogField::StartTime => {
                    line.push(b'"');
                    pending.clock.write_rfc3339(line, self.started.into_std());
                    line.push(b'"');
                }
                AccessLogField::RequestId => match &self.request_id {
                    Some(id) => json_header(line, id),
                    None => line.extend_from_slice(b"null"),
                },
                AccessLogField::Method => json_string(line, self.method.as_str()),
                AccessLogField::Authority => {
                    json_opt(line, self.authority.as_ref().map(|a| a.as_str()))
                }
                AccessLogField::Path => json_opt(line, path(false)),
                AccessLogField::PathWithQuery => json_opt(line, path(true)),
                AccessLogField::Protocol => json_string(line, protocol(self.version)),
                AccessLogField::ResponseCode => json_number(line, u64::from(self.status)),
                AccessLogField::BytesReceived => {
                    let streamed = self
                        .bytes_in_counter
                        .as_ref()
                        .map_or(0, |counter| counter.load(Ordering::Relaxed));
                    json_number(line, self.bytes_in + streamed);
                }
                AccessLogField::BytesSent => json_number(line, self.bytes_out),
                AccessLogField::Duration => {
                    json_number(
                        line,
                        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                    );
                }
                AccessLogField::UpstreamHost => match self.upstream {
                    // An address needs no JSON escaping.
                    Some(address) => {
                        line.push(b'"');
                        write_address(line, address);
                        line.push(b'"');
                    }
                    None => line.extend_from_slice(b"null"),
                },
                AccessLogField::RouteName => json_opt(line, self.route.as_deref()),
                AccessLogField::UpstreamCluster => json_opt(line, self.cluster.as_deref()),
                AccessLogField::Consumer => json_opt(line, self.consumer.as_deref()),
                AccessLogField::Quota => json_opt(line, self.quota.map(PolicyOutcome::as_str)),
            }
        }
        line.extend_from_slice(b"}\n");
    }
}

/// Envoy's `%PROTOCOL%`.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn json_string(out: &mut Vec<u8>, value: &str) {
    // Names, paths and addresses rarely need escaping: copy them as they are.
    if is_plain_ascii(value.as_bytes()) {
        json_plain(out, value.as_bytes());
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(out, value);
    }
}

/// A header's value as a JSON string, or `null` when it is not text.
fn json_header(out: &mut Vec<u8>, value: &HeaderValue) {
    if is_plain_ascii(value.as_bytes()) {
        json_plain(out, value.as_bytes());
    } else {
        json_opt(out, value.to_str().ok());
    }
}

/// `value`, which [`is_plain_ascii`], in quotes.
fn json_plain(out: &mut Vec<u8>, value: &[u8]) {
    out.reserve(value.len() + 2);
    out.push(b'"');
    out.extend_from_slice(value);
    out.push(b'"');
}

/// Whether `bytes` go into a JSON string as they are: ASCII from the space up, other than `"`
/// and `\`. Anything else (rare in names, paths and ids) takes the escaping path. Eight bytes
/// are looked at in one step, as a word: a line has a few hundred bytes to check.
fn is_plain_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = ONES * 0x80;
    /// Whether a byte of `word` is zero. A borrow can mark a byte above a zero byte too,
    /// never without one.
    fn has_zero_byte(word: u64) -> bool {
        word.wrapping_sub(ONES) & !word & HIGH != 0
    }
    fn plain(word: u64) -> bool {
        // A byte below 0x20 sets its high bit by borrowing; one from 0x80 up has it set.
        (word.wrapping_sub(ONES * 0x20) | word) & HIGH == 0
            && !has_zero_byte(word ^ (ONES * u64::from(b'"')))
            && !has_zero_byte(word ^ (ONES * u64::from(b'\\')))
    }
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        if !plain(u64::from_le_bytes(word.try_into().unwrap_or_default())) {
            return false;
        }
    }
    // The last bytes, padded with spaces.
    let rest = words.remainder();
    let mut last = [b' '; 8];
    last[..rest.len()].copy_from_slice(rest);
    plain(u64::from_le_bytes(last))
}

/// A string, or `null` where Envoy writes `-` in text formats.
fn json_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => json_string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_number(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// `1.2.3.4:80`, `[::1]:80`, as `SocketAddr` displays them; IPv4 without `fmt`.
fn write_address(out: &mut Vec<u8>, address: SocketAddr) {
    match address {
        SocketAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(digits.format(v4.port()).as_bytes());
        }
        // Writing to a Vec cannot fail.
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `value`'s last `width` decimal digits, zero-padded.
fn write_padded(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let at = out.len();
    out.resize(at + width, b'0');
    for slot in out[at..].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Writes `2026-11-22T19:50:21.`, the RFC 3339 form of `secs` since the Unix epoch in UTC, up
/// to the milliseconds.
fn write_date_and_second(out: &mut Vec<u8>, secs: u64) {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    // Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    for (value, width, after) in [
        (year, 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        (hour, 2, b':'),
        (minute, 2, b':'),
        (second, 2, b'.'),
    ] {
        write_padded(out, value, width);
        out.push(after);
    }
}

/// The response body sent to the client; with a [`RequestLog`], it counts the bytes sent and
/// writes the line when the body ends or is dropped, and with a [`ServerSpan`] it ends the span
/// then. Without either it only passes frames on.
#[derive(Debug)]
pub struct LoggedBody {
    inner: DownstreamBody,
    log: Option<Box<RequestLog>>,
    span: Option<Box<ServerSpan>>,
}

impl LoggedBody {
    /// A body that is not logged.
    pub fn plain(inner: DownstreamBody) -> Self {
        Self {
            inner,
            log: None,
            span: None,
        }
    }

    /// A body whose end writes `record`'s line, with the response's `status`.
    pub fn logged(inner: DownstreamBody, mut record: Box<RequestLog>, status: u16) -> Self {
        record.status = status;
        Self {
            inner,
            log: Some(record),
            span: None,
        }
    }

    /// The same body, ending `span` when it ends.
    pub fn traced(mut self, span: Option<ServerSpan>) -> Self {
        self.span = span.map(Box::new);
        self
    }

    fn finish(&mut self) {
        if let Some(record) = self.log.take() {
            let duration = record.started.elapsed();
            record
                .logger
                .writer
                .send(|out| record.render(out, duration));
        }
        // Dropping the span ends it.
        self.span = None;
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = <DownstreamBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.log.is_some() || this.span.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(record), Some(data)) = (&mut this.log, frame.data_ref()) {
                        record.bytes_out += data.len() as u64;
                    }
                    // hyper stops polling once the body says it has ended.
                    if this.inner.is_end_stream() {
                        this.finish();
                    }
                }
                Poll::Ready(_) => this.finish(),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_millis() {
        // One cache across calls: a second's text is reused only within that second.
        let mut cache = SecondText::default();
        let mut at = |secs: u64, millis: u64| {
            let mut out = Vec::new();
            cache.write(
                &mut out,
                Duration::from_secs(secs) + Duration::from_millis(millis),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(951_782_400, 999), "2000-02-29T00:00:00.999Z");
        assert_eq!(at(951_782_401, 0), "2000-02-29T00:00:01.000Z");
        assert_eq!(at(1_795_377_021, 867), "2026-11-22T19:50:21.867Z");
        assert_eq!(at(253_402_300_799, 999), "9999-12-31T23:59:59.999Z");
        assert_eq!(at(0, 1), "1970-01-01T00:00:00.001Z");
    }

    #[test]
    fn the_wall_clock_follows_the_monotonic_clock_from_its_anchor() {
        let anchor = std::time::Instant::now();
        let clock = WallClock {
            anchor,
            anchor_since_epoch: Duration::from_secs(1_795_377_021),
            second: SecondText::default(),
        };
        let later = anchor + Duration::from_millis(1_500);
        assert_eq!(
            clock.since_epoch(later),
            Duration::from_millis(1_795_377_022_500)
        );
        // A request that started before the writer last read the clocks.
        let earlier = anchor.checked_sub(Duration::from_millis(250)).unwrap();
        assert_eq!(
            clock.since_epoch(earlier),
            Duration::from_millis(1_795_377_020_750)
        );
    }

    #[test]
    fn only_printable_ascii_without_quotes_or_backslashes_is_plain() {
        // Every byte, at every position of a word and of the padded tail.
        for len in 1..=17 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    let expected = (0x20..0x80).contains(&byte) && byte != b'"' && byte != b'\\';
                    assert_eq!(
                        is_plain_ascii(&bytes),
                        expected,
                        "byte {byte:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(is_plain_ascii(b""));
        assert!(is_plain_ascii(b"0f8e6f4a-7c1d-4f5e-9d3b-2a6c8e1f0b7d"));
        // Bytes next to the bounds, where a borrow could go wrong.
        assert!(is_plain_ascii(b"\x20\x20\x21\x7f\x7f\x20\x23\x5b\x5d"));
        assert!(!is_plain_ascii(b"\x20\x20\x20\x20\x20\x20\x20\x1f\x20"));
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_writes_them() {
        for value in [0, 7, 10, 200, 65_535, u64::MAX] {
            let mut out = Vec::new();
            json_number(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
        for address in [
            "10.0.0.1:80",
            "255.255.255.255:65535",
            "0.0.0.0:0",
            "[::1]:8080",
        ] {
            let address: SocketAddr = address.parse().unwrap();
            let mut out = Vec::new();
            write_address(&mut out, address);
            assert_eq!(out, address.to_string().as_bytes());
        }
    }

    #[test]
    fn strings_are_json_escaped_only_where_needed() {
        let json = |value: &str| {
            let mut out = Vec::new();
            json_string(&mut out, value);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(json("/a/b?c=d"), r#""/a/b?c=d""#);
        assert_eq!(json("é ü"), r#""é ü""#);
        assert_eq!(json("say \"hi\"\\"), r#""say \"hi\"\\""#);
        assert_eq!(json("tab\tnew\nline"), r#""tab\tnew\nline""#);
        let header = |value: &[u8]| {
            let mut out = Vec::new();
            json_header(&mut out, &HeaderValue::from_bytes(value).unwrap());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(header(b"abc-123"), r#""abc-123""#);
        assert_eq!(header(b"a\"b"), r#""a\"b""#);
        assert_eq!(header(b"a\tb"), r#""a\tb""#);
        // Not text: as `HeaderValue::to_str` has it.
        assert_eq!(header(b"caf\xc3\xa9"), "null");
    }

    #[tokio::test]
    async fn a_line_is_written_when_the_body_ends() {
        let dir = std::env::temp_dir().join(format!("tollgate-access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let config = AccessLogConfig {
            sink: AccessLogSink::File(path.clone()),
            fields: vec![
                ("bytes_out".into(), AccessLogField::BytesSent),
                ("path".into(), AccessLogField::Path),
                ("route".into(), AccessLogField::RouteName),
                ("status".into(), AccessLogField::ResponseCode),
                ("upstream".into(), AccessLogField::UpstreamHost),
            ],
        };
        let logger = AccessLogger::new(&config);
        let mut record = RequestLog::new(&logger, Instant::now(), Method::GET, Version::HTTP_11);
        record.path_and_query = Some(LoggedPath::Changed("/a?api_key=secret".into()));
        record.route = Some("r\"1".into());
        let body = LoggedBody::logged(crate::proxy::body::full("hello"), record, 200);
        let collected = http_body_util::BodyExt::collect(body).await.unwrap();
        assert_eq!(collected.to_bytes(), "hello");
        flush_all().await;
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            written,
            "{\"bytes_out\":5,\"path\":\"/a\",\"route\":\"r\\\"1\",\"status\":200,\"upstream\":null}\n"
        );
        // Dropped before its end: still one line.
        let record = RequestLog::new(&logger, Instant::now(), Method::GET, Version::HTTP_2);
        drop(LoggedBody::logged(
            crate::proxy::body::full("x"),
            record,
            503,
        ));
        flush_all().await;
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.lines().count(), 2);
        assert!(
            written.ends_with("\"status\":503,\"upstream\":null}\n"),
            "{written}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
