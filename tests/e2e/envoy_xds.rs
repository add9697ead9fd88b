//! A real Envoy 1.40, bootstrapped from `examples/envoy/bootstrap.yaml` with only the ADS config
//! source, obeys what the admin API says, over SotW and over Delta.

use std::time::Duration;

use serde_json::json;
use support::eventually;

use crate::fixtures::{CONVERGE, Fleet};

async fn obeys_admin_changes(delta: bool) {
    let node_id = if delta { "envoy-delta" } else { "envoy-sotw" };
    let Some(fleet) = Fleet::start(node_id, delta).await else {
        return;
    };
    let revision = fleet.install_base_config().await;

    let response = fleet.get("/api/users?id=7").await;
    assert_eq!(response.status, 200, "{}", response.body);
    let seen = response.json().unwrap();
    assert_eq!(seen["upstream"], "a");
    assert_eq!(seen["path"], "/api/users?id=7");
    assert_eq!(seen["headers"]["x-route"], "api");
    assert_eq!(fleet.upstream_a.request_count(), 1);

    // The node registry shows what Envoy acked.
    let node = fleet.node().await;
    assert_eq!(node["kind"], "envoy");
    assert_eq!(node["protocol"], if delta { "delta" } else { "sotw" });
    assert_eq!(node["cluster"], "edge");
    assert_eq!(node["synced_revision"], revision);
    for ty in ["clusters", "endpoints", "listeners", "routes"] {
        let acked = node["resources"][ty]["acked"]["revision"].as_u64();
        assert!(acked.is_some_and(|r| r <= revision), "{ty}: {node}");
        assert_eq!(node["resources"][ty]["rejecting"], false, "{ty}");
    }
    assert_eq!(node["resources"]["routes"]["acked"]["revision"], revision);

    // A route change is obeyed once its revision has converged.
    let revision = fleet
        .cp
        .put_ok(
            "routes",
            "api",
            json!({"match": {"path_prefix": "/api"}, "cluster": "b",
            "rewrite": {"path_prefix": "/v2"}}),
        )
        .await
        .unwrap();
    let status = fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();
    assert_eq!(status["acked"], 1);
    let seen = fleet.get("/api/users").await.json().unwrap();
    assert_eq!(seen["upstream"], "b");
    assert_eq!(seen["path"], "/v2/users");
    assert!(seen["headers"].get("x-route").is_none());

    // Header values are literal: `%` is not Envoy's substitution syntax to users.
    let revision = fleet
        .cp
        .put_ok(
            "routes",
            "api",
            json!({"match": {"path_prefix": "/api"}, "cluster": "b",
            "request_headers": {"set": {"x-discount": "50% off %UPSTREAM_HOST%"}},
            "response_headers": {"add": {"x-rate": "100%"}}}),
        )
        .await
        .unwrap();
    fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();
    let response = fleet.get("/api/users").await;
    assert_eq!(response.header("x-rate"), Some("100%"));
    assert_eq!(
        response.json().unwrap()["headers"]["x-discount"],
        "50% off %UPSTREAM_HOST%"
    );

    // Deleting the route gives 404.
    let revision = fleet.cp.delete_ok("routes", "api").await.unwrap();
    fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();
    assert_eq!(fleet.get("/api/users").await.status, 404);
    assert_eq!(fleet.upstream_b.request_count(), 2);
}

#[tokio::test]
async fn sotw_envoy_obeys_admin_changes() {
    obeys_admin_changes(false).await;
}

#[tokio::test]
async fn delta_envoy_obeys_admin_changes() {
    obeys_admin_changes(true).await;
}

async fn survives_control_plane_restart(delta: bool) {
    let node_id = if delta {
        "envoy-restart-delta"
    } else {
        "envoy-restart-sotw"
    };
    let Some(mut fleet) = Fleet::start(node_id, delta).await else {
        return;
    };
    fleet.install_base_config().await;

    fleet.cp.kill();
    // Envoy keeps serving its last configuration while the control plane is gone.
    for _ in 0..10 {
        let response = fleet.get("/api/ping").await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.json().unwrap()["upstream"], "a");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    fleet.cp.restart().await.unwrap();
    let node_id = fleet.envoy.node_id().to_owned();
    let cp = &fleet.cp;
    eventually(
        "envoy reconnects to the restarted control plane",
        CONVERGE,
        || async {
            let nodes = cp.get_json("/v1/nodes").await?;
            let connected = nodes["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["node_id"] == node_id));
            anyhow::ensure!(connected, "not connected yet: {nodes}");
            Ok(())
        },
    )
    .await;

    // The store survived the SIGKILL, and a change made after the restart is obeyed.
    assert!(cp.get_json("/v1/routes/api").await.is_ok());
    let revision = cp
        .put_ok(
            "routes",
            "api",
            json!({"match": {"path_prefix": "/api"}, "cluster": "a",
            "request_headers": {"set": {"x-route": "after-restart"}}}),
        )
        .await
        .unwrap();
    cp.wait_converged(revision, CONVERGE).await.unwrap();
    let seen = fleet.get("/api/ping").await.json().unwrap();
    assert_eq!(seen["headers"]["x-route"], "after-restart");
}

#[tokio::test]
async fn sotw_envoy_survives_control_plane_restart() {
    survives_control_plane_restart(false).await;
}

#[tokio::test]
async fn delta_envoy_survives_control_plane_restart() {
    survives_control_plane_restart(true).await;
}

/// A regex our validation accepts but Envoy refuses: RE2's program-size limit (100 by default)
/// is Envoy's own rule, so this is a NACK a user can really meet.
const OVERSIZED_REGEX: &str = "^/(abcdefghij){1,30}$";

async fn nack_is_reported_and_not_repeated(delta: bool) {
    let node_id = if delta {
        "envoy-nack-delta"
    } else {
        "envoy-nack-sotw"
    };
    let Some(fleet) = Fleet::start(node_id, delta).await else {
        return;
    };
    fleet.install_base_config().await;
    let rejected_stat = "http.public.rds.public.update_rejected";

    let revision = fleet
        .cp
        .put_ok(
            "routes",
            "huge",
            json!({"match": {"path_regex": OVERSIZED_REGEX}, "cluster": "b"}),
        )
        .await
        .unwrap();
    let status = fleet.cp.wait_nacked(revision, CONVERGE).await.unwrap();
    assert_eq!(status["converged"], false);
    let nack = &status["nacked"][0];
    assert_eq!(nack["node_id"], node_id);
    assert_eq!(nack["type"], "routes");
    assert!(
        nack["message"]
            .as_str()
            .unwrap()
            .contains("RE2 program size"),
        "{nack}"
    );

    let node = fleet.node().await;
    let routes = &node["resources"]["routes"];
    assert_eq!(node["rejecting"], true);
    assert_eq!(routes["rejecting"], true);
    assert_eq!(routes["last_nack"]["revision"], revision);
    assert!(
        routes["last_nack"]["message"]
            .as_str()
            .unwrap()
            .contains(OVERSIZED_REGEX)
    );
    let routes_sent = routes["responses_sent"].as_u64().unwrap();

    // Envoy keeps serving the previous configuration.
    let response = fleet.get("/api/still").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json().unwrap()["upstream"], "a");

    // An unrelated revision reaches Envoy, and the rejected route table is not pushed again
    // with it: once Envoy has acked the new clusters, the routes counters have not moved.
    let unrelated = fleet
        .cp
        .put_ok(
            "clusters",
            "c",
            json!({"endpoints": [{"address": "127.0.0.1", "port": 1}]}),
        )
        .await
        .unwrap();
    let cp = &fleet.cp;
    let node_id_owned = node_id.to_owned();
    eventually(
        "envoy acks the unrelated cluster change",
        CONVERGE,
        || async {
            let nodes = cp.get_json("/v1/nodes").await?;
            let node = nodes["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["node_id"] == node_id_owned).cloned());
            let acked = node
                .as_ref()
                .and_then(|n| n["resources"]["clusters"]["acked"]["revision"].as_u64());
            anyhow::ensure!(acked == Some(unrelated), "clusters acked {acked:?}");
            Ok(())
        },
    )
    .await;
    let node = fleet.node().await;
    assert_eq!(
        node["resources"]["routes"]["responses_sent"].as_u64(),
        Some(routes_sent),
        "{node}"
    );
    assert_eq!(fleet.envoy.stat(rejected_stat).await.unwrap(), Some(1));

    // The control plane's metrics agree: exactly one NACK, of routes; one Envoy connected.
    let metrics = support::get(&format!("{}/metrics", fleet.cp.admin_url()), None)
        .await
        .unwrap()
        .body;
    let sample = |series: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or_else(|| panic!("{series} missing in\n{metrics}"))
    };
    assert_eq!(sample(r#"tollgate_xds_nacks_total{type="routes"}"#), 1.0);
    let protocol = if delta { "delta" } else { "sotw" };
    assert_eq!(
        sample(&format!(
            r#"tollgate_xds_connected_nodes{{kind="envoy",protocol="{protocol}"}}"#
        )),
        1.0
    );
    assert!(sample(r#"tollgate_xds_commit_to_ack_seconds_count{type="clusters"}"#) >= 1.0);

    // Fixing the config clears the rejection.
    let revision = fleet.cp.delete_ok("routes", "huge").await.unwrap();
    fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();
    assert_eq!(fleet.node().await["rejecting"], false);
    assert_eq!(fleet.envoy.stat(rejected_stat).await.unwrap(), Some(1));
}

#[tokio::test]
async fn sotw_nack_is_reported_and_not_repeated() {
    nack_is_reported_and_not_repeated(false).await;
}

#[tokio::test]
async fn delta_nack_is_reported_and_not_repeated() {
    nack_is_reported_and_not_repeated(true).await;
}

/// Listeners with a `node_cluster` go only to proxies of that cluster.
#[tokio::test]
async fn listeners_follow_node_cluster() {
    let Some(fleet) = Fleet::start("envoy-edge", false).await else {
        return;
    };
    fleet.install_base_config().await;
    let other_port = support::free_port();
    let revision = fleet
        .cp
        .put_ok(
            "listeners",
            "mesh-only",
            json!({"address": "127.0.0.1", "port": other_port, "node_cluster": "mesh"}),
        )
        .await
        .unwrap();
    fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();
    let dump = fleet.envoy.config_dump().await.unwrap().to_string();
    assert!(dump.contains("\"public\""), "the edge listener is there");
    assert!(
        !dump.contains("mesh-only"),
        "the mesh listener is not sent to an edge node"
    );
    assert!(
        support::get(&format!("http://127.0.0.1:{other_port}/api"), None)
            .await
            .is_err()
    );
}

/// SIGTERM ends the ADS streams (so the process does not hang on them), exits cleanly, and
/// Envoy keeps serving what it has.
#[tokio::test]
async fn sigterm_shuts_down_promptly_with_envoy_connected() {
    let Some(mut fleet) = Fleet::start("envoy-sigterm", true).await else {
        return;
    };
    fleet.install_base_config().await;
    fleet.cp.process().sigterm().unwrap();
    let exit = fleet.cp.process().wait_exit(Duration::from_secs(8)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit status {exit:?}\n{}",
        fleet.cp.log()
    );
    assert!(fleet.cp.log().contains("shutting down"));
    assert_eq!(fleet.get("/api/after-shutdown").await.status, 200);
}
