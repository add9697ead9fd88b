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
//!
//! A request without a streamed body or an upgrade (nearly all of them) goes further: its own
//! task writes it and reads the response on the connection ([`super::h1`]), with no hyper
//! connection task in between. Other requests get a hyper connection; an idle connection of
//! either kind serves either kind of request.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use tokio::task::JoinHandle;

use super::connector::{ConnectError, ConnectionGuard, EndpointConnector, UpstreamIo};
use super::h1::{self, ExchangeError, Progress};
use super::{RequestBody, now_ms};
use crate::header_maps;
use crate::proxy::body::PeerBody;

/// Why a request got no response from the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (or the connection circuit breaker is open).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed while the request was sent or the response awaited.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The same, on a connection this task drove itself.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
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
    Idle(Ready),
    /// A slot freed: the request opens a connection in it.
    Slot(ConnectionGuard),
}

/// A connection ready for one request.
#[derive(Debug)]
enum Ready {
    /// Run by hyper, in a task of its own.
    Hyper(http1::SendRequest<RequestBody>),
    /// Driven by the requesting task ([`h1`]); boxed once, when opened, so that the response
    /// body that carries it while it is read stays small.
    Inline(Box<h1::Connection>),
    /// Just opened: either can take it.
    Opened(UpstreamIo),
}

#[derive(Debug)]
struct IdleConnection {
    ready: Ready,
    since_ms: u64,
}

impl IdleConnection {
    /// Whether it is of no more use: closed by the upstream, or idle for longer than
    /// `timeout_ms` at `now_ms`.
    fn is_stale(&mut self, now_ms: u64, timeout_ms: u64) -> bool {
        now_ms.saturating_sub(self.since_ms) > timeout_ms
            || match &mut self.ready {
                Ready::Hyper(sender) => sender.is_closed(),
                Ready::Inline(connection) => !connection.is_reusable(),
                Ready::Opened(_) => false,
            }
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
        pool.push_idle(Ready::Hyper(sender));
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
    /// must carry its `Host`; an absolute URI is sent in origin form. The connection comes back
    /// to the pool when the response body has been read to its end: by the body itself when
    /// this task drove the exchange, else through the [`Checkin`] returned with it.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<PeerBody>, Option<Checkin>), SendError> {
        if request.uri().scheme().is_some() {
            let path = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
        }
        let (head, mut body) = request.into_parts();
        match whole_body(&head, &mut body) {
            Some(bytes) => self.send_whole(Request::from_parts(head, ()), bytes).await,
            None => {
                // Boxed, as is hyper's exchange below: a streamed body is the rare case, and its
                // future (hyper's) would otherwise make every request's future larger, and
                // every enclosing one, each copied whole as it is created.
                let (response, checkin) =
                    Box::pin(self.send_on_hyper(Request::from_parts(head, body))).await?;
                Ok((response.map(PeerBody::from), Some(checkin)))
            }
        }
    }

    /// Sends a request whose body is whole: on a connection this task drives, unless the idle
    /// connection it gets is a hyper one.
    async fn send_whole(
        self: &Arc<Self>,
        head: Request<()>,
        body: Bytes,
    ) -> Result<(Response<PeerBody>, Option<Checkin>), SendError> {
        loop {
            let (ready, reused) = self.connection().await?;
            let connection = match ready {
                Ready::Inline(connection) => connection,
                Ready::Opened(io) => Box::new(h1::Connection::new(io)),
                Ready::Hyper(sender) => {
                    let request = head
                        .clone()
                        .map(|()| Either::Right(Full::new(body.clone())));
                    match Box::pin(self.send_with(sender, reused, request)).await? {
                        Sent::Response(response, checkin) => {
                            return Ok((response.map(PeerBody::from), Some(checkin)));
                        }
                        Sent::Unsent(_) => continue,
                    }
                }
            };
            match connection.exchange(&head, &body).await {
                Ok((response, reader)) => {
                    // The request is on the wire: its map serves a later message.
                    header_maps::give_back(head.into_parts().0.headers);
                    let body = PeerBody::Upstream(reader.returning_to(Arc::clone(self)));
                    return Ok((response.map(|()| body), None));
                }
                Err((error, progress)) => {
                    // A reused connection the upstream closed as the request went out (its
                    // keep-alive timeout): another connection takes the request, as hyper's
                    // pooled client does; once sent, only when the method is idempotent and no
                    // byte of a response came back (RFC 9110 §9.2.2), as browsers do. A new
                    // connection gets no second chance.
                    let again = reused
                        && match progress {
                            Progress::Unsent => true,
                            Progress::Sent => is_idempotent(head.method()),
                            Progress::Answered => false,
                        };
                    if !again {
                        return Err(error.into());
                    }
                }
            }
        }
    }

    /// Sends `request` on a hyper connection: an idle one, or one opened or taken over for it.
    async fn send_on_hyper(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Checkin), SendError> {
        loop {
            let (ready, reused) = self.connection().await?;
            let sender = match ready {
                Ready::Hyper(sender) => sender,
                Ready::Inline(connection) => match connection.into_io() {
                    Some(io) => self.handshake(io).await?,
                    None => continue,
                },
                Ready::Opened(io) => self.handshake(io).await?,
            };
            match self.send_with(sender, reused, request).await? {
                Sent::Response(response, checkin) => return Ok((response, checkin)),
                Sent::Unsent(unsent) => request = *unsent,
            }
        }
    }

    /// One try of `request` on hyper's `sender`.
    async fn send_with(
        self: &Arc<Self>,
        mut sender: http1::SendRequest<RequestBody>,
        reused: bool,
        request: Request<RequestBody>,
    ) -> Result<Sent, SendError> {
        match sender.try_send_request(request).await {
            Ok(response) => Ok(Sent::Response(
                response,
                Checkin {
                    pool: Arc::clone(self),
                    sender,
                },
            )),
            Err(mut failed) => match failed.take_message() {
                // An idle connection closed under us (the upstream's keep-alive timeout)
                // before a byte of the request left: another connection takes it, as
                // hyper's pooled client does. A new connection gets no second chance.
                Some(unsent) if reused => Ok(Sent::Unsent(Box::new(unsent))),
                _ => Err(SendError::Http(failed.into_error())),
            },
        }
    }

    /// Starts a hyper HTTP/1 connection over `io`, run by a task of its own.
    async fn handshake(
        self: &Arc<Self>,
        io: UpstreamIo,
    ) -> Result<http1::SendRequest<RequestBody>, SendError> {
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            // WebSocket upgrades hand the connection over to the splice; otherwise it ends when
            // the upstream closes it or the pool drops its sender.
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// A connection for one request, and whether it served requests before: an idle one, or
    /// a new one in a free slot of the cluster's `max_connections`. With no slot free, the
    /// request waits as a pending request (at most `max_pending_requests` do) for a slot or
    /// for a connection of this endpoint to come back idle, as long as a connect may take.
    async fn connection(self: &Arc<Self>) -> Result<(Ready, bool), SendError> {
        match self.take_ready() {
            Some(ready) => Ok((ready, true)),
            // Boxed: opening a connection (and TLS) is a large future, and every future that
            // awaits this one, up to the request's, would otherwise be as large and be copied
            // whole on every request.
            None => Box::pin(self.wait_or_open()).await,
        }
    }

    /// No idle connection was ready: opens one in a free slot, or waits as a pending request.
    async fn wait_or_open(self: &Arc<Self>) -> Result<(Ready, bool), SendError> {
        let connections = self.connector.connections();
        let slot = match connections.try_acquire() {
            Some(slot) => slot,
            None => {
                let _waiting = connections.start_waiting()?;
                let wait = async {
                    loop {
                        // Taken before looking, so that a release in between still wakes us.
                        let released = connections.released().notified();
                        if let Some(ready) = self.take_ready() {
                            return Waited::Idle(ready);
                        }
                        if let Some(slot) = connections.try_acquire() {
                            return Waited::Slot(slot);
                        }
                        released.await;
                    }
                };
                match tokio::time::timeout(self.connector.connect_timeout(), wait).await {
                    Ok(Waited::Idle(ready)) => return Ok((ready, true)),
                    Ok(Waited::Slot(slot)) => slot,
                    Err(_) => return Err(ConnectError::Overflow.into()),
                }
            }
        };
        let io = self.connector.open(slot).await?;
        self.reaper
            .get_or_init(|| tokio::spawn(reap_idle(Arc::downgrade(self))));
        Ok((Ready::Opened(io), false))
    }

    /// The most recently used idle connection that can take a request now; closed and expired
    /// ones met on the way are dropped. A hyper connection given back while its request body
    /// was still being sent (the upstream answered early) is not ready until that ends, and
    /// stays.
    fn take_ready(&self) -> Option<Ready> {
        let mut idle = self.idle_list();
        let now = now_ms();
        let mut index = idle.len();
        while index > 0 {
            index -= 1;
            let connection = &mut idle[index];
            if connection.is_stale(now, self.idle_timeout_ms) {
                idle.swap_remove(index);
            } else if !matches!(&connection.ready, Ready::Hyper(sender) if !sender.is_ready()) {
                return Some(idle.swap_remove(index).ready);
            }
        }
        None
    }

    /// A connection whose response was read to its end waits for the next request.
    pub(super) fn put_back(&self, connection: Box<h1::Connection>) {
        self.push_idle(Ready::Inline(connection));
    }

    fn push_idle(&self, ready: Ready) {
        self.idle_list().push(IdleConnection {
            ready,
            since_ms: now_ms(),
        });
        self.connector.connections().connection_idle();
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

/// The outcome of one try on a hyper connection.
enum Sent {
    Response(Response<Incoming>, Checkin),
    /// The connection closed before a byte of the request left: here it is, for another
    /// (boxed: this is rare, and the enum is returned on every request).
    Unsent(Box<Request<RequestBody>>),
}

/// The body of `head`'s request, taken out of `body`, when it is whole already (none, or
/// buffered) and the request can be exchanged without hyper ([`h1::can_exchange`]); else
/// `None`, and the body stays to be streamed.
fn whole_body(head: &http::request::Parts, body: &mut RequestBody) -> Option<Bytes> {
    let bytes = match body {
        Either::Left(streamed) if streamed.is_end_stream() => Bytes::new(),
        Either::Left(_) => return None,
        Either::Right(full) => {
            // `Full` yields its bytes as one data frame at once, never trailers.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::Pin::new(&mut *full).poll_frame(&mut cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
                std::task::Poll::Ready(Some(Err(never))) => match never {},
                std::task::Poll::Ready(None) | std::task::Poll::Pending => Bytes::new(),
            }
        }
    };
    if h1::can_exchange(&head.method, &head.headers, Some(bytes.len() as u64)) {
        Some(bytes)
    } else {
        *body = Either::Right(Full::new(bytes));
        None
    }
}

/// Methods a request may be repeated with (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
            .retain_mut(|connection| !connection.is_stale(now, timeout));
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

    /// Sends `request`, reads the body to its end and gives the connection back.
    async fn send_and_read(pool: &Arc<Http1Pool>, request: Request<RequestBody>) -> Bytes {
        let (response, checkin) = pool.send(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if let Some(checkin) = checkin {
            checkin.release();
        }
        body
    }

    /// Sends a GET (which this task exchanges itself), reads the body to its end and gives the
    /// connection back.
    async fn exchange(pool: &Arc<Http1Pool>, address: SocketAddr) -> Bytes {
        send_and_read(pool, get(address)).await
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
        if let Some(checkin) = checkin {
            checkin.release();
        }
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

    /// An upstream that answers the `n`th request head of each connection (from 0; request
    /// bodies are not read) with `respond(n)`, or closes the connection unanswered on `None`
    /// (and after a response saying `connection: close`).
    /// Counts the connections it accepted.
    async fn scripted(
        respond: fn(usize) -> Option<&'static [u8]>,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 1024];
                    let mut answered = 0;
                    loop {
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            match respond(answered) {
                                Some(response) => socket.write_all(response).await.unwrap(),
                                None => return,
                            }
                            if response_closes(respond(answered)) {
                                return;
                            }
                            answered += 1;
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    /// Whether a scripted response says `connection: close` (the upstream then closes).
    fn response_closes(response: Option<&[u8]>) -> bool {
        response.is_some_and(|r| r.windows(17).any(|w| w == b"connection: close"))
    }

    fn scripted_pool(address: SocketAddr) -> Arc<Http1Pool> {
        let connector = EndpointConnector::new(address, Duration::from_secs(1), None, unlimited());
        Http1Pool::new(connector, Duration::from_secs(60))
    }

    fn post(address: SocketAddr) -> Request<RequestBody> {
        Request::post(format!("http://{address}/submit"))
            .header(http::header::HOST, "upstream.test")
            .body(Either::Right(Full::new(Bytes::from_static(b"data"))))
            .unwrap()
    }

    #[tokio::test]
    async fn chunked_responses_with_trailers_are_read_through_and_the_connection_reused() {
        let (address, accepted) = scripted(|_| {
            Some(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-sum: 1\r\n\r\n")
        })
        .await;
        let pool = scripted_pool(address);
        for _ in 0..3 {
            let (response, checkin) = pool.send(get(address)).await.unwrap();
            assert!(checkin.is_none(), "exchanged by this task");
            let collected = response.into_body().collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["x-sum"], "1");
            assert_eq!(collected.to_bytes(), "hello world");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_connections(), 1);
    }

    #[tokio::test]
    async fn a_response_that_closes_its_connection_is_not_reused() {
        let (address, accepted) = scripted(|_| {
            Some(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
        })
        .await;
        let pool = scripted_pool(address);
        assert_eq!(exchange(&pool, address).await, "hello");
        assert_eq!(exchange(&pool, address).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_connections(), 0);
    }

    #[tokio::test]
    async fn a_body_cut_short_fails_and_closes_the_connection() {
        let (address, _) = scripted(|_| {
            Some(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nhel")
        })
        .await;
        let pool = scripted_pool(address);
        let (response, _) = pool.send(get(address)).await.unwrap();
        let error = response.into_body().collect().await.unwrap_err();
        assert!(
            error.to_string().contains("middle of the response"),
            "{error}"
        );
        assert_eq!(pool.idle_connections(), 0);
    }

    #[tokio::test]
    async fn a_reused_connection_closed_unanswered_retries_a_get_but_not_a_post() {
        // Each connection answers its first request and closes on the second.
        let (address, accepted) = scripted(|n| {
            (n == 0).then_some(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..])
        })
        .await;
        let pool = scripted_pool(address);
        assert_eq!(exchange(&pool, address).await, "ok");
        // The GET goes out on the idle connection, which closes: it is sent again on a new one.
        assert_eq!(exchange(&pool, address).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A POST may have been acted on: it is not sent twice.
        let error = pool.send(post(address)).await.unwrap_err();
        assert!(
            matches!(
                error,
                SendError::Exchange(ExchangeError::ClosedBeforeResponse)
            ),
            "{error:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn hyper_and_inline_requests_share_connections() {
        let (address, accepted) =
            scripted(|_| Some(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")).await;
        let pool = scripted_pool(address);
        // An upgrade request goes through hyper (whose connection task could hand the socket
        // over); a plain GET is exchanged by this task. They take turns on one connection.
        let upgrade = || {
            let mut request = get(address);
            request.headers_mut().insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("x-test"),
            );
            request
        };
        assert_eq!(exchange(&pool, address).await, "hello");
        assert_eq!(send_and_read(&pool, upgrade()).await, "hello");
        assert_eq!(exchange(&pool, address).await, "hello");
        assert_eq!(send_and_read(&pool, upgrade()).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
