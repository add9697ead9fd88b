//! The proxy's whole configuration at one moment, and the state it is assembled from.
//!
//! This sits between the xDS client and the data path. The client validates each resource with
//! [`crate::config`] and hands the accepted ones to a [`SnapshotBuilder`], which keeps the latest
//! of each type by name. Once every route table and secret (certificate, API-key table) the
//! listeners name, and every endpoint set the EDS clusters name, has arrived, [`SnapshotBuilder::complete`] yields one
//! immutable [`Snapshot`]: what a request reads, once, from start to finish.
//!
//! Everything here is pure: no I/O, no clocks, no locks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::config::cluster::{Cluster, Endpoints};
use crate::config::listener::{ApiKeyTable, Listener, Secret, TlsCertificate};
use crate::config::route::RouteTable;

/// The xDS resource types the proxy consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// CDS: upstream clusters.
    Cluster,
    /// EDS: the endpoints of EDS clusters.
    Endpoints,
    /// SDS: TLS certificates and API-key tables.
    Secret,
    /// LDS: listeners.
    Listener,
    /// RDS: route tables.
    RouteConfig,
}

impl Kind {
    /// Every kind, in the order the control plane pushes them (clusters before listeners).
    pub const ALL: [Kind; 5] = [
        Self::Cluster,
        Self::Endpoints,
        Self::Secret,
        Self::Listener,
        Self::RouteConfig,
    ];

    /// The type URL the kind is subscribed with.
    pub fn type_url(self) -> &'static str {
        use tollgate_proto::type_url;
        match self {
            Self::Cluster => type_url::CLUSTER,
            Self::Endpoints => type_url::ENDPOINT,
            Self::Secret => type_url::SECRET,
            Self::Listener => type_url::LISTENER,
            Self::RouteConfig => type_url::ROUTE,
        }
    }

    /// The kind for a type URL, if the proxy consumes it.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Whether the kind is subscribed as a whole (LDS, CDS) rather than by name.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }

    /// A short name for logs and status.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Cluster => "clusters",
            Self::Endpoints => "endpoints",
            Self::Secret => "secrets",
            Self::Listener => "listeners",
            Self::RouteConfig => "routes",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// One validated resource, ready to be held by a [`SnapshotBuilder`].
// Short-lived (one per resource of a response, moved straight into the builder), so boxing the
// larger variants would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Accepted {
    /// An LDS listener.
    Listener(Listener),
    /// An RDS route table.
    RouteTable(RouteTable),
    /// A CDS cluster.
    Cluster(Cluster),
    /// An EDS assignment.
    Endpoints(Endpoints),
    /// An SDS secret.
    Secret(Secret),
}

impl Accepted {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Listener(_) => Kind::Listener,
            Self::RouteTable(_) => Kind::RouteConfig,
            Self::Cluster(_) => Kind::Cluster,
            Self::Endpoints(_) => Kind::Endpoints,
            Self::Secret(_) => Kind::Secret,
        }
    }

    /// The name the resource is known by in xDS.
    pub fn name(&self) -> &str {
        match self {
            Self::Listener(l) => l.name(),
            Self::RouteTable(r) => r.name(),
            Self::Cluster(c) => &c.name,
            Self::Endpoints(e) => &e.cluster_name,
            Self::Secret(s) => s.name(),
        }
    }
}

/// The whole validated configuration, immutable; the data path reads one per request.
///
/// Listeners and route tables are shared with the builder (`Arc`), since building them again
/// per snapshot would recompile regexes and re-index hosts.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The control plane's `system_version_info` of the latest response this snapshot includes.
    pub version: String,
    /// Each resource's version (content hash from the control plane), by kind and name.
    pub versions: BTreeMap<Kind, BTreeMap<String, String>>,
    /// Listeners by name.
    pub listeners: BTreeMap<String, Arc<Listener>>,
    /// Route tables by name.
    pub route_tables: BTreeMap<String, Arc<RouteTable>>,
    /// Clusters by name.
    pub clusters: BTreeMap<String, Cluster>,
    /// EDS assignments by service name.
    pub endpoints: BTreeMap<String, Endpoints>,
    /// TLS certificates by name.
    pub certificates: BTreeMap<String, TlsCertificate>,
    /// API-key tables by name (shared: a table is decoded and indexed once per version).
    pub api_key_tables: BTreeMap<String, Arc<ApiKeyTable>>,
}

/// Why the held resources do not make a complete [`Snapshot`] yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error(
    "incomplete configuration: awaiting {awaiting:?}, route configs {route_configs:?}, \
     secrets {secrets:?}, endpoints {endpoints:?}"
)]
pub struct Missing {
    /// Wildcard kinds (LDS, CDS) that have not had their first response yet.
    pub awaiting: BTreeSet<Kind>,
    /// Route tables named by listeners and not held.
    pub route_configs: BTreeSet<String>,
    /// Secrets named by listeners and not held (or held as the other kind of secret).
    pub secrets: BTreeSet<String>,
    /// EDS assignments named by clusters and not held.
    pub endpoints: BTreeSet<String>,
}

impl Missing {
    fn is_empty(&self) -> bool {
        self.awaiting.is_empty()
            && self.route_configs.is_empty()
            && self.secrets.is_empty()
            && self.endpoints.is_empty()
    }
}

/// A held resource and its version.
#[derive(Debug)]
struct Held<T> {
    version: String,
    value: T,
}

/// The latest accepted resource of each type, by name; see the module docs.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    version: String,
    initialized: BTreeSet<Kind>,
    listeners: BTreeMap<String, Held<Arc<Listener>>>,
    route_tables: BTreeMap<String, Held<Arc<RouteTable>>>,
    clusters: BTreeMap<String, Held<Cluster>>,
    endpoints: BTreeMap<String, Held<Endpoints>>,
    secrets: BTreeMap<String, Held<Secret>>,
    generation: u64,
}

/// Inserts or replaces `name`; whether anything changed (same version: nothing did).
fn put<T>(map: &mut BTreeMap<String, Held<T>>, name: String, version: String, value: T) -> bool {
    if map.get(&name).is_some_and(|h| h.version == version) {
        return false;
    }
    map.insert(name, Held { version, value });
    true
}

fn versions_of<T>(map: &BTreeMap<String, Held<T>>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(name, held)| (name.clone(), held.version.clone()))
        .collect()
}

fn missing_from<T>(map: &BTreeMap<String, Held<T>>, wanted: BTreeSet<String>) -> BTreeSet<String> {
    wanted
        .into_iter()
        .filter(|n| !map.contains_key(n))
        .collect()
}

impl SnapshotBuilder {
    /// An empty builder: nothing held, LDS and CDS not yet received.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one accepted xDS response of `kind`: `updates` as `(version, resource)`, then
    /// `removed` by name. `version` is the response's `system_version_info`. Returns whether
    /// anything held changed; a wildcard kind counts as received either way.
    pub fn apply(
        &mut self,
        kind: Kind,
        version: &str,
        updates: Vec<(String, Accepted)>,
        removed: &[String],
    ) -> bool {
        let mut changed = self.initialized.insert(kind) && kind.is_wildcard();
        for (resource_version, resource) in updates {
            debug_assert_eq!(resource.kind(), kind);
            let name = resource.name().to_owned();
            changed |= match resource {
                Accepted::Listener(l) => put(&mut self.listeners, name, resource_version, l.into()),
                Accepted::RouteTable(r) => {
                    put(&mut self.route_tables, name, resource_version, r.into())
                }
                Accepted::Cluster(c) => put(&mut self.clusters, name, resource_version, c),
                Accepted::Endpoints(e) => put(&mut self.endpoints, name, resource_version, e),
                Accepted::Secret(s) => put(&mut self.secrets, name, resource_version, s),
            };
        }
        for name in removed {
            changed |= self.remove(kind, name);
        }
        if !version.is_empty() {
            self.version = version.to_owned();
        }
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Drops `name` of `kind`; whether it was held.
    pub fn remove(&mut self, kind: Kind, name: &str) -> bool {
        let removed = match kind {
            Kind::Listener => self.listeners.remove(name).is_some(),
            Kind::RouteConfig => self.route_tables.remove(name).is_some(),
            Kind::Cluster => self.clusters.remove(name).is_some(),
            Kind::Endpoints => self.endpoints.remove(name).is_some(),
            Kind::Secret => self.secrets.remove(name).is_some(),
        };
        if removed {
            self.generation += 1;
        }
        removed
    }

    /// Drops held resources of a named kind that nothing references any more (after the
    /// client unsubscribed from them); returns the names dropped.
    pub fn retain_wanted(&mut self, kind: Kind) -> Vec<String> {
        if kind.is_wildcard() {
            return Vec::new();
        }
        let wanted = self.wanted(kind);
        let stale: Vec<String> = self
            .versions(kind)
            .into_keys()
            .filter(|n| !wanted.contains(n))
            .collect();
        for name in &stale {
            self.remove(kind, name);
        }
        stale
    }

    /// The names of a named kind (RDS, SDS, EDS) that the held listeners and clusters need;
    /// empty for the wildcard kinds.
    pub fn wanted(&self, kind: Kind) -> BTreeSet<String> {
        let from_listeners =
            |pick: fn(crate::config::listener::References<'_>) -> BTreeSet<&str>| {
                self.listeners
                    .values()
                    .flat_map(|h| pick(h.value.references()))
                    .map(str::to_owned)
                    .collect()
            };
        match kind {
            Kind::RouteConfig => from_listeners(|r| r.route_configs),
            Kind::Secret => from_listeners(|r| r.secrets.union(&r.key_tables).copied().collect()),
            Kind::Endpoints => self
                .clusters
                .values()
                .filter_map(|h| h.value.eds_service_name())
                .map(str::to_owned)
                .collect(),
            Kind::Listener | Kind::Cluster => BTreeSet::new(),
        }
    }

    /// The version of every held resource of `kind`, by name: what a reconnecting client
    /// reports in `initial_resource_versions`.
    pub fn versions(&self, kind: Kind) -> BTreeMap<String, String> {
        match kind {
            Kind::Listener => versions_of(&self.listeners),
            Kind::RouteConfig => versions_of(&self.route_tables),
            Kind::Cluster => versions_of(&self.clusters),
            Kind::Endpoints => versions_of(&self.endpoints),
            Kind::Secret => versions_of(&self.secrets),
        }
    }

    /// The address of every held listener, by name.
    pub fn listener_addresses(&self) -> BTreeMap<String, std::net::SocketAddr> {
        self.listeners
            .iter()
            .map(|(name, held)| (name.clone(), held.value.address()))
            .collect()
    }

    /// A counter that moves whenever what is held changes, to publish only new snapshots.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The snapshot of what is held, if LDS and CDS have been received and every referenced
    /// route table, secret and EDS assignment is held; otherwise what is missing. A secret
    /// named as a certificate must be one, and one named as a key table must be one.
    pub fn complete(&self) -> Result<Snapshot, Missing> {
        let missing = Missing {
            awaiting: [Kind::Cluster, Kind::Listener]
                .into_iter()
                .filter(|k| !self.initialized.contains(k))
                .collect(),
            route_configs: missing_from(&self.route_tables, self.wanted(Kind::RouteConfig)),
            secrets: self.missing_secrets(),
            endpoints: missing_from(&self.endpoints, self.wanted(Kind::Endpoints)),
        };
        if !missing.is_empty() {
            return Err(missing);
        }
        let values = |kinds: &[Kind]| -> BTreeMap<Kind, BTreeMap<String, String>> {
            kinds.iter().map(|k| (*k, self.versions(*k))).collect()
        };
        Ok(Snapshot {
            version: self.version.clone(),
            versions: values(&Kind::ALL),
            listeners: self
                .listeners
                .iter()
                .map(|(n, h)| (n.clone(), Arc::clone(&h.value)))
                .collect(),
            route_tables: self
                .route_tables
                .iter()
                .map(|(n, h)| (n.clone(), Arc::clone(&h.value)))
                .collect(),
            clusters: self
                .clusters
                .iter()
                .map(|(n, h)| (n.clone(), h.value.clone()))
                .collect(),
            endpoints: self
                .endpoints
                .iter()
                .map(|(n, h)| (n.clone(), h.value.clone()))
                .collect(),
            certificates: self
                .secrets
                .iter()
                .filter_map(|(n, h)| match &h.value {
                    Secret::Tls(c) => Some((n.clone(), c.clone())),
                    Secret::ApiKeyTable { .. } => None,
                })
                .collect(),
            api_key_tables: self
                .secrets
                .iter()
                .filter_map(|(n, h)| match &h.value {
                    Secret::ApiKeyTable { table, .. } => Some((n.clone(), Arc::clone(table))),
                    Secret::Tls(_) => None,
                })
                .collect(),
        })
    }

    fn missing_secrets(&self) -> BTreeSet<String> {
        let mut missing = BTreeSet::new();
        for held in self.listeners.values() {
            let references = held.value.references();
            let tls = references.secrets.iter().map(|n| (*n, true));
            let tables = references.key_tables.iter().map(|n| (*n, false));
            for (name, is_tls) in tls.chain(tables) {
                let present = match self.secrets.get(name).map(|h| &h.value) {
                    Some(Secret::Tls(_)) => is_tls,
                    Some(Secret::ApiKeyTable { .. }) => !is_tls,
                    None => false,
                };
                if !present {
                    missing.insert(name.to_owned());
                }
            }
        }
        missing
    }
}

#[cfg(test)]
mod tests;
