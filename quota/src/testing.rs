//! Test helpers (feature `testing`): real `redis-server` processes on loopback, for this crate's
//! integration tests and the end-to-end suite.
//!
//! Each handle runs its servers in a fresh temp dir on free ports (below the kernel's ephemeral
//! range, with room for a cluster bus port at +10000), with persistence off, waits until they
//! answer, kills them (SIGKILL) on `Drop`, and prints their logs if the test is panicking.
//!
//! `redis-server` and `redis-cli` come from `$REDIS_SERVER_BIN` / `$REDIS_CLI_BIN` or `PATH`
//! (Debian's `redis-server` package). [`require_redis`] skips a test when they are missing,
//! except under `CI=true`, where a missing tool is a failure.

use std::fs;
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server gets to start answering `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster gets to report `cluster_state:ok` everywhere.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// `redis-server`: `$REDIS_SERVER_BIN`, else on `PATH`.
pub fn redis_server_bin() -> Option<PathBuf> {
    find_tool("redis-server", "REDIS_SERVER_BIN")
}

/// `redis-cli`: `$REDIS_CLI_BIN`, else on `PATH`.
pub fn redis_cli_bin() -> Option<PathBuf> {
    find_tool("redis-cli", "REDIS_CLI_BIN")
}

/// Whether a test needing Redis can run: true if `redis-server` and `redis-cli` are found;
/// else prints why the test is skipped and returns false.
///
/// # Panics
///
/// When they are missing and `CI=true`: under CI a missing tool is a failure, not a skip.
pub fn require_redis() -> bool {
    if redis_server_bin().is_some() && redis_cli_bin().is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("redis-server and redis-cli are required under CI (Debian package redis-server)");
    }
    eprintln!("skipping: redis-server or redis-cli not found (PATH, $REDIS_SERVER_BIN)");
    false
}

fn find_tool(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A `redis-server` process (a standalone server, a cluster node, or a sentinel).
#[derive(Debug)]
pub struct RedisServer {
    // Field order: the process dies before its directory is removed.
    child: Option<Child>,
    name: String,
    port: u16,
    args: Vec<String>,
    log_path: PathBuf,
    dir: TempDir,
}

impl RedisServer {
    /// A standalone server on a free port, persistence off.
    pub fn start() -> io::Result<Self> {
        Self::start_with_args("redis", &[])
    }

    /// A server with extra `redis-server` arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with_args(name: &str, extra: &[&str]) -> io::Result<Self> {
        Self::start_on(name, reserve_port(false)?, extra)
    }

    /// A server on `port` (for a harness that hands out its own ports), with extra arguments.
    pub fn start_on(name: &str, port: u16, extra: &[&str]) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tollgate-{name}-"))
            .tempdir()?;
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.path().display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn_in(name, dir, port, args)
    }

    fn spawn_in(name: &str, dir: TempDir, port: u16, args: Vec<String>) -> io::Result<Self> {
        let log_path = dir.path().join(format!("{name}.log"));
        let mut server = Self {
            child: None,
            name: name.to_owned(),
            port,
            args,
            log_path,
            dir,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let bin = redis_server_bin().ok_or_else(|| io::Error::other("redis-server not found"))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(&bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| io::Error::other(format!("spawning {}: {e}", bin.display())))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match command(self.port, &["PING"]) {
                // A server with a password answers too, with a refusal.
                Ok(reply) if reply == "PONG" || reply.starts_with("NOAUTH") => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(io::Error::other(format!(
                        "{} on port {} did not answer PING within {START_TIMEOUT:?}\n{}",
                        self.name,
                        self.port,
                        self.log()
                    )));
                }
                _ => {
                    if let Some(child) = self.child.as_mut()
                        && let Ok(Some(status)) = child.try_wait()
                    {
                        return Err(io::Error::other(format!(
                            "{} exited ({status}) before answering\n{}",
                            self.name,
                            self.log()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's directory (its config and log live there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL (no shutdown, no save) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if it already exited, which `wait` then reaps.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again with the same arguments and port (after [`RedisServer::kill`]),
    /// retrying for a few seconds while the port is still held.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Sends one command and returns the reply as text (see [`command`]).
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        command(self.port, args)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== log of {} (port {}) =====\n{}\n===== end of log =====",
                self.name,
                self.port,
                self.log()
            );
        }
        self.kill();
    }
}

/// A Redis Cluster of `n` masters (no replicas), slots spread by `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (≥ 3) cluster nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok`.
    pub fn start(masters: usize) -> io::Result<Self> {
        let mut nodes = Vec::with_capacity(masters);
        for i in 0..masters {
            // The cluster bus listens on port + 10000: that must be free too.
            let port = reserve_port(true)?;
            nodes.push(RedisServer::start_on(
                &format!("redis-cluster-{i}"),
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )?);
        }
        let cli = redis_cli_bin().ok_or_else(|| io::Error::other("redis-cli not found"))?;
        let output = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let cluster = Self { nodes };
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        while !cluster.is_ok() {
            if Instant::now() >= deadline {
                return Err(io::Error::other(
                    "the cluster did not reach cluster_state:ok",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    fn is_ok(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.command(&["CLUSTER", "INFO"])
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        })
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node serving `key`'s slot (asked with `CLUSTER KEYSLOT` and `CLUSTER SLOTS`-free
    /// probing: the node that does not answer `MOVED` for `EXISTS key`).
    pub fn node_for(&self, key: &str) -> Option<&RedisServer> {
        self.nodes.iter().find(|n| {
            n.command(&["EXISTS", key])
                .is_ok_and(|reply| !reply.starts_with("MOVED"))
        })
    }
}

/// One master watched by one sentinel (quorum 1), for `redis+sentinel://` URLs.
#[derive(Debug)]
pub struct RedisSentinel {
    sentinel: RedisServer,
    master: RedisServer,
}

impl RedisSentinel {
    /// The master's name in Sentinel.
    pub const MASTER_NAME: &'static str = "tollgate";

    /// Starts a master and a sentinel monitoring it, and waits until the sentinel names it.
    pub fn start() -> io::Result<Self> {
        let master = RedisServer::start_with_args("redis-master", &[])?;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-redis-sentinel-")
            .tempdir()?;
        let port = reserve_port(false)?;
        let conf = dir.path().join("sentinel.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 2000\n",
                dir.path().display(),
                name = Self::MASTER_NAME,
                master_port = master.port,
            ),
        )?;
        let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
        let sentinel = RedisServer::spawn_in("redis-sentinel", dir, port, args)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let reply =
                sentinel.command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER_NAME]);
            if reply.is_ok_and(|r| r.contains(&master.port.to_string())) {
                return Ok(Self { sentinel, master });
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other("the sentinel did not learn its master"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+sentinel://127.0.0.1:PORT/tollgate`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{}",
            self.sentinel.port,
            Self::MASTER_NAME
        )
    }

    /// The master.
    pub fn master(&mut self) -> &mut RedisServer {
        &mut self.master
    }
}

/// Sends one command to `127.0.0.1:port` over a fresh connection and returns the reply as
/// text: a status or error line without its marker (`PONG`, `MOVED 1 …`), an integer, a bulk
/// string, or an array's elements joined by newlines (`(nil)` for nil).
pub fn command(port: u16, args: &[&str]) -> io::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader)
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | "-" | ":" => Ok(rest.to_owned()),
        "$" => {
            let Ok(len) = rest.parse::<usize>() else {
                return Ok("(nil)".to_owned());
            };
            let mut buf = vec![0; len + 2];
            reader.read_exact(&mut buf)?;
            buf.truncate(len);
            String::from_utf8(buf).map_err(io::Error::other)
        }
        "*" => {
            let Ok(n) = rest.parse::<usize>() else {
                return Ok("(nil)".to_owned());
            };
            let items = (0..n)
                .map(|_| read_reply(reader))
                .collect::<io::Result<Vec<_>>>()?;
            Ok(items.join("\n"))
        }
        _ => Err(io::Error::other(format!("unexpected reply {line:?}"))),
    }
}

/// Ports this process handed out, so parallel tests never share one.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
static PORT_LOCK: Mutex<()> = Mutex::new(());

/// A loopback port that was free a moment ago and that this process has not handed out before
/// (e.g. for `--tls-port`).
pub fn free_port() -> io::Result<u16> {
    reserve_port(false)
}

/// A port in 20000..30000 that was free a moment ago (and, for cluster nodes, its bus port
/// +10000 too). Starts at an offset from the pid so concurrent test binaries spread out.
fn reserve_port(with_bus: bool) -> io::Result<u16> {
    const LOW: u16 = 20_000;
    const SPAN: u16 = 10_000;
    let _guard = PORT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..SPAN {
        let mut offset = NEXT_PORT.load(Ordering::Relaxed);
        if offset == 0 {
            offset = (std::process::id() % u32::from(SPAN)) as u16 + 1;
        }
        NEXT_PORT.store(offset % SPAN + 1, Ordering::Relaxed);
        let port = LOW + offset % SPAN;
        if bindable(port) && (!with_bus || bindable(port + 10_000)) {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port in 20000..30000"))
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}
