//! HAProxy in TCP mode as the L4 load balancer in front of a fleet of edge proxies: started
//! from a generated config in a temp dir, in the foreground (`-db`, no master), so that the
//! handle's PID is the one serving and the one killed on `Drop`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{ChildProcess, log_block};
use crate::tools::{find_tool, require_tool};
use crate::wait::{give_up, try_eventually};

/// How long `Haproxy::start` waits for its frontend to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The haproxy binary: `$HAPROXY_BIN`, else `haproxy` on `PATH` or in `/usr/sbin` (Debian's
/// place for it); `None` if none exists.
pub fn haproxy_bin() -> Option<PathBuf> {
    find_tool("haproxy", "HAPROXY_BIN").or_else(|| {
        let debian = Path::new("/usr/sbin/haproxy");
        debian.is_file().then(|| debian.to_owned())
    })
}

/// The haproxy binary for a test that needs one, or `None` (with a printed reason) to skip.
///
/// # Panics
///
/// If haproxy is missing and `CI=true`.
pub fn require_haproxy() -> Option<PathBuf> {
    haproxy_bin().or_else(|| require_tool("haproxy", "HAPROXY_BIN"))
}

/// The config of a TCP load balancer on `127.0.0.1:port` over `backends`, round robin, with
/// a TCP health check on each: what `compose.yaml`'s `haproxy.cfg` says, with local addresses.
pub fn tcp_balancer_config(port: u16, backends: &[(String, u16)]) -> String {
    let mut config = format!(
        "global\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
         timeout server 30s\n\n\
         frontend edge\n    bind 127.0.0.1:{port}\n    default_backend proxies\n\n\
         backend proxies\n    balance roundrobin\n"
    );
    for (i, (host, backend_port)) in backends.iter().enumerate() {
        config.push_str(&format!(
            "    server edge-{} {host}:{backend_port} check inter 500ms\n",
            i + 1
        ));
    }
    config
}

/// A running HAProxy; killed on `Drop`, its log printed if the test panics.
#[derive(Debug)]
pub struct Haproxy {
    // Field order matters: the process is dropped (killed) before its directory is deleted.
    process: ChildProcess,
    port: u16,
    _dir: TempDir,
}

impl Haproxy {
    /// A TCP balancer on a free port over `backends` ([`tcp_balancer_config`]).
    pub async fn tcp(backends: &[(String, u16)]) -> anyhow::Result<Haproxy> {
        let port = free_port();
        Self::start(&tcp_balancer_config(port, backends), port).await
    }

    /// Starts haproxy on `config`, whose frontend listens on `127.0.0.1:port`, and waits until
    /// that port accepts connections.
    pub async fn start(config: &str, port: u16) -> anyhow::Result<Haproxy> {
        let bin = haproxy_bin().context(
            "haproxy not found ($HAPROXY_BIN, PATH, /usr/sbin/haproxy); scripts/test installs it",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-haproxy-")
            .tempdir()
            .context("creating haproxy's temp dir")?;
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-db").arg("-f").arg(&config_path);
        let log_path = dir.path().join("haproxy.log");
        let mut process = ChildProcess::spawn_logged("haproxy", cmd, &log_path)?;
        let ready = try_eventually("haproxy accepts connections", READY_TIMEOUT, || {
            let exited = process.try_status();
            async move {
                if let Some(status) = exited {
                    return Err(give_up(format!("haproxy exited: {status}")));
                }
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(anyhow::Error::from)
            }
        })
        .await;
        if let Err(e) = ready {
            return Err(anyhow::anyhow!(
                "haproxy did not start: {e:#}\n{}",
                log_block("haproxy", &process.log())
            ));
        }
        Ok(Haproxy {
            process,
            port,
            _dir: dir,
        })
    }

    /// The frontend's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}
