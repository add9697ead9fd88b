//! Listeners: the addresses proxies accept traffic on.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// An address and port that proxies listen on; every route is served on every listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name; also the name of the listener's route table in xDS.
    #[serde(default)]
    pub name: String,
    /// IP address to bind, e.g. `0.0.0.0`.
    #[serde(default = "default_address")]
    pub address: String,
    /// TCP port to bind.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// Only proxies whose node cluster is this get the listener; all proxies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cluster: Option<String>,
    /// Terminate TLS with these certificates (chosen by SNI); plain HTTP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Write one JSON line per request here; no access log when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// How many proxies in front of this listener (load balancers, CDNs) append to
    /// `x-forwarded-for`: the client address, for IP filters and logs, is the entry that many
    /// hops back. 0 (the default) uses the peer address, which clients cannot forge.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schema(maximum = 10)]
    pub trusted_proxy_hops: u32,
    /// Policies enforced on every route served by this listener (names), before the
    /// route's own. A route's CORS policy replaces the listener's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// A listener's access log: one JSON line per request (time, request id, method, host, path,
/// protocol, status, bytes in and out, duration, upstream address, route, cluster). Header
/// values other than the request id and host are never logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, or an absolute file path (opened for appending, created if missing).
    pub path: String,
    /// Log the path with its query string; off by default, as queries may carry secrets.
    #[serde(default)]
    pub include_query: bool,
}

/// The longest access log path accepted, in bytes (Linux's `PATH_MAX`).
const MAX_ACCESS_LOG_PATH: usize = 4096;

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate names. A client's SNI picks the certificate whose names match it; the first
    /// certificate serves clients without SNI or with an unknown name.
    pub certificates: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_address() -> String {
    "0.0.0.0".to_owned()
}

impl Listener {
    /// Whether the two listeners would try to bind the same socket on some proxy: same port,
    /// overlapping addresses (a wildcard address overlaps every address of its family), and
    /// node clusters that can both apply to one proxy.
    pub fn binds_same_as(&self, other: &Listener) -> bool {
        let (Ok(a), Ok(b)) = (
            self.address.parse::<IpAddr>(),
            other.address.parse::<IpAddr>(),
        ) else {
            return false;
        };
        let addresses_overlap =
            a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()));
        let nodes_overlap = match (&self.node_cluster, &other.node_cluster) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        };
        self.port == other.port && addresses_overlap && nodes_overlap
    }

    pub(super) fn validate(&self) -> Result<(), ValidationError> {
        if self.address.parse::<IpAddr>().is_err() {
            return Err(ValidationError::new(
                "address",
                format!("{:?} is not an IP address", self.address),
            ));
        }
        if self.port == 0 {
            return Err(ValidationError::new("port", "must be between 1 and 65535"));
        }
        if let Some(tls) = &self.tls {
            if tls.certificates.is_empty() {
                return Err(ValidationError::new(
                    "tls.certificates",
                    "must name at least one certificate",
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, name) in tls.certificates.iter().enumerate() {
                super::validate_name(name).map_err(|e| {
                    ValidationError::new(format!("tls.certificates[{i}]"), e.message)
                })?;
                if !seen.insert(name) {
                    return Err(ValidationError::new(
                        format!("tls.certificates[{i}]"),
                        format!("duplicate certificate {name}"),
                    ));
                }
            }
        }
        if let Some(log) = &self.access_log {
            log.validate()?;
        }
        super::policy::validate_policy_names(&self.policies)?;
        if self.trusted_proxy_hops > 10 {
            return Err(ValidationError::new(
                "trusted_proxy_hops",
                "must be at most 10",
            ));
        }
        if let Some(cluster) = &self.node_cluster
            && (cluster.is_empty() || cluster.len() > 128)
        {
            return Err(ValidationError::new(
                "node_cluster",
                "must be between 1 and 128 characters",
            ));
        }
        Ok(())
    }
}

impl AccessLog {
    /// Whether the log goes to the process's standard output rather than a file.
    pub fn is_stdout(&self) -> bool {
        self.path == "stdout"
    }

    fn validate(&self) -> Result<(), ValidationError> {
        let err = |m: &str| Err(ValidationError::new("access_log.path", m));
        if self.path.len() > MAX_ACCESS_LOG_PATH {
            return err("must be at most 4096 bytes");
        }
        if self.path.chars().any(char::is_control) {
            return err("must not contain control characters");
        }
        if !self.is_stdout() && !self.path.starts_with('/') {
            return err("must be \"stdout\" or an absolute file path");
        }
        Ok(())
    }
}
