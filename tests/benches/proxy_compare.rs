//! Edge-proxy comparison benchmark: Tollgate's edge proxy against Envoy and nginx as reverse
//! proxies, on this machine, under the same load.
//!
//! Everything runs on loopback. A fast upstream (nginx, one process, answering `hello`) sits
//! behind three peers, each one process with one worker thread, all pinned to the same CPU
//! (`BENCH_PEER_CPU`, default 1):
//!
//! - `edge`: `tollgate edge-proxy --worker-threads 1` (release build) on a `tollgate
//!   control-plane` holding cluster `bench` and `BENCH_ROUTES` routes;
//! - `envoy`: Envoy (`--concurrency 1`) from `examples/envoy/bootstrap.yaml` on the *same*
//!   control plane, so it gets the same routes over xDS (its listener has `node_cluster: envoy`,
//!   the edge proxy's `node_cluster: edge`, so each binds its own port);
//! - `nginx`: nginx (`worker_processes 1`, run as that one process with `master_process off`)
//!   proxying to an `upstream { keepalive }` pool over HTTP/1.1, with one `location` per route.
//!
//! All of them log warnings only and no access log: the data path is measured, not logging.
//!
//! The routes are `BENCH_ROUTES - 1` prefixes `/svc/NNNN/` plus a catch-all prefix `/`. The load
//! asks for `/bench`, which only the catch-all matches, and the catch-all is the *last* route in
//! match order (the control plane orders prefixes longest first), so a proxy that scans its
//! routes in order scans all of them on every request.
//!
//! The load is `wrk -t1 -c<BENCH_CONNECTIONS> -d<BENCH_DURATION>s --latency`, pinned with the
//! upstream, the control plane and this harness to `BENCH_LOAD_CPU` (default 0). Each peer gets
//! one warm-up run (`BENCH_WARMUP` s), then `BENCH_ROUNDS` rounds alternate between the peers
//! (A B C A B C …) and the medians are reported, with each peer's RSS (`VmRSS`) before and after
//! the load and its CPU use. The `direct` row is wrk against the upstream itself: the ceiling the
//! load side allows. wrk and the upstream share one CPU, so a fast peer can be limited by them
//! rather than by its own CPU; the `bound by` and `req/s per peer CPU` columns show when. The table and the targets from the issue (which the bench reports, but does
//! not fail on) are printed and written to `target/bench/proxy_compare.md`.
//!
//!     scripts/bench    # installs nginx, wrk and Envoy when missing, builds, runs this
//!
//! The observability cost (issue 7: metrics plus a file access log cost at most 5 % of
//! requests/s) is measured in the same rounds, by three more edge proxies on their own listeners
//! (node clusters of their own), each against the same routes:
//!
//! - `edge-bare`: `--request-metrics false`, no access log: the baseline;
//! - `edge` (above): request metrics on, the default;
//! - `edge-log`: request metrics and an access log to a file (truncated before each run);
//! - `edge-trace`: request metrics and tracing at sampling 1.0, exporting over OTLP/gRPC to a
//!   receiver in this harness (on the load CPU), which only counts the spans.
//!
//! They are reported as ratios to `edge-bare`, with the issue's target for `edge-log`.
//!
//! The policy cost (issue 5: a JWT and an API-key policy cost at most 15 % of requests/s) is
//! measured by `edge-auth`: an edge proxy whose listener puts a JWT policy (RS256, JWKS fetched
//! once from a server in this harness and cached) and an API-key policy on every route; the
//! load sends a valid token and key with every request (`wrk -H`). It is reported as a ratio
//! to `edge`.
//!
//! The quota cost (issue 6: at least 0.8× with a global quota, at most 0.5 ms more at p99) is
//! measured by `edge-quota`: an edge proxy with `--redis` whose listener puts a `rate_limit`
//! policy per client address on every route, never exhausted, counted in a Redis this harness
//! starts on the load CPU, at a higher priority than wrk and the upstream there (nice −10), as
//! a Redis on a host of its own would answer at once. Reported as a ratio to `edge`, with the Redis commands per request
//! (from `INFO commandstats`).
//!
//! `BENCH_PACE_MS=N` paces the load instead of running it flat out: each wrk connection waits
//! N ms between a response and its next request (a `delay()` script), so every peer serves the
//! same light load and the latencies compare what each peer adds itself, rather than the
//! queue that a lower throughput builds up in a closed loop of `BENCH_CONNECTIONS`. Such a run
//! reports latencies only; its requests/s are the pace's.
//!
//! `BENCH_PEERS` (default
//! `edge,envoy,nginx,direct,edge-bare,edge-log,edge-trace,edge-auth,edge-quota`; leave the last
//! five out to skip the observability and policy rows) chooses and orders the peers; `BENCH_PATH`
//! changes the requested path (e.g. `/svc/0000/x` hits the first route instead). Before each
//! run the harness waits (up to `BENCH_QUIET_WAIT` s, default 120) until both CPUs are idle, and
//! it measures how much CPU other processes took during each run: a run where they took over
//! 10% of a CPU is retried (up to `BENCH_RETRIES` times, default 2) and left out of the medians
//! while an undisturbed run of that peer exists.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};
use support::jwt::{JwksServer, SigningKey};
use support::nginx::{command_on_cpu, nginx_bin};
use support::process::{ChildProcess, log_block, tollgate_bin, workspace_root};
use support::wait::{give_up, http_ok, try_eventually};
use support::{ControlPlane, EnvoyOptions, Nginx, NginxOptions, OtlpReceiver, free_port};
use tempfile::TempDir;

/// The upstream's response body.
const BODY: &str = "hello";
/// The path the load requests by default: only the catch-all route, last in match order, takes
/// it.
const LOAD_PATH: &str = "/bench";
/// How long a peer may take to become ready and route to the upstream.
const READY_TIMEOUT: Duration = Duration::from_secs(45);
/// Required: edge requests/s ≥ this × Envoy's.
const TARGET_VS_ENVOY: f64 = 2.5;
/// Required: edge requests/s ≥ this × nginx's.
const TARGET_VS_NGINX: f64 = 0.9;
/// Required: edge RSS after the load, with the routes loaded, at most this many MiB.
const TARGET_RSS_MIB: f64 = 20.0;
/// A peer or the load side counts as saturated from this share of its CPU.
const SATURATED: f64 = 0.9;
/// A run counts as disturbed when other processes took more than this share of a CPU.
const DISTURBED: f64 = 0.1;
/// Required: with request metrics and a file access log, requests/s ≥ this × the edge proxy's
/// with neither.
const TARGET_LOGGED_VS_BARE: f64 = 0.95;
/// Issue 5: the edge proxy with a JWT and an API-key policy against itself without policies.
const TARGET_AUTH_VS_EDGE: f64 = 0.85;
/// Issue 6: the edge proxy with a global quota against itself without policies.
const TARGET_QUOTA_VS_EDGE: f64 = 0.8;
/// Issue 6: what the global quota may add to the p99 latency.
const TARGET_QUOTA_ADDED_P99: Duration = Duration::from_micros(500);
/// The quota's Redis deadline in the benchmark: well above what a loaded 2-core machine takes,
/// so that every request is counted (a timed-out check fails open, and would cost nothing).
const BENCH_REDIS_TIMEOUT: &str = "100ms";

/// A proxy (or the upstream itself) that the load is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    Edge,
    Envoy,
    Nginx,
    Direct,
    /// The edge proxy without request metrics or access log.
    EdgeBare,
    /// The edge proxy with request metrics and a file access log.
    EdgeLog,
    /// The edge proxy with request metrics and tracing.
    EdgeTrace,
    /// The edge proxy with a JWT policy (RS256, JWKS fetched once and cached) and an API-key
    /// policy on every route.
    EdgeAuth,
    /// The edge proxy with a global rate-limit policy (counted in Redis, never exhausted) on
    /// every route.
    EdgeQuota,
}

impl PeerKind {
    fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name.trim() {
            "edge" => Self::Edge,
            "envoy" => Self::Envoy,
            "nginx" => Self::Nginx,
            "direct" => Self::Direct,
            "edge-bare" => Self::EdgeBare,
            "edge-log" => Self::EdgeLog,
            "edge-trace" => Self::EdgeTrace,
            "edge-auth" => Self::EdgeAuth,
            "edge-quota" => Self::EdgeQuota,
            other => anyhow::bail!(
                "BENCH_PEERS: unknown peer {other:?} (known: edge, envoy, nginx, direct, \
                 edge-bare, edge-log, edge-trace, edge-auth, edge-quota)"
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Envoy => "envoy",
            Self::Nginx => "nginx",
            Self::Direct => "direct",
            Self::EdgeBare => "edge-bare",
            Self::EdgeLog => "edge-log",
            Self::EdgeTrace => "edge-trace",
            Self::EdgeAuth => "edge-auth",
            Self::EdgeQuota => "edge-quota",
        }
    }

    /// Whether this is one of the edge proxy's variants.
    fn is_edge(self) -> bool {
        matches!(
            self,
            Self::Edge
                | Self::EdgeBare
                | Self::EdgeLog
                | Self::EdgeTrace
                | Self::EdgeAuth
                | Self::EdgeQuota
        )
    }

    fn label(self) -> &'static str {
        match self {
            Self::Edge => "Tollgate edge proxy",
            Self::Envoy => "Envoy",
            Self::Nginx => "nginx (reverse proxy)",
            Self::Direct => "direct to upstream (no proxy)",
            Self::EdgeBare => "edge proxy, no request metrics, no access log",
            Self::EdgeLog => "edge proxy, metrics + access log to a file",
            Self::EdgeTrace => "edge proxy, metrics + tracing (OTLP, sampling 1.0)",
            Self::EdgeAuth => "edge proxy, JWT (RS256) + API key on every route",
            Self::EdgeQuota => "edge proxy, a global rate limit (Redis) on every route",
        }
    }
}

/// What the environment asks for.
#[derive(Debug)]
struct Settings {
    peers: Vec<PeerKind>,
    connections: u32,
    duration_secs: u32,
    warmup_secs: u32,
    rounds: usize,
    routes: usize,
    peer_cpu: usize,
    load_cpu: usize,
    quiet_wait_secs: u32,
    retries: u32,
    /// Milliseconds each connection waits between a response and its next request (0: none,
    /// the load runs flat out).
    pace_ms: u32,
    /// The wrk script that makes that wait, written when `pace_ms` is set.
    pace_script: Option<PathBuf>,
    /// The path the load requests.
    path: String,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let peers = std::env::var("BENCH_PEERS")
            .unwrap_or_else(|_| {
                "edge,envoy,nginx,direct,edge-bare,edge-log,edge-trace,edge-auth,edge-quota"
                    .to_owned()
            })
            .split(',')
            .filter(|name| !name.trim().is_empty())
            .map(PeerKind::parse)
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!peers.is_empty(), "BENCH_PEERS names no peer");
        let settings = Self {
            peers,
            connections: env_number("BENCH_CONNECTIONS", 64)?,
            duration_secs: env_number("BENCH_DURATION", 10)?,
            warmup_secs: env_number("BENCH_WARMUP", 3)?,
            rounds: env_number("BENCH_ROUNDS", 3)?,
            routes: env_number("BENCH_ROUTES", 1000)?,
            peer_cpu: env_number("BENCH_PEER_CPU", 1)?,
            load_cpu: env_number("BENCH_LOAD_CPU", 0)?,
            quiet_wait_secs: env_number("BENCH_QUIET_WAIT", 120)?,
            retries: env_number("BENCH_RETRIES", 2)?,
            pace_ms: env_number("BENCH_PACE_MS", 0)?,
            pace_script: None,
            path: std::env::var("BENCH_PATH")
                .ok()
                .filter(|path| !path.is_empty())
                .unwrap_or_else(|| LOAD_PATH.to_owned()),
        };
        anyhow::ensure!(settings.routes >= 1, "BENCH_ROUTES must be at least 1");
        anyhow::ensure!(
            settings.path.starts_with('/'),
            "BENCH_PATH must start with `/`"
        );
        anyhow::ensure!(settings.rounds >= 1, "BENCH_ROUNDS must be at least 1");
        anyhow::ensure!(
            settings.connections >= 1,
            "BENCH_CONNECTIONS must be at least 1"
        );
        anyhow::ensure!(
            settings.duration_secs >= 1,
            "BENCH_DURATION must be at least 1"
        );
        Ok(settings)
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .with_context(|| format!("${name} = {value:?} is not a valid number")),
        _ => Ok(default),
    }
}

/// What keeps a peer's process alive; dropping it kills the process.
#[derive(Debug)]
enum Guard {
    // Field order: the process is killed before its directory is deleted.
    Process {
        _process: ChildProcess,
        _dir: TempDir,
    },
    Nginx {
        _nginx: Nginx,
    },
    /// The `direct` peer is the upstream, which `main` owns.
    Borrowed,
}

/// A running peer: where to send the load, and which process to measure.
#[derive(Debug)]
struct Peer {
    kind: PeerKind,
    url: String,
    pid: u32,
    /// The file the peer's access log goes to, emptied before each run.
    access_log: Option<PathBuf>,
    /// Headers every request carries (the credentials of `edge-auth`).
    headers: Vec<(String, String)>,
    /// A process on the load CPU that the peer's requests make work (Redis for `edge-quota`):
    /// its CPU is part of the run, not a disturbance.
    helper_pid: Option<u32>,
    _guard: Guard,
}

/// One wrk run, parsed.
#[derive(Debug, Clone)]
struct RunResult {
    requests_per_sec: f64,
    /// Requests answered in the run.
    requests: u64,
    p50: Duration,
    p99: Duration,
    /// Non-2xx/3xx responses plus socket errors (connect, read, write, timeout).
    errors: u64,
    /// Share of one CPU the peer process used during the run.
    peer_cpu: f64,
    /// Share of the load CPU that was busy (wrk, upstream, …) during the run.
    load_cpu_busy: f64,
    /// Share of the peer CPU used by other processes than the peer.
    other_peer_cpu: f64,
    /// Share of the load CPU used by other processes than wrk, the upstream and this harness.
    other_load_cpu: f64,
}

impl RunResult {
    /// Whether other processes took enough CPU during the run to distort it.
    fn disturbed(&self) -> bool {
        self.other_peer_cpu.max(self.other_load_cpu) > DISTURBED
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    if settings.pace_ms > 0 {
        let dir = target_dir().join("bench");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let script = dir.join("pace.lua");
        // wrk calls `delay` before each request and waits that many milliseconds first.
        std::fs::write(
            &script,
            format!("function delay()\n  return {}\nend\n", settings.pace_ms),
        )
        .with_context(|| format!("writing {}", script.display()))?;
        settings.pace_script = Some(script);
    }
    let settings = settings;
    // Everything this harness starts without an explicit pin (the control plane) inherits this,
    // so the peers' CPU carries nothing but the peer under load.
    pin_self(settings.load_cpu)?;
    let wrk = find_program("wrk").context("wrk not found on PATH; scripts/bench installs it")?;
    let nginx = nginx_bin()
        .context("nginx not found ($NGINX_BIN, PATH, /usr/sbin); scripts/bench installs it")?;
    let needs = |kind| settings.peers.contains(&kind);
    if settings.peers.iter().any(|kind| kind.is_edge()) {
        check_edge_proxy_subcommand()?;
    }
    let envoy = if needs(PeerKind::Envoy) {
        Some(support::envoy::envoy_bin().context(
            "envoy not found ($ENVOY_BIN, .tools/venv/bin/envoy, PATH); scripts/bench installs it",
        )?)
    } else {
        None
    };
    let machine = machine_report(&wrk, &nginx, envoy.as_deref());
    println!("proxy_compare: {settings:?}\n{machine}");

    let upstream_port = free_port();
    let upstream = Nginx::start(NginxOptions {
        name: "upstream".to_owned(),
        http: upstream_config(upstream_port),
        ready_url: format!("http://127.0.0.1:{upstream_port}{}", settings.path),
        cpu: Some(settings.load_cpu),
    })
    .await
    .context("starting the upstream")?;

    // One listener per proxy fed by the control plane, each for its own node cluster.
    let listeners: Vec<(PeerKind, u16)> = settings
        .peers
        .iter()
        .filter(|kind| kind.is_edge() || **kind == PeerKind::Envoy)
        .map(|&kind| (kind, free_port()))
        .collect();
    let port_of = |kind| listeners.iter().find(|(k, _)| *k == kind).map(|(_, p)| *p);
    let logs = temp_dir("access-log")?;
    let access_log = logs.path().join("edge-access.log");
    // Only counts: the load makes millions of spans.
    let receiver = if needs(PeerKind::EdgeTrace) {
        Some(OtlpReceiver::start_counting().await)
    } else {
        None
    };
    let credentials = if needs(PeerKind::EdgeAuth) {
        Some(Credentials::new().await)
    } else {
        None
    };
    // Redis for `edge-quota`, on the load CPU (this process's pin is inherited), ahead of wrk
    // and the upstream there.
    let redis = if needs(PeerKind::EdgeQuota) {
        let redis = support::redis::start_redis()?
            .context("redis-server not found; scripts/bench installs it")?;
        if let Some(pid) = redis.pid() {
            give_cpu_first(pid);
        }
        Some(redis)
    } else {
        None
    };
    let cp = if listeners.is_empty() {
        None
    } else {
        let cp = ControlPlane::start().await?;
        load_config(
            &cp,
            &settings,
            upstream_port,
            &listeners,
            &access_log,
            credentials.as_ref(),
        )
        .await?;
        Some(cp)
    };

    let mut peers = Vec::new();
    for &kind in &settings.peers {
        let peer = match kind {
            PeerKind::Edge
            | PeerKind::EdgeBare
            | PeerKind::EdgeLog
            | PeerKind::EdgeTrace
            | PeerKind::EdgeAuth
            | PeerKind::EdgeQuota => {
                let cp = cp
                    .as_ref()
                    .context("the edge proxy needs the control plane")?;
                let port = port_of(kind).context("no listener port")?;
                let endpoint = receiver.as_ref().map(OtlpReceiver::endpoint);
                let redis_url = redis.as_ref().map(support::redis::RedisServer::url);
                let args: Vec<&str> = match (kind, &endpoint, &redis_url) {
                    (PeerKind::EdgeBare, _, _) => vec!["--request-metrics", "false"],
                    (PeerKind::EdgeTrace, Some(endpoint), _) => {
                        vec!["--otlp-endpoint", endpoint]
                    }
                    (PeerKind::EdgeQuota, _, Some(url)) => {
                        vec!["--redis", url, "--redis-timeout", BENCH_REDIS_TIMEOUT]
                    }
                    _ => Vec::new(),
                };
                let headers = match (kind, &credentials) {
                    (PeerKind::EdgeAuth, Some(credentials)) => credentials.headers(),
                    _ => Vec::new(),
                };
                let mut peer = start_edge(cp, &settings, kind, port, &args, headers).await?;
                if kind == PeerKind::EdgeLog {
                    peer.access_log = Some(access_log.clone());
                }
                if kind == PeerKind::EdgeQuota {
                    peer.helper_pid = redis.as_ref().and_then(support::redis::RedisServer::pid);
                }
                peer
            }
            PeerKind::Envoy => {
                let cp = cp.as_ref().context("Envoy needs the control plane")?;
                let bin = envoy.as_deref().context("no Envoy binary")?;
                let port = port_of(kind).context("no listener port")?;
                start_envoy(cp, &settings, bin, port).await?
            }
            PeerKind::Nginx => start_nginx(&settings, upstream_port).await?,
            PeerKind::Direct => Peer {
                kind,
                url: format!("http://127.0.0.1:{upstream_port}{}", settings.path),
                pid: upstream.pid(),
                access_log: None,
                headers: Vec::new(),
                helper_pid: None,
                _guard: Guard::Borrowed,
            },
        };
        println!("{} ready: {} (pid {})", kind.label(), peer.url, peer.pid);
        peers.push(peer);
    }

    let rss_idle: Vec<u64> = peers
        .iter()
        .map(|peer| rss_kib(peer.pid))
        .collect::<anyhow::Result<_>>()?;
    // Requests sent to each peer, warm-ups and retries included (for the span count).
    let mut sent = vec![0u64; peers.len()];
    for (peer, sent) in peers
        .iter()
        .zip(&mut sent)
        .filter(|_| settings.warmup_secs > 0)
    {
        println!(
            "warm-up: {} for {} s",
            peer.kind.name(),
            settings.warmup_secs
        );
        let result = run_wrk(&wrk, &settings, peer, upstream.pid(), settings.warmup_secs).await?;
        *sent += result.requests;
        if let Some(path) = &peer.access_log {
            // The listener's access log must be on, or this row measures nothing.
            let written = std::fs::metadata(path).map_or(0, |m| m.len());
            anyhow::ensure!(
                written > 0,
                "{}: the access log {} stayed empty",
                peer.kind.name(),
                path.display()
            );
        }
    }
    // Redis commands before the measured rounds, to report commands per request.
    let quota_peer = peers.iter().position(|p| p.kind == PeerKind::EdgeQuota);
    let commands_before = redis.as_ref().map(redis_commands).transpose()?;
    let sent_before = quota_peer.map(|i| sent[i]);
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); peers.len()];
    for round in 1..=settings.rounds {
        for ((peer, runs), sent) in peers.iter().zip(&mut results).zip(&mut sent) {
            let mut result = run_wrk(
                &wrk,
                &settings,
                peer,
                upstream.pid(),
                settings.duration_secs,
            )
            .await?;
            for retry in 1..=settings.retries {
                if !result.disturbed() {
                    break;
                }
                println!(
                    "retrying {} ({retry}/{})",
                    peer.kind.name(),
                    settings.retries
                );
                *sent += result.requests;
                result = run_wrk(
                    &wrk,
                    &settings,
                    peer,
                    upstream.pid(),
                    settings.duration_secs,
                )
                .await?;
            }
            println!(
                "round {round}/{}: {:<6} {:>8.0} req/s  p50 {:>9}  p99 {:>9}  peer CPU {:>3.0}%  \
                 load CPU {:>3.0}%  others {:>2.0}%/{:>2.0}%  errors {}",
                settings.rounds,
                peer.kind.name(),
                result.requests_per_sec,
                fmt_latency(result.p50),
                fmt_latency(result.p99),
                result.peer_cpu * 100.0,
                result.load_cpu_busy * 100.0,
                result.other_peer_cpu * 100.0,
                result.other_load_cpu * 100.0,
                result.errors,
            );
            *sent += result.requests;
            runs.push(result);
        }
    }
    // What the tracing peer exported: its batch processor drops spans when its queue is full.
    let spans = match (
        &receiver,
        peers.iter().position(|p| p.kind == PeerKind::EdgeTrace),
    ) {
        (Some(receiver), Some(i)) => {
            // The batch processor exports every 5 s; let the last batches arrive.
            tokio::time::sleep(Duration::from_secs(6)).await;
            Some(SpanCount {
                received: receiver.span_count(),
                requests: sent[i],
            })
        }
        _ => None,
    };
    let mut rows = Vec::new();
    for ((peer, runs), idle) in peers.iter().zip(&results).zip(rss_idle) {
        rows.push(Row {
            kind: peer.kind,
            median: median_of(&counted(runs)),
            counted: counted(runs).len(),
            runs: runs.clone(),
            rss_idle_kib: idle,
            rss_after_kib: rss_kib(peer.pid)?,
            hwm_kib: status_kib(peer.pid, "VmHWM")?,
        });
    }

    let quota_commands = match (&redis, commands_before, quota_peer, sent_before) {
        (Some(redis), Some(before), Some(i), Some(sent_before)) => {
            let requests = sent[i] - sent_before;
            Some((redis_commands(redis)? - before) as f64 / requests.max(1) as f64)
        }
        _ => None,
    };
    let report = render_report(&settings, &machine, &rows, spans, quota_commands);
    println!("\n{report}");
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = out_dir.join("proxy_compare.md");
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());
    // Peers go first (they hold connections to the upstream and the control plane), then the
    // control plane, then the upstream.
    drop(peers);
    drop(cp);
    drop(receiver);
    drop(credentials);
    drop(redis);
    drop(upstream);
    drop(logs);
    Ok(())
}

/// Pins this process (every thread) to `cpu` with `taskset -a -p`.
fn pin_self(cpu: usize) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux) to pin the harness")?;
    anyhow::ensure!(
        status.success(),
        "taskset could not pin to CPU {cpu}: {status}"
    );
    Ok(())
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Fails with advice when the `tollgate` binary has no `edge-proxy` subcommand yet.
fn check_edge_proxy_subcommand() -> anyhow::Result<()> {
    let bin = tollgate_bin();
    let output = Command::new(&bin)
        .args(["edge-proxy", "--help"])
        .output()
        .with_context(|| format!("running {} edge-proxy --help", bin.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} has no working `edge-proxy` subcommand ({}): rebuild it with \
         `cargo build --release --bin tollgate`, or leave the edge proxy out with \
         BENCH_PEERS=envoy,nginx,direct\n{}",
        bin.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The upstream: `hello` to every request, keep-alive connections that are never closed by
/// request count (nginx closes after 1,000 requests by default, which would make every peer
/// reconnect all the time).
fn upstream_config(port: u16) -> String {
    format!(
        "    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
        location / {{
            default_type text/plain;
            return 200 \"{BODY}\";
        }}
    }}"
    )
}

/// Route `i` of the `routes - 1` specific ones, e.g. `/svc/0042/`.
fn route_prefix(i: usize) -> String {
    format!("/svc/{i:04}/")
}

/// Puts the whole config (cluster `bench`, the routes, one listener per proxy in `listeners`,
/// each for the node cluster named after it) in one `PUT /v1/config`, before any proxy
/// connects. The `edge-log` listener logs to `access_log`.
async fn load_config(
    cp: &ControlPlane,
    settings: &Settings,
    upstream_port: u16,
    listeners: &[(PeerKind, u16)],
    access_log: &Path,
    credentials: Option<&Credentials>,
) -> anyhow::Result<()> {
    let mut routes: Vec<Value> = (0..settings.routes - 1)
        .map(|i| {
            json!({
                "name": format!("svc-{i:04}"),
                "match": {"path_prefix": route_prefix(i)},
                "cluster": "bench",
            })
        })
        .collect();
    routes.push(json!({"name": "catch-all", "match": {"path_prefix": "/"}, "cluster": "bench"}));
    let listeners: Vec<Value> = listeners
        .iter()
        .map(|&(kind, port)| {
            let mut listener = json!({
                "name": kind.name(),
                "address": "127.0.0.1",
                "port": port,
                "node_cluster": kind.name(),
            });
            if kind == PeerKind::EdgeLog {
                listener["access_log"] = json!({"path": access_log});
            }
            if kind == PeerKind::EdgeAuth {
                listener["policies"] = json!(["bench-jwt", "bench-keys"]);
            }
            if kind == PeerKind::EdgeQuota {
                listener["policies"] = json!(["bench-quota"]);
            }
            listener
        })
        .collect();
    let document = json!({
        "clusters": [{
            "name": "bench",
            "endpoints": [{"address": "127.0.0.1", "port": upstream_port}],
        }],
        "routes": routes,
        "listeners": listeners,
        "policies": credentials
            .map_or_else(Vec::new, Credentials::policies)
            .into_iter()
            .chain(listeners.iter().any(|l| l["name"] == PeerKind::EdgeQuota.name()).then(|| {
                // Per client address, a limit no benchmark reaches: every request is counted
                // in Redis and allowed.
                json!({"name": "bench-quota", "type": "rate_limit", "key": ["client_ip"],
                       "limit": {"requests": 1_000_000_000, "window_s": 3600}})
            }))
            .collect::<Vec<_>>(),
        "consumers": credentials.map_or_else(Vec::new, Credentials::consumers),
    });
    let (status, body) = cp
        .raw(Method::PUT, "/v1/config", Some(document), Some(cp.token()))
        .await?;
    anyhow::ensure!(status.is_success(), "PUT /v1/config: {status}: {body}");
    println!(
        "control plane: {} routes, revision {}",
        settings.routes, body["revision"]
    );
    Ok(())
}

/// Starts an edge proxy (the node cluster named after `kind`, with `extra_args`) on the control
/// plane and waits for `/ready` and a routed 200.
async fn start_edge(
    cp: &ControlPlane,
    settings: &Settings,
    kind: PeerKind,
    port: u16,
    extra_args: &[&str],
    headers: Vec<(String, String)>,
) -> anyhow::Result<Peer> {
    let dir = temp_dir(kind.name())?;
    let admin_port = free_port();
    let mut cmd = command_on_cpu(tollgate_bin(), Some(settings.peer_cpu));
    cmd.arg("edge-proxy")
        .arg("--xds")
        .arg(format!("http://127.0.0.1:{}", cp.xds_port()))
        .arg("--node-id")
        .arg(format!("bench-{}", kind.name()))
        .arg("--node-cluster")
        .arg(kind.name())
        .arg("--admin-addr")
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--worker-threads")
        .arg("1")
        .args(extra_args)
        // Warnings only, like the other peers: the data path is measured, not log output.
        .env("RUST_LOG", "warn");
    let process = ChildProcess::spawn_logged(kind.name(), cmd, &dir.path().join("edge.log"))?;
    let admin_ready = format!("http://127.0.0.1:{admin_port}/ready");
    ready_peer(
        kind,
        process,
        dir,
        &admin_ready,
        port,
        &settings.path,
        headers,
    )
    .await
}

/// Starts Envoy with `--concurrency 1` from the example bootstrap (node cluster `envoy`) and
/// waits for `/ready` and a routed 200.
async fn start_envoy(
    cp: &ControlPlane,
    settings: &Settings,
    bin: &Path,
    port: u16,
) -> anyhow::Result<Peer> {
    let dir = temp_dir("envoy")?;
    let admin_port = free_port();
    let example = workspace_root().join("examples/envoy/bootstrap.yaml");
    let template = std::fs::read_to_string(&example)
        .with_context(|| format!("reading {}", example.display()))?;
    let opts = EnvoyOptions {
        node_id: "envoy-bench".to_owned(),
        node_cluster: "envoy".to_owned(),
        delta: false,
    };
    let bootstrap = support::envoy::render_bootstrap(&template, cp.xds_port(), admin_port, &opts);
    let bootstrap_path = dir.path().join("bootstrap.yaml");
    std::fs::write(&bootstrap_path, bootstrap)
        .with_context(|| format!("writing {}", bootstrap_path.display()))?;
    let mut cmd = command_on_cpu(bin, Some(settings.peer_cpu));
    cmd.arg("-c")
        .arg(&bootstrap_path)
        .arg("--concurrency")
        .arg("1")
        .arg("--disable-hot-restart")
        .arg("--base-id")
        .arg(admin_port.to_string())
        .arg("--log-level")
        .arg("warn");
    let process = ChildProcess::spawn_logged("envoy", cmd, &dir.path().join("envoy.log"))?;
    let admin_ready = format!("http://127.0.0.1:{admin_port}/ready");
    ready_peer(
        PeerKind::Envoy,
        process,
        dir,
        &admin_ready,
        port,
        &settings.path,
        Vec::new(),
    )
    .await
}

/// Waits until `admin_ready` answers 2xx and `path` on `port` returns the upstream's body.
async fn ready_peer(
    kind: PeerKind,
    mut process: ChildProcess,
    dir: TempDir,
    admin_ready: &str,
    port: u16,
    path: &str,
    headers: Vec<(String, String)>,
) -> anyhow::Result<Peer> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let ready = try_eventually(&format!("{} to serve", kind.name()), READY_TIMEOUT, || {
        let exited = process.try_status();
        let (admin_ready, url, headers) = (admin_ready.to_owned(), url.clone(), headers.clone());
        async move {
            if let Some(status) = exited {
                return Err(give_up(format!("{} exited: {status}", kind.name())));
            }
            http_ok(&admin_ready).await?;
            expect_body(&url, &headers).await
        }
    })
    .await;
    if let Err(e) = ready {
        return Err(anyhow::anyhow!(
            "{} did not become ready: {e:#}\n{}",
            kind.label(),
            log_block(kind.name(), &process.log())
        ));
    }
    Ok(Peer {
        kind,
        url,
        pid: process.pid(),
        access_log: None,
        headers,
        helper_pid: None,
        _guard: Guard::Process {
            _process: process,
            _dir: dir,
        },
    })
}

/// `GET url` with `headers` must answer 200 with the upstream's body.
async fn expect_body(url: &str, headers: &[(String, String)]) -> anyhow::Result<()> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let response = support::client::request(Method::GET, url, None, &headers, None).await?;
    anyhow::ensure!(
        response.status == 200 && response.body == BODY,
        "GET {url}: {} {:?}, expected 200 {BODY:?}",
        response.status,
        response.body
    );
    Ok(())
}

/// nginx as a reverse proxy: one location per route (the same prefixes), an upstream pool of
/// keep-alive HTTP/1.1 connections.
async fn start_nginx(settings: &Settings, upstream_port: u16) -> anyhow::Result<Peer> {
    let port = free_port();
    let mut http = format!(
        "    upstream bench {{
        server 127.0.0.1:{upstream_port};
        keepalive {connections};
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        location / {{
            proxy_pass http://bench;
        }}
",
        connections = settings.connections.max(1),
    );
    for i in 0..settings.routes - 1 {
        let _ = writeln!(
            http,
            "        location {} {{ proxy_pass http://bench; }}",
            route_prefix(i)
        );
    }
    http.push_str("    }");
    let url = format!("http://127.0.0.1:{port}{}", settings.path);
    let nginx = Nginx::start(NginxOptions {
        name: "proxy".to_owned(),
        http,
        ready_url: url.clone(),
        cpu: Some(settings.peer_cpu),
    })
    .await
    .context("starting nginx as a reverse proxy")?;
    expect_body(&url, &[]).await?;
    Ok(Peer {
        kind: PeerKind::Nginx,
        url,
        pid: nginx.pid(),
        access_log: None,
        headers: Vec::new(),
        helper_pid: None,
        _guard: Guard::Nginx { _nginx: nginx },
    })
}

/// What `edge-auth` checks and its load presents: a JWT policy whose JWKS (one RSA key) is
/// served by a small server here and fetched by the proxy once, then cached; an API-key policy
/// with one consumer.
struct Credentials {
    key: SigningKey,
    jwks: JwksServer,
}

const BENCH_ISSUER: &str = "https://idp.bench.test";
const BENCH_API_KEY: &str = "bench-api-key-0123456789";

impl Credentials {
    async fn new() -> Self {
        let key = SigningKey::rsa_a("bench");
        let jwks = JwksServer::start(support::jwt::jwks(&[&key])).await;
        Self { key, jwks }
    }

    fn policies(&self) -> Vec<Value> {
        vec![
            json!({"type": "jwt", "name": "bench-jwt", "issuer": BENCH_ISSUER,
                   "audiences": ["bench"], "jwks_uri": self.jwks.url(),
                   "jwks_cache_duration_s": 86400, "claims_to_headers": {"sub": "x-user-id"}}),
            json!({"type": "api_key", "name": "bench-keys"}),
        ]
    }

    fn consumers(&self) -> Vec<Value> {
        vec![json!({"name": "bench", "tier": "pro", "api_keys": [BENCH_API_KEY]})]
    }

    /// A token valid for a day, and the key.
    fn headers(&self) -> Vec<(String, String)> {
        let now = support::jwt::now();
        let token = self
            .key
            .sign(&json!({"iss": BENCH_ISSUER, "aud": "bench", "sub": "load",
                                          "iat": now, "exp": now + 86_400}));
        vec![
            ("authorization".to_owned(), format!("Bearer {token}")),
            ("x-api-key".to_owned(), BENCH_API_KEY.to_owned()),
        ]
    }
}

fn temp_dir(name: &str) -> anyhow::Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("tollgate-bench-{name}-"))
        .tempdir()
        .with_context(|| format!("creating a temp dir for {name}"))
}

/// CPU counters read before and after a run, in clock ticks.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    /// CPU time of the peer's helper process (Redis for `edge-quota`), 0 without one.
    helper: u64,
    peer: u64,
    upstream: u64,
    /// CPU time of this harness: the OTLP receiver runs in it.
    harness: u64,
    /// CPU time of this harness's reaped children: wrk.
    children: u64,
    /// Busy and total ticks of the peer CPU and of the load CPU.
    peer_cpu: (u64, u64),
    load_cpu: (u64, u64),
}

impl CpuSample {
    fn take(
        settings: &Settings,
        peer_pid: u32,
        upstream_pid: u32,
        helper_pid: Option<u32>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            helper: helper_pid.map_or(Ok(0), |pid| process_ticks(pid, false))?,
            peer: process_ticks(peer_pid, false)?,
            upstream: process_ticks(upstream_pid, false)?,
            harness: process_ticks(std::process::id(), false)?,
            children: process_ticks(std::process::id(), true)?,
            peer_cpu: cpu_busy(settings.peer_cpu)?,
            load_cpu: cpu_busy(settings.load_cpu)?,
        })
    }
}

/// Lets `pid` run before the other processes of its CPU (nice −10). Redis stands for a store
/// on its own host, which answers at once: sharing the load CPU with wrk's and the upstream's
/// busy loops, it would otherwise answer a batch only when the scheduler gets round to it, and
/// every quota decision (so every request of the peer) would wait for that. Its CPU time
/// still counts as the run's. Without the right to renice (not root), it is left as it is,
/// with a warning.
fn give_cpu_first(pid: u32) {
    let reniced = Command::new("renice")
        .args(["-n", "-10", "-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !reniced {
        eprintln!("warning: could not renice Redis (pid {pid}): quota runs wait for the load CPU");
    }
}

/// Waits, up to `BENCH_QUIET_WAIT` seconds, until neither the peer CPU nor the load CPU is more
/// than 10% busy over one second: on a machine shared with builds, a run started in the middle
/// of a compile measures the compiler.
async fn wait_quiet(settings: &Settings) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let before = (cpu_busy(settings.peer_cpu)?, cpu_busy(settings.load_cpu)?);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = (cpu_busy(settings.peer_cpu)?, cpu_busy(settings.load_cpu)?);
        let share = |b: (u64, u64), a: (u64, u64)| {
            a.0.saturating_sub(b.0) as f64 / a.1.saturating_sub(b.1).max(1) as f64
        };
        let busy = share(before.0, after.0).max(share(before.1, after.1));
        if busy <= DISTURBED {
            return Ok(());
        }
        if started.elapsed() >= Duration::from_secs(settings.quiet_wait_secs.into()) {
            eprintln!(
                "warning: the machine is still busy ({:.0}% of a CPU) after {} s; running anyway",
                busy * 100.0,
                settings.quiet_wait_secs
            );
            return Ok(());
        }
        if !told {
            eprintln!(
                "waiting for a quiet machine: {:.0}% of a bench CPU is busy (up to {} s)",
                busy * 100.0,
                settings.quiet_wait_secs
            );
            told = true;
        }
    }
}

/// Runs wrk against `peer` for `secs` seconds on the load CPU and parses its report.
async fn run_wrk(
    wrk: &Path,
    settings: &Settings,
    peer: &Peer,
    upstream_pid: u32,
    secs: u32,
) -> anyhow::Result<RunResult> {
    let mut cmd = command_on_cpu(wrk, Some(settings.load_cpu));
    cmd.arg("-t1")
        .arg(format!("-c{}", settings.connections))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("--timeout")
        .arg("5s");
    if let Some(script) = &settings.pace_script {
        cmd.arg("-s").arg(script);
    }
    for (name, value) in &peer.headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    cmd.arg(&peer.url).stdin(Stdio::null());
    if let Some(path) = &peer.access_log {
        // One run's lines at a time on the disk; the proxy appends, so it writes on at the start.
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|file| file.set_len(0))
            .with_context(|| format!("emptying {}", path.display()))?;
    }
    wait_quiet(settings).await?;
    let before = CpuSample::take(settings, peer.pid, upstream_pid, peer.helper_pid)?;
    let output = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .context("running wrk")?;
    let after = CpuSample::take(settings, peer.pid, upstream_pid, peer.helper_pid)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk against {} failed ({}):\n{stdout}{}",
        peer.kind.name(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut result = parse_wrk(&stdout)
        .with_context(|| format!("parsing wrk's report for {}:\n{stdout}", peer.kind.name()))?;

    // Shares of one CPU over the run, all in the same clock ticks as /proc/stat.
    let peer_total = after.peer_cpu.1.saturating_sub(before.peer_cpu.1).max(1) as f64;
    let load_total = after.load_cpu.1.saturating_sub(before.load_cpu.1).max(1) as f64;
    let peer_busy = after.peer_cpu.0.saturating_sub(before.peer_cpu.0) as f64 / peer_total;
    let load_busy = after.load_cpu.0.saturating_sub(before.load_cpu.0) as f64 / load_total;
    let wrk_share = after.children.saturating_sub(before.children) as f64 / load_total;
    let upstream_share = after.upstream.saturating_sub(before.upstream) as f64 / load_total;
    let harness_share = after.harness.saturating_sub(before.harness) as f64 / load_total;
    let helper_share = after.helper.saturating_sub(before.helper) as f64 / load_total;
    let peer_ticks = after.peer.saturating_sub(before.peer) as f64;
    if peer.kind == PeerKind::Direct {
        // The peer is the upstream, on the load CPU. The peer CPU plays no part (and the
        // scheduler gladly hands it to other processes while the load CPU is full).
        result.peer_cpu = upstream_share;
        result.other_peer_cpu = 0.0;
    } else {
        result.peer_cpu = peer_ticks / peer_total;
        result.other_peer_cpu = (peer_busy - result.peer_cpu).max(0.0);
    }
    result.load_cpu_busy = load_busy;
    result.other_load_cpu =
        (load_busy - wrk_share - upstream_share - harness_share - helper_share).max(0.0);
    if result.errors > 0 {
        eprintln!(
            "warning: {} answered {} errors (non-2xx/3xx or socket errors) in one run:\n{stdout}",
            peer.kind.name(),
            result.errors
        );
    }
    if result.disturbed() {
        eprintln!(
            "warning: other processes took {:.0}% of the peer CPU and {:.0}% of the load CPU \
             during this run of {}: its numbers are disturbed",
            result.other_peer_cpu * 100.0,
            result.other_load_cpu * 100.0,
            peer.kind.name()
        );
    }
    Ok(result)
}

/// Parses wrk's `--latency` report: requests/s, the 50% and 99% latencies and the errors.
fn parse_wrk(text: &str) -> anyhow::Result<RunResult> {
    let mut requests_per_sec = None;
    let mut requests = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => requests_per_sec = Some(value.parse()?),
            // `490816 requests in 10.00s, 74.42MB read`
            [count, "requests", "in", ..] => requests = Some(count.parse()?),
            ["50%", value] => p50 = Some(parse_wrk_duration(value)?),
            ["99%", value] => p99 = Some(parse_wrk_duration(value)?),
            ["Non-2xx", "or", "3xx", "responses:", count] => errors += count.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // `connect 0, read 0, write 0, timeout 0`
                for count in rest.iter().skip(1).step_by(2) {
                    errors += count.trim_end_matches(',').parse::<u64>()?;
                }
            }
            _ => {}
        }
    }
    Ok(RunResult {
        requests_per_sec: requests_per_sec.context("no `Requests/sec:` line")?,
        requests: requests.context("no `N requests in` line")?,
        p50: p50.context("no `50%` latency line (was --latency given?)")?,
        p99: p99.context("no `99%` latency line (was --latency given?)")?,
        errors,
        peer_cpu: 0.0,
        load_cpu_busy: 0.0,
        other_peer_cpu: 0.0,
        other_load_cpu: 0.0,
    })
}

/// wrk's durations: `612.00us`, `1.23ms`, `2.00s`, `1.50m`.
fn parse_wrk_duration(text: &str) -> anyhow::Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in wrk duration {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad wrk duration {text:?}"))?;
    let secs = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => anyhow::bail!("unknown unit in wrk duration {text:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// A `/proc/<pid>/status` field in KiB, e.g. `VmRSS`.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// User plus system CPU time of `pid` (all threads) in clock ticks, or with `children`, that
/// of its children that have exited and been reaped.
fn process_ticks(pid: u32, children: bool) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: count fields after its `)`.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("malformed {path}: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("short {path}: {stat}"))?
            .parse()
            .with_context(|| format!("malformed {path}: {stat}"))
    };
    // Fields 14-17 of the line (utime, stime, cutime, cstime) are 11-14 after the name.
    let first = if children { 13 } else { 11 };
    Ok(field(first)? + field(first + 1)?)
}

/// Busy and total ticks of one CPU from `/proc/stat`.
fn cpu_busy(cpu: usize) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("malformed /proc/stat line {line:?}"))?;
    let total: u64 = values.iter().sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// One peer's line in the report.
#[derive(Debug)]
struct Row {
    kind: PeerKind,
    /// Medians over the counted runs.
    median: RunResult,
    /// How many runs the medians are taken over.
    counted: usize,
    runs: Vec<RunResult>,
    rss_idle_kib: u64,
    rss_after_kib: u64,
    hwm_kib: u64,
}

/// The runs that count: the undisturbed ones, or all of them when every run was disturbed.
fn counted(runs: &[RunResult]) -> Vec<RunResult> {
    let quiet: Vec<RunResult> = runs.iter().filter(|r| !r.disturbed()).cloned().collect();
    if quiet.is_empty() {
        runs.to_vec()
    } else {
        quiet
    }
}

/// Each measure's median over the runs, taken separately.
fn median_of(runs: &[RunResult]) -> RunResult {
    fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values[values.len() / 2]
    }
    RunResult {
        requests_per_sec: median(runs.iter().map(|r| r.requests_per_sec).collect()),
        requests: median(runs.iter().map(|r| r.requests).collect()),
        p50: median(runs.iter().map(|r| r.p50).collect()),
        p99: median(runs.iter().map(|r| r.p99).collect()),
        errors: runs.iter().map(|r| r.errors).sum(),
        peer_cpu: median(runs.iter().map(|r| r.peer_cpu).collect()),
        load_cpu_busy: median(runs.iter().map(|r| r.load_cpu_busy).collect()),
        other_peer_cpu: median(runs.iter().map(|r| r.other_peer_cpu).collect()),
        other_load_cpu: median(runs.iter().map(|r| r.other_load_cpu).collect()),
    }
}

fn fmt_latency(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} µs")
    } else {
        format!("{:.2} ms", micros / 1e3)
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What limited a run: the peer's CPU, the load CPU (wrk and the upstream), or neither.
fn bound_by(m: &RunResult) -> &'static str {
    if m.peer_cpu >= SATURATED {
        "peer CPU"
    } else if m.load_cpu_busy >= SATURATED {
        "load CPU"
    } else {
        "–"
    }
}

/// Requests/s divided by the share of one CPU the peer used: what it would serve on a whole
/// core, if it scaled linearly.
fn per_peer_cpu(m: &RunResult) -> f64 {
    m.requests_per_sec / m.peer_cpu.max(f64::EPSILON)
}

/// Spans the OTLP receiver got from the tracing peer, against the requests sent to it.
#[derive(Debug, Clone, Copy)]
struct SpanCount {
    received: u64,
    requests: u64,
}

/// The Markdown report: settings, machine, the table, the ratios against the targets, the
/// observability cost, and every run.
fn render_report(
    settings: &Settings,
    machine: &str,
    rows: &[Row],
    spans: Option<SpanCount>,
    quota_commands: Option<f64>,
) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line("## Edge proxy vs Envoy vs nginx\n".to_owned());
    line(format!(
        "wrk -t1 -c{} -d{}s --latency; {} s warm-up per peer, then {} rounds alternating the \
         peers, medians shown. {} routes: {} prefixes `/svc/NNNN/` and a catch-all `/`, which \
         comes last in match order. The load asks for `{}`{}. Peers pinned to CPU {}, wrk and \
         the upstream to CPU {}.\n",
        settings.connections,
        settings.duration_secs,
        settings.warmup_secs,
        settings.rounds,
        settings.routes,
        settings.routes - 1,
        settings.path,
        if settings.path == LOAD_PATH {
            ", which only the catch-all matches"
        } else {
            ""
        },
        settings.peer_cpu,
        settings.load_cpu,
    ));
    if settings.pace_ms > 0 {
        line(format!(
            "**Paced run** (`BENCH_PACE_MS={pace}`): each connection waits {pace} ms between a \
             response and its next request, so every peer gets about the same light load (at \
             most {rate:.0} requests/s) and the latencies compare the peers' own delays, \
             without the queueing a slower peer builds up at full load. The requests/s here are \
             the pace's, not the peers' capacities: the ratios to them are not measured.\n",
            pace = settings.pace_ms,
            rate = f64::from(settings.connections) * 1000.0 / f64::from(settings.pace_ms),
        ));
    }
    line(format!("{machine}\n"));
    line(
        "| peer | requests/s | p50 | p99 | RSS idle | RSS after load | peak RSS | peer CPU \
         | load CPU | bound by | req/s per peer CPU | others' CPU | runs | errors |"
            .to_owned(),
    );
    line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|".to_owned());
    for row in rows {
        let m = &row.median;
        line(format!(
            "| {} | {:.0} | {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0}% | {:.0}% | {} \
             | {:.0} | {:.0}% / {:.0}% | {}/{} | {} |",
            row.kind.label(),
            m.requests_per_sec,
            fmt_latency(m.p50),
            fmt_latency(m.p99),
            mib(row.rss_idle_kib),
            mib(row.rss_after_kib),
            mib(row.hwm_kib),
            m.peer_cpu * 100.0,
            m.load_cpu_busy * 100.0,
            bound_by(m),
            per_peer_cpu(m),
            m.other_peer_cpu * 100.0,
            m.other_load_cpu * 100.0,
            row.counted,
            row.runs.len(),
            m.errors,
        ));
    }
    let find = |kind| rows.iter().find(|row| row.kind == kind);
    let (edge, envoy, nginx) = (
        find(PeerKind::Edge),
        find(PeerKind::Envoy),
        find(PeerKind::Nginx),
    );
    line(String::new());
    line("| target | measured | per peer CPU | met |".to_owned());
    line("|---|---:|---:|---|".to_owned());
    let met = |ok: bool| if ok { "yes" } else { "**no**" };
    let paced = settings.pace_ms > 0;
    let mut ratio_line = |name: &str, other: Option<&Row>, target: f64| match (edge, other) {
        (Some(edge), Some(other)) => {
            let ratio = edge.median.requests_per_sec / other.median.requests_per_sec;
            let normalised = per_peer_cpu(&edge.median) / per_peer_cpu(&other.median);
            line(format!(
                "| edge/{name} requests/s ≥ {target}× | {ratio:.2}× | {normalised:.2}× | {} |",
                if paced {
                    "not measured (paced run)"
                } else {
                    met(ratio >= target)
                }
            ));
        }
        _ => line(format!(
            "| edge/{name} requests/s ≥ {target}× | not run | | – |"
        )),
    };
    ratio_line("Envoy", envoy, TARGET_VS_ENVOY);
    ratio_line("nginx", nginx, TARGET_VS_NGINX);
    match (edge, nginx) {
        (Some(edge), Some(nginx)) => line(format!(
            "| edge p99 ≤ nginx p99 | {} vs {} | | {} |",
            fmt_latency(edge.median.p99),
            fmt_latency(nginx.median.p99),
            met(edge.median.p99 <= nginx.median.p99)
        )),
        _ => line("| edge p99 ≤ nginx p99 | not run | | – |".to_owned()),
    }
    match edge {
        Some(edge) => {
            let rss = mib(edge.rss_after_kib);
            line(format!(
                "| edge RSS ≤ {TARGET_RSS_MIB} MiB with {} routes, after the load | {rss:.1} MiB \
                 | | {} |",
                settings.routes,
                met(rss <= TARGET_RSS_MIB)
            ));
        }
        None => line(format!(
            "| edge RSS ≤ {TARGET_RSS_MIB} MiB with {} routes | not run | | – |",
            settings.routes
        )),
    }
    let load_bound: Vec<&str> = rows
        .iter()
        .filter(|row| row.kind != PeerKind::Direct && bound_by(&row.median) == "load CPU")
        .map(|row| row.kind.name())
        .collect();
    if !load_bound.is_empty() {
        line(format!(
            "\nNot saturated: {}. The load CPU (wrk and the upstream) ran out first, so those \
             requests/s are lower bounds of what the peer can do, and so are ratios with them. \
             `req/s per peer CPU` (requests/s ÷ the peer's share of one CPU) estimates each \
             peer on a whole core; the `per peer CPU` ratios compare those.",
            load_bound.join(", ")
        ));
    }
    let unreliable: Vec<&str> = rows
        .iter()
        .filter(|row| row.runs.iter().all(RunResult::disturbed))
        .map(|row| row.kind.name())
        .collect();
    render_observability(rows, spans, paced, &mut line);
    render_policy_cost(rows, quota_commands, paced, &mut line);
    line(format!(
        "\n`others' CPU`: the share of the peer CPU / the load CPU that processes other than the \
         peer, wrk, the upstream and this harness (which hosts the OTLP receiver) took (some kernel network work is counted there too). A run \
         over {:.0}% is disturbed: it is retried up to {} times, and left out of the medians \
         when an undisturbed run exists (`runs`: counted / taken). {}",
        DISTURBED * 100.0,
        settings.retries,
        if unreliable.is_empty() {
            "Every row has undisturbed runs.".to_owned()
        } else {
            format!(
                "**Every run was disturbed** for: {}; rerun on a quiet machine.",
                unreliable.join(", ")
            )
        }
    ));
    line(
        "\nwrk keeps every connection busy, so each peer runs at its own maximum: latencies are \
         taken at different throughputs, and a saturated load CPU (see `load CPU`) adds \
         scheduling delay of wrk and the upstream to the tail."
            .to_owned(),
    );
    line("\nEvery run (requests/s, p99, peer CPU):\n".to_owned());
    for row in rows {
        let runs: Vec<String> = row
            .runs
            .iter()
            .map(|r| {
                format!(
                    "{:.0} ({}, {:.0}%{})",
                    r.requests_per_sec,
                    fmt_latency(r.p99),
                    r.peer_cpu * 100.0,
                    if r.disturbed() { ", disturbed" } else { "" }
                )
            })
            .collect();
        line(format!("- {}: {}", row.kind.name(), runs.join("; ")));
    }
    out
}

/// The observability section: each edge proxy variant as a ratio to the one with neither
/// request metrics nor an access log, with the issue's target for metrics plus a file access
/// log.
fn render_observability(
    rows: &[Row],
    spans: Option<SpanCount>,
    paced: bool,
    line: &mut impl FnMut(String),
) {
    let find = |kind| rows.iter().find(|row| row.kind == kind);
    let variants = [
        (
            PeerKind::EdgeBare,
            "no request metrics, no access log (baseline)",
        ),
        (PeerKind::Edge, "request metrics (the default)"),
        (PeerKind::EdgeLog, "request metrics + access log to a file"),
        (
            PeerKind::EdgeTrace,
            "request metrics + tracing (OTLP/gRPC, sampling 1.0)",
        ),
    ];
    let present: Vec<(&Row, &str)> = variants
        .iter()
        .filter_map(|&(kind, what)| find(kind).map(|row| (row, what)))
        .collect();
    if !present.iter().any(|(row, _)| row.kind != PeerKind::Edge) {
        return;
    }
    line("\n## Observability cost\n".to_owned());
    let Some(bare) = find(PeerKind::EdgeBare) else {
        line("`edge-bare` (the baseline) was not run: add it to `BENCH_PEERS`.".to_owned());
        return;
    };
    line(
        "The edge proxy with and without its observability, in the same rounds as above, as \
         ratios to the one with neither request metrics nor an access log.\n"
            .to_owned(),
    );
    line(
        "| edge proxy with | requests/s | × baseline | per peer CPU × baseline | p99 | peer CPU \
         | bound by | target |"
            .to_owned(),
    );
    line("|---|---:|---:|---:|---:|---:|---|---|".to_owned());
    for (row, what) in present {
        let m = &row.median;
        let ratio = m.requests_per_sec / bare.median.requests_per_sec;
        let normalised = per_peer_cpu(m) / per_peer_cpu(&bare.median);
        let target = if row.kind == PeerKind::EdgeLog && paced {
            "not measured (paced run)".to_owned()
        } else if row.kind == PeerKind::EdgeLog {
            format!(
                "≥ {TARGET_LOGGED_VS_BARE}×: {}",
                if ratio >= TARGET_LOGGED_VS_BARE {
                    "yes"
                } else {
                    "**no**"
                }
            )
        } else {
            "–".to_owned()
        };
        line(format!(
            "| {what} | {:.0} | {ratio:.3}× | {normalised:.3}× | {} | {:.0}% | {} | {target} |",
            m.requests_per_sec,
            fmt_latency(m.p99),
            m.peer_cpu * 100.0,
            bound_by(m),
        ));
    }
    if let Some(spans) = spans {
        line(format!(
            "\nTracing: the receiver got {} spans for {} requests ({:.2} per request; every span \
             is 2: one SERVER, one CLIENT). The batch processor drops spans when its queue \
             (2,048 spans) is full, so under this load the tracing row pays for the spans it \
             exported, not for every span.",
            spans.received,
            spans.requests,
            spans.received as f64 / spans.requests.max(1) as f64
        ));
    }
}

/// The policy section: the edge proxy with a JWT and an API-key policy on every route, as a
/// ratio to the same proxy without policies, with the issue's target.
fn render_policy_cost(
    rows: &[Row],
    quota_commands: Option<f64>,
    paced: bool,
    line: &mut impl FnMut(String),
) {
    let find = |kind| rows.iter().find(|row| row.kind == kind);
    let Some(edge) = find(PeerKind::Edge) else {
        return;
    };
    let (auth, quota) = (find(PeerKind::EdgeAuth), find(PeerKind::EdgeQuota));
    if auth.is_none() && quota.is_none() {
        return;
    }
    let yes = |met: bool| if met { "yes" } else { "**no**" };
    line("\n## Policy cost\n".to_owned());
    line(
        "The edge proxy with policies on every route, as a ratio to the same proxy without \
         policies (`edge`), in the same rounds. `JWT + API key`: a JWT policy (RS256, JWKS \
         fetched once and cached; `sub` copied to a header) and an API-key policy, every request \
         carrying a valid token and key. `global quota`: a `rate_limit` policy per client \
         address in Redis (on the load CPU, ahead of wrk and the upstream: nice -10, standing \
         for a Redis host of its own), never exhausted, so every request is counted and \
         allowed.\n"
            .to_owned(),
    );
    line("| edge proxy with | requests/s | × edge | per peer CPU × edge | p99 | added p99 | target |".to_owned());
    line("|---|---:|---:|---:|---:|---:|---|".to_owned());
    for (name, row) in [("JWT + API key", auth), ("global quota", quota)] {
        let Some(row) = row else { continue };
        let ratio = row.median.requests_per_sec / edge.median.requests_per_sec;
        let normalised = per_peer_cpu(&row.median) / per_peer_cpu(&edge.median);
        let added = row.median.p99.saturating_sub(edge.median.p99);
        let target = if row.kind == PeerKind::EdgeQuota && paced {
            format!(
                "added p99 ≤ {}: {} (paced run: requests/s not measured)",
                fmt_latency(TARGET_QUOTA_ADDED_P99),
                yes(added <= TARGET_QUOTA_ADDED_P99)
            )
        } else if paced {
            "not measured (paced run)".to_owned()
        } else if row.kind == PeerKind::EdgeQuota {
            format!(
                "≥ {TARGET_QUOTA_VS_EDGE}×, added p99 ≤ {}: {}",
                fmt_latency(TARGET_QUOTA_ADDED_P99),
                yes(ratio >= TARGET_QUOTA_VS_EDGE && added <= TARGET_QUOTA_ADDED_P99)
            )
        } else {
            format!(
                "≥ {TARGET_AUTH_VS_EDGE}×: {}",
                yes(ratio >= TARGET_AUTH_VS_EDGE)
            )
        };
        line(format!(
            "| {name} | {:.0} | {ratio:.3}× | {normalised:.3}× | {} | {} | {target} |",
            row.median.requests_per_sec,
            fmt_latency(row.median.p99),
            fmt_latency(added),
        ));
    }
    if let Some(commands) = quota_commands {
        line(format!(
            "\nRedis commands per request with the global quota: {commands:.3} (`EVALSHA` and \
             `EVAL` calls in `INFO commandstats` over the measured rounds, divided by the \
             requests sent)."
        ));
    }
}

/// `EVALSHA` and `EVAL` calls Redis has served, from `INFO commandstats`.
fn redis_commands(redis: &support::redis::RedisServer) -> anyhow::Result<u64> {
    let stats = redis
        .command(&["INFO", "commandstats"])
        .context("redis INFO commandstats")?;
    Ok(stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum())
}

/// CPU model, core count, kernel and the versions of the programs compared.
fn machine_report(wrk: &Path, nginx: &Path, envoy: Option<&Path>) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    // Counted from /proc/cpuinfo: this process is pinned to one CPU by now.
    let cores = std::fs::read_to_string("/proc/cpuinfo").map_or(0, |info| {
        info.lines()
            .filter(|line| line.starts_with("processor"))
            .count()
    });
    let kernel = first_line(Command::new("uname").arg("-r"));
    let tollgate_path = tollgate_bin();
    let tollgate = first_line(Command::new(&tollgate_path).arg("--version"));
    // The binary changes under concurrent development: say which build was measured.
    let built = first_line(
        Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC", "-r"])
            .arg(&tollgate_path),
    );
    // nginx prints its version on stderr, wrk its on stdout with a non-zero exit.
    let nginx = first_line(Command::new(nginx).arg("-v"));
    // `wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer`
    let wrk = first_line(Command::new(wrk).arg("-v"))
        .split(" [")
        .next()
        .unwrap_or("wrk ?")
        .to_owned();
    let envoy = envoy.map_or_else(
        || "not used".to_owned(),
        |bin| {
            let version = first_line(Command::new(bin).arg("--version"));
            // `<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`
            version
                .split_once("version: ")
                .and_then(|(_, v)| v.split('/').nth(1))
                .map_or(version.clone(), str::to_owned)
        },
    );
    format!(
        "Machine: {cpu}, {cores} CPUs, Linux {kernel}. {tollgate} (binary built {built}); \
         Envoy {envoy}; {nginx}; {wrk}."
    )
}

/// The first non-empty line a command prints (stdout, else stderr), or `?`.
fn first_line(cmd: &mut Command) -> String {
    let Ok(output) = cmd.stdin(Stdio::null()).output() else {
        return "?".to_owned();
    };
    [&output.stdout, &output.stderr]
        .into_iter()
        .flat_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(|line| line.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .find(|line| !line.is_empty())
        .unwrap_or_else(|| "?".to_owned())
}

/// `$CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}
