//! Listeners: the first stage of the request flow, "accept (TCP, rustls with SNI) → HTTP/1.1 or
//! HTTP/2", ahead of [`crate::proxy::handle`]. Plain HTTP/1.1 requests are served by `h1`,
//! in the connection's task; HTTP/2, and HTTP/1 connections from their first request that
//! `h1` does not serve, by hyper.
//!
//! [`Listeners::apply`] follows each snapshot's LDS listeners: a new listener is bound, a
//! removed one (or one that moved to another address) stops accepting and drains, and any
//! other keeps its socket and its connections, serving new connections with its new config.
//!
//! A listener's socket is bound earlier, while the xDS client checks the LDS update that brings
//! it ([`Reservations`]): a port that cannot be bound turns the update into a NACK naming the
//! listener, as Envoy's "cannot bind" does, and a listener whose update was ACKed already
//! queues connections while the snapshot that runs it is being applied.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::rustls::server::Acceptor;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::listener::{Codec, FilterChain, HttpSettings, Listener};
use crate::metrics::Metrics;
use crate::proxy::body::ClientBody;
use crate::proxy::{self, Downstream, SharedDataPlane};
use crate::trace::Tracer;
use crate::upstream::now_ms;

mod h1;

/// Time allowed for a TLS handshake before the connection is closed.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listeners the proxy runs, by name.
#[derive(Debug)]
pub struct Listeners {
    plane: SharedDataPlane,
    metrics: Arc<Metrics>,
    tracer: Option<Tracer>,
    running: HashMap<String, Running>,
    reservations: Reservations,
}

#[derive(Debug)]
struct Running {
    address: SocketAddr,
    config: Arc<ArcSwap<Listener>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What went wrong binding a listener.
#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot bind {address}: {source}")]
pub struct BindError {
    /// The listener's name.
    pub name: String,
    /// The address it asked for.
    pub address: SocketAddr,
    /// The socket error.
    pub source: io::Error,
}

impl Listeners {
    /// No listeners yet; requests will be served on `plane`, counted in `metrics` and traced
    /// with `tracer` (when tracing is on). A new listener takes its socket from `reservations`
    /// when the xDS client bound one for it, and binds its address itself otherwise.
    pub fn new(
        plane: SharedDataPlane,
        metrics: Arc<Metrics>,
        tracer: Option<Tracer>,
        reservations: Reservations,
    ) -> Self {
        Self {
            plane,
            metrics,
            tracer,
            running: HashMap::new(),
            reservations,
        }
    }

    /// The addresses bound now, by listener name.
    pub fn addresses(&self) -> HashMap<String, SocketAddr> {
        self.running
            .iter()
            .map(|(name, r)| (name.clone(), r.address))
            .collect()
    }

    /// Makes the running listeners those of `listeners`. Listeners that cannot be bound are
    /// reported and left out; the others run.
    pub async fn apply(&mut self, listeners: &BTreeMap<String, Arc<Listener>>) -> Vec<BindError> {
        let removed: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| {
                listeners
                    .get(*name)
                    .is_none_or(|l| l.address() != running.address)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in removed {
            if let Some(running) = self.running.remove(&name) {
                tracing::info!(listener = %name, address = %running.address, "listener removed; draining");
                // The accept loop ends, and its connections finish their requests and close.
                // Waiting for the loop frees the port before a listener may bind it again.
                let _ = running.stop.send(true);
                let _ = running.task.await;
            }
        }
        let mut errors = Vec::new();
        for (name, listener) in listeners {
            if let Some(running) = self.running.get(name) {
                running.config.store(Arc::clone(listener));
                continue;
            }
            let address = listener.address();
            let socket = match self.reservations.take(name, address) {
                Some(reserved) => Ok(reserved),
                None => bind(address),
            };
            match socket {
                Ok(socket) => {
                    let bound = socket.local_addr().unwrap_or(address);
                    tracing::info!(listener = %name, address = %bound, "listening");
                    let config = Arc::new(ArcSwap::new(Arc::clone(listener)));
                    let (stop, stop_rx) = watch::channel(false);
                    let task = tokio::spawn(accept_loop(
                        socket,
                        Arc::clone(&config),
                        self.plane.clone(),
                        Arc::clone(&self.metrics),
                        self.tracer.clone(),
                        stop_rx,
                    ));
                    self.running.insert(
                        name.clone(),
                        Running {
                            address,
                            config,
                            stop,
                            task,
                        },
                    );
                }
                Err(source) => {
                    let error = BindError {
                        name: name.clone(),
                        address,
                        source,
                    };
                    tracing::error!(%error, "listener not started");
                    errors.push(error);
                }
            }
        }
        errors
    }

    /// Stops accepting on every listener and asks every open connection to finish its requests
    /// and close (HTTP/2 clients get a GOAWAY). Waits at most `timeout` for them.
    pub async fn drain(&mut self, timeout: Duration) {
        // A listener's stop signal is also its connections' (see [`Shutdown`]).
        for (_, running) in self.running.drain() {
            let _ = running.stop.send(true);
            let _ = running.task.await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.metrics.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sockets bound for listeners whose LDS update the xDS client is checking or has ACKed, until
/// [`Listeners::apply`] runs them; shared by the two.
///
/// Binding at check time is what makes a taken port a NACK (naming the listener) rather than a
/// log line after an ACK. A reserved socket listens already, so a client that connects as soon
/// as the update converges waits in the backlog instead of being refused.
#[derive(Debug, Clone, Default)]
pub struct Reservations {
    by_listener: Arc<Mutex<HashMap<String, Reserved>>>,
}

#[derive(Debug)]
struct Reserved {
    /// The address asked for (port 0 included), to tell a reservation from a later move.
    address: SocketAddr,
    socket: TcpListener,
}

impl Reservations {
    /// Checks an LDS update against the sockets and reserves those its new or moved listeners
    /// need. `held` is every listener's address before the update; `updates` are the listeners
    /// it adds or changes, `removed` those it deletes.
    ///
    /// The error, a NACK message, names every listener whose address cannot be bound or is
    /// another listener's too; nothing is reserved then. An address that a listener of `held`
    /// gives up in this very update is not bound here but by [`Listeners::apply`], once that
    /// listener has drained.
    pub fn reserve(
        &self,
        held: &BTreeMap<String, SocketAddr>,
        updates: &[(&str, SocketAddr)],
        removed: &[String],
    ) -> Result<(), String> {
        let mut after: BTreeMap<&str, SocketAddr> =
            held.iter().map(|(name, a)| (name.as_str(), *a)).collect();
        for name in removed {
            after.remove(name.as_str());
        }
        after.extend(updates.iter().copied());
        let mut errors = Vec::new();
        let mut bound = Vec::new();
        let mut deferred = Vec::new();
        for &(name, address) in updates {
            if held.get(name) == Some(&address) {
                continue;
            }
            // Port 0 asks for any free port: never a clash.
            if address.port() != 0 {
                if let Some((other, _)) = after.iter().find(|&(n, a)| *n != name && *a == address) {
                    errors.push(format!(
                        "listener {name}: address {address} is also listener {other}'s"
                    ));
                    continue;
                }
                if held.iter().any(|(n, a)| n != name && *a == address) {
                    deferred.push(name);
                    continue;
                }
            }
            match bind(address) {
                Ok(socket) => bound.push((name, Reserved { address, socket })),
                Err(source) => errors.push(
                    BindError {
                        name: name.to_owned(),
                        address,
                        source,
                    }
                    .to_string(),
                ),
            }
        }
        if !errors.is_empty() {
            // `bound` drops here: the ports are free again.
            return Err(errors.join("; "));
        }
        let mut reserved = self.lock();
        for name in removed.iter().map(String::as_str).chain(deferred) {
            reserved.remove(name);
        }
        for (name, socket) in bound {
            reserved.insert(name.to_owned(), socket);
        }
        Ok(())
    }

    /// The socket reserved for listener `name` at `address`, handed over to run it.
    fn take(&self, name: &str, address: SocketAddr) -> Option<TcpListener> {
        let mut reserved = self.lock();
        if reserved.get(name)?.address != address {
            return None;
        }
        reserved.remove(name).map(|r| r.socket)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reserved>> {
        // Nothing panics while holding the lock; recover the map if something ever did.
        self.by_listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted proxy rebinds at once, without waiting for TIME_WAIT to clear.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

async fn accept_loop(
    socket: TcpListener,
    config: Arc<ArcSwap<Listener>>,
    plane: SharedDataPlane,
    metrics: Arc<Metrics>,
    tracer: Option<Tracer>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let listener = config.load_full();
                    let shutdown = Shutdown {
                        stopped: stop.clone(),
                    };
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        listener,
                        plane.clone(),
                        Arc::clone(&metrics),
                        tracer.clone(),
                        shutdown,
                    ));
                }
                Err(error) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    // Connections outlive their listener's accept loop: detach them.
    connections.detach_all();
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    plane: SharedDataPlane,
    metrics: Arc<Metrics>,
    tracer: Option<Tracer>,
    shutdown: Shutdown,
) {
    let _counted = metrics.connection_opened();
    let activity = Arc::new(AtomicU64::new(now_ms()));
    if !listener.is_tls() {
        let Some(chain) = listener.chain_for(None) else {
            return;
        };
        serve_http(
            stream, peer, chain, false, None, plane, metrics, tracer, shutdown, activity,
        )
        .await;
        return;
    }
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let server_name = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        let Some(chain) = listener.chain_for(server_name.as_deref()) else {
            return Err(io::Error::other("no filter chain for this server name"));
        };
        let config = server_config(chain, &plane)?;
        let stream = start.into_stream(config).await?;
        io::Result::Ok((stream, chain.clone()))
    };
    let (tls, chain) = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    serve_http(
        tls, peer, &chain, true, alpn, plane, metrics, tracer, shutdown, activity,
    )
    .await;
}

/// The rustls config of a filter chain: its certificate from the current snapshot, its ALPN.
fn server_config(chain: &FilterChain, plane: &SharedDataPlane) -> io::Result<Arc<ServerConfig>> {
    let tls = chain
        .tls
        .as_ref()
        .ok_or_else(|| io::Error::other("plain-text chain on a TLS listener"))?;
    let plane = plane
        .load_full()
        .ok_or_else(|| io::Error::other("no configuration"))?;
    let certificate = plane
        .snapshot
        .certificates
        .get(&tls.certificate)
        .ok_or_else(|| io::Error::other(format!("certificate {} missing", tls.certificate)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ChainCertificate(Arc::clone(
            certificate.certified_key(),
        ))));
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// The certificate of the filter chain that SNI selected: the chain is chosen before the
/// handshake, so its certificate is the only answer.
#[derive(Debug)]
struct ChainCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for ChainCertificate {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// The signal that ends a connection gracefully: its listener stopped, because it was removed
/// or because the proxy drains ([`Listeners::drain`] stops every listener). One signal, so that
/// a connection waiting for its next request polls one future, not one per cause.
#[derive(Debug, Clone)]
struct Shutdown {
    stopped: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether the signal has fired.
    fn is_signalled(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Resolves when the signal fires, or when its listener is gone without one.
    async fn wait(mut self) {
        let _ = self.stopped.wait_for(|stop| *stop).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    chain: &FilterChain,
    tls: bool,
    alpn: Option<Vec<u8>>,
    plane: SharedDataPlane,
    metrics: Arc<Metrics>,
    tracer: Option<Tracer>,
    shutdown: Shutdown,
    activity: Arc<AtomicU64>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = Arc::new(chain.http.clone());
    let downstream = Downstream::new(peer, tls, Arc::clone(&http), metrics, tracer);
    let codec = match alpn.as_deref() {
        Some(b"h2") => Codec::Http2,
        Some(_) => Codec::Http1,
        None if tls => Codec::Http1,
        None => http.codec,
    };
    let mut watchdog = Watchdog::new(&http, activity);
    // Created once: the selects below are polled on every wake of the connection.
    let shutdown_signal = shutdown.clone().wait();
    tokio::pin!(shutdown_signal);
    let limits = h1::Limits::of(&http);

    // HTTP/1 requests are served inline until one needs hyper (`h1`'s description says which);
    // an HTTP/2 preface on a cleartext `Auto` listener is one of them.
    let (read, io) = if codec == Codec::Http2 {
        (Bytes::new(), io)
    } else {
        let mut lifetime = h1::Lifetime {
            shutdown: shutdown_signal.as_mut(),
            signals: &shutdown,
            watchdog: &mut watchdog,
        };
        match h1::serve(io, &plane, &downstream, limits, &mut lifetime).await {
            h1::Ended::Closed => return,
            h1::Ended::HandOver { read, io } => (read, io),
        }
    };

    let service = service_fn(move |request: Request<Incoming>| {
        let plane = plane.clone();
        let downstream = downstream.clone();
        async move {
            let request = request.map(ClientBody::Hyper);
            Ok::<_, Infallible>(proxy::handle(&plane, &downstream, request).await)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    configure(&mut builder, &http, &limits);
    let builder = match codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    let io = ActivityIo::new(io, read, Arc::clone(&watchdog.activity));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, error = %error, "connection ended with an error");
                }
                return;
            }
            () = &mut shutdown_signal, if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = watchdog.interval.tick(), if !shutting_down => {
                if watchdog.expired() {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A connection's idle and duration limits (`idle_timeout`, `max_connection_duration`), checked
/// on each tick of `interval` while the connection waits.
struct Watchdog {
    interval: tokio::time::Interval,
    started: Instant,
    idle: Option<Duration>,
    max_duration: Option<Duration>,
    /// When bytes last moved (ms since [`now_ms`]'s start).
    activity: Arc<AtomicU64>,
}

impl Watchdog {
    fn new(http: &HttpSettings, activity: Arc<AtomicU64>) -> Self {
        let idle = http.timeouts.connection_idle;
        let max_duration = http.timeouts.max_connection_duration;
        let period = watchdog_period(idle, max_duration);
        Self {
            // The first tick a period from now: a new connection is neither old nor idle.
            interval: tokio::time::interval_at(tokio::time::Instant::now() + period, period),
            started: Instant::now(),
            idle,
            max_duration,
            activity,
        }
    }

    /// Whether the connection outlived its idle or duration limit.
    fn expired(&self) -> bool {
        let idle_for =
            Duration::from_millis(now_ms().saturating_sub(self.activity.load(Ordering::Relaxed)));
        self.max_duration
            .is_some_and(|max| self.started.elapsed() >= max)
            || self.idle.is_some_and(|idle| idle_for >= idle)
    }

    /// Records that bytes moved now.
    fn touch(&self) {
        self.activity.store(now_ms(), Ordering::Relaxed);
    }
}

/// How often a connection checks its idle and duration limits.
fn watchdog_period(idle: Option<Duration>, max_duration: Option<Duration>) -> Duration {
    let shortest = match (idle, max_duration) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(Duration::from_secs(3600)),
    };
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(60))
}

/// hyper's limits and timeouts from the connection manager's settings; HTTP/1 shares the
/// inline server's `limits`.
fn configure(builder: &mut auto::Builder<TokioExecutor>, http: &HttpSettings, limits: &h1::Limits) {
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_head_bytes);
    if let Some(timeout) = http.timeouts.request_headers {
        http1.header_read_timeout(timeout);
    }
    let mut http2 = builder.http2();
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(http.max_request_headers_kb.saturating_mul(1024))
        .enable_connect_protocol();
}

/// A connection as hyper serves it: the bytes the inline server read but did not serve
/// (`h1`'s hand-over) come first, and it records when bytes last moved, for the idle timeout.
struct ActivityIo<I> {
    inner: I,
    /// Read already, given out before anything from `inner`.
    read: Bytes,
    last: Arc<AtomicU64>,
}

impl<I> ActivityIo<I> {
    fn new(inner: I, read: Bytes, last: Arc<AtomicU64>) -> Self {
        Self { inner, read, last }
    }

    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ActivityIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let take = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read.split_to(take));
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if result.is_ready() {
            this.touch();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ActivityIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if result.is_ready() {
            this.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if result.is_ready() {
            this.touch();
        }
        result
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

    fn held(listeners: &[(&str, SocketAddr)]) -> BTreeMap<String, SocketAddr> {
        listeners
            .iter()
            .map(|(n, a)| ((*n).to_owned(), *a))
            .collect()
    }

    fn free_address() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[tokio::test]
    async fn a_handed_over_connection_reads_what_was_read_first() {
        use tokio::io::AsyncReadExt as _;
        let activity = Arc::new(AtomicU64::new(0));
        let inner: &[u8] = b"and the rest";
        let mut io = ActivityIo::new(inner, Bytes::from_static(b"read first, "), activity);
        let mut small = [0; 5];
        io.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"read ");
        let mut rest = String::new();
        io.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "first, and the rest");
    }

    #[tokio::test]
    async fn a_new_listener_is_bound_and_handed_over_once() {
        let reservations = Reservations::default();
        let address = free_address();
        reservations
            .reserve(&held(&[]), &[("web", address)], &[])
            .unwrap();
        // Bound and listening before any listener runs.
        tokio::net::TcpStream::connect(address).await.unwrap();
        assert!(
            reservations
                .take("web", "127.0.0.1:1".parse().unwrap())
                .is_none()
        );
        let socket = reservations.take("web", address).unwrap();
        assert_eq!(socket.local_addr().unwrap(), address);
        assert!(reservations.take("web", address).is_none());
    }

    #[tokio::test]
    async fn a_clash_names_both_listeners_and_reserves_nothing() {
        let reservations = Reservations::default();
        let (shared, other) = (free_address(), free_address());
        let error = reservations
            .reserve(
                &held(&[("api", shared)]),
                &[("web", shared), ("admin", other)],
                &[],
            )
            .unwrap_err();
        assert_eq!(
            error,
            format!("listener web: address {shared} is also listener api's")
        );
        // "admin" was bound while checking and let go with the rejection.
        assert!(reservations.take("admin", other).is_none());
        std::net::TcpListener::bind(other).unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_bind_error_naming_the_listener() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let error = Reservations::default()
            .reserve(&held(&[]), &[("web", address)], &[])
            .unwrap_err();
        assert!(
            error.starts_with(&format!("listener web: cannot bind {address}: ")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_address_given_up_in_the_same_update_is_left_to_apply() {
        let reservations = Reservations::default();
        let address = free_address();
        // "old" runs on the address; the update removes it and gives the address to "new".
        let running = bind(address).unwrap();
        reservations
            .reserve(
                &held(&[("old", address)]),
                &[("new", address)],
                &["old".to_owned()],
            )
            .unwrap();
        assert!(reservations.take("new", address).is_none());
        drop(running);
        // A listener that moves off an address it had reserved releases it.
        let first = free_address();
        reservations
            .reserve(&held(&[]), &[("moving", first)], &[])
            .unwrap();
        reservations
            .reserve(&held(&[("moving", first)]), &[("moving", address)], &[])
            .unwrap();
        assert!(reservations.take("moving", first).is_none());
        std::net::TcpListener::bind(first).unwrap();
        assert!(reservations.take("moving", address).is_some());
    }

    #[tokio::test]
    async fn a_removed_listener_releases_its_reservation() {
        let reservations = Reservations::default();
        let address = free_address();
        reservations
            .reserve(&held(&[]), &[("web", address)], &[])
            .unwrap();
        reservations
            .reserve(&held(&[("web", address)]), &[], &["web".to_owned()])
            .unwrap();
        assert!(reservations.take("web", address).is_none());
        std::net::TcpListener::bind(address).unwrap();
    }
}
