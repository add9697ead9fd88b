//! TLS termination by Envoy and by the edge proxy with certificates delivered over SDS: the client's SNI picks the
//! certificate, and a rotated certificate is served once its revision has converged.

use std::net::SocketAddr;

use serde_json::json;

use crate::fixtures::{CONVERGE, Fleet};

struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn self_signed(names: &[&str]) -> TestCert {
    let certified = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    TestCert {
        cert_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
        der: certified.cert.der().to_vec(),
    }
}

/// `GET https://<host>:<port><path>` with `host` resolved to loopback, trusting `roots`;
/// returns the status, the JSON body and the certificate the server presented (DER).
async fn get_tls(
    host: &str,
    port: u16,
    path: &str,
    roots: &[&TestCert],
) -> (u16, serde_json::Value, Vec<u8>) {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_info(true)
        .resolve(host, SocketAddr::from(([127, 0, 0, 1], port)));
    for root in roots {
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_pem(root.cert_pem.as_bytes()).unwrap(),
        );
    }
    let response = builder
        .build()
        .unwrap()
        .get(format!("https://{host}:{port}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET https://{host}:{port}{path}: {e:?}"));
    let presented = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate().map(<[u8]>::to_vec))
        .expect("the server presented a certificate");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default(), presented)
}

#[tokio::test]
async fn sotw_envoy_terminates_tls_with_sds_certificates_chosen_by_sni() {
    terminates_tls(false).await;
}

#[tokio::test]
async fn delta_envoy_terminates_tls_with_sds_certificates_chosen_by_sni() {
    terminates_tls(true).await;
}

async fn terminates_tls(delta: bool) {
    let node_id = if delta {
        "envoy-tls-delta"
    } else {
        "envoy-tls-sotw"
    };
    let Some(fleet) = Fleet::start(node_id, delta).await else {
        return;
    };
    fleet.install_base_config().await;
    let (a, b) = (
        self_signed(&["a.example.com"]),
        self_signed(&["b.example.com"]),
    );
    for (name, cert) in [("a", &a), ("b", &b)] {
        fleet
            .cp
            .put_ok(
                "certificates",
                name,
                json!({"cert_pem": cert.cert_pem, "key_pem": cert.key_pem}),
            )
            .await
            .unwrap();
    }
    let port = support::free_port();
    let revision = fleet
        .cp
        .put_ok(
            "listeners",
            "secure",
            json!({"address": "127.0.0.1", "port": port, "tls": {"certificates": ["a", "b"]}}),
        )
        .await
        .unwrap();
    fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();

    let (status, body, presented) = get_tls("a.example.com", port, "/api/tls", &[&a, &b]).await;
    assert_eq!(
        (status, body["upstream"].as_str()),
        (200, Some("a")),
        "{body}"
    );
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert!(presented == a.der, "a.example.com must get certificate a");
    let (status, _, presented) = get_tls("b.example.com", port, "/api/tls", &[&a, &b]).await;
    assert_eq!(status, 200);
    assert!(presented == b.der, "b.example.com must get certificate b");
    let node = fleet.node().await;
    assert_eq!(
        node["resources"]["secrets"]["subscribed_names"], 2,
        "{node}"
    );

    // Rotation: a new certificate for a is served once its revision converges.
    let rotated = self_signed(&["a.example.com"]);
    let revision = fleet
        .cp
        .put_ok(
            "certificates",
            "a",
            json!({"cert_pem": rotated.cert_pem, "key_pem": rotated.key_pem}),
        )
        .await
        .unwrap();
    fleet.cp.wait_converged(revision, CONVERGE).await.unwrap();
    let (status, _, presented) = get_tls("a.example.com", port, "/api/tls", &[&rotated, &b]).await;
    assert_eq!(status, 200);
    assert!(
        presented == rotated.der,
        "the rotated certificate is served"
    );

    // The private key appears nowhere in the control plane's log or Envoy's config dump.
    let key_line = rotated.key_pem.lines().nth(1).unwrap();
    assert!(!fleet.cp.log().contains(key_line));
    let dump = fleet.envoy.config_dump().await.unwrap().to_string();
    assert!(
        !dump.contains(key_line),
        "envoy redacts secrets in its config dump"
    );
}

/// The same through Tollgate's edge proxy, plus HTTP/2 over ALPN, and a private key that
/// appears neither in its log nor in its `/config_dump`.
#[tokio::test]
async fn edge_proxy_terminates_tls_with_sds_certificates_chosen_by_sni() {
    let cp = support::ControlPlane::start().await.unwrap();
    let upstream = support::Upstream::start("a").await;
    let proxy = support::EdgeProxy::start(&cp, "edge-tls").await.unwrap();
    cp.put_all([
        (
            "clusters",
            "a",
            json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]}),
        ),
        (
            "routes",
            "api",
            json!({"match": {"path_prefix": "/api"}, "cluster": "a"}),
        ),
    ])
    .await;
    let (a, b) = (
        self_signed(&["a.example.com"]),
        self_signed(&["b.example.com"]),
    );
    for (name, cert) in [("a", &a), ("b", &b)] {
        cp.put_ok(
            "certificates",
            name,
            json!({"cert_pem": cert.cert_pem, "key_pem": cert.key_pem}),
        )
        .await
        .unwrap();
    }
    let port = support::free_port();
    let revision = cp
        .put_ok(
            "listeners",
            "secure",
            json!({"address": "127.0.0.1", "port": port, "tls": {"certificates": ["a", "b"]}}),
        )
        .await
        .unwrap();
    // Converged means the listener's port accepts: the proxy binds it before its ACK.
    cp.wait_converged(revision, CONVERGE).await.unwrap();

    let (status, body, presented) = get_tls("a.example.com", port, "/api/tls", &[&a, &b]).await;
    assert_eq!(
        (status, body["upstream"].as_str()),
        (200, Some("a")),
        "{body}\n{}",
        proxy.log()
    );
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert!(presented == a.der, "a.example.com must get certificate a");
    let (status, _, presented) = get_tls("b.example.com", port, "/api/tls", &[&a, &b]).await;
    assert_eq!(status, 200);
    assert!(presented == b.der, "b.example.com must get certificate b");
    // No SNI: the first certificate, as the listener's default chain. HTTP/2 over ALPN.
    let (presented, alpn) = handshake(port, None).await;
    assert!(
        presented == a.der,
        "a client without SNI gets the first certificate"
    );
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (presented, _) = handshake(port, Some("b.example.com")).await;
    assert!(presented == b.der);

    // Rotation without a restart.
    let rotated = self_signed(&["a.example.com"]);
    let revision = cp
        .put_ok(
            "certificates",
            "a",
            json!({"cert_pem": rotated.cert_pem, "key_pem": rotated.key_pem}),
        )
        .await
        .unwrap();
    cp.wait_converged(revision, CONVERGE).await.unwrap();
    let (status, _, presented) = get_tls("a.example.com", port, "/api/tls", &[&rotated, &b]).await;
    assert_eq!(status, 200);
    assert!(
        presented == rotated.der,
        "the rotated certificate is served"
    );

    let key_line = rotated.key_pem.lines().nth(1).unwrap();
    assert!(!proxy.log().contains(key_line), "the key is not logged");
    let dump = proxy.config_dump().await.unwrap().to_string();
    assert!(!dump.contains(key_line), "/config_dump redacts the key");
    assert!(dump.contains("[redacted]"), "{dump}");
}

/// A bare TLS handshake offering `h2` and `http/1.1`, with SNI `server_name` (none when
/// `None`): the certificate presented (DER) and the protocol picked.
async fn handshake(port: u16, server_name: Option<&str>) -> (Vec<u8>, Option<Vec<u8>>) {
    use tokio_rustls::rustls::{self, ClientConfig};
    /// Certificates are checked by the other requests; this one only reads ALPN.
    #[derive(Debug)]
    struct AnyCertificate;
    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let mut config = ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.enable_sni = server_name.is_some();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name =
        rustls::pki_types::ServerName::try_from(server_name.unwrap_or("no-sni.invalid").to_owned())
            .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let connection = tls.get_ref().1;
    let presented = connection.peer_certificates().unwrap()[0].to_vec();
    (presented, connection.alpn_protocol().map(<[u8]>::to_vec))
}
