//! `tollgate dev`, the README's "run it" command: starts on embedded defaults, prints a working
//! admin URL and token, and its bundled edge proxy carries traffic.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::process::{ChildProcess, tollgate_bin};
use support::{Upstream, eventually, free_port};

use crate::fixtures::CONVERGE;

/// A running `tollgate dev` and what its banner says.
struct Dev {
    process: ChildProcess,
    token: String,
    admin: u16,
    traffic: String,
}

impl Dev {
    /// Runs `tollgate dev` as the README says, with free ports instead of the defaults (so a
    /// test does not depend on 8080, 9000 or 9901 being free) and no token in the environment.
    async fn start(data_dir: &Path) -> Dev {
        let (admin, xds, proxy, proxy_admin) = (free_port(), free_port(), free_port(), free_port());
        let mut cmd = Command::new(tollgate_bin());
        cmd.arg("dev")
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--proxy-addr", &format!("127.0.0.1:{proxy}")])
            .args(["--proxy-admin-addr", &format!("127.0.0.1:{proxy_admin}")])
            .env_remove("TOLLGATE_ADMIN_TOKEN");
        let process = ChildProcess::spawn("tollgate dev", cmd).unwrap();
        let banner = eventually(
            "tollgate dev prints its banner",
            Duration::from_secs(20),
            || {
                let log = process.log();
                async move {
                    anyhow::ensure!(log.contains("admin token"), "no banner yet");
                    Ok(log)
                }
            },
        )
        .await;
        let line_value = |label: &str| {
            banner
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no `{label}` line in the banner:\n{banner}"))
        };
        let token = line_value("admin token");
        assert!(token.len() >= 32, "generated token {token:?}");
        assert_eq!(
            line_value("admin API"),
            format!("http://127.0.0.1:{admin}/v1")
        );
        let traffic = line_value("traffic");
        assert_eq!(traffic, format!("http://127.0.0.1:{proxy}"), "{banner}");
        Dev {
            process,
            token,
            admin,
            traffic,
        }
    }

    /// `PUT /v1/<path>` with the printed token; panics unless it succeeds.
    async fn put(&self, path: &str, body: Value) {
        let url = format!("http://127.0.0.1:{}/v1/{path}", self.admin);
        let response = reqwest::Client::new()
            .put(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {url}: {e:#}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "PUT {url}: {status}: {text}");
    }

    /// SIGTERM; asserts a clean exit.
    async fn stop(mut self) {
        self.process.sigterm().unwrap();
        let exit = self.process.wait_exit(Duration::from_secs(15)).await;
        assert!(
            exit.is_some_and(|s| s.success()),
            "tollgate dev exits 0 on SIGTERM: {exit:?}"
        );
    }
}

#[tokio::test]
async fn dev_prints_a_token_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data")).await;
    dev.put(
        "clusters/web",
        json!({"endpoints": [{"address": "127.0.0.1", "port": 8081}]}),
    )
    .await;
    let url = format!("http://127.0.0.1:{}/v1/clusters/web", dev.admin);
    let denied = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(denied.status(), 401);

    // The store is the SQLite file in the data directory.
    dev.stop().await;
    assert!(dir.path().join("data/tollgate.db").exists());
}

#[tokio::test]
async fn dev_routes_traffic_through_its_edge_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(&dir.path().join("data")).await;
    let upstream = Upstream::start("web").await;
    dev.put(
        "clusters/web",
        json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]}),
    )
    .await;
    dev.put(
        "routes/web",
        json!({"match": {"path_prefix": "/"}, "cluster": "web",
               "response_headers": {"set": {"x-served-by": "tollgate"}}}),
    )
    .await;

    let url = format!("{}/hello?from=dev", dev.traffic);
    let response = eventually("tollgate dev's proxy routes / to web", CONVERGE, || {
        let url = url.clone();
        async move {
            let response = support::get(&url, None).await?;
            anyhow::ensure!(
                response.status == 200,
                "{}: {}",
                response.status,
                response.body
            );
            Ok(response)
        }
    })
    .await;
    assert_eq!(response.header("x-upstream"), Some("web"));
    assert_eq!(response.header("x-served-by"), Some("tollgate"));
    assert_eq!(response.json().unwrap()["path"], "/hello?from=dev");
    dev.stop().await;
}
