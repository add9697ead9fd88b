//! A real Tollgate edge proxy (`tollgate edge-proxy`), fed by a control plane over ADS.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tempfile::TempDir;

use crate::control_plane::ControlPlane;
use crate::ports::free_port;
use crate::process::{ChildProcess, log_block, tollgate_bin};
use crate::wait::{give_up, http_ok, try_eventually};

/// How long `EdgeProxy::start` waits for `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running edge proxy; killed on `Drop`, its log printed if the test panics.
#[derive(Debug)]
pub struct EdgeProxy {
    // Field order matters: the process is dropped (killed) before its directory is deleted.
    process: ChildProcess,
    admin_port: u16,
    node_id: String,
    _dir: TempDir,
}

impl EdgeProxy {
    /// Starts `tollgate edge-proxy` against `cp` as node `node_id` (node cluster `edge`) and
    /// waits until `/ready` answers 200, i.e. the first snapshot is applied.
    pub async fn start(cp: &ControlPlane, node_id: &str) -> anyhow::Result<EdgeProxy> {
        Self::start_with_args(cp, node_id, &[]).await
    }

    /// As [`EdgeProxy::start`], with extra command-line arguments.
    pub async fn start_with_args(
        cp: &ControlPlane,
        node_id: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<EdgeProxy> {
        let proxy = Self::spawn(cp.xds_port(), node_id, extra_args)?;
        proxy.wait_ready(READY_TIMEOUT).await?;
        Ok(proxy)
    }

    /// Starts the process without waiting for it to become ready.
    pub fn spawn(xds_port: u16, node_id: &str, extra_args: &[&str]) -> anyhow::Result<EdgeProxy> {
        Self::spawn_in_cluster(xds_port, node_id, "edge", extra_args)
    }

    /// As [`EdgeProxy::spawn`], in node cluster `node_cluster` (listeners can be limited to
    /// one: on one host, each proxy of a fleet needs its own port).
    pub fn spawn_in_cluster(
        xds_port: u16,
        node_id: &str,
        node_cluster: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<EdgeProxy> {
        let admin_port = free_port();
        let dir = tempfile::Builder::new()
            .prefix(&format!("tollgate-edge-{node_id}-"))
            .tempdir()
            .context("creating the edge proxy's temp dir")?;
        let mut cmd = Command::new(tollgate_bin());
        cmd.arg("edge-proxy")
            .args(["--xds", &format!("http://127.0.0.1:{xds_port}")])
            .args(["--node-id", node_id])
            .args(["--node-cluster", node_cluster])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(extra_args)
            .env("RUST_LOG", "info,tollgate_edge_proxy=debug");
        let log_path = dir.path().join("edge-proxy.log");
        let process = ChildProcess::spawn_logged(&format!("edge-proxy {node_id}"), cmd, &log_path)?;
        Ok(EdgeProxy {
            process,
            admin_port,
            node_id: node_id.to_owned(),
            _dir: dir,
        })
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("{}/ready", self.admin_url());
        let ready = try_eventually("edge proxy /ready", timeout, || {
            let url = url.clone();
            async move { http_ok(&url).await }
        })
        .await;
        ready.map_err(|e| {
            anyhow::anyhow!(
                "edge proxy {} did not become ready: {e:#}\n{}",
                self.node_id,
                log_block("edge proxy", &self.process.log())
            )
        })
    }

    /// The admin endpoint's base URL, `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The node id it reports to the control plane.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The child process (for `sigterm`, `kill`, `log`, …).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// The captured log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `GET /config_dump` as JSON.
    pub async fn config_dump(&self) -> anyhow::Result<Value> {
        let url = format!("{}/config_dump", self.admin_url());
        let client = reqwest::Client::new();
        let response = client.get(&url).send().await?.error_for_status()?;
        let text = response.text().await?;
        serde_json::from_str(&text).with_context(|| format!("{url} did not return JSON"))
    }
}

/// Fails with the proxy's log when it has exited.
pub fn ensure_running(proxy: &mut EdgeProxy) -> anyhow::Result<()> {
    if let Some(status) = proxy.process.try_status() {
        return Err(give_up(format!(
            "edge proxy exited: {status}\n{}",
            log_block("edge proxy", &proxy.process.log())
        )));
    }
    Ok(())
}
