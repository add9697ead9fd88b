//! Opening connections to one endpoint: the last step of "cluster → load balancer → pooled
//! connection" when the pool has no idle connection to reuse.
//!
//! Each endpoint has its own pooled client whose connector always dials that endpoint's address,
//! whatever the request URI says. That way the URI can carry the client's original authority,
//! which hyper sends as `Host` (HTTP/1.1) or `:authority` (HTTP/2), while the pool still keys
//! connections per endpoint. The connector also enforces the cluster's `max_connections`
//! circuit breaker and adds TLS when the cluster asks for it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

/// Why no connection was opened. The data path turns these into Envoy's answers.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The cluster's `max_connections` circuit breaker is open.
    #[error("upstream connection limit reached")]
    Overflow,
    /// The endpoint did not accept within `connect_timeout`.
    #[error("connect timeout")]
    Timeout,
    /// The endpoint refused, or the network failed.
    #[error("connection failure: {0}")]
    Io(#[from] io::Error),
}

/// Upstream TLS settings the connector applies to every connection of a cluster.
#[derive(Clone)]
pub struct UpstreamTlsConnector {
    /// rustls client configuration (roots, ALPN).
    pub connector: TlsConnector,
    /// The SNI sent, and the name the certificate is checked against.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Dials one endpoint; a [`tower_service::Service`] for hyper's pooled client.
#[derive(Debug, Clone)]
pub struct EndpointConnector {
    address: SocketAddr,
    connect_timeout: Duration,
    tls: Option<UpstreamTlsConnector>,
    connections: Arc<ConnectionCount>,
}

/// Connections open to a cluster's endpoints, against its `max_connections`, and requests
/// waiting for one, against its `max_pending_requests`.
#[derive(Debug, Default)]
pub struct ConnectionCount {
    open: AtomicU32,
    max_connections: AtomicU32,
    pending: AtomicU32,
    max_pending: AtomicU32,
    released: Notify,
}

impl ConnectionCount {
    /// A counter with the given limits.
    pub fn new(max_connections: u32, max_pending: u32) -> Self {
        Self {
            open: AtomicU32::new(0),
            max_connections: AtomicU32::new(max_connections),
            pending: AtomicU32::new(0),
            max_pending: AtomicU32::new(max_pending),
            released: Notify::new(),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests waiting for a connection slot now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Applies new limits from a later snapshot; open connections are not closed.
    pub fn set_limits(&self, max_connections: u32, max_pending: u32) {
        self.max_connections
            .store(max_connections, Ordering::Relaxed);
        self.max_pending.store(max_pending, Ordering::Relaxed);
        self.released.notify_waiters();
    }

    /// A connection slot, if fewer than `max_connections` are open.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<ConnectionGuard> {
        let limit = self.max_connections.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionGuard(Arc::clone(self)))
    }

    /// Counts a request as waiting for a connection, or refuses it (the circuit breaker is
    /// open) when `max_pending_requests` already wait.
    pub(crate) fn start_waiting(&self) -> Result<PendingGuard<'_>, ConnectError> {
        let max_pending = self.max_pending.load(Ordering::Relaxed);
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_pending).then_some(n + 1)
            })
            .map_err(|_| ConnectError::Overflow)?;
        Ok(PendingGuard(self))
    }

    /// Signalled when a slot frees or a pooled connection becomes idle: what waiting requests
    /// wait for. Take the [`Notified`](tokio::sync::futures::Notified) before looking again.
    pub(crate) fn released(&self) -> &Notify {
        &self.released
    }

    /// A pooled connection became idle: requests waiting for a connection may take it.
    pub(crate) fn connection_idle(&self) {
        // Only when somebody waits: `notify_waiters` takes a lock. A waiter counts itself
        // before it looks at the idle connections, so it cannot miss this one.
        if self.pending.load(Ordering::Acquire) > 0 {
            self.released.notify_waiters();
        }
    }

    /// A connection slot: at once, or after waiting as a pending request while fewer than
    /// `max_pending_requests` wait; otherwise the circuit breaker is open.
    async fn acquire(self: &Arc<Self>) -> Result<ConnectionGuard, ConnectError> {
        if let Some(guard) = self.try_acquire() {
            return Ok(guard);
        }
        let _waiting = self.start_waiting()?;
        loop {
            let released = self.released.notified();
            if let Some(guard) = self.try_acquire() {
                return Ok(guard);
            }
            // The route's timeout bounds the wait, as it bounds Envoy's pending requests.
            released.await;
        }
    }
}

/// Counts one request waiting for a connection slot.
pub(crate) struct PendingGuard<'a>(&'a ConnectionCount);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held by an open connection; gives its slot back when the connection is dropped.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(Arc<ConnectionCount>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.released.notify_one();
    }
}

impl EndpointConnector {
    /// A connector for `address`, sharing the cluster's connection count.
    pub fn new(
        address: SocketAddr,
        connect_timeout: Duration,
        tls: Option<UpstreamTlsConnector>,
        connections: Arc<ConnectionCount>,
    ) -> Self {
        Self {
            address,
            connect_timeout,
            tls,
            connections,
        }
    }

    /// The cluster's connection count, which this endpoint's connections take slots of.
    pub(crate) fn connections(&self) -> &Arc<ConnectionCount> {
        &self.connections
    }

    /// How long a connection may take to open; a request waits for a slot as long.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    async fn connect(self) -> Result<UpstreamIo, ConnectError> {
        // A request waits for a slot at most as long as for a connection: hyper may leave this
        // future running in the background after an idle connection served the request, and a
        // wait without end would hold a pending slot for nobody.
        let guard = tokio::time::timeout(self.connect_timeout, self.connections.acquire())
            .await
            .map_err(|_| ConnectError::Overflow)??;
        self.open(guard).await
    }

    /// Opens a connection (TCP, then TLS when the cluster asks for it) in the slot `guard`
    /// holds; the connection keeps the slot until it closes.
    pub(crate) async fn open(&self, guard: ConnectionGuard) -> Result<UpstreamIo, ConnectError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.address))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        // Requests are small and latency matters more than packet count.
        tcp.set_nodelay(true)?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
                let stream = tokio::time::timeout(self.connect_timeout, handshake)
                    .await
                    .map_err(|_| ConnectError::Timeout)??;
                Stream::Tls(Box::new(stream))
            }
        };
        Ok(UpstreamIo {
            inner: TokioIo::new(stream),
            _guard: guard,
        })
    }
}

impl tower_service::Service<Uri> for EndpointConnector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        // The URI names the client's authority, not where to connect: see the module docs.
        Box::pin(self.clone().connect())
    }
}

/// A plain or TLS connection to an endpoint.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An open upstream connection as hyper's pool sees it; holds its circuit-breaker slot.
#[derive(Debug)]
pub struct UpstreamIo {
    inner: TokioIo<Stream>,
    _guard: ConnectionGuard,
}

impl UpstreamIo {
    /// Ready when the socket has been seen readable (data, or the upstream closing it) since
    /// its last read left it empty: the reactor's view, no system call.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.inner() {
            Stream::Plain(tcp) => tcp.poll_read_ready(cx),
            Stream::Tls(tls) => tls.get_ref().0.poll_read_ready(cx),
        }
    }
}

/// Tokio's traits, for the exchanges the request's task drives itself (`super::h1`); hyper's
/// below, for its connections.
impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner.inner_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner.inner_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner.inner_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner.inner_mut()).poll_shutdown(cx)
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        match self.inner.inner() {
            Stream::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                connected.negotiated_h2()
            }
            _ => connected,
        }
    }
}

impl Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connection_slots_queue_up_to_max_pending_then_overflow() {
        let count = Arc::new(ConnectionCount::new(1, 1));
        let first = count.acquire().await.unwrap();
        let waiting = tokio::spawn({
            let count = Arc::clone(&count);
            async move { count.acquire().await.map(|_| ()) }
        });
        while count.pending() == 0 {
            tokio::task::yield_now().await;
        }
        // One waits already: the next is refused at once.
        assert!(matches!(count.acquire().await, Err(ConnectError::Overflow)));
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(count.pending(), 0);
        assert_eq!(count.open(), 0);
    }
}
