//! The edge proxy's upstream side against real sockets: TLS to the endpoints (verified against
//! a CA, with SNI, or deliberately not verified) and circuit breakers answering 503.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use support::{ControlPlane, EdgeProxy, Upstream, free_port};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::fixtures::CONVERGE;

/// A certificate authority for one test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names`, signed by this CA: (chain PEM, key PEM).
    fn server_cert(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// An HTTPS upstream answering 200 with the SNI it was sent in `x-sni`.
struct TlsUpstream {
    port: u16,
    task: tokio::task::JoinHandle<()>,
    requests: Arc<Mutex<usize>>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start(chain_pem: &str, key_pem: &str) -> TlsUpstream {
        use rustls::pki_types::pem::PemObject as _;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        support::ports::mark_taken(port);
        let requests = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                    let service = service_fn(move |_request| {
                        *counter.lock().unwrap() += 1;
                        let sni = sni.clone();
                        async move {
                            let mut response = Response::new(Full::new(Bytes::from("tls ok")));
                            response.headers_mut().insert("x-sni", sni.parse().unwrap());
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            port,
            task,
            requests,
        }
    }

    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }
}

/// Sets `cluster` and a route `/<cluster>` to it, and waits until the proxy has them.
async fn route_to(cp: &ControlPlane, cluster: &str, body: serde_json::Value) {
    let revision = cp
        .put_all([
            ("clusters", cluster, body),
            (
                "routes",
                cluster,
                json!({"match": {"path_prefix": format!("/{cluster}")}, "cluster": cluster}),
            ),
        ])
        .await;
    cp.wait_converged(revision, CONVERGE).await.unwrap();
}

#[tokio::test]
async fn upstream_tls_is_verified_against_the_trusted_ca_with_sni() {
    let cp = ControlPlane::start().await.unwrap();
    let port = free_port();
    cp.put_ok(
        "listeners",
        "public",
        json!({"address": "127.0.0.1", "port": port}),
    )
    .await
    .unwrap();
    let proxy = EdgeProxy::start(&cp, "edge-tls-upstream").await.unwrap();

    let ca = TestCa::new("tollgate test upstream CA");
    let (chain, key) = ca.server_cert(&["upstream.test"]);
    let server = TlsUpstream::start(&chain, &key).await;
    let other_ca = TestCa::new("some other CA");
    let endpoint = json!([{"address": "127.0.0.1", "port": server.port}]);

    route_to(
        &cp,
        "verified",
        json!({"endpoints": endpoint, "tls": {"sni": "upstream.test", "trusted_ca": ca.pem()}}),
    )
    .await;
    route_to(
        &cp,
        "untrusted",
        json!({"endpoints": endpoint, "tls": {"sni": "upstream.test", "trusted_ca": other_ca.pem()}}),
    )
    .await;
    route_to(
        &cp,
        "unverified",
        json!({"endpoints": endpoint, "tls": {"verify": false}}),
    )
    .await;

    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let verified = support::get(&url("/verified"), Some("app.test"))
        .await
        .unwrap();
    assert_eq!(verified.status, 200, "{verified:?}\n{}", proxy.log());
    assert_eq!(verified.header("x-sni"), Some("upstream.test"));
    assert_eq!(verified.body, "tls ok");

    // A certificate from a CA the cluster does not trust: no request reaches the server.
    let before = server.requests();
    let untrusted = support::get(&url("/untrusted"), Some("app.test"))
        .await
        .unwrap();
    assert_eq!(untrusted.status, 503, "{untrusted:?}");
    assert!(
        untrusted.body.contains("remote connection failure"),
        "{untrusted:?}"
    );
    assert_eq!(server.requests(), before);

    // `verify: false` connects to anything, and sends no SNI (as Envoy without `sni`).
    let unverified = support::get(&url("/unverified"), Some("app.test"))
        .await
        .unwrap();
    assert_eq!(unverified.status, 200, "{unverified:?}");
    assert_eq!(unverified.header("x-sni"), Some(""));
}

#[tokio::test]
async fn circuit_breaker_answers_503_when_max_requests_are_in_flight() {
    let cp = ControlPlane::start().await.unwrap();
    let port = free_port();
    let upstream = Upstream::start("slow").await;
    cp.put_ok(
        "listeners",
        "public",
        json!({"address": "127.0.0.1", "port": port}),
    )
    .await
    .unwrap();
    let proxy = EdgeProxy::start(&cp, "edge-breaker").await.unwrap();
    route_to(
        &cp,
        "limited",
        json!({
            "endpoints": [{"address": "127.0.0.1", "port": upstream.port()}],
            "circuit_breakers": {"max_requests": 1},
        }),
    )
    .await;

    let slow_url = format!("http://127.0.0.1:{port}/limited/delay/1500");
    let in_flight = tokio::spawn(async move { support::get(&slow_url, Some("app.test")).await });
    // Wait until the slow request has reached the upstream, so it holds the only slot.
    support::eventually("the slow request is in flight", CONVERGE, || {
        let count = upstream.request_count();
        let ended = in_flight.is_finished();
        async move {
            anyhow::ensure!(!ended, "the slow request was answered without the upstream");
            anyhow::ensure!(count == 1, "{count} requests so far");
            Ok(())
        }
    })
    .await;
    let rejected = support::get(
        &format!("http://127.0.0.1:{port}/limited/fast"),
        Some("app.test"),
    )
    .await
    .unwrap();
    assert_eq!(rejected.status, 503, "{rejected:?}\n{}", proxy.log());
    assert_eq!(rejected.header("x-envoy-overloaded"), Some("true"));
    assert!(rejected.body.contains("overflow"), "{rejected:?}");
    assert_eq!(
        upstream.request_count(),
        1,
        "the rejected request went nowhere"
    );

    let finished = in_flight.await.unwrap().unwrap();
    assert_eq!(finished.status, 200);
    // The slot is free again.
    let after = support::get(
        &format!("http://127.0.0.1:{port}/limited/fast"),
        Some("app.test"),
    )
    .await
    .unwrap();
    assert_eq!(after.status, 200, "{after:?}");
}
