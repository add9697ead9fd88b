//! The `tollgate` CLI: parses flags, wires the crates, nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_admin_api::AdminState;
use tollgate_admin_api::client::{self, AdminEndpoint, Format, Outcome};
use tollgate_control_plane::model::{Listener, Resource};
use tollgate_control_plane::store::{Change, Store};
use tollgate_control_plane::xds::AdsServer;
use tollgate_control_plane::xds::nodes::NodeRegistry;
use tollgate_edge_proxy::ProxyOptions;
use tollgate_edge_proxy::trace::{self, TracingConfig};
use tollgate_edge_proxy::xds::XdsConfig;

/// Tollgate: an API gateway with an xDS control plane.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: store, admin API and xDS (ADS) server.
    ControlPlane(ControlPlaneArgs),
    /// Run the edge proxy: listeners, routes and clusters come from the control plane (ADS).
    EdgeProxy(EdgeProxyArgs),
    /// Run everything on embedded defaults for local use: control plane, admin API and one
    /// edge proxy (SQLite store, generated admin token, a listener on 8080).
    Dev(DevArgs),
    /// Replace the whole configuration with a file's (YAML or JSON), atomically.
    Apply {
        /// The configuration document.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show what applying a file would change; exits 2 when something would.
    Diff {
        /// The configuration document.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the whole configuration (secrets omitted).
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Yaml)]
        format: ExportFormat,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExportFormat {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
struct AdminArgs {
    /// The admin API of the control plane.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:9000"
    )]
    admin_url: String,
    /// Admin bearer token.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

impl AdminArgs {
    fn endpoint(self) -> AdminEndpoint {
        AdminEndpoint {
            url: self.admin_url,
            token: self.admin_token,
        }
    }
}

#[derive(Debug, Args)]
struct ControlPlaneArgs {
    /// Where configuration is kept: `sqlite://PATH`.
    #[arg(long, env = "TOLLGATE_STORE", default_value = "sqlite://tollgate.db")]
    store: String,
    /// Address of the admin REST API.
    #[arg(long, env = "TOLLGATE_ADMIN_ADDR", default_value = "0.0.0.0:9000")]
    admin_addr: SocketAddr,
    /// Address of the gRPC server (ADS).
    #[arg(long, env = "TOLLGATE_XDS_ADDR", default_value = "0.0.0.0:18000")]
    xds_addr: SocketAddr,
    /// Bearer token required on every admin call (at least 16 characters).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// A second token that may only read (GET) the admin API.
    #[arg(long, env = "TOLLGATE_READ_ONLY_TOKEN", hide_env_values = true)]
    read_only_token: Option<String>,
    /// `HOST:PORT` at which Envoy sidecars reach this control plane's gRPC services (API-key
    /// checks, rate limits); defaults to the xDS address, with 127.0.0.1 for an unspecified IP.
    #[arg(long, env = "TOLLGATE_ADVERTISE_ADDR", value_parser = parse_host_port)]
    advertise_addr: Option<(String, u16)>,
    #[command(flatten)]
    quota: QuotaArgs,
}

/// Where global rate-limit policies keep their counters: the control plane's rate-limit
/// service (for Envoy nodes) and every edge proxy must name the same Redis to share them.
#[derive(Debug, Args)]
struct QuotaArgs {
    /// Redis for the global quota counters shared with edge proxies (`redis://`, `rediss://`,
    /// `redis+cluster://`, `redis+sentinel://`); counted in this process when absent.
    #[arg(long, env = "TOLLGATE_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// How long one quota decision may wait for Redis before the policy's failure mode
    /// applies (e.g. `5ms`; raise it when Redis is far away).
    #[arg(long, env = "TOLLGATE_REDIS_TIMEOUT", default_value = "5ms", value_parser = humantime::parse_duration)]
    redis_timeout: Duration,
}

impl QuotaArgs {
    /// The quota engine for global policies. Needs the runtime (Redis connects in the
    /// background).
    async fn engine(&self) -> anyhow::Result<tollgate_quota::Quota> {
        let Some(url) = &self.redis else {
            return Ok(tollgate_quota::Quota::local(Default::default()));
        };
        let config = tollgate_quota::RedisConfig::new(url.clone()).with_timeout(self.redis_timeout);
        // The error names the URL with its password masked.
        let quota = tollgate_quota::Quota::redis(config).context("--redis")?;
        tracing::info!(
            redis = %tollgate_quota::redis::url::redact(url),
            timeout = ?self.redis_timeout,
            "global rate limits count in Redis"
        );
        if !quota.wait_until_up(REDIS_START_WAIT).await {
            tracing::warn!(
                wait = ?REDIS_START_WAIT,
                "redis is not reachable yet; rate limits follow each policy's failure mode until it is"
            );
        }
        Ok(quota)
    }
}

/// Parses `HOST:PORT` (IPv6 in brackets).
fn parse_host_port(value: &str) -> Result<(String, u16), String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

#[derive(Debug, Args)]
struct EdgeProxyArgs {
    /// The control plane's xDS (ADS) address.
    #[arg(long, env = "TOLLGATE_XDS", default_value = "http://127.0.0.1:18000")]
    xds: String,
    /// This proxy's node id, as the control plane lists it; defaults to `edge-<hostname>`.
    #[arg(long, env = "TOLLGATE_NODE_ID")]
    node_id: Option<String>,
    /// The node cluster: listeners can be limited to one (`node_cluster` on a listener).
    #[arg(long, env = "TOLLGATE_NODE_CLUSTER", default_value = "edge")]
    node_cluster: String,
    /// Address of the proxy's admin endpoint (`/ready`, `/config_dump`).
    #[arg(
        long,
        env = "TOLLGATE_PROXY_ADMIN_ADDR",
        default_value = "0.0.0.0:9901"
    )]
    admin_addr: SocketAddr,
    /// Threads serving traffic; defaults to one per CPU.
    #[arg(long, env = "TOLLGATE_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// On SIGTERM, how long open connections get to finish their requests (e.g. `5s`).
    #[arg(long, env = "TOLLGATE_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Count every request in `/metrics` (by route, cluster and status class, with latencies);
    /// `false` keeps only the xDS, endpoint and process series.
    #[arg(long, env = "TOLLGATE_REQUEST_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    request_metrics: bool,
    #[command(flatten)]
    tracing: TracingArgs,
    #[command(flatten)]
    quota: QuotaArgs,
}

#[derive(Debug, Args)]
struct TracingArgs {
    /// Send OpenTelemetry spans to this OTLP/gRPC collector, `http://HOST:PORT`; without it,
    /// nothing is traced and `traceparent` passes through untouched.
    #[arg(long, env = "TOLLGATE_OTLP_ENDPOINT", value_parser = trace::parse_endpoint)]
    otlp_endpoint: Option<String>,
    /// The share of new traces to sample, 0.0 to 1.0; a request's sampled `traceparent` flag
    /// is always followed.
    #[arg(long, env = "TOLLGATE_TRACE_SAMPLING", default_value = "1.0", value_parser = trace::parse_sampling)]
    trace_sampling: f64,
    /// The `service.name` of the spans.
    #[arg(long, env = "TOLLGATE_SERVICE_NAME", default_value = trace::DEFAULT_SERVICE_NAME, value_parser = trace::parse_service_name)]
    service_name: String,
}

impl TracingArgs {
    /// The tracing config, when an endpoint is set; `node_id` is the `service.instance.id`.
    fn config(self, node_id: &str) -> Option<TracingConfig> {
        Some(TracingConfig {
            endpoint: self.otlp_endpoint?,
            sampling: self.trace_sampling,
            service_name: self.service_name,
            instance_id: node_id.to_owned(),
        })
    }
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Directory for the SQLite store.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = ".tollgate")]
    data_dir: PathBuf,
    /// Address of the admin REST API.
    #[arg(long, env = "TOLLGATE_ADMIN_ADDR", default_value = "127.0.0.1:9000")]
    admin_addr: SocketAddr,
    /// Address of the gRPC server (ADS).
    #[arg(long, env = "TOLLGATE_XDS_ADDR", default_value = "127.0.0.1:18000")]
    xds_addr: SocketAddr,
    /// Admin token; a random one is generated and printed when absent.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The default listener created when the store has none.
    #[arg(long, env = "TOLLGATE_PROXY_ADDR", default_value = "127.0.0.1:8080")]
    proxy_addr: SocketAddr,
    /// Address of the edge proxy's admin endpoint.
    #[arg(
        long,
        env = "TOLLGATE_PROXY_ADMIN_ADDR",
        default_value = "127.0.0.1:9901"
    )]
    proxy_admin_addr: SocketAddr,
    #[command(flatten)]
    tracing: TracingArgs,
    #[command(flatten)]
    quota: QuotaArgs,
}

/// The shortest token accepted: guessing must stay out of reach.
const MIN_TOKEN_LEN: usize = 16;
/// How long the control plane waits for Redis at start before serving without it.
const REDIS_START_WAIT: Duration = Duration::from_secs(2);
/// How long in-flight work gets after SIGTERM before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let worker_threads = match &cli.command {
        Command::EdgeProxy(args) => args.worker_threads,
        _ => None,
    };
    let mut builder = match worker_threads {
        // One thread: no work stealing, no cross-thread wake-ups.
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n.max(1));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Differs) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::ControlPlane(args) => {
            for (flag, token) in [
                ("--admin-token", Some(&args.admin_token)),
                ("--read-only-token", args.read_only_token.as_ref()),
            ] {
                if token.is_some_and(|t| t.len() < MIN_TOKEN_LEN) {
                    bail!("{flag} must be at least {MIN_TOKEN_LEN} characters");
                }
            }
            let store = open_store(&args.store)?;
            let quota = args.quota.engine().await?;
            let running = start_control_plane(ServeConfig {
                store,
                quota,
                admin_addr: args.admin_addr,
                xds_addr: args.xds_addr,
                admin_token: args.admin_token,
                read_only_token: args.read_only_token,
                advertise_addr: args.advertise_addr,
            })
            .await?;
            running.run_until_signal().await?;
        }
        Command::EdgeProxy(args) => {
            let node_id = args.node_id.unwrap_or_else(default_node_id);
            let global_quota = match args.quota.redis {
                Some(_) => Some(args.quota.engine().await?),
                None => None,
            };
            let options = ProxyOptions {
                global_quota,
                tracing: args.tracing.config(&node_id),
                xds: XdsConfig::new(args.xds, node_id, args.node_cluster),
                admin_addr: args.admin_addr,
                drain_timeout: args.drain_timeout,
                request_metrics: args.request_metrics,
            };
            tollgate_edge_proxy::run(options, shutdown_signal(), |handle| {
                tracing::info!(admin = %handle.admin_addr, "edge proxy started");
            })
            .await
            .context("edge proxy")?;
        }
        Command::Dev(args) => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating {}", args.data_dir.display()))?;
            let db = args.data_dir.join("tollgate.db");
            let store = Store::sqlite(&db).with_context(|| format!("opening {}", db.display()))?;
            ensure_default_listener(&store, args.proxy_addr).await?;
            let token = args.admin_token.unwrap_or_else(generate_token);
            let quota = args.quota.engine().await?;
            let quota_for_proxy = quota.clone();
            let running = start_control_plane(ServeConfig {
                store: store.clone(),
                quota,
                admin_addr: args.admin_addr,
                xds_addr: args.xds_addr,
                admin_token: token.clone(),
                read_only_token: None,
                advertise_addr: None,
            })
            .await?;
            let (proxy_started, proxy_admin) = tokio::sync::oneshot::channel();
            let (stop_proxy, proxy_stopped) = watch::channel(false);
            let options = ProxyOptions {
                xds: XdsConfig::new(format!("http://{}", running.xds_addr), "dev", "edge"),
                admin_addr: args.proxy_admin_addr,
                drain_timeout: Duration::from_secs(2),
                request_metrics: true,
                tracing: args.tracing.config("dev"),
                // One engine for the proxy and the rate-limit service: Envoy sidecars and the
                // edge proxy share counters even without Redis.
                global_quota: Some(quota_for_proxy),
            };
            let proxy = tokio::spawn(async move {
                let mut stopped = proxy_stopped;
                tollgate_edge_proxy::run(
                    options,
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                    |handle| {
                        let _ = proxy_started.send(handle.admin_addr);
                    },
                )
                .await
            });
            let proxy_admin = match proxy_admin.await {
                Ok(address) => address,
                Err(_) => {
                    // The proxy ended before it started: its error says why.
                    proxy.await.context("edge proxy task")??;
                    bail!("the edge proxy stopped at start");
                }
            };
            print_dev_banner(&running, &db, &token, &store, proxy_admin);
            running.run_until_signal().await?;
            stop_proxy.send_replace(true);
            proxy.await.context("edge proxy task")??;
        }
        Command::Apply {
            file,
            dry_run,
            admin,
        } => {
            return Ok(client::apply(&admin.endpoint(), &file, dry_run).await?);
        }
        Command::Diff { file, admin } => return Ok(client::diff(&admin.endpoint(), &file).await?),
        Command::Export { format, admin } => {
            let format = match format {
                ExportFormat::Yaml => Format::Yaml,
                ExportFormat::Json => Format::Json,
            };
            print!("{}", client::export(&admin.endpoint(), format).await?);
        }
    }
    Ok(Outcome::Clean)
}

/// What the control plane serves, and where.
struct ServeConfig {
    store: Store,
    /// The rate-limit service's engine for global policies.
    quota: tollgate_quota::Quota,
    admin_addr: SocketAddr,
    xds_addr: SocketAddr,
    admin_token: String,
    read_only_token: Option<String>,
    advertise_addr: Option<(String, u16)>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn open_store(url: &str) -> anyhow::Result<Store> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = Path::new(path);
        return Store::sqlite(path)
            .with_context(|| format!("opening the SQLite store {}", path.display()));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        bail!("the PostgreSQL store is not available in this build yet; use sqlite://PATH");
    }
    bail!("unsupported --store {url:?}: expected sqlite://PATH")
}

/// In `tollgate dev`, a store without listeners gets one, so that the bundled proxy serves
/// traffic at once.
async fn ensure_default_listener(store: &Store, address: SocketAddr) -> anyhow::Result<()> {
    if !store.current().listeners.is_empty() {
        return Ok(());
    }
    let listener = Listener {
        name: "default".to_owned(),
        address: address.ip().to_string(),
        port: address.port(),
        node_cluster: None,
        tls: None,
        access_log: None,
        trusted_proxy_hops: 0,
        policies: Vec::new(),
    };
    store
        .write_as(vec![Change::Put(Resource::Listener(listener))], "dev")
        .await
        .context("creating the default listener")?;
    Ok(())
}

/// `edge-<hostname>`, or `edge-<pid>` when the host has no readable name.
fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    match host {
        Some(host) => format!("edge-{host}"),
        None => format!("edge-{}", std::process::id()),
    }
}

fn generate_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Running {
    admin_addr: SocketAddr,
    xds_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

async fn start_control_plane(config: ServeConfig) -> anyhow::Result<Running> {
    let ServeConfig {
        store,
        quota,
        admin_addr,
        xds_addr,
        admin_token,
        read_only_token,
        advertise_addr,
    } = config;
    // Bind both sockets before serving anything, so a port in use fails the start at once.
    let xds_listener = TcpListener::bind(xds_addr)
        .await
        .with_context(|| format!("binding the xDS address {xds_addr}"))?;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("binding the admin address {admin_addr}"))?;
    let (xds_addr, admin_addr) = (xds_listener.local_addr()?, admin_listener.local_addr()?);
    let registry = Arc::new(NodeRegistry::default());
    let (shutdown, shutdown_rx) = watch::channel(false);

    let advertise_addr = advertise_addr.unwrap_or_else(|| {
        let ip = match xds_addr.ip() {
            ip if !ip.is_unspecified() => ip,
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        (ip.to_string(), xds_addr.port())
    });
    let ads = AdsServer::new(
        store.clone(),
        registry.clone(),
        shutdown_rx.clone(),
        advertise_addr,
    );
    let authorizer = tollgate_control_plane::ext_authz::ApiKeyAuthorizer::new(store.clone());
    let rate_limiter = tollgate_control_plane::rls::RateLimiter::new(store.clone(), quota);
    let mut stop_xds = shutdown_rx.clone();
    let xds = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(ads.into_service())
            .add_service(authorizer.into_service())
            .add_service(rate_limiter.into_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(xds_listener), async move {
                let _ = stop_xds.wait_for(|stop| *stop).await;
            })
            .await
            .context("xDS server")
    });

    let router = tollgate_admin_api::router(AdminState {
        store: store.clone(),
        registry,
        admin_token: admin_token.into(),
        read_only_token: read_only_token.map(Into::into),
    });
    let mut stop_admin = shutdown_rx;
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_admin.wait_for(|stop| *stop).await;
            })
            .await
            .context("admin API server")
    });
    tracing::info!(%admin_addr, %xds_addr, revision = store.current().revision, "control plane started");
    Ok(Running {
        admin_addr,
        xds_addr,
        shutdown,
        tasks: vec![xds, admin],
    })
}

impl Running {
    async fn run_until_signal(self) -> anyhow::Result<()> {
        let mut first_to_stop = futures::future::select_all(self.tasks);
        let tasks = tokio::select! {
            () = shutdown_signal() => {
                tracing::info!("shutting down");
                first_to_stop.into_inner()
            }
            (result, _, _) = &mut first_to_stop => {
                // A server stopped without being asked: that is an error either way.
                result.context("server task panicked")?.context("server stopped")?;
                bail!("a server stopped unexpectedly");
            }
        };
        self.shutdown.send_replace(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            for task in tasks {
                task.await.context("server task panicked")??;
            }
            anyhow::Ok(())
        })
        .await;
        match drained {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutdown grace period over; exiting");
                Ok(())
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn print_dev_banner(
    running: &Running,
    db: &Path,
    token: &str,
    store: &Store,
    proxy_admin: SocketAddr,
) {
    let current = store.current();
    let traffic: Vec<String> = current
        .listeners
        .values()
        .map(|l| {
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{}:{}", l.address, l.port)
        })
        .collect();
    println!(
        "Tollgate dev is running (Ctrl-C to stop).\n\n  \
         traffic      {traffic}\n  \
         admin API    http://{admin}/v1\n  \
         admin token  {token}\n  \
         xDS (ADS)    {xds}\n  \
         proxy admin  http://{proxy_admin}/ready\n  \
         store        {db}\n\n\
         Try:  curl -H 'Authorization: Bearer {token}' http://{admin}/v1/nodes\n\n\
         Envoy sidecars can join too: `envoy -c examples/envoy/bootstrap.yaml` expects ADS on\n\
         127.0.0.1:18000{moved}.",
        traffic = traffic.join(" "),
        admin = running.admin_addr,
        xds = running.xds_addr,
        moved = if running.xds_addr.port() == 18000 {
            String::new()
        } else {
            format!(" (edit its xDS port_value to {})", running.xds_addr.port())
        },
        db = db.display(),
    );
}
