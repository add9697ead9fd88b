//! A real Envoy fed by the control plane over ADS, started from the user-facing example
//! `examples/envoy/bootstrap.yaml` so the test proves that file works.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tempfile::TempDir;

use crate::control_plane::ControlPlane;
use crate::ports::free_port;
use crate::process::{ChildProcess, log_block, workspace_root};
use crate::tools::{find_tool, require_tool};
use crate::wait::{give_up, http_ok, try_eventually};

/// How long `Envoy::start` waits for `/ready`. Against a live control plane Envoy is ready in
/// well under a second; with no answer it waits out two 15 s initial-fetch timeouts (CDS, then
/// LDS) before going live anyway, so 30 s would be cut too fine.
const READY_TIMEOUT: Duration = Duration::from_secs(45);

/// The Envoy binary: `$ENVOY_BIN`, else `<workspace>/.tools/venv/bin/envoy`, else `envoy` on
/// `PATH`; `None` if none exists.
pub fn envoy_bin() -> Option<PathBuf> {
    find_tool("envoy", "ENVOY_BIN")
}

/// The Envoy binary for a test that needs one, or `None` (with a printed reason) to skip it.
///
/// # Panics
///
/// If Envoy is missing and `CI=true`: under CI a missing Envoy is a failure, not a skip.
pub fn require_envoy() -> Option<PathBuf> {
    require_tool("envoy", "ENVOY_BIN")
}

/// How to start an [`Envoy`].
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// `node.id` sent to the control plane.
    pub node_id: String,
    /// `node.cluster` sent to the control plane (listeners with a `node_cluster` go only to it).
    pub node_cluster: String,
    /// Use incremental xDS (`DELTA_GRPC`) instead of state-of-the-world (`GRPC`).
    pub delta: bool,
}

impl EnvoyOptions {
    /// State-of-the-world xDS for node `node_id` in cluster `edge`.
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            node_cluster: "edge".to_owned(),
            delta: false,
        }
    }
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self::new("envoy-1")
    }
}

/// A running Envoy; killed on `Drop`, its log printed if the test panics.
///
/// Its traffic listeners come from the control plane, so the test knows their ports, not this
/// handle.
#[derive(Debug)]
pub struct Envoy {
    // Field order matters: the process is dropped (killed) before its directory is deleted.
    process: ChildProcess,
    admin_port: u16,
    node_id: String,
    bootstrap_path: PathBuf,
    _dir: TempDir,
}

impl Envoy {
    /// Starts Envoy from `examples/envoy/bootstrap.yaml`, pointed at `cp`, and waits until
    /// `/ready` answers 200.
    pub async fn start(cp: &ControlPlane, opts: EnvoyOptions) -> anyhow::Result<Envoy> {
        let bin = envoy_bin().context(
            "envoy not found ($ENVOY_BIN, .tools/venv/bin/envoy, PATH); call require_envoy() \
             first to skip the test",
        )?;
        let example = workspace_root().join("examples/envoy/bootstrap.yaml");
        let template = std::fs::read_to_string(&example)
            .with_context(|| format!("reading {}", example.display()))?;
        let admin_port = free_port();
        let bootstrap = render_bootstrap(&template, cp.xds_port(), admin_port, &opts);

        let dir = tempfile::Builder::new()
            .prefix(&format!("tollgate-envoy-{}-", opts.node_id))
            .tempdir()
            .context("creating Envoy's temp dir")?;
        let bootstrap_path = dir.path().join("bootstrap.yaml");
        std::fs::write(&bootstrap_path, bootstrap)
            .with_context(|| format!("writing {}", bootstrap_path.display()))?;

        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&bootstrap_path)
            // Without hot restart Envoy opens no shared memory, so several can run at once; the
            // distinct base id is belt and braces.
            .arg("--disable-hot-restart")
            .arg("--base-id")
            .arg(admin_port.to_string())
            .arg("--log-level")
            .arg("info");
        let log_path = dir.path().join("envoy.log");
        let mut process =
            ChildProcess::spawn_logged(&format!("envoy {}", opts.node_id), cmd, &log_path)?;

        let url = format!("http://127.0.0.1:{admin_port}/ready");
        let ready = try_eventually("envoy /ready", READY_TIMEOUT, || {
            let exited = process.try_status();
            let url = url.clone();
            async move {
                if let Some(status) = exited {
                    return Err(give_up(format!("envoy exited: {status}")));
                }
                http_ok(&url).await
            }
        })
        .await;
        if let Err(e) = ready {
            return Err(anyhow::anyhow!(
                "envoy {} did not become ready: {e:#}\n{}",
                opts.node_id,
                log_block("envoy", &process.log())
            ));
        }
        Ok(Envoy {
            process,
            admin_port,
            node_id: opts.node_id,
            bootstrap_path,
            _dir: dir,
        })
    }

    /// The admin endpoint's base URL, `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The admin endpoint's port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The `node.id` this Envoy sends.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The generated bootstrap file.
    pub fn bootstrap_path(&self) -> &Path {
        &self.bootstrap_path
    }

    /// The child process (for `sigterm`, `wait_exit`, `log`, …).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// A counter or gauge by exact name (e.g. `cluster_manager.cds.update_success`); `None` if
    /// Envoy does not have that stat.
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/stats", self.admin_url()),
            &[("filter", format!("^{}$", regex_escape(name)))],
        )?;
        let text = admin_get(url.as_str()).await?;
        for line in text.lines() {
            if let Some((stat, value)) = line.split_once(": ")
                && stat == name
            {
                let value = value
                    .trim()
                    .parse()
                    .with_context(|| format!("stat {name} is not an integer: {value:?}"))?;
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// `GET /config_dump` as JSON.
    pub async fn config_dump(&self) -> anyhow::Result<Value> {
        let url = format!("{}/config_dump", self.admin_url());
        let text = admin_get(&url).await?;
        serde_json::from_str(&text).with_context(|| format!("{url} did not return JSON"))
    }
}

/// Fills the example bootstrap in for one test Envoy: xDS port, admin port, node id and
/// cluster, and `DELTA_GRPC` when `opts.delta`.
///
/// # Panics
///
/// If a replaced snippet does not occur exactly once, i.e. the example changed shape.
pub fn render_bootstrap(
    template: &str,
    xds_port: u16,
    admin_port: u16,
    opts: &EnvoyOptions,
) -> String {
    let mut edits = vec![
        ("port_value: 18000", format!("port_value: {xds_port}")),
        ("port_value: 9901", format!("port_value: {admin_port}")),
        ("id: envoy-1", format!("id: {}", opts.node_id)),
        ("cluster: edge", format!("cluster: {}", opts.node_cluster)),
    ];
    if opts.delta {
        edits.push(("api_type: GRPC", "api_type: DELTA_GRPC".to_owned()));
    }
    edits
        .iter()
        .fold(template.to_owned(), |text, (needle, replacement)| {
            replace_once(&text, needle, replacement)
        })
}

fn replace_once(text: &str, needle: &str, replacement: &str) -> String {
    let count = text.matches(needle).count();
    assert!(
        count == 1,
        "examples/envoy/bootstrap.yaml: expected `{needle}` exactly once, found it {count} times; \
         update tests/support/envoy.rs to match the example"
    );
    text.replacen(needle, replacement, 1)
}

/// Escapes regex metacharacters so Envoy's stats `filter` matches `text` literally.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn admin_get(url: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {text}");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_checked_in_example() {
        let example = workspace_root().join("examples/envoy/bootstrap.yaml");
        let template = std::fs::read_to_string(example).unwrap();
        let opts = EnvoyOptions {
            node_id: "n-7".to_owned(),
            node_cluster: "blue".to_owned(),
            delta: true,
        };
        let out = render_bootstrap(&template, 1111, 2222, &opts);
        for wanted in [
            "port_value: 1111 ",
            "port_value: 2222 ",
            "id: n-7\n",
            "cluster: blue\n",
            "api_type: DELTA_GRPC\n",
        ] {
            assert!(out.contains(wanted), "missing {wanted:?} in:\n{out}");
        }
        let sotw = render_bootstrap(&template, 1111, 2222, &EnvoyOptions::default());
        assert!(sotw.contains("api_type: GRPC\n"));
    }

    #[test]
    #[should_panic(expected = "`port_value: 18000` exactly once")]
    fn a_missing_needle_panics() {
        render_bootstrap("port_value: 9901", 1, 2, &EnvoyOptions::default());
    }

    #[test]
    fn escapes_stat_names() {
        assert_eq!(regex_escape("a.b_c(d)"), r"a\.b_c\(d\)");
    }
}
