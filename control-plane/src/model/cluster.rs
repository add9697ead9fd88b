//! Upstream clusters: where routes send traffic, how it is balanced, how endpoints are checked
//! for health, and how they are reached (plaintext or TLS).

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::Range;

use rustls::pki_types::pem::{PemObject as _, SectionKind};
use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A named group of upstream endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name; routes refer to it.
    #[serde(default)]
    pub name: String,
    /// The endpoints traffic is spread over. May be empty (requests then get 503).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// How requests are spread over the endpoints.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Time allowed to open a connection to an endpoint.
    #[serde(default = "default_connect_timeout_ms")]
    #[schema(minimum = 1, maximum = 600_000, default = 5000)]
    pub connect_timeout_ms: u32,
    /// Speak HTTP/2 (prior knowledge, or ALPN with TLS) to the endpoints.
    #[serde(default)]
    pub http2: bool,
    /// Active health checking: each endpoint is probed with an HTTP request, and endpoints that
    /// fail get no traffic until they pass again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive health checking: an endpoint that answers with consecutive 5xx (or cannot be
    /// reached) is ejected for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Limits on the work in flight to the cluster; past them, requests fail fast with 503.
    /// Without it, Envoy's defaults apply (1024 connections, pending and active requests, 3
    /// retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Reach the endpoints over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

fn default_connect_timeout_ms() -> u32 {
    5_000
}

/// One upstream address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// An IP address or a DNS name.
    pub address: String,
    /// TCP port.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// Relative share of traffic, 1 to 128.
    #[serde(default = "default_weight")]
    #[schema(minimum = 1, maximum = 128, default = 1)]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Active HTTP health checking of every endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// The path requested (`GET`), starting with `/`; may carry a query.
    pub path: String,
    /// The `Host` header sent; the cluster's name when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Time between two probes of one endpoint, in milliseconds.
    #[serde(default = "default_hc_interval_ms")]
    #[schema(minimum = 100, maximum = 3_600_000, default = 5000)]
    pub interval_ms: u32,
    /// Time a probe may take before it counts as failed, in milliseconds.
    #[serde(default = "default_hc_timeout_ms")]
    #[schema(minimum = 1, maximum = 600_000, default = 1000)]
    pub timeout_ms: u32,
    /// Consecutive passed probes that make an unhealthy endpoint healthy again (a new endpoint
    /// needs one).
    #[serde(default = "default_healthy_threshold")]
    #[schema(minimum = 1, maximum = 100, default = 1)]
    pub healthy_threshold: u32,
    /// Consecutive failed probes (timeouts, connection failures) that make an endpoint
    /// unhealthy. A response with an unexpected status makes it unhealthy at once.
    #[serde(default = "default_unhealthy_threshold")]
    #[schema(minimum = 1, maximum = 100, default = 2)]
    pub unhealthy_threshold: u32,
    /// The statuses that pass (100 to 599); any 2xx when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u16>,
}

fn default_hc_interval_ms() -> u32 {
    5_000
}

fn default_hc_timeout_ms() -> u32 {
    1_000
}

fn default_healthy_threshold() -> u32 {
    1
}

fn default_unhealthy_threshold() -> u32 {
    2
}

/// Outlier detection by consecutive errors: an endpoint that gives `consecutive_5xx` 5xx
/// responses (or connection failures, timeouts, resets) in a row is ejected for
/// `base_ejection_time_ms` times the number of times it has been ejected (at most 300 s or the
/// base time, whichever is longer). No other detector (success rate, failure percentage,
/// gateway errors) is enabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses (or local failures) that eject an endpoint.
    #[serde(default = "default_consecutive_5xx")]
    #[schema(minimum = 1, maximum = 1000, default = 5)]
    pub consecutive_5xx: u32,
    /// Time between two sweeps that eject and return endpoints, in milliseconds.
    #[serde(default = "default_od_interval_ms")]
    #[schema(minimum = 100, maximum = 3_600_000, default = 10_000)]
    pub interval_ms: u32,
    /// How long an endpoint is ejected the first time, in milliseconds.
    #[serde(default = "default_base_ejection_time_ms")]
    #[schema(minimum = 100, maximum = 3_600_000, default = 30_000)]
    pub base_ejection_time_ms: u32,
    /// The largest share of the cluster's endpoints ejected at once, in percent, counting the
    /// one about to be ejected: with 10, a cluster of fewer than 10 endpoints ejects none.
    #[serde(default = "default_max_ejection_percent")]
    #[schema(minimum = 0, maximum = 100, default = 10)]
    pub max_ejection_percent: u32,
}

fn default_consecutive_5xx() -> u32 {
    5
}

fn default_od_interval_ms() -> u32 {
    10_000
}

fn default_base_ejection_time_ms() -> u32 {
    30_000
}

fn default_max_ejection_percent() -> u32 {
    10
}

/// Circuit-breaker thresholds, for the whole cluster (all endpoints together).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Connections open to the cluster's endpoints.
    #[serde(default = "default_breaker_limit")]
    #[schema(minimum = 1, default = 1024)]
    pub max_connections: u32,
    /// Requests waiting for a connection.
    #[serde(default = "default_breaker_limit")]
    #[schema(minimum = 1, default = 1024)]
    pub max_pending_requests: u32,
    /// Requests in flight.
    #[serde(default = "default_breaker_limit")]
    #[schema(minimum = 1, default = 1024)]
    pub max_requests: u32,
    /// Retries in flight.
    #[serde(default = "default_max_retries")]
    #[schema(minimum = 1, default = 3)]
    pub max_retries: u32,
}

fn default_breaker_limit() -> u32 {
    1024
}

fn default_max_retries() -> u32 {
    3
}

/// TLS to the endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The server name sent (SNI). With `verify`, the endpoints' certificate must also be
    /// valid for this name. No SNI is sent when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM bundle of the CA certificates the endpoints' certificates must chain to. Required
    /// with `verify`. Certificates only: it is returned by reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<String>,
    /// Check the endpoints' certificates. `false` accepts any certificate, which is insecure:
    /// anyone on the path can impersonate the endpoints.
    #[serde(default = "default_verify")]
    #[schema(default = true)]
    pub verify: bool,
}

fn default_verify() -> bool {
    true
}

/// Load-balancing algorithms, named as Envoy names them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices on outstanding requests.
    LeastRequest,
    /// Uniformly random, weighted.
    Random,
    /// Consistent hashing on a ring.
    RingHash,
    /// Maglev consistent hashing.
    Maglev,
}

/// Upper bound on an endpoint's weight (Envoy accepts larger, but ring-hash and Maglev tables
/// grow with the weight sum, and nobody needs more resolution than this).
pub const MAX_ENDPOINT_WEIGHT: u32 = 128;
/// Upper bound on the number of endpoints of one cluster.
pub const MAX_ENDPOINTS: usize = 10_000;
/// The largest PEM bundle accepted as `tls.trusted_ca` (a full public CA bundle is ~220 KiB).
pub const MAX_TRUSTED_CA_BYTES: usize = 512 * 1024;

impl Cluster {
    pub(super) fn validate(&self) -> Result<(), ValidationError> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(ValidationError::new(
                "endpoints",
                format!("at most {MAX_ENDPOINTS} endpoints"),
            ));
        }
        if self.connect_timeout_ms == 0 || self.connect_timeout_ms > 600_000 {
            return Err(ValidationError::new(
                "connect_timeout_ms",
                "must be between 1 and 600000",
            ));
        }
        let mut seen = HashSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            endpoint
                .validate()
                .map_err(|e| e.within(&format!("endpoints[{i}]")))?;
            if !seen.insert((endpoint.address.to_ascii_lowercase(), endpoint.port)) {
                return Err(ValidationError::new(
                    format!("endpoints[{i}]"),
                    format!("duplicate endpoint {}:{}", endpoint.address, endpoint.port),
                ));
            }
        }
        if let Some(health_check) = &self.health_check {
            health_check
                .validate()
                .map_err(|e| e.within("health_check"))?;
        }
        if let Some(outlier_detection) = &self.outlier_detection {
            outlier_detection
                .validate()
                .map_err(|e| e.within("outlier_detection"))?;
        }
        if let Some(circuit_breakers) = &self.circuit_breakers {
            circuit_breakers
                .validate()
                .map_err(|e| e.within("circuit_breakers"))?;
        }
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| e.within("tls"))?;
        }
        Ok(())
    }

    /// Whether every endpoint is an IP address. Such clusters are served over EDS; clusters
    /// with DNS names are resolved by the proxy itself (Envoy's `STRICT_DNS`), because EDS
    /// carries only IP addresses.
    pub fn all_endpoints_are_ips(&self) -> bool {
        self.endpoints
            .iter()
            .all(|e| e.address.parse::<IpAddr>().is_ok())
    }
}

impl Endpoint {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.port == 0 {
            return Err(ValidationError::new("port", "must be between 1 and 65535"));
        }
        if self.weight == 0 || self.weight > MAX_ENDPOINT_WEIGHT {
            return Err(ValidationError::new(
                "weight",
                format!("must be between 1 and {MAX_ENDPOINT_WEIGHT}"),
            ));
        }
        if self.address.parse::<IpAddr>().is_err() && !is_dns_name(&self.address) {
            return Err(ValidationError::new(
                "address",
                format!("{:?} is neither an IP address nor a DNS name", self.address),
            ));
        }
        Ok(())
    }
}

/// `value` lies in `min..=max`, or the error names `field`.
fn in_range(field: &str, value: u32, min: u32, max: u32) -> Result<(), ValidationError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("must be between {min} and {max}"),
        ))
    }
}

impl HealthCheck {
    fn validate(&self) -> Result<(), ValidationError> {
        if !self.path.starts_with('/') {
            return Err(ValidationError::new("path", "must start with '/'"));
        }
        if self.path.len() > 2048 {
            return Err(ValidationError::new(
                "path",
                "must be at most 2048 characters",
            ));
        }
        // Visible ASCII only: the path goes verbatim into the request line. The characters
        // that a URI must escape (and that the edge proxy's HTTP stack refuses) are refused too.
        if !self
            .path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"#\"<>`".contains(&b))
        {
            return Err(ValidationError::new(
                "path",
                "must be visible ASCII without '#', '\"', '<', '>' or '`' (percent-encode them)",
            ));
        }
        if let Some(host) = &self.host
            && !is_host_header(host)
        {
            return Err(ValidationError::new(
                "host",
                format!("{host:?} is not a host name, optionally with a port"),
            ));
        }
        in_range("interval_ms", self.interval_ms, 100, 3_600_000)?;
        in_range("timeout_ms", self.timeout_ms, 1, 600_000)?;
        in_range("healthy_threshold", self.healthy_threshold, 1, 100)?;
        in_range("unhealthy_threshold", self.unhealthy_threshold, 1, 100)?;
        let mut seen = HashSet::new();
        for (i, status) in self.expected_statuses.iter().enumerate() {
            let field = format!("expected_statuses[{i}]");
            if !(100..=599).contains(status) {
                return Err(ValidationError::new(field, "must be between 100 and 599"));
            }
            if !seen.insert(status) {
                return Err(ValidationError::new(
                    field,
                    format!("duplicate status {status}"),
                ));
            }
        }
        Ok(())
    }

    /// The statuses that pass, as sorted half-open ranges (Envoy's form): `expected_statuses`
    /// with neighbours merged, or `200..300` when it is empty.
    #[allow(clippy::single_range_in_vec_init)] // a list of one status range, not of statuses
    pub fn expected_ranges(&self) -> Vec<Range<u32>> {
        if self.expected_statuses.is_empty() {
            return vec![200..300];
        }
        let mut statuses: Vec<u32> = self
            .expected_statuses
            .iter()
            .map(|&s| u32::from(s))
            .collect();
        statuses.sort_unstable();
        statuses.dedup();
        let mut ranges: Vec<Range<u32>> = Vec::new();
        for status in statuses {
            match ranges.last_mut() {
                Some(range) if range.end == status => range.end = status + 1,
                _ => ranges.push(status..status + 1),
            }
        }
        ranges
    }
}

impl OutlierDetection {
    fn validate(&self) -> Result<(), ValidationError> {
        in_range("consecutive_5xx", self.consecutive_5xx, 1, 1000)?;
        in_range("interval_ms", self.interval_ms, 100, 3_600_000)?;
        in_range(
            "base_ejection_time_ms",
            self.base_ejection_time_ms,
            100,
            3_600_000,
        )?;
        in_range("max_ejection_percent", self.max_ejection_percent, 0, 100)
    }
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: default_breaker_limit(),
            max_pending_requests: default_breaker_limit(),
            max_requests: default_breaker_limit(),
            max_retries: default_max_retries(),
        }
    }
}

impl CircuitBreakers {
    fn validate(&self) -> Result<(), ValidationError> {
        for (field, value) in [
            ("max_connections", self.max_connections),
            ("max_pending_requests", self.max_pending_requests),
            ("max_requests", self.max_requests),
            ("max_retries", self.max_retries),
        ] {
            if value == 0 {
                return Err(ValidationError::new(field, "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl UpstreamTls {
    fn validate(&self) -> Result<(), ValidationError> {
        // A DNS name whose last label is not all digits (so not an IPv4 address either):
        // TLS server names cannot be addresses.
        if let Some(sni) = &self.sni
            && !(is_dns_name(sni)
                && sni
                    .rsplit('.')
                    .next()
                    .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit())))
        {
            return Err(ValidationError::new(
                "sni",
                format!("{sni:?} is not a DNS name"),
            ));
        }
        match (&self.trusted_ca, self.verify) {
            (None, true) => Err(ValidationError::new(
                "trusted_ca",
                "is required to verify the endpoints' certificates (set verify to false to \
                 accept any certificate, which is insecure)",
            )),
            (Some(_), false) => Err(ValidationError::new(
                "trusted_ca",
                "must not be set when verify is false (no certificate is checked)",
            )),
            (Some(pem), true) => validate_ca_bundle(pem)
                .map(|_| ())
                .map_err(|m| ValidationError::new("trusted_ca", m)),
            (None, false) => Ok(()),
        }
    }
}

/// Checks that `pem` holds one or more readable X.509 certificates and nothing else (a private
/// key pasted by mistake would be served to anyone who can read the cluster). Returns how many.
pub(super) fn validate_ca_bundle(pem: &str) -> Result<usize, String> {
    if pem.len() > MAX_TRUSTED_CA_BYTES {
        return Err(format!(
            "must be at most {} KiB",
            MAX_TRUSTED_CA_BYTES / 1024
        ));
    }
    let mut count = 0;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) = section.map_err(|e| format!("is not PEM: {e}"))?;
        if kind != SectionKind::Certificate {
            return Err(format!(
                "holds a {kind:?} block; only CERTIFICATE blocks belong here"
            ));
        }
        count += 1;
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("certificate {count} is unreadable: {e}"))?;
    }
    if count == 0 {
        return Err("holds no CERTIFICATE block".to_owned());
    }
    Ok(count)
}

/// A `Host` header value: a DNS name or an IP address, optionally with a port (IPv6 in
/// brackets).
fn is_host_header(value: &str) -> bool {
    let (host, port) = match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, Some(port)),
        _ => (value, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => is_dns_name(host) || host.parse::<std::net::Ipv4Addr>().is_ok(),
    };
    port_ok && host_ok
}

/// A DNS host name as RFC 1123 allows it (letters, digits, hyphens; dot-separated labels).
pub(crate) fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health_check(statuses: &[u16]) -> HealthCheck {
        serde_json::from_value(serde_json::json!({"path": "/", "expected_statuses": statuses}))
            .unwrap()
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of status ranges
    fn expected_statuses_become_merged_half_open_ranges() {
        assert_eq!(health_check(&[]).expected_ranges(), vec![200..300]);
        assert_eq!(
            health_check(&[503, 200, 202, 201, 204]).expected_ranges(),
            vec![200..203, 204..205, 503..504]
        );
        assert_eq!(health_check(&[599]).expected_ranges(), vec![599..600]);
    }

    #[test]
    fn host_headers_are_names_or_addresses_with_an_optional_port() {
        for good in [
            "users.internal",
            "users.internal:8080",
            "10.0.0.1:80",
            "[::1]:443",
            "[::1]",
        ] {
            assert!(is_host_header(good), "{good}");
        }
        for bad in [
            "",
            "a b",
            "users:0",
            "users:http",
            "::1",
            "[::1",
            "users.internal:",
        ] {
            assert!(!is_host_header(bad), "{bad}");
        }
    }

    #[test]
    fn server_names_are_dns_names_not_addresses() {
        let tls = |sni: &str| UpstreamTls {
            sni: Some(sni.to_owned()),
            trusted_ca: None,
            verify: false,
        };
        assert!(tls("users.internal").validate().is_ok());
        assert!(tls("1password.example").validate().is_ok());
        for bad in ["10.0.0.1", "a.123", "::1", "bad name", ""] {
            assert_eq!(tls(bad).validate().unwrap_err().field, "sni", "{bad}");
        }
    }

    #[test]
    fn ca_bundles_hold_certificates_only() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example.com".to_owned()]).unwrap();
        let pem = ca.cert.pem();
        assert_eq!(validate_ca_bundle(&format!("{pem}{pem}")), Ok(2));
        assert!(validate_ca_bundle("").is_err());
        let with_key = format!("{pem}{}", ca.signing_key.serialize_pem());
        assert!(
            validate_ca_bundle(&with_key)
                .unwrap_err()
                .contains("PrivateKey")
        );
    }
}
