//! Access logs: one JSON line per request, written after the response.
//!
//! This sits at the very end of the request flow. [`crate::proxy::handle`] starts a
//! [`RequestLog`] when the request arrives (only on listeners whose connection manager has an
//! `access_log`), fills it while routing and forwarding, and hands it to [`LoggedBody`] with
//! the response headers. The line is written when the response body ends, or when hyper drops
//! the body (client gone, stream reset), so `bytes_out` and `duration_ms` cover the whole
//! response as Envoy's `%BYTES_SENT%` and `%DURATION%` do.
//!
//! Lines go over a channel to one writer task per distinct sink (stdout, or a file opened for
//! appending), which buffers them and flushes at least every [`FLUSH_INTERVAL`] and on
//! [`flush_all`]. A request never waits on the disk: when a writer falls
//! [`CHANNEL_CAPACITY`] lines behind, lines are dropped. A sink that cannot be opened or
//! written is reported once in the process log, not once per line.
//!
//! Only the fields configured are written, and none of them holds a header other than the
//! request id and the host: `Authorization`, API keys and cookies never reach a log line, and
//! the query string (where API keys often travel) only with `include_query`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt as _, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::listener::{AccessLogConfig, AccessLogField, AccessLogSink};
use crate::proxy::body::DownstreamBody;
use crate::trace::ServerSpan;

/// How often a writer flushes buffered lines, at most.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How many lines may wait for a writer before new ones are dropped.
pub const CHANNEL_CAPACITY: usize = 16 * 1024;

/// Bytes buffered per sink between writes. A file is written through Tokio's blocking pool, a
/// thread hand-off per write: with 8 KiB (the default), a busy proxy made over a thousand of
/// them a second; with this, a few dozen, and the flush interval still bounds the delay.
const WRITE_BUFFER: usize = 256 * 1024;

/// The writer of each sink, shared by every listener that logs there.
static WRITERS: LazyLock<Mutex<HashMap<AccessLogSink, Writer>>> = LazyLock::new(Default::default);

/// A listener's access log: its config and the writer of its sink.
#[derive(Debug)]
pub struct AccessLogger {
    config: AccessLogConfig,
    writer: Writer,
}

impl AccessLogger {
    /// The logger for `config`, starting its sink's writer task on first use. Call it from
    /// within the Tokio runtime.
    pub fn new(config: &AccessLogConfig) -> Arc<Self> {
        let mut writers = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
        let writer = writers
            .entry(config.sink.clone())
            .or_insert_with(|| Writer::start(config.sink.clone()))
            .clone();
        Arc::new(Self {
            config: config.clone(),
            writer,
        })
    }
}

/// Sends lines to a sink's writer task.
#[derive(Debug, Clone)]
struct Writer {
    lines: mpsc::Sender<Message>,
    /// Whether a full channel has been reported already.
    overflow_reported: Arc<AtomicBool>,
}

#[derive(Debug)]
enum Message {
    Line(Vec<u8>),
    Flush(oneshot::Sender<()>),
}

impl Writer {
    fn start(sink: AccessLogSink) -> Self {
        let (lines, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(write_lines(sink, receiver));
        Self {
            lines,
            overflow_reported: Arc::default(),
        }
    }

    fn send(&self, line: Vec<u8>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.lines.try_send(Message::Line(line))
            && !self.overflow_reported.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                capacity = CHANNEL_CAPACITY,
                "access log writer is behind; dropping lines"
            );
        }
    }
}

/// Flushes every access log; the proxy calls it on shutdown, after draining.
pub async fn flush_all() {
    let writers: Vec<Writer> = WRITERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for writer in writers {
        let (done, flushed) = oneshot::channel();
        if writer.lines.send(Message::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }
}

/// The writer task of one sink: buffers lines and flushes them every [`FLUSH_INTERVAL`].
async fn write_lines(sink: AccessLogSink, mut lines: mpsc::Receiver<Message>) {
    let out: Option<Box<dyn AsyncWrite + Send + Unpin>> = match &sink {
        AccessLogSink::Stdout => Some(Box::new(tokio::io::stdout())),
        AccessLogSink::File(path) => match tokio::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .await
        {
            Ok(file) => Some(Box::new(file)),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot open access log; its lines are dropped");
                None
            }
        },
    };
    let mut out = out.map(|out| BufWriter::with_capacity(WRITE_BUFFER, out));
    let mut failed = false;
    let mut dirty = false;
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush_done = tokio::select! {
            message = lines.recv() => match message {
                Some(Message::Line(line)) => {
                    if let Some(out) = &mut out {
                        let result = out.write_all(&line).await;
                        report(&sink, result, &mut failed);
                        dirty = true;
                    }
                    continue;
                }
                Some(Message::Flush(done)) => Some(done),
                // Every logger is gone: only at process exit, since the registry keeps one.
                None => None,
            },
            _ = tick.tick() => {
                if !dirty {
                    continue;
                }
                None
            }
        };
        if let Some(out) = &mut out {
            let result = out.flush().await;
            report(&sink, result, &mut failed);
        }
        dirty = false;
        if let Some(done) = flush_done {
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
/// proxy, written by [`LoggedBody`].
#[derive(Debug)]
pub struct RequestLog {
    logger: Arc<AccessLogger>,
    start_time: SystemTime,
    started: Instant,
    method: Method,
    version: Version,
    /// The `Host` or `:authority`, as the client sent it.
    pub authority: Option<String>,
    /// The normalised path and query as the HTTP filters left it (an API key or token they
    /// removed is not in it), before rewrites.
    pub path_and_query: Option<String>,
    /// The `x-request-id` the request went on with.
    pub request_id: Option<HeaderValue>,
    /// The route that matched.
    pub route: Option<String>,
    /// The cluster picked.
    pub cluster: Option<String>,
    /// The endpoint of the last upstream attempt.
    pub upstream: Option<SocketAddr>,
    /// Request body bytes read from the client, counted as the body is forwarded.
    pub bytes_in: Arc<AtomicU64>,
    status: u16,
}

impl RequestLog {
    /// Starts the record of a request that arrived at `started`.
    pub fn new(
        logger: &Arc<AccessLogger>,
        started: Instant,
        method: Method,
        version: Version,
    ) -> Self {
        Self {
            logger: Arc::clone(logger),
            start_time: SystemTime::now() - started.elapsed(),
            started,
            method,
            version,
            authority: None,
            path_and_query: None,
            request_id: None,
            route: None,
            cluster: None,
            upstream: None,
            bytes_in: Arc::default(),
            status: 0,
        }
    }

    /// The line, without its bytes sent, duration and newline.
    fn render(&self, bytes_out: u64, duration: Duration) -> Vec<u8> {
        let mut line = Vec::with_capacity(512);
        line.push(b'{');
        for (i, (key, field)) in self.logger.config.fields.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            json_string(&mut line, key);
            line.push(b':');
            let path = |with_query: bool| {
                self.path_and_query
                    .as_deref()
                    .map(|p| match p.split_once('?') {
                        Some((path, _)) if !with_query => path,
                        _ => p,
                    })
            };
            match field {
                AccessLogField::StartTime => json_string(&mut line, &rfc3339(self.start_time)),
                AccessLogField::RequestId => json_opt(
                    &mut line,
                    self.request_id.as_ref().and_then(|v| v.to_str().ok()),
                ),
                AccessLogField::Method => json_string(&mut line, self.method.as_str()),
                AccessLogField::Authority => json_opt(&mut line, self.authority.as_deref()),
                AccessLogField::Path => json_opt(&mut line, path(false)),
                AccessLogField::PathWithQuery => json_opt(&mut line, path(true)),
                AccessLogField::Protocol => json_string(&mut line, protocol(self.version)),
                AccessLogField::ResponseCode => json_number(&mut line, u64::from(self.status)),
                AccessLogField::BytesReceived => {
                    json_number(&mut line, self.bytes_in.load(Ordering::Relaxed));
                }
                AccessLogField::BytesSent => json_number(&mut line, bytes_out),
                AccessLogField::Duration => {
                    json_number(
                        &mut line,
                        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                    );
                }
                AccessLogField::UpstreamHost => {
                    json_opt(&mut line, self.upstream.map(|a| a.to_string()).as_deref());
                }
                AccessLogField::RouteName => json_opt(&mut line, self.route.as_deref()),
                AccessLogField::UpstreamCluster => json_opt(&mut line, self.cluster.as_deref()),
            }
        }
        line.extend_from_slice(b"}\n");
        line
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
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// A string, or `null` where Envoy writes `-` in text formats.
fn json_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => json_string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_number(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(value.to_string().as_bytes());
}

/// `2026-11-22T19:50:21.867Z`: RFC 3339 in UTC with milliseconds, as Envoy's `%START_TIME%`.
fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
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
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

/// The response body sent to the client; with a [`RequestLog`], it counts the bytes sent and
/// writes the line when the body ends or is dropped, and with a [`ServerSpan`] it ends the span
/// then. Without either it only passes frames on.
#[derive(Debug)]
pub struct LoggedBody {
    inner: DownstreamBody,
    log: Option<Box<Pending>>,
    span: Option<Box<ServerSpan>>,
}

#[derive(Debug)]
struct Pending {
    record: RequestLog,
    bytes_out: u64,
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
    pub fn logged(inner: DownstreamBody, mut record: RequestLog, status: u16) -> Self {
        record.status = status;
        Self {
            inner,
            log: Some(Box::new(Pending {
                record,
                bytes_out: 0,
            })),
            span: None,
        }
    }

    /// The same body, ending `span` when it ends.
    pub fn traced(mut self, span: Option<ServerSpan>) -> Self {
        self.span = span.map(Box::new);
        self
    }

    fn finish(&mut self) {
        if let Some(pending) = self.log.take() {
            let Pending { record, bytes_out } = *pending;
            let line = record.render(bytes_out, record.started.elapsed());
            record.logger.writer.send(line);
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
                    if let (Some(pending), Some(data)) = (&mut this.log, frame.data_ref()) {
                        pending.bytes_out += data.len() as u64;
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
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_377_021, 867), "2026-11-22T19:50:21.867Z");
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
        record.path_and_query = Some("/a?api_key=secret".into());
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
