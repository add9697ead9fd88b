//! schemathesis, a property-based API fuzzer, run against the admin API's own OpenAPI
//! document: no 5xx, and every response matches the documented status codes, content types
//! and schemas.

use std::process::Command;

use support::ControlPlane;
use support::tools::require_tool;

#[tokio::test]
async fn schemathesis_finds_no_server_errors_or_schema_violations() {
    let Some(st) = require_tool("st", "SCHEMATHESIS_BIN") else {
        return;
    };
    let cp = ControlPlane::start().await.unwrap();
    // Some data, so reads and deletes of existing names are exercised too.
    cp.put_all([
        (
            "clusters",
            "web",
            serde_json::json!({"endpoints": [{"address": "127.0.0.1", "port": 8080}]}),
        ),
        (
            "routes",
            "web",
            serde_json::json!({"match": {"path_prefix": "/"}, "cluster": "web"}),
        ),
    ])
    .await;
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".to_owned());
    // schemathesis keeps a cache in its working directory; keep it out of the source tree.
    let scratch = tempfile::tempdir().unwrap();
    let mut command = Command::new(st);
    command
        .current_dir(scratch.path())
        .arg("run")
        .arg(format!("{}/v1/openapi.json", cp.admin_url()))
        .args(["-H", &format!("Authorization: Bearer {}", cp.token())])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        ])
        // One worker: with several, hypothesis parsed Python sources in threads and this
        // machine's CPython 3.11 failed inside `ast` ("AST constructor recursion depth
        // mismatch"): a crash of the tool, reported as a failed run (seen in a fresh-clone CI).
        .args(["--max-examples", &examples, "--workers", "1", "--no-color"])
        // A fixed seed keeps CI reproducible; set SCHEMATHESIS_SEED to explore further.
        .args(["--seed", &std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261122".to_owned())]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    assert!(
        !cp.log().contains("panicked"),
        "the control plane panicked:\n{}",
        cp.log()
    );
}
