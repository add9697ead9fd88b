//! Shared set-up: a control plane with an Envoy attached and a small route table.

use std::time::Duration;

use serde_json::{Value, json};
use support::{ControlPlane, EdgeProxy, Envoy, EnvoyOptions, Upstream, free_port, require_envoy};

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

/// A proxy compared with another in the Envoy-and-edge-proxy tests: its name, the port of its
/// listener and the `Host` the test's requests carry.
pub(crate) struct Peer {
    pub(crate) name: &'static str,
    pub(crate) port: u16,
    pub(crate) host: &'static str,
}

impl Peer {
    /// Sends one request and reads the whole response; a transport error fails the test.
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> support::HttpResponse {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let body = body.map(<[u8]>::to_vec);
        support::client::request(method, &url, Some(self.host), headers, body)
            .await
            .unwrap_or_else(|e| panic!("{}: {path}: {e:#}", self.name))
    }

    /// `GET path` with `headers`.
    pub(crate) async fn send(&self, path: &str, headers: &[(&str, &str)]) -> support::HttpResponse {
        self.request(reqwest::Method::GET, path, headers, None)
            .await
    }

    /// The Envoy and the edge proxy of a comparison, on their listeners' ports.
    pub(crate) fn envoy_and_edge(envoy_port: u16, edge_port: u16, host: &'static str) -> [Peer; 2] {
        [
            Peer {
                name: "envoy",
                port: envoy_port,
                host,
            },
            Peer {
                name: "edge",
                port: edge_port,
                host,
            },
        ]
    }

    /// Waits until `GET path` with `headers` answers 200: an acked listener may take a moment
    /// to accept connections.
    pub(crate) async fn wait_serving(&self, path: &str, headers: &[(&str, &str)]) {
        support::eventually(
            &format!("{} serves routes", self.name),
            CONVERGE,
            || async {
                let response = self.send(path, headers).await;
                anyhow::ensure!(response.status == 200, "status {}", response.status);
                Ok(())
            },
        )
        .await;
    }
}

/// Starts an Envoy (node `<name>-envoy`, node cluster `envoy`, SotW) and an edge proxy (node
/// `<name>-edge`, node cluster `edge`) on `cp`, and waits until both have taken up `revision`;
/// the listeners of the test are for those node clusters.
pub(crate) async fn start_envoy_and_edge(
    cp: &ControlPlane,
    name: &str,
    revision: u64,
) -> (Envoy, EdgeProxy) {
    let edge_id = format!("{name}-edge");
    let (envoy, edge) = tokio::join!(
        Envoy::start(
            cp,
            EnvoyOptions {
                node_id: format!("{name}-envoy"),
                node_cluster: "envoy".to_owned(),
                delta: false,
            }
        ),
        EdgeProxy::start(cp, &edge_id),
    );
    let (envoy, edge) = (
        envoy.expect("envoy starts"),
        edge.expect("edge proxy starts"),
    );
    cp.wait_converged(revision, CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("both proxies take up revision {revision}: {e:#}"));
    (envoy, edge)
}
