//! The connection to Redis and its circuit breaker.
//!
//! A request never waits for a connection to be made: while there is none (at start, or after
//! the link was declared down), checks fail at once and one background task reconnects with
//! exponential backoff. The link is declared down at the first error that means the connection
//! is gone (I/O error, refused, dropped, `READONLY` after a failover, `LOADING`, `MASTERDOWN`,
//! `CLUSTERDOWN`), or after [`super::RedisConfig::failure_threshold`] timeouts in a row (a
//! server that accepts but does not answer). The transition to down is logged once, as a
//! warning; the recovery once, as info.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ErrorKind, RedisError, RedisResult,
    ServerErrorKind, TlsCertificates, TlsMode,
};

use super::RedisConfig;
use super::pipe::{Frame, Pipe, unexpected};
use super::scripts::{Reply, ScriptCall};
use super::url::RedisTarget;
use crate::metrics::Metrics;

/// An open connection: many requests in flight on one socket, cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One plain-TCP server: our own pipelined connection (see `pipe.rs`).
    Pipelined(Arc<Pipe>),
    /// One server over TLS, or the master Sentinel named: redis-rs's multiplexed connection.
    Single(MultiplexedConnection),
    /// A cluster: one connection per node, routed by key slot.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Decides one request on `key` with `call`, in one script call (two on `NOSCRIPT`).
    pub(crate) async fn decide(&self, call: &ScriptCall, key: &str) -> RedisResult<Reply> {
        match self {
            Conn::Pipelined(pipe) => pipe.decide(call, key).await,
            Conn::Single(c) => eval(&mut c.clone(), call, key).await,
            Conn::Cluster(c) => eval(&mut c.clone(), call, key).await,
        }
    }

    /// Checks the server answers `PING`.
    async fn ping(&self) -> RedisResult<()> {
        let pong: String = match self {
            Conn::Pipelined(pipe) => match pipe.call(&[b"PING"]).await? {
                Frame::Status(status) => status,
                other => return Err(unexpected(&other)),
            },
            Conn::Single(c) => redis::cmd("PING").query_async(&mut c.clone()).await?,
            Conn::Cluster(c) => redis::cmd("PING").query_async(&mut c.clone()).await?,
        };
        if pong != "PONG" {
            return Err(RedisError::from((
                ErrorKind::Client,
                "unexpected PING reply",
                pong,
            )));
        }
        Ok(())
    }
}

/// `EVALSHA` of `call`'s script on `key`, then `EVAL` if the server does not have it.
async fn eval(conn: &mut impl ConnectionLike, call: &ScriptCall, key: &str) -> RedisResult<Reply> {
    let cmd = |verb: &str, body: &str| {
        let params = call.params();
        // Verb, body, key count, key, then the numbers (20 digits at most each).
        let mut cmd = Cmd::with_capacity(
            4 + params.len(),
            verb.len() + body.len() + key.len() + 21 * (params.len() + 1),
        );
        cmd.arg(verb).arg(body).arg(1).arg(key).arg(params);
        cmd
    };
    match cmd("EVALSHA", &call.script.sha).query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            cmd("EVAL", call.script.source).query_async(conn).await
        }
        other => other,
    }
}

/// The settings of a plain-TCP standalone server, for [`Pipe`].
struct PlainServer {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

/// How to open a connection for the configured topology.
enum Connector {
    Pipelined(PlainServer),
    Single(Client),
    Cluster(ClusterClient),
    // `SentinelClient` needs `&mut` to ask the sentinels; only the reconnect task uses it.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Connector {
    fn new(target: &RedisTarget, config: &RedisConfig) -> RedisResult<Self> {
        let certificates = || {
            config.tls_ca_pem.as_ref().map(|pem| TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            })
        };
        Ok(match target {
            RedisTarget::Standalone(info) if let ConnectionAddr::Tcp(host, port) = info.addr() => {
                let settings = info.redis_settings();
                Connector::Pipelined(PlainServer {
                    host: host.clone(),
                    port: *port,
                    username: settings.username().map(str::to_owned),
                    password: settings.password().map(str::to_owned),
                    db: settings.db(),
                })
            }
            RedisTarget::Standalone(info) => Connector::Single(match certificates() {
                Some(certs) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
                    Client::build_with_tls(info.clone(), certs)?
                }
                _ => Client::open(info.clone())?,
            }),
            RedisTarget::Cluster(nodes) => {
                let mut builder = ClusterClient::builder(nodes.clone());
                if let Some(certs) = certificates() {
                    builder = builder.certs(certs);
                }
                Connector::Cluster(
                    builder
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(config.timeout)
                        // Fail fast: the circuit breaker, not the driver, decides when to retry.
                        .retries(1)
                        .min_retry_wait(1)
                        .max_retry_wait(
                            config
                                .timeout
                                .as_millis()
                                .try_into()
                                .unwrap_or(u64::MAX)
                                .max(1),
                        )
                        .build()?,
                )
            }
            RedisTarget::Sentinel(s) => {
                let mut builder = SentinelClientBuilder::new(
                    s.sentinels.clone(),
                    s.master.clone(),
                    SentinelServerType::Master,
                )?
                .set_client_to_redis_db(s.db);
                if let Some(username) = &s.username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = &s.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if s.tls {
                    builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certificates() {
                        builder = builder.set_client_to_redis_certificates(certs);
                    }
                }
                Connector::Sentinel(tokio::sync::Mutex::new(builder.build()?))
            }
        })
    }

    /// Opens a connection and checks it answers `PING`.
    async fn connect(&self, config: &RedisConfig) -> RedisResult<Conn> {
        // Each call has its own deadline (the decision timeout, or the connect timeout around
        // this whole function), so the driver's response timeout stays off.
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(None);
        let conn = match self {
            Connector::Pipelined(server) => {
                let pipe = Pipe::connect(&server.host, server.port).await?;
                if let Some(password) = &server.password {
                    let mut words: Vec<&[u8]> = vec![b"AUTH"];
                    words.extend(server.username.as_deref().map(str::as_bytes));
                    words.push(password.as_bytes());
                    expect_ok(pipe.call(&words).await?, "AUTH")?;
                }
                if server.db != 0 {
                    let db = server.db.to_string();
                    expect_ok(pipe.call(&[b"SELECT", db.as_bytes()]).await?, "SELECT")?;
                }
                Conn::Pipelined(Arc::new(pipe))
            }
            Connector::Single(client) => Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&conn_config)
                    .await?,
            ),
            Connector::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
            Connector::Sentinel(client) => Conn::Single(
                client
                    .lock()
                    .await
                    .get_async_connection_with_config(&conn_config)
                    .await?,
            ),
        };
        conn.ping().await?;
        Ok(conn)
    }
}

/// Whether `command`'s reply is `+OK`; otherwise an error naming the command (never its
/// arguments: `AUTH`'s are the credentials).
fn expect_ok(frame: Frame, command: &'static str) -> RedisResult<()> {
    match frame {
        Frame::Status(status) if status == "OK" => Ok(()),
        other => Err(RedisError::from((
            ErrorKind::Client,
            command,
            format!("{other:?}"),
        ))),
    }
}

/// The current connection, the breaker's state and the reconnect task's guard.
pub(crate) struct Link {
    connector: Connector,
    conn: ArcSwapOption<Conn>,
    reconnecting: AtomicBool,
    timeouts_in_a_row: AtomicU32,
    down_since: Mutex<Option<Instant>>,
    /// Whether the link ever worked, to tell a failed start from an outage in the logs.
    ever_up: AtomicBool,
    config: RedisConfig,
    description: String,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    /// This link, for the reconnect task to hold.
    weak: Weak<Link>,
}

/// How a failed call affects the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The connection is gone or useless: declare the link down now.
    Fatal,
    /// A timeout: down after `failure_threshold` in a row.
    Timeout,
    /// An answer we cannot use (a script error, a wrong type): the link itself is fine.
    Benign,
}

impl Severity {
    pub(crate) fn of(e: &RedisError) -> Self {
        match e.kind() {
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown,
            ) => Severity::Fatal,
            _ if e.is_timeout() => Severity::Timeout,
            _ if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_unrecoverable_error() =>
            {
                Severity::Fatal
            }
            _ => Severity::Benign,
        }
    }
}

impl Link {
    /// The runtime the link was started on, where its calls run.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Creates the link and starts connecting in the background.
    pub(crate) fn start(
        target: &RedisTarget,
        config: RedisConfig,
        metrics: Arc<Metrics>,
    ) -> RedisResult<Arc<Self>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            RedisError::from((
                ErrorKind::Client,
                "the redis quota backend must be created inside a tokio runtime",
            ))
        })?;
        let connector = Connector::new(target, &config)?;
        let link = Arc::new_cyclic(|weak| Self {
            connector,
            conn: ArcSwapOption::empty(),
            reconnecting: AtomicBool::new(false),
            timeouts_in_a_row: AtomicU32::new(0),
            down_since: Mutex::new(Some(Instant::now())),
            ever_up: AtomicBool::new(false),
            config,
            description: target.describe(),
            metrics,
            runtime,
            weak: weak.clone(),
        });
        link.metrics.set_backend_up(false);
        link.ensure_reconnecting();
        Ok(link)
    }

    /// The connection to use now, or `None` while the link is down.
    pub(crate) fn current(&self) -> Option<Arc<Conn>> {
        let conn = self.conn.load_full();
        if conn.is_none() {
            // Normally running already; this covers a task that ended in a race with a trip.
            self.ensure_reconnecting();
        }
        conn
    }

    pub(crate) fn is_up(&self) -> bool {
        self.conn.load().is_some()
    }

    pub(crate) fn on_success(&self) {
        self.timeouts_in_a_row.store(0, Ordering::Relaxed);
    }

    /// Records a failed call made on `used`; may declare the link down.
    pub(crate) fn on_failure(
        &self,
        used: &Arc<Conn>,
        severity: Severity,
        error: &dyn std::fmt::Display,
    ) {
        let trip = match severity {
            Severity::Benign => false,
            Severity::Fatal => true,
            Severity::Timeout => {
                self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
                    >= self.config.failure_threshold.max(1)
            }
        };
        if !trip {
            return;
        }
        // Only the connection that failed is dropped: a fresh one may already be in place.
        let previous = self
            .conn
            .compare_and_swap(&Some(used.clone()), None::<Arc<Conn>>);
        let swapped = previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, used));
        if swapped {
            self.timeouts_in_a_row.store(0, Ordering::Relaxed);
            *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.metrics.set_backend_up(false);
            tracing::warn!(
                backend = %self.description,
                %error,
                "quota backend unavailable; decisions follow each policy's failure mode until it is back"
            );
            self.ensure_reconnecting();
        }
    }

    /// Starts the reconnect task unless it is running.
    fn ensure_reconnecting(&self) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(link) = self.self_arc() else {
            self.reconnecting.store(false, Ordering::Release);
            return;
        };
        self.runtime.spawn(async move {
            // Clears the flag however the task ends, a panic included, so a later check can
            // start another one.
            let _running = Reconnecting(link.clone());
            link.reconnect().await;
        });
    }

    async fn reconnect(self: Arc<Self>) {
        let mut delay = Duration::ZERO;
        let mut attempts = 0u32;
        loop {
            if !delay.is_zero() {
                tokio::time::sleep(jitter(delay)).await;
            }
            attempts += 1;
            let result = tokio::time::timeout(
                self.config.connect_timeout,
                self.connector.connect(&self.config),
            )
            .await;
            match result {
                Ok(Ok(conn)) => {
                    self.conn.store(Some(Arc::new(conn)));
                    self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                    self.metrics.set_backend_up(true);
                    let down_since = self
                        .down_since
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    let down_ms = down_since.map_or(0, |t| t.elapsed().as_millis());
                    if self.ever_up.swap(true, Ordering::Relaxed) || attempts > 1 {
                        tracing::info!(backend = %self.description, down_ms, attempts, "quota backend recovered");
                    } else {
                        tracing::debug!(backend = %self.description, "quota backend connected");
                    }
                    break;
                }
                Ok(Err(e)) => self.log_attempt(attempts, &e),
                Err(_) => self.log_attempt(attempts, &"connect timed out"),
            }
            delay = if delay.is_zero() {
                self.config.reconnect_min
            } else {
                (delay * 2).min(self.config.reconnect_max)
            };
            // Nobody but this task (and its guard) holds the link: stop.
            if Arc::strong_count(&self) <= 2 {
                break;
            }
        }
    }

    fn log_attempt(&self, attempts: u32, error: &dyn std::fmt::Display) {
        // At start the link was never up, so no outage warning was logged yet: log this one.
        if attempts == 1 && !self.ever_up.load(Ordering::Relaxed) {
            tracing::warn!(
                backend = %self.description,
                %error,
                "quota backend unreachable; decisions follow each policy's failure mode until it is"
            );
        } else {
            tracing::debug!(backend = %self.description, %error, attempts, "quota backend reconnect failed");
        }
    }

    fn self_arc(&self) -> Option<Arc<Self>> {
        self.weak.upgrade()
    }
}

/// Marks the reconnect task as running while alive.
struct Reconnecting(Arc<Link>);

impl Drop for Reconnecting {
    fn drop(&mut self) {
        self.0.reconnecting.store(false, Ordering::Release);
    }
}

/// `d` ± 20 %, so a fleet of proxies does not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
    d.mul_f64(factor)
}
