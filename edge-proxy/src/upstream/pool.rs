//! Pooled HTTP/1 connections to one endpoint: the last step of "cluster → load balancer →
//! pooled connection" for HTTP/1 clusters.
//!
//! HTTP/1 carries one request at a time, so a request takes an idle connection for itself,
//! sends on it, and lends it on with the response: the response body's reader calls
//! [`Checkin::release`] once the body has been read to its end, and the connection is idle
//! again. That is all the pool does per request. hyper's general-purpose pooled client (still
//! used for HTTP/2, where connections are shared) also spawns a task per HTTP/1 response to
//! watch for its connection becoming idle, keys its pool by scheme and authority, and moves
//! the request through a larger future; on the proxy's hot path that was several percent of
//! its CPU.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response, Uri};
use tokio::task::JoinHandle;

use super::connector::{ConnectError, ConnectionGuard, EndpointConnector};
use super::{RequestBody, now_ms};

/// Why a request got no response from the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (or the connection circuit breaker is open).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed while the request was sent or the response awaited.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The HTTP/1 connections of one endpoint that wait for a request.
#[derive(Debug)]
pub struct Http1Pool {
    connector: EndpointConnector,
    idle: Mutex<Vec<IdleConnection>>,
    /// How long a connection may wait for a request before it is closed.
    idle_timeout_ms: u64,
    /// Closes connections idle for longer than that; started with the first connection,
    /// ended when the pool is dropped.
    reaper: OnceLock<JoinHandle<()>>,
}

/// What a request waiting for a connection got.
enum Waited {
    /// A connection of this endpoint came back idle.
    Idle(http1::SendRequest<RequestBody>),
    /// A slot freed: the request opens a connection in it.
    Slot(ConnectionGuard),
}

#[derive(Debug)]
struct IdleConnection {
    sender: http1::SendRequest<RequestBody>,
    since_ms: u64,
}

impl IdleConnection {
    /// Whether it is of no more use: closed by the upstream, or idle for longer than
    /// `timeout_ms` at `now_ms`.
    fn is_stale(&self, now_ms: u64, timeout_ms: u64) -> bool {
        self.sender.is_closed() || now_ms.saturating_sub(self.since_ms) > timeout_ms
    }
}

/// A connection lent to one response. [`Checkin::release`] gives it back to the pool once the
/// response body has been read to its end; dropped instead, it closes (hyper closes an HTTP/1
/// connection whose response was not read to its end).
#[derive(Debug)]
pub struct Checkin {
    pool: Arc<Http1Pool>,
    sender: http1::SendRequest<RequestBody>,
}

impl Checkin {
    /// The response has been read to its end: the connection may take the next request.
    pub fn release(self) {
        let Checkin { pool, sender } = self;
        if sender.is_closed() {
            return;
        }
        pool.idle_list().push(IdleConnection {
            sender,
            since_ms: now_ms(),
        });
        pool.connector.connections().connection_idle();
    }
}

impl Http1Pool {
    /// An empty pool whose connections `connector` opens, and which closes them after
    /// `idle_timeout` without a request.
    pub fn new(connector: EndpointConnector, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            connector,
            idle: Mutex::new(Vec::new()),
            idle_timeout_ms: u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX),
            reaper: OnceLock::new(),
        })
    }

    /// Connections waiting for a request now.
    pub fn idle_connections(&self) -> usize {
        self.idle_list().len()
    }

    /// Sends `request` on an idle connection, or on a new one when none is ready. The request
    /// must carry its `Host`; an absolute URI is sent in origin form.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Checkin), SendError> {
        if request.uri().scheme().is_some() {
            let path = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
        }
        loop {
            let (mut sender, reused) = self.connection().await?;
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let checkin = Checkin {
                        pool: Arc::clone(self),
                        sender,
                    };
                    return Ok((response, checkin));
                }
                Err(mut failed) => match failed.take_message() {
                    // An idle connection closed under us (the upstream's keep-alive timeout)
                    // before a byte of the request left: another connection takes it, as
                    // hyper's pooled client does. A new connection gets no second chance.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Http(failed.into_error())),
                },
            }
        }
    }

    /// A connection for one request, and whether it served requests before: an idle one, or
    /// a new one in a free slot of the cluster's `max_connections`. With no slot free, the
    /// request waits as a pending request (at most `max_pending_requests` do) for a slot or
    /// for a connection of this endpoint to come back idle, as long as a connect may take.
    async fn connection(
        self: &Arc<Self>,
    ) -> Result<(http1::SendRequest<RequestBody>, bool), SendError> {
        match self.take_ready() {
            Some(sender) => Ok((sender, true)),
            // Boxed: opening a connection (and TLS) is a large future, and every future that
            // awaits this one, up to the request's, would otherwise be as large and be copied
            // whole on every request.
            None => Box::pin(self.wait_or_open()).await,
        }
    }

    /// No idle connection was ready: opens one in a free slot, or waits as a pending request.
    async fn wait_or_open(
        self: &Arc<Self>,
    ) -> Result<(http1::SendRequest<RequestBody>, bool), SendError> {
        let connections = self.connector.connections();
        let slot = match connections.try_acquire() {
            Some(slot) => slot,
            None => {
                let _waiting = connections.start_waiting()?;
                let wait = async {
                    loop {
                        // Taken before looking, so that a release in between still wakes us.
                        let released = connections.released().notified();
                        if let Some(sender) = self.take_ready() {
                            return Waited::Idle(sender);
                        }
                        if let Some(slot) = connections.try_acquire() {
                            return Waited::Slot(slot);
                        }
                        released.await;
                    }
                };
                match tokio::time::timeout(self.connector.connect_timeout(), wait).await {
                    Ok(Waited::Idle(sender)) => return Ok((sender, true)),
                    Ok(Waited::Slot(slot)) => slot,
                    Err(_) => return Err(ConnectError::Overflow.into()),
                }
            }
        };
        let io = self.connector.open(slot).await?;
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            // WebSocket upgrades hand the connection over to the splice; otherwise it ends when
            // the upstream closes it or the pool drops its sender.
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        self.reaper
            .get_or_init(|| tokio::spawn(reap_idle(Arc::downgrade(self))));
        Ok((sender, false))
    }

    /// The most recently used idle connection that can take a request now; closed and expired
    /// ones met on the way are dropped. A connection given back while its request body was
    /// still being sent (the upstream answered early) is not ready until that ends, and stays.
    fn take_ready(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self.idle_list();
        let now = now_ms();
        let mut index = idle.len();
        while index > 0 {
            index -= 1;
            let connection = &idle[index];
            if connection.is_stale(now, self.idle_timeout_ms) {
                idle.swap_remove(index);
            } else if connection.sender.is_ready() {
                return Some(idle.swap_remove(index).sender);
            }
        }
        None
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<IdleConnection>> {
        // The list stays consistent whatever panicked while holding it.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Http1Pool {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.get() {
            reaper.abort();
        }
    }
}

/// Every quarter of the idle timeout, closes the connections idle for longer than it (or
/// already closed by the upstream). Ends when the pool is dropped.
async fn reap_idle(pool: Weak<Http1Pool>) {
    let period = match pool.upgrade() {
        Some(pool) => Duration::from_millis(pool.idle_timeout_ms / 4),
        None => return,
    };
    loop {
        tokio::time::sleep(period.max(Duration::from_millis(10))).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = now_ms();
        let timeout = pool.idle_timeout_ms;
        pool.idle_list()
            .retain(|connection| !connection.is_stale(now, timeout));
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::connector::ConnectionCount;

    /// An HTTP/1.1 upstream on a real socket that answers every request with `hello`, and
    /// counts the connections it accepted and saw closed.
    struct Upstream {
        address: SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    impl Upstream {
        /// `close_after` closes each connection after that many responses.
        async fn start(close_after: Option<usize>) -> Upstream {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let closed = Arc::new(AtomicUsize::new(0));
            let (accepted_count, closed_count) = (Arc::clone(&accepted), Arc::clone(&closed));
            tokio::spawn(async move {
                loop {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    accepted_count.fetch_add(1, Ordering::SeqCst);
                    let closed_count = Arc::clone(&closed_count);
                    tokio::spawn(async move {
                        let mut answered = 0;
                        let mut buffer = Vec::new();
                        let mut chunk = [0u8; 1024];
                        loop {
                            let read = socket.read(&mut chunk).await.unwrap_or(0);
                            if read == 0 {
                                break;
                            }
                            buffer.extend_from_slice(&chunk[..read]);
                            while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                buffer.drain(..end + 4);
                                let response = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                                socket.write_all(response).await.unwrap();
                                answered += 1;
                            }
                            if close_after.is_some_and(|n| answered >= n) {
                                break;
                            }
                        }
                        closed_count.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
            Upstream {
                address,
                accepted,
                closed,
            }
        }

        fn pool(&self, connections: Arc<ConnectionCount>, idle: Duration) -> Arc<Http1Pool> {
            let connector =
                EndpointConnector::new(self.address, Duration::from_secs(1), None, connections);
            Http1Pool::new(connector, idle)
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        fn closed(&self) -> usize {
            self.closed.load(Ordering::SeqCst)
        }
    }

    fn unlimited() -> Arc<ConnectionCount> {
        Arc::new(ConnectionCount::new(u32::MAX, u32::MAX))
    }

    fn get(address: SocketAddr) -> Request<RequestBody> {
        Request::get(format!("http://{address}/path?q=1"))
            .header(http::header::HOST, "upstream.test")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap()
    }

    /// Sends a GET, reads the body to its end and gives the connection back.
    async fn exchange(pool: &Arc<Http1Pool>, address: SocketAddr) -> Bytes {
        let (response, checkin) = pool.send(get(address)).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        checkin.release();
        body
    }

    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..200 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    #[tokio::test]
    async fn a_connection_given_back_serves_the_next_requests() {
        let upstream = Upstream::start(None).await;
        let pool = upstream.pool(unlimited(), Duration::from_secs(60));
        for _ in 0..5 {
            // At once: the connection is ready by the time its response's end is read.
            assert_eq!(exchange(&pool, upstream.address).await, "hello");
        }
        assert_eq!(upstream.accepted(), 1);
        assert_eq!(pool.idle_connections(), 1);
    }

    #[tokio::test]
    async fn a_response_not_read_to_its_end_closes_its_connection() {
        let upstream = Upstream::start(None).await;
        let pool = upstream.pool(unlimited(), Duration::from_secs(60));
        let (response, checkin) = pool.send(get(upstream.address)).await.unwrap();
        drop((response, checkin));
        eventually("the upstream sees the connection closed", || {
            upstream.closed() == 1
        })
        .await;
        assert_eq!(exchange(&pool, upstream.address).await, "hello");
        assert_eq!(upstream.accepted(), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_replaced() {
        let upstream = Upstream::start(Some(1)).await;
        let pool = upstream.pool(unlimited(), Duration::from_secs(60));
        assert_eq!(exchange(&pool, upstream.address).await, "hello");
        eventually("the upstream closes its connection", || {
            upstream.closed() == 1
        })
        .await;
        // Let the connection's task see the end of the stream.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(exchange(&pool, upstream.address).await, "hello");
        assert_eq!(upstream.accepted(), 2);
    }

    #[tokio::test]
    async fn at_max_connections_a_request_waits_for_a_connection_to_come_back() {
        let upstream = Upstream::start(None).await;
        let connections = Arc::new(ConnectionCount::new(1, 1));
        let pool = upstream.pool(Arc::clone(&connections), Duration::from_secs(60));
        let (first, checkin) = pool.send(get(upstream.address)).await.unwrap();
        let second = tokio::spawn({
            let pool = Arc::clone(&pool);
            let address = upstream.address;
            async move { exchange(&pool, address).await }
        });
        eventually("the second request waits", || connections.pending() == 1).await;
        // A third finds the one pending place taken: the circuit breaker answers.
        let refused = pool.send(get(upstream.address)).await.unwrap_err();
        assert!(matches!(
            refused,
            SendError::Connect(ConnectError::Overflow)
        ));
        // The first response ends: its connection serves the waiting request.
        first.into_body().collect().await.unwrap();
        checkin.release();
        assert_eq!(second.await.unwrap(), "hello");
        assert_eq!(upstream.accepted(), 1);
        assert_eq!(connections.pending(), 0);
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed() {
        let upstream = Upstream::start(None).await;
        let connections = unlimited();
        let pool = upstream.pool(Arc::clone(&connections), Duration::from_millis(100));
        exchange(&pool, upstream.address).await;
        assert_eq!(connections.open(), 1);
        eventually("the idle connection is closed", || upstream.closed() == 1).await;
        assert_eq!(pool.idle_connections(), 0);
        eventually("its slot is free", || connections.open() == 0).await;
        // The next request opens a new one.
        exchange(&pool, upstream.address).await;
        assert_eq!(upstream.accepted(), 2);
    }

    #[tokio::test]
    async fn an_absolute_uri_is_sent_in_origin_form() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = socket.read(&mut chunk).await.unwrap();
                head.extend_from_slice(&chunk[..read]);
            }
            socket
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let connector = EndpointConnector::new(address, Duration::from_secs(1), None, unlimited());
        let pool = Http1Pool::new(connector, Duration::from_secs(60));
        let (response, _checkin) = pool.send(get(address)).await.unwrap();
        assert_eq!(response.status(), 204);
        let head = received.await.unwrap();
        assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("host: upstream.test\r\n"), "{head}");
    }
}
