//! Child processes under test (control plane, Envoy, …): spawned with their output in a log
//! file, killed on `Drop`, and their log printed when the test panics.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tempfile::TempDir;

/// A spawned child process whose stdout and stderr are appended to a log file.
///
/// Dropping it kills the process (SIGKILL) and reaps it. If the thread is panicking, the
/// process's whole log is printed to stderr first, so a failing test shows it.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    // Holds the log file when `spawn` created its own directory; deleted on drop.
    _log_dir: Option<TempDir>,
}

impl ChildProcess {
    /// Spawns `cmd` with its output appended to `<name>.log` in a new temp dir, deleted on drop.
    pub fn spawn(name: &str, cmd: Command) -> anyhow::Result<Self> {
        let file_name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("tollgate-{file_name}-"))
            .tempdir()
            .context("creating a temp dir for a child's log")?;
        let log_path = dir.path().join(format!("{file_name}.log"));
        let mut child = Self::spawn_logged(name, cmd, &log_path)?;
        child._log_dir = Some(dir);
        Ok(child)
    }

    /// Spawns `cmd` with its output appended to `log_path` (created if missing), so several
    /// runs of one service (e.g. across a restart) can share one log.
    pub fn spawn_logged(name: &str, mut cmd: Command, log_path: &Path) -> anyhow::Result<Self> {
        remember_panics();
        let mut log = open_log(log_path)?;
        // Restarts append to the same file: mark where each run starts and what it ran.
        writeln!(log, "===== spawning {name}: {cmd:?} =====").context("writing the log")?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
            exit: None,
            _log_dir: None,
        })
    }

    /// The name given at spawn time, used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the log file holding the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The child's log so far (stdout and stderr interleaved); empty if unreadable.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Kills the process with SIGKILL and reaps it; does nothing if it already exited.
    pub fn kill(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        // Fails only if the process is already gone, which `wait` then reports.
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.exit = Some(status);
        }
    }

    /// Sends SIGTERM (through the `kill` command, to avoid a libc dependency) for a graceful
    /// shutdown; pair it with [`ChildProcess::wait_exit`].
    pub fn sigterm(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_status() {
            anyhow::bail!("{} already exited ({status}), cannot SIGTERM it", self.name);
        }
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .context("running `kill -TERM`")?;
        anyhow::ensure!(
            status.success(),
            "`kill -TERM {}` failed: {status}",
            self.pid()
        );
        Ok(())
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit, polling without blocking the runtime
    /// (in-process upstreams keep serving meanwhile); `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Prints the name, pid, exit status and whole log to stderr.
    pub fn dump_log(&mut self) {
        let state = match self.try_status() {
            Some(status) => format!("exited: {status}"),
            None => "running".to_owned(),
        };
        let title = format!(
            "{} (pid {}, {state}, {})",
            self.name,
            self.pid(),
            self.log_path.display()
        );
        eprintln!("{}", log_block(&title, &self.log()));
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
            // CI shows a failing test's last lines: repeat why it failed after the logs.
            if let Some(message) = LAST_PANIC.with(|last| last.borrow().clone()) {
                eprintln!("===== the test failed: {message} =====");
            }
        }
        self.kill();
    }
}

thread_local! {
    /// The message and place of the latest panic on this thread, kept by [`remember_panics`].
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once per test binary) a panic hook that keeps each thread's latest panic message
/// for [`ChildProcess`]'s log dump, then runs the default hook.
fn remember_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let place = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(format!("{message}{place}")));
            default(info);
        }));
    });
}

/// Frames a child's log for an error message or stderr.
pub fn log_block(title: &str, log: &str) -> String {
    format!("===== log of {title} =====\n{log}\n===== end of log of {title} =====")
}

fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))
}

/// Root of the Cargo workspace (the parent of the tests crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_owned()
}

/// Path of the `tollgate` binary: `$TOLLGATE_BIN`, else `target/<profile>/tollgate` next to
/// the test executable (which lives in `target/<profile>/deps/`).
///
/// # Panics
///
/// If the binary is missing: run `cargo build --bins` before the end-to-end tests.
pub fn tollgate_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "$TOLLGATE_BIN is set to {}, which is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("locating the current test executable");
    // target/<profile>/deps/<test> for tests and benches, target/<profile>/examples/<x> for
    // examples: look in the executable's directory and the one above it.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("tollgate"))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the `tollgate` binary was not found (looked at {candidates:?}); \
                 run `cargo build --bins` (with the same profile as the tests) first, \
                 or set $TOLLGATE_BIN"
            )
        })
}
