//! Declarative config from the command line (`tollgate apply`, `diff`, `export`), and rollback
//! obeyed by a real Envoy.

use std::process::{Command, Output};

use serde_json::json;
use support::ControlPlane;
use support::process::tollgate_bin;

use crate::fixtures::{CONVERGE, Fleet};

fn tollgate(cp: &ControlPlane, args: &[&str]) -> Output {
    Command::new(tollgate_bin())
        .args(args)
        .env("TOLLGATE_ADMIN_URL", cp.admin_url())
        .env("TOLLGATE_ADMIN_TOKEN", cp.token())
        .output()
        .expect("tollgate runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const FLEET_YAML: &str = "\
clusters:
  - name: users
    endpoints:
      - address: 10.0.0.1
        port: 8080
    lb_policy: least_request
routes:
  - name: users-api
    match:
      path_prefix: /users
    cluster: users
listeners:
  - name: public
    port: 18080
";

#[tokio::test]
async fn cli_diff_apply_export_round_trip_with_ci_exit_codes() {
    let cp = ControlPlane::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, FLEET_YAML).unwrap();
    let file = file.to_str().unwrap();

    let diff = tollgate(&cp, &["diff", "-f", file]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff.stderr));
    let shown = text(&diff.stdout);
    assert!(
        shown.contains("+ cluster users (created)") && shown.contains("3 change(s)"),
        "{shown}"
    );
    assert!(
        !shown.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    assert_eq!(
        cp.get_json("/v1/config").await.unwrap()["clusters"],
        json!([]),
        "diff changes nothing"
    );

    let apply = tollgate(&cp, &["apply", "-f", file]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply.stderr));
    assert!(text(&apply.stdout).contains("applied 3 change(s) as revision 1"));
    let diff = tollgate(&cp, &["diff", "-f", file]);
    assert_eq!(diff.status.code(), Some(0));
    assert_eq!(text(&diff.stdout), "no changes\n");

    // export → apply → export gives the same document, byte for byte.
    let exported = tollgate(&cp, &["export"]);
    assert_eq!(exported.status.code(), Some(0));
    let export_file = dir.path().join("exported.yaml");
    std::fs::write(&export_file, &exported.stdout).unwrap();
    let reapply = tollgate(&cp, &["apply", "-f", export_file.to_str().unwrap()]);
    assert_eq!(reapply.status.code(), Some(0));
    assert!(
        text(&reapply.stdout).contains("no changes"),
        "{}",
        text(&reapply.stdout)
    );
    assert_eq!(tollgate(&cp, &["export"]).stdout, exported.stdout);
    let json_export = tollgate(&cp, &["export", "--format", "json"]);
    let json_doc: serde_json::Value = serde_json::from_slice(&json_export.stdout).unwrap();
    assert_eq!(json_doc["clusters"][0]["lb_policy"], "least_request");

    // A dry-run apply shows the diff and changes nothing.
    std::fs::write(file, FLEET_YAML.replace("port: 8080", "port: 9090")).unwrap();
    let dry = tollgate(&cp, &["apply", "--dry-run", "-f", file]);
    assert_eq!(dry.status.code(), Some(0));
    let shown = text(&dry.stdout);
    assert!(
        shown.contains("~ cluster users (updated)") && shown.contains("+       \"port\": 9090"),
        "{shown}"
    );
    assert_eq!(
        cp.get_json("/v1/clusters/users").await.unwrap()["endpoints"][0]["port"],
        8080
    );

    // Errors exit 1 and say what is wrong.
    std::fs::write(
        file,
        "clusters: [{name: x, endpoints: [{address: 10.0.0.1, port: 0}]}]",
    )
    .unwrap();
    let bad = tollgate(&cp, &["apply", "-f", file]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("clusters[0].endpoints[0].port"),
        "{}",
        text(&bad.stderr)
    );
    let missing = tollgate(&cp, &["apply", "-f", "/nonexistent/tollgate.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    let wrong_token = Command::new(tollgate_bin())
        .args([
            "export",
            "--admin-url",
            &cp.admin_url(),
            "--admin-token",
            "not-the-token-at-all",
        ])
        .output()
        .unwrap();
    assert_eq!(wrong_token.status.code(), Some(1));
    assert!(
        text(&wrong_token.stderr).contains("401"),
        "{}",
        text(&wrong_token.stderr)
    );
}

#[tokio::test]
async fn rollback_is_obeyed_by_envoy() {
    let Some(fleet) = Fleet::start("envoy-rollback", true).await else {
        return;
    };
    let good = fleet.install_base_config().await;
    let changed = fleet
        .cp
        .put_ok(
            "routes",
            "api",
            json!({"match": {"path_prefix": "/api"}, "cluster": "b"}),
        )
        .await
        .unwrap();
    fleet.cp.wait_converged(changed, CONVERGE).await.unwrap();
    assert_eq!(fleet.get("/api/x").await.json().unwrap()["upstream"], "b");

    let (status, body) = fleet
        .cp
        .raw(
            reqwest::Method::POST,
            &format!("/v1/revisions/{good}/rollback"),
            None,
            Some(fleet.cp.token()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let revision = body["revision"].as_u64().unwrap();
    assert_eq!(revision, changed + 1);
    fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();
    let seen = fleet.get("/api/x").await.json().unwrap();
    assert_eq!(seen["upstream"], "a");
    assert_eq!(seen["headers"]["x-route"], "api");
}
