//! Endpoint health, beside the load balancer: active HTTP health checks, passive outlier
//! detection (consecutive 5xx → ejection), and the upstream TLS settings a cluster connects with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::connector::{ConnectionCount, EndpointConnector, UpstreamTlsConnector};
use super::{Endpoint, Outcome, UpstreamCluster, client_builder, eject};
use crate::config::cluster::{Cluster, HealthCheck, TlsVersion, UpstreamProtocol};

/// Builds the rustls connector for a cluster with upstream TLS, checking the endpoint's
/// certificate as Envoy does (see [`crate::config::cluster::UpstreamTls`]).
pub(super) fn tls_connector(config: &Cluster) -> Option<UpstreamTlsConnector> {
    let tls = config.tls.as_ref()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, v)| v)
    .collect();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .ok()?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match &tls.trusted_ca {
        Some(cas) => {
            let mut roots = RootCertStore::empty();
            for der in cas {
                // Each was checked to be a usable trust anchor when the cluster was accepted.
                let _ = roots.add(CertificateDer::from(der.clone()));
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&provider),
            )
            .build()
            .ok()?;
            Arc::new(verify::EnvoyVerifier::new(
                webpki,
                tls.subject_alt_names.clone(),
            ))
        }
        // No validation context: like Envoy, the endpoint's certificate is not verified.
        None => Arc::new(verify::AcceptAnyCertificate::new()),
    };
    let mut client_config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client_config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Envoy sends SNI only when configured. rustls needs a name anyway: a placeholder that is
    // never sent (the verifier checks `subject_alt_names`, not this name).
    client_config.enable_sni = tls.sni.is_some();
    let name = tls
        .sni
        .clone()
        .unwrap_or_else(|| "upstream.invalid".to_owned());
    let server_name = ServerName::try_from(name).ok()?;
    Some(UpstreamTlsConnector {
        connector: TlsConnector::from(Arc::new(client_config)),
        server_name,
    })
}

/// Counts an attempt's outcome and ejects the endpoint after `consecutive_5xx` failures in a
/// row, if the cluster has outlier detection.
pub(super) fn record_outcome(cluster: &UpstreamCluster, endpoint: &Endpoint, outcome: Outcome) {
    let Some(detection) = &cluster.config.outlier_detection else {
        return;
    };
    let health = &endpoint.health;
    match outcome {
        Outcome::Success => {
            // Most responses succeed: skip the store when nothing needs resetting.
            if health.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                health.consecutive_5xx.store(0, Ordering::Relaxed);
            }
        }
        Outcome::Failure => {
            let failures = health.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            if failures >= detection.consecutive_5xx && !health.is_ejected() {
                let members = cluster.members();
                if eject(&members, endpoint, detection) {
                    cluster.load.ejections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        cluster = %cluster.name(),
                        endpoint = %endpoint.address,
                        failures,
                        "endpoint ejected by outlier detection"
                    );
                }
            }
        }
    }
}

/// Starts the active health checker of a cluster that has one. It probes every endpoint each
/// `interval` (`no_traffic_interval` until the cluster has had traffic) and ends when the
/// cluster is dropped.
pub(super) fn spawn_checker(
    config: &Cluster,
    cluster: Weak<UpstreamCluster>,
) -> Option<JoinHandle<()>> {
    let check = config.health_check.clone()?;
    Some(tokio::spawn(check_forever(cluster, check)))
}

/// One endpoint's probe state, kept by the checker task: a connection reused across probes,
/// as Envoy's checker keeps one, and the current streak.
struct Prober {
    client: Client<EndpointConnector, Full<Bytes>>,
    failures: u32,
    successes: u32,
}

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeResult {
    /// An expected status.
    Passed,
    /// Another status: the endpoint answers, wrongly; unhealthy at once.
    WrongStatus,
    /// No answer in time, or no connection: counts towards `unhealthy_threshold`.
    NoAnswer,
}

async fn check_forever(cluster: Weak<UpstreamCluster>, check: HealthCheck) {
    let mut probers: HashMap<SocketAddr, Prober> = HashMap::new();
    loop {
        let Some(strong) = cluster.upgrade() else {
            return;
        };
        let members = strong.members();
        let host = check
            .host
            .clone()
            .unwrap_or_else(|| strong.config.name.clone());
        let interval = if strong.has_had_traffic() {
            check.interval
        } else {
            check.no_traffic_interval
        };
        probers.retain(|address, _| members.endpoints.iter().any(|e| e.address == *address));
        for endpoint in &members.endpoints {
            probers.entry(endpoint.address).or_insert_with(|| Prober {
                client: probe_client(&strong, endpoint.address, &check),
                failures: 0,
                successes: 0,
            });
        }
        drop(strong);

        let mut probes = tokio::task::JoinSet::new();
        for endpoint in &members.endpoints {
            let Some(prober) = probers.get(&endpoint.address) else {
                continue;
            };
            let client = prober.client.clone();
            let check = check.clone();
            let host = host.clone();
            let endpoint = Arc::clone(endpoint);
            probes.spawn(async move {
                let result = probe(&client, &check, &host).await;
                (endpoint, result)
            });
        }
        for (endpoint, result) in probes.join_all().await {
            let Some(prober) = probers.get_mut(&endpoint.address) else {
                continue;
            };
            apply_probe(&endpoint, prober, &check, result);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Updates an endpoint's health from one probe, as Envoy's HTTP health checker does.
fn apply_probe(endpoint: &Endpoint, prober: &mut Prober, check: &HealthCheck, result: ProbeResult) {
    let health = &endpoint.health;
    match result {
        ProbeResult::Passed => {
            prober.failures = 0;
            prober.successes += 1;
            let was_unhealthy = health.failed_check.load(Ordering::Relaxed);
            // A new endpoint's first pass makes it healthy; a failed one needs the threshold.
            let first = health.checked.swap(true, Ordering::Relaxed);
            if was_unhealthy && (!first || prober.successes >= check.healthy_threshold) {
                health.failed_check.store(false, Ordering::Relaxed);
                tracing::info!(endpoint = %endpoint.address, "endpoint passed health checks");
            }
            // A passed active check returns an ejected endpoint at once (Envoy's
            // `successful_active_health_check_uneject_host`).
            health.uneject();
        }
        ProbeResult::WrongStatus | ProbeResult::NoAnswer => {
            prober.successes = 0;
            prober.failures += 1;
            health.checked.store(true, Ordering::Relaxed);
            let unhealthy_now =
                result == ProbeResult::WrongStatus || prober.failures >= check.unhealthy_threshold;
            if unhealthy_now && !health.failed_check.swap(true, Ordering::Relaxed) {
                tracing::warn!(endpoint = %endpoint.address, ?result, "endpoint failed health checks");
            }
        }
    }
}

/// A client for one endpoint's probes: its own connection (outside the cluster's pool and
/// circuit breakers, as Envoy's checker has its own), in the check's HTTP version.
fn probe_client(
    cluster: &UpstreamCluster,
    address: SocketAddr,
    check: &HealthCheck,
) -> Client<EndpointConnector, Full<Bytes>> {
    let connector = EndpointConnector::new(
        address,
        cluster.config.connect_timeout,
        cluster.tls.clone(),
        Arc::new(ConnectionCount::new(u32::MAX, 0)),
    );
    client_builder(check.protocol)
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// One health check request.
async fn probe(
    client: &Client<EndpointConnector, Full<Bytes>>,
    check: &HealthCheck,
    host: &str,
) -> ProbeResult {
    let http2 = check.protocol == UpstreamProtocol::Http2;
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query(check.path.as_str())
        .build()
    else {
        return ProbeResult::NoAnswer;
    };
    let mut request = Request::get(uri);
    if http2 {
        request = request.version(hyper::Version::HTTP_2);
    } else {
        request = request.header(hyper::header::HOST, host);
    }
    let Ok(request) = request
        .header(hyper::header::USER_AGENT, "Tollgate/HC")
        .body(Full::new(Bytes::new()))
    else {
        return ProbeResult::NoAnswer;
    };
    match tokio::time::timeout(check.timeout, client.request(request)).await {
        Ok(Ok(response)) if check.is_expected(response.status().as_u16()) => ProbeResult::Passed,
        Ok(Ok(_)) => ProbeResult::WrongStatus,
        _ => ProbeResult::NoAnswer,
    }
}

mod verify {
    //! Upstream certificate checks as Envoy makes them: none without a validation context;
    //! with one, the chain must lead to a trusted CA, and the name is checked only against
    //! `subject_alt_names` (never against the SNI).

    use std::sync::Arc;

    use tokio_rustls::rustls::CertificateError;
    use tokio_rustls::rustls::client::WebPkiServerVerifier;

    use tokio_rustls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tokio_rustls::rustls::crypto::{
        WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
    };
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{DigitallySignedStruct, Error, SignatureScheme};

    /// Chain checked against the trust anchors; name checked only against the configured SANs.
    #[derive(Debug)]
    pub(super) struct EnvoyVerifier {
        webpki: Arc<WebPkiServerVerifier>,
        subject_alt_names: Vec<String>,
    }

    impl EnvoyVerifier {
        pub(super) fn new(
            webpki: Arc<WebPkiServerVerifier>,
            subject_alt_names: Vec<String>,
        ) -> Self {
            Self {
                webpki,
                subject_alt_names,
            }
        }
    }

    impl ServerCertVerifier for EnvoyVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            let name_mismatch = |e: &Error| {
                matches!(
                    e,
                    Error::InvalidCertificate(
                        CertificateError::NotValidForName
                            | CertificateError::NotValidForNameContext { .. }
                    )
                )
            };
            if self.subject_alt_names.is_empty() {
                // rustls checks the chain before the name: a name mismatch means the chain is
                // good, and Envoy checks no name here.
                let placeholder = ServerName::try_from("upstream.invalid")
                    .map_err(|_| Error::General("placeholder name".into()))?;
                return match self.webpki.verify_server_cert(
                    end_entity,
                    intermediates,
                    &placeholder,
                    ocsp_response,
                    now,
                ) {
                    Err(e) if name_mismatch(&e) => Ok(ServerCertVerified::assertion()),
                    other => other,
                };
            }
            let mut last = Error::InvalidCertificate(CertificateError::NotValidForName);
            for san in &self.subject_alt_names {
                let Ok(name) = ServerName::try_from(san.as_str()) else {
                    continue;
                };
                match self.webpki.verify_server_cert(
                    end_entity,
                    intermediates,
                    &name,
                    ocsp_response,
                    now,
                ) {
                    Ok(verified) => return Ok(verified),
                    Err(e) if name_mismatch(&e) => last = e,
                    Err(e) => return Err(e),
                }
            }
            Err(last)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.webpki.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.webpki.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.webpki.supported_verify_schemes()
        }
    }

    /// Accepts any certificate, but still checks the handshake signatures.
    #[derive(Debug)]
    pub(super) struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

    impl AcceptAnyCertificate {
        pub(super) fn new() -> Self {
            Self(
                tokio_rustls::rustls::crypto::ring::default_provider()
                    .signature_verification_algorithms,
            )
        }
    }

    impl ServerCertVerifier for AcceptAnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(message, cert, dss, &self.0)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.0)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_schemes()
        }
    }
}
