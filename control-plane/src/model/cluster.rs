//! Upstream clusters: where routes send traffic, and how it is balanced.

use std::collections::HashSet;
use std::net::IpAddr;

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
