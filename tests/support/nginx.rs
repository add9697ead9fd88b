//! nginx as a test peer: started from a generated config in a temp dir, as a single process
//! (`master_process off`) so that the handle's PID is the one serving traffic, is the one whose
//! memory is measured, and is the one killed on `Drop`. Benchmarks use it as a fast upstream and
//! as a reverse proxy to compare with.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;

use crate::process::{ChildProcess, log_block};
use crate::tools::{find_tool, require_tool};
use crate::wait::{give_up, http_ok, try_eventually};

/// How long `Nginx::start` waits for its readiness URL.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The nginx binary: `$NGINX_BIN`, else `nginx` on `PATH` or in `/usr/sbin` (where Debian puts
/// it, which is not on every user's `PATH`); `None` if none exists.
pub fn nginx_bin() -> Option<PathBuf> {
    find_tool("nginx", "NGINX_BIN").or_else(|| {
        let debian = Path::new("/usr/sbin/nginx");
        debian.is_file().then(|| debian.to_owned())
    })
}

/// The nginx binary for a test that needs one, or `None` (with a printed reason) to skip it.
///
/// # Panics
///
/// If nginx is missing and `CI=true`.
pub fn require_nginx() -> Option<PathBuf> {
    nginx_bin().or_else(|| require_tool("nginx", "NGINX_BIN"))
}

/// A command that runs `program` with its CPU affinity set to `cpu` (through `taskset -c`, which
/// execs the program, so the spawned PID is the program's), or plainly when `cpu` is `None`.
pub fn command_on_cpu(program: impl AsRef<std::ffi::OsStr>, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpu.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// How to start an [`Nginx`].
#[derive(Debug, Clone)]
pub struct NginxOptions {
    /// Name used for the log and in messages, e.g. `upstream`.
    pub name: String,
    /// Directives placed inside the generated `http { }` block: `server`s, `upstream`s, ….
    pub http: String,
    /// URL answered with a 2xx once nginx serves, polled by `start`.
    pub ready_url: String,
    /// Pin the process to this CPU (`taskset -c`).
    pub cpu: Option<usize>,
}

/// A running nginx (one process, no master); killed on `Drop`, its log printed on panic.
#[derive(Debug)]
pub struct Nginx {
    // Field order matters: the process is dropped (killed) before its directory is deleted.
    process: ChildProcess,
    config_path: PathBuf,
    _dir: TempDir,
}

impl Nginx {
    /// Writes `nginx.conf` around `opts.http` into a new temp dir, starts nginx on it and waits
    /// until `opts.ready_url` answers 2xx.
    pub async fn start(opts: NginxOptions) -> anyhow::Result<Nginx> {
        let bin = nginx_bin().context(
            "nginx not found ($NGINX_BIN, PATH, /usr/sbin/nginx); scripts/bench installs it",
        )?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("tollgate-nginx-{}-", opts.name))
            .tempdir()
            .context("creating nginx's temp dir")?;
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, render_config(dir.path(), &opts.http))
            .with_context(|| format!("writing {}", config_path.display()))?;

        let mut cmd = command_on_cpu(&bin, opts.cpu);
        // `-e stderr`: nginx opens its compiled-in error log before reading the config, and
        // /var/log/nginx may not be writable; `-p`: relative paths resolve in the temp dir.
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg("stderr");
        let log_path = dir.path().join("nginx.log");
        let mut process =
            ChildProcess::spawn_logged(&format!("nginx {}", opts.name), cmd, &log_path)?;

        let ready = try_eventually(&format!("nginx {}", opts.name), READY_TIMEOUT, || {
            let exited = process.try_status();
            let url = opts.ready_url.clone();
            async move {
                if let Some(status) = exited {
                    return Err(give_up(format!("nginx exited: {status}")));
                }
                http_ok(&url).await
            }
        })
        .await;
        if let Err(e) = ready {
            return Err(anyhow::anyhow!(
                "nginx {} did not become ready: {e:#}\n{}",
                opts.name,
                log_block(&format!("nginx {}", opts.name), &process.log())
            ));
        }
        Ok(Nginx {
            process,
            config_path,
            _dir: dir,
        })
    }

    /// The OS process id (the process that serves traffic).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The child process (for `log`, `is_running`, …).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// The whole `nginx.conf`: one process in the foreground, every path inside `dir`, no access
/// log, and `http` inside the `http { }` block.
fn render_config(dir: &Path, http: &str) -> String {
    let dir = dir.display();
    // `master_process off` runs the worker loop in the spawned process itself: one PID to
    // measure and kill, and no orphaned worker if the harness dies.
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_every_path_in_the_dir() {
        let conf = render_config(Path::new("/tmp/x"), "    server { listen 1; }");
        assert!(conf.contains("master_process off;"));
        assert!(conf.contains("pid /tmp/x/nginx.pid;"));
        assert!(conf.contains("proxy_temp_path /tmp/x/proxy;"));
        assert!(conf.contains("    server { listen 1; }\n}\n"));
    }
}
