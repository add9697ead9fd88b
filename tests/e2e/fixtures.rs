//! Shared set-up: a control plane with an Envoy attached and a small route table.

use std::time::Duration;

use serde_json::{Value, json};
use support::{ControlPlane, Envoy, EnvoyOptions, Upstream, free_port, require_envoy};

/// How long a change may take to reach Envoy before a test fails.
pub(crate) const CONVERGE: Duration = Duration::from_secs(20);

/// A control plane, one Envoy on it, two upstreams and a listener port.
pub(crate) struct Fleet {
    pub(crate) cp: ControlPlane,
    pub(crate) envoy: Envoy,
    pub(crate) upstream_a: Upstream,
    pub(crate) upstream_b: Upstream,
    pub(crate) port: u16,
}

impl Fleet {
    /// Starts everything, or returns `None` (with a printed reason) when Envoy is not
    /// installed outside CI.
    pub(crate) async fn start(node_id: &str, delta: bool) -> Option<Fleet> {
        require_envoy()?;
        let cp = ControlPlane::start().await.expect("control plane starts");
        let envoy = Envoy::start(
            &cp,
            EnvoyOptions {
                node_id: node_id.to_owned(),
                node_cluster: "edge".to_owned(),
                delta,
            },
        )
        .await
        .expect("envoy starts");
        Some(Fleet {
            cp,
            envoy,
            upstream_a: Upstream::start("a").await,
            upstream_b: Upstream::start("b").await,
            port: free_port(),
        })
    }

    /// Creates clusters `a` and `b`, route `api` (`/api` → `a`) and listener `public`; returns
    /// the revision after the last write, once Envoy has converged on it.
    pub(crate) async fn install_base_config(&self) -> u64 {
        let cluster = |port: u16| json!({"endpoints": [{"address": "127.0.0.1", "port": port}], "connect_timeout_ms": 1000});
        self.cp
            .put_ok("clusters", "a", cluster(self.upstream_a.port()))
            .await
            .unwrap();
        self.cp
            .put_ok("clusters", "b", cluster(self.upstream_b.port()))
            .await
            .unwrap();
        self.cp
            .put_ok(
                "routes",
                "api",
                json!({"match": {"path_prefix": "/api"}, "cluster": "a",
                "request_headers": {"set": {"x-route": "api"}}}),
            )
            .await
            .unwrap();
        let revision = self
            .cp
            .put_ok(
                "listeners",
                "public",
                json!({"address": "127.0.0.1", "port": self.port}),
            )
            .await
            .unwrap();
        self.cp.wait_converged(revision, CONVERGE).await.unwrap();
        revision
    }

    /// `GET http://127.0.0.1:<listener>/<path>` through Envoy.
    pub(crate) async fn get(&self, path: &str) -> support::HttpResponse {
        support::get(&format!("http://127.0.0.1:{}{path}", self.port), None)
            .await
            .unwrap_or_else(|e| panic!("GET {path} through envoy: {e:#}"))
    }

    /// This Envoy's entry in `GET /v1/nodes`.
    pub(crate) async fn node(&self) -> Value {
        let nodes = self.cp.get_json("/v1/nodes").await.unwrap();
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == self.envoy.node_id())
            .cloned()
            .unwrap_or_else(|| panic!("{} not in /v1/nodes: {nodes}", self.envoy.node_id()))
    }
}
