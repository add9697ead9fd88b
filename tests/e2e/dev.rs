//! `tollgate dev`, the README's "run it" command: starts on embedded defaults and prints a
//! working admin URL and token.

use std::process::Command;
use std::time::Duration;

use support::process::{ChildProcess, tollgate_bin};
use support::{eventually, free_port};

#[tokio::test]
async fn dev_prints_a_token_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, xds) = (free_port(), free_port());
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("dev")
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .env_remove("TOLLGATE_ADMIN_TOKEN");
    let mut dev = ChildProcess::spawn("tollgate dev", cmd).unwrap();
    let banner = eventually(
        "tollgate dev prints its banner",
        Duration::from_secs(20),
        || {
            let log = dev.log();
            async move {
                anyhow::ensure!(log.contains("admin token"), "no banner yet");
                Ok(log)
            }
        },
    )
    .await;
    let token = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin token"))
        .map(str::trim)
        .expect("token line")
        .to_owned();
    assert!(token.len() >= 32, "generated token {token:?}");
    assert!(banner.contains(&format!("http://127.0.0.1:{admin}/v1")));

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{admin}/v1/clusters/web");
    let put = client
        .put(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!({"endpoints": [{"address": "127.0.0.1", "port": 8081}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let denied = client.get(&url).send().await.unwrap();
    assert_eq!(denied.status(), 401);

    // The store is the SQLite file in the data directory, and survives a restart.
    dev.sigterm().unwrap();
    assert!(
        dev.wait_exit(Duration::from_secs(15))
            .await
            .is_some_and(|s| s.success())
    );
    assert!(dir.path().join("data/tollgate.db").exists());
}
