//! The control plane under test: spawns `tollgate control-plane` on a temp SQLite store and
//! free loopback ports, and talks to its admin API as an operator would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{ChildProcess, log_block, tollgate_bin};
use crate::wait::{POLL_INTERVAL, give_up, try_eventually};

/// How long `start` and `restart` wait for `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `restart` keeps respawning while the old process's ports are still taken.
const RESPAWN_WINDOW: Duration = Duration::from_secs(5);
/// Longest single long-poll of `/v1/revisions/{rev}/status`.
const MAX_LONG_POLL: Duration = Duration::from_secs(5);

/// A running `tollgate control-plane`; killed on `Drop`, its log printed if the test panics.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order matters: the process is dropped (killed) before its directory is deleted.
    process: ChildProcess,
    client: reqwest::Client,
    admin_port: u16,
    xds_port: u16,
    token: String,
    extra_args: Vec<String>,
    db_path: PathBuf,
    log_path: PathBuf,
    dir: TempDir,
}

impl ControlPlane {
    /// Starts a control plane with a fresh SQLite store and waits until `/healthz` answers 200.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        Self::start_with_args(&[]).await
    }

    /// Like [`ControlPlane::start`], with extra command-line flags (kept for `restart`).
    pub async fn start_with_args(extra_args: &[&str]) -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-cp-")
            .tempdir()
            .context("creating the control plane's temp dir")?;
        let db_path = dir.path().join("tollgate.db");
        let log_path = dir.path().join("control-plane.log");
        let admin_port = free_port();
        let xds_port = free_port();
        let token = new_token();
        let extra_args: Vec<String> = extra_args.iter().map(|&a| a.to_owned()).collect();
        let mut process = spawn(
            &db_path,
            admin_port,
            xds_port,
            &token,
            &extra_args,
            &log_path,
        )?;
        if let Err(e) = wait_ready(&mut process, admin_port).await {
            return Err(anyhow::anyhow!(
                "control plane did not become ready: {e:#}\n{}",
                log_block("control plane", &process.log())
            ));
        }
        Ok(ControlPlane {
            process,
            client: admin_client()?,
            admin_port,
            xds_port,
            token,
            extra_args,
            db_path,
            log_path,
            dir,
        })
    }

    /// Starts the control plane again on the same store and ports (after [`ControlPlane::kill`]
    /// or a SIGTERM; a still-running process is killed first) and waits for `/healthz`.
    ///
    /// Respawns for up to 5 s while the new process exits early, e.g. because the old one's
    /// ports are briefly still in use.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.process = spawn(
                &self.db_path,
                self.admin_port,
                self.xds_port,
                &self.token,
                &self.extra_args,
                &self.log_path,
            )?;
            match wait_ready(&mut self.process, self.admin_port).await {
                Ok(()) => return Ok(()),
                Err(e) if !self.process.is_running() && start.elapsed() < RESPAWN_WINDOW => {
                    eprintln!("control plane restart attempt {attempt} failed, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "control plane did not come back after {attempt} attempts: {e:#}\n{}",
                        log_block("control plane", &self.process.log())
                    ));
                }
            }
        }
    }

    /// Kills the process with SIGKILL; the handle stays usable for [`ControlPlane::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The child process (for `sigterm`, `wait_exit`, `log`, …).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// The admin API base URL, `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The admin API port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The xDS (ADS gRPC) port.
    pub fn xds_port(&self) -> u16 {
        self.xds_port
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The temp directory holding the database and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The control plane's log so far, across restarts.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `PUT /v1/{kind_path}/{name}` with a JSON body, e.g. `put("clusters", "api", json)`.
    pub async fn put(&self, kind_path: &str, name: &str, body: Value) -> anyhow::Result<Response> {
        let path = resource_path(kind_path, name);
        self.send(Method::PUT, &path, Some(&body), Some(&self.token))
            .await
    }

    /// `PUT /v1/{kind_path}/{name}`, requiring a 2xx; returns the response's `revision`.
    pub async fn put_ok(&self, kind_path: &str, name: &str, body: Value) -> anyhow::Result<u64> {
        let path = resource_path(kind_path, name);
        let response = self.put(kind_path, name, body).await?;
        let json = json_2xx(Method::PUT, &path, response).await?;
        revision_of(&json).with_context(|| format!("PUT {path}"))
    }

    /// A test's set-up: `PUT`s each `(kind_path, name, body)` in order, requiring a 2xx, and
    /// returns the last revision.
    ///
    /// # Panics
    ///
    /// On the first write that fails, naming it.
    pub async fn put_all<'a, N: AsRef<str>>(
        &self,
        writes: impl IntoIterator<Item = (&'a str, N, Value)>,
    ) -> u64 {
        let mut revision = 0;
        for (kind_path, name, body) in writes {
            let name = name.as_ref();
            revision = self
                .put_ok(kind_path, name, body)
                .await
                .unwrap_or_else(|e| panic!("PUT {kind_path}/{name}: {e:#}"));
        }
        revision
    }

    /// `DELETE /v1/{kind_path}/{name}`, requiring a 2xx; returns the response's `revision`.
    pub async fn delete_ok(&self, kind_path: &str, name: &str) -> anyhow::Result<u64> {
        let path = resource_path(kind_path, name);
        let response = self
            .send(Method::DELETE, &path, None, Some(&self.token))
            .await?;
        let json = json_2xx(Method::DELETE, &path, response).await?;
        revision_of(&json).with_context(|| format!("DELETE {path}"))
    }

    /// `GET path` (e.g. `/v1/nodes`), requiring a 2xx; returns the JSON body.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .send(Method::GET, path, None, Some(&self.token))
            .await?;
        json_2xx(Method::GET, path, response).await
    }

    /// Any request, for negative tests: `token` is the bearer token to send (`None` sends no
    /// `Authorization` header; pass `Some(cp.token())` for an authorised call).
    ///
    /// Returns the status and the body: parsed JSON, or a JSON string if it is not JSON.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let response = self.send(method, path, body.as_ref(), token).await?;
        let status = response.status();
        let text = response.text().await.context("reading the response body")?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// Long-polls `GET /v1/revisions/{revision}/status` until `converged` is `true`; returns
    /// that status JSON, or fails after `timeout` with the last one.
    pub async fn wait_converged(&self, revision: u64, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_status(revision, timeout, "converged", |status| {
            status.get("converged") == Some(&Value::Bool(true))
        })
        .await
    }

    /// Long-polls `GET /v1/revisions/{revision}/status` until `nacked` is non-empty; returns
    /// that status JSON, or fails after `timeout` with the last one.
    pub async fn wait_nacked(&self, revision: u64, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_status(revision, timeout, "nacked", |status| {
            status
                .get("nacked")
                .and_then(Value::as_array)
                .is_some_and(|nacked| !nacked.is_empty())
        })
        .await
    }

    async fn wait_status(
        &self,
        revision: u64,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Whole seconds, at least 1: the server's `wait` parameter takes `<n>s`.
            let wait_secs = remaining.min(MAX_LONG_POLL).as_secs().max(1);
            let path = format!("/v1/revisions/{revision}/status?wait={wait_secs}s");
            let result = self
                .client
                .get(format!("{}{path}", self.admin_url()))
                .bearer_auth(&self.token)
                .timeout(Duration::from_secs(wait_secs) + Duration::from_secs(5))
                .send()
                .await;
            let last = match result {
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    if status.is_success() {
                        match serde_json::from_str::<Value>(&text) {
                            Ok(json) if done(&json) => return Ok(json),
                            Ok(json) => json.to_string(),
                            Err(e) => format!("{status}, body is not JSON ({e}): {text}"),
                        }
                    } else {
                        format!("{status}: {text}")
                    }
                }
                Err(e) => format!("request failed: {e:#}"),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "revision {revision} not {what} after {timeout:?}; last status: {last}"
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> anyhow::Result<Response> {
        let url = format!("{}{path}", self.admin_url());
        let mut request = self.client.request(method.clone(), &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))
    }
}

/// `/v1/{kind_path}/{name}`, tolerating slashes around `kind_path`.
fn resource_path(kind_path: &str, name: &str) -> String {
    format!("/v1/{}/{name}", kind_path.trim_matches('/'))
}

/// Reads a 2xx response's JSON body, or fails with the status and body text.
async fn json_2xx(method: Method, path: &str, response: Response) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("{method} {path}: reading the body"))?;
    anyhow::ensure!(status.is_success(), "{method} {path}: {status}: {text}");
    serde_json::from_str(&text)
        .with_context(|| format!("{method} {path}: {status}, body is not JSON: {text}"))
}

fn revision_of(json: &Value) -> anyhow::Result<u64> {
    json.get("revision")
        .and_then(Value::as_u64)
        .with_context(|| format!("response has no integer `revision`: {json}"))
}

fn admin_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        // No idle connections: after a kill/restart a pooled one would point at a dead process.
        .pool_max_idle_per_host(0)
        .build()?)
}

fn spawn(
    db_path: &Path,
    admin_port: u16,
    xds_port: u16,
    token: &str,
    extra_args: &[String],
    log_path: &Path,
) -> anyhow::Result<ChildProcess> {
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("control-plane")
        .arg("--store")
        .arg(format!("sqlite://{}", db_path.display()))
        .arg("--admin-addr")
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--xds-addr")
        .arg(format!("127.0.0.1:{xds_port}"))
        .arg("--admin-token")
        .arg(token)
        .arg("--log-format")
        .arg("json")
        .args(extra_args)
        .env("RUST_LOG", "info,tollgate=debug");
    ChildProcess::spawn_logged("control-plane", cmd, log_path)
}

/// Polls `/healthz` for up to 20 s, giving up at once if the process exits.
async fn wait_ready(process: &mut ChildProcess, admin_port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{admin_port}/healthz");
    try_eventually("control plane /healthz", READY_TIMEOUT, || {
        let exited = process.try_status();
        let url = url.clone();
        async move {
            if let Some(status) = exited {
                return Err(give_up(format!("control plane exited: {status}")));
            }
            crate::wait::http_ok(&url).await
        }
    })
    .await
}

/// A hard-to-guess-enough token for a test: time, pid and a per-process counter, in hex.
fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}{:08x}{n:04x}", std::process::id())
}
