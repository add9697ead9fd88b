//! The translator: a pure function from the store's model to Envoy v3 xDS resources.
//!
//! It sits between the change feed and the snapshot cache: no I/O, no locks, no clocks, so the
//! same store snapshot always yields byte-identical resources (and so identical versions).
//! This is the only module that knows how Envoy resources are shaped.

mod cluster;
mod listener;
mod policy;
mod rate_limit;
mod rbac;
mod route;

pub(crate) use policy::API_KEY_POLICIES_EXTENSION;
pub(crate) use rate_limit::{
    API_KEY_HASH_KEY, DOMAIN as RATE_LIMIT_DOMAIN, POLICY_KEY as RATE_LIMIT_POLICY_KEY,
    QUOTA_OUTCOME_KEY, REMOTE_ADDRESS_KEY, TIER_KEY as RATE_LIMIT_TIER_KEY,
};
pub(crate) use rbac::{CONSUMER_KEY, GROUPS_KEY, TIER_KEY};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha2::{Digest, Sha256};
use tollgate_proto::google::protobuf::Any;
use tollgate_proto::{envoy, type_url};

use crate::store::StoreSnapshot;

/// Which software a node runs, read from its `user_agent_name`; the translator may tailor its
/// output to it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Envoy (`user_agent_name: envoy`).
    Envoy,
    /// Tollgate's edge proxy (`user_agent_name: tollgate`).
    Tollgate,
    /// Anything else speaking xDS; it gets what Envoy gets.
    Other,
}

impl NodeKind {
    /// Reads the kind from a node's `user_agent_name`.
    pub fn from_user_agent(user_agent_name: &str) -> Self {
        match user_agent_name {
            "envoy" => Self::Envoy,
            "tollgate" => Self::Tollgate,
            _ => Self::Other,
        }
    }
}

/// The nodes that get identical resources: same kind, same node cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeGroup {
    /// What the nodes run.
    pub kind: NodeKind,
    /// The nodes' `node.cluster`; listeners with a `node_cluster` go only to that group.
    pub cluster: String,
}

/// The xDS resource types, in the order they are pushed: clusters, their endpoints and the
/// secrets listeners use before the listeners and routes that use them ("make before break").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// CDS.
    Cluster,
    /// EDS.
    Endpoint,
    /// SDS.
    Secret,
    /// LDS.
    Listener,
    /// RDS.
    Route,
}

impl ResourceType {
    /// All types, in push order.
    pub const ALL: [ResourceType; 5] = [
        Self::Cluster,
        Self::Endpoint,
        Self::Secret,
        Self::Listener,
        Self::Route,
    ];

    /// The type URL clients subscribe with.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Cluster => type_url::CLUSTER,
            Self::Endpoint => type_url::ENDPOINT,
            Self::Secret => type_url::SECRET,
            Self::Listener => type_url::LISTENER,
            Self::Route => type_url::ROUTE,
        }
    }

    /// The type for a type URL, if Tollgate serves it.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// A short plural name for APIs and logs.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Cluster => "clusters",
            Self::Endpoint => "endpoints",
            Self::Secret => "secrets",
            Self::Listener => "listeners",
            Self::Route => "routes",
        }
    }

    /// Whether clients may subscribe to all resources of the type at once (LDS, CDS);
    /// the others are always requested by name.
    pub fn is_wildcard_capable(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// One translated resource with its content version.
#[derive(Clone, PartialEq)]
pub struct XdsResource {
    /// Resource name.
    pub name: String,
    /// Content hash of the encoded resource: equal bytes, equal version.
    pub version: String,
    /// The encoded resource.
    pub body: Any,
}

impl fmt::Debug for XdsResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body may be a secret (SDS): show its size, never its bytes.
        f.debug_struct("XdsResource")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("type_url", &self.body.type_url)
            .field("bytes", &self.body.value.len())
            .finish()
    }
}

impl XdsResource {
    fn new(name: String, body: Any) -> Self {
        let digest = Sha256::digest(&body.value);
        Self {
            name,
            version: hex::encode(&digest[..8]),
            body,
        }
    }
}

/// A complete, internally consistent resource set for one node group at one store revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsSnapshot {
    /// The store revision this was built from.
    pub revision: u64,
    /// When that revision was committed, if by this process (carried, not read from a clock).
    pub committed_at: Option<std::time::Instant>,
    resources: [BTreeMap<String, XdsResource>; 5],
    /// Names each type's resources are referred to by from other resources (RDS and SDS names
    /// from listeners, EDS names from clusters, clusters from routes).
    referenced: [BTreeSet<String>; 5],
}

impl XdsSnapshot {
    /// The resources of one type, by name.
    pub fn resources(&self, ty: ResourceType) -> &BTreeMap<String, XdsResource> {
        &self.resources[ty.index()]
    }

    /// The names of one type that other resources refer to; a client that uses this snapshot
    /// must subscribe to them.
    pub fn referenced(&self, ty: ResourceType) -> &BTreeSet<String> {
        &self.referenced[ty.index()]
    }

    /// Confirms that every name referenced across types exists: RDS names used by listeners,
    /// EDS names used by clusters, clusters used by routes. As go-control-plane's
    /// `Snapshot.Consistent`.
    pub fn check_consistent(&self) -> Result<(), TranslateError> {
        for ty in [
            ResourceType::Cluster,
            ResourceType::Endpoint,
            ResourceType::Secret,
            ResourceType::Route,
        ] {
            if let Some(missing) = self
                .referenced(ty)
                .iter()
                .find(|name| !self.resources(ty).contains_key(*name))
            {
                return Err(TranslateError::Inconsistent {
                    ty,
                    name: missing.clone(),
                });
            }
        }
        Ok(())
    }

    fn insert(&mut self, ty: ResourceType, resource: XdsResource) {
        self.resources[ty.index()].insert(resource.name.clone(), resource);
    }

    /// Adds a cluster, and its endpoints when they travel over EDS.
    fn insert_cluster(&mut self, cluster: &crate::model::Cluster) {
        let (resource, assignment) = cluster::translate(cluster);
        if let Some(assignment) = assignment {
            self.refer(ResourceType::Endpoint, &cluster.name);
            self.insert(
                ResourceType::Endpoint,
                XdsResource::new(cluster.name.clone(), tollgate_proto::pack_any(&assignment)),
            );
        }
        self.insert(
            ResourceType::Cluster,
            XdsResource::new(cluster.name.clone(), tollgate_proto::pack_any(&resource)),
        );
    }

    fn refer(&mut self, ty: ResourceType, name: &str) {
        self.referenced[ty.index()].insert(name.to_owned());
    }
}

/// Why a store snapshot could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A resource refers to a name of another type that was not produced.
    #[error("inconsistent snapshot: {ty} {name} is referenced but missing")]
    Inconsistent {
        /// The type of the missing resource.
        ty: ResourceType,
        /// Its name.
        name: String,
    },
}

/// What the translator needs besides the store: how Envoy nodes reach the control plane's
/// own gRPC services, and the key API-key hashes are made with (for edge proxies, which check
/// keys themselves).
#[derive(Clone)]
pub struct TranslateContext {
    /// Host (IP address or DNS name) Envoy nodes reach the control plane's gRPC port at.
    pub grpc_host: String,
    /// That port.
    pub grpc_port: u16,
    /// The HMAC key of the API-key hashes.
    pub api_key_secret: std::sync::Arc<[u8]>,
}

impl fmt::Debug for TranslateContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TranslateContext")
            .field("grpc_host", &self.grpc_host)
            .field("grpc_port", &self.grpc_port)
            .field("api_key_secret", &"<redacted>")
            .finish()
    }
}

impl Default for TranslateContext {
    /// A control plane on `127.0.0.1:18000` with an empty API-key secret: for tests.
    fn default() -> Self {
        Self {
            grpc_host: "127.0.0.1".to_owned(),
            grpc_port: 18000,
            api_key_secret: std::sync::Arc::from(Vec::new()),
        }
    }
}

/// Builds a complete, internally consistent xDS resource set for one node group.
pub fn translate(
    store: &StoreSnapshot,
    node: &NodeGroup,
    context: &TranslateContext,
) -> Result<XdsSnapshot, TranslateError> {
    let mut out = XdsSnapshot {
        revision: store.revision,
        committed_at: store.committed_at,
        ..XdsSnapshot::default()
    };
    let jwks_clusters: Vec<_> = store
        .policies
        .values()
        .filter_map(|p| match p {
            crate::model::Policy::Jwt(jwt) => policy::jwks_cluster(jwt),
            _ => None,
        })
        .collect();
    for cluster in store.clusters.values().chain(&jwks_clusters) {
        out.insert_cluster(cluster);
    }
    let listeners: Vec<_> = store
        .listeners
        .values()
        .filter(|l| l.node_cluster.as_ref().is_none_or(|c| *c == node.cluster))
        .collect();
    let (mut uses_api_keys, mut uses_rate_limits) = (false, false);
    if !listeners.is_empty() {
        let mut routes: Vec<_> = store.routes.values().collect();
        routes.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        for route in &routes {
            for (_, cluster) in route.cluster_refs() {
                out.refer(ResourceType::Cluster, cluster);
            }
        }
        for listener in listeners {
            let mut filters = policy::ListenerFilters::default();
            let route_policies: BTreeMap<&str, policy::RoutePolicies> = routes
                .iter()
                .map(|route| {
                    let policies = policy::RoutePolicies::resolve(listener, route, &store.policies);
                    filters.add(&policies);
                    (route.name.as_str(), policies)
                })
                .collect();
            let virtual_hosts = route::virtual_hosts(&routes, |route, translated| {
                if let Some(policies) = route_policies.get(route.name.as_str()) {
                    policies.decorate(node.kind, &filters, translated);
                }
            });
            uses_api_keys |= filters.uses_api_keys();
            uses_rate_limits |= filters.uses_rate_limits();
            let certificates: Vec<&crate::model::Certificate> = listener
                .tls
                .iter()
                .flat_map(|tls| &tls.certificates)
                .filter_map(|name| store.certificates.get(name))
                .collect();
            for certificate in &certificates {
                out.refer(ResourceType::Secret, &certificate.name);
                out.insert(
                    ResourceType::Secret,
                    XdsResource::new(
                        certificate.name.clone(),
                        tollgate_proto::pack_any(&listener::secret(certificate)),
                    ),
                );
            }
            let route_config = route::route_configuration(&listener.name, virtual_hosts);
            out.refer(ResourceType::Route, &listener.name);
            out.insert(
                ResourceType::Route,
                XdsResource::new(
                    listener.name.clone(),
                    tollgate_proto::pack_any(&route_config),
                ),
            );
            out.insert(
                ResourceType::Listener,
                XdsResource::new(
                    listener.name.clone(),
                    tollgate_proto::pack_any(&listener::translate(
                        listener,
                        &certificates,
                        &filters,
                        node.kind,
                    )),
                ),
            );
        }
    }
    // Envoy asks the control plane's gRPC services about API keys (ext_authz) and quotas
    // (RLS); edge proxies check keys against a table they get over SDS, and count themselves.
    match node.kind {
        NodeKind::Tollgate if uses_api_keys => {
            let table = policy::api_key_table(&store.consumers, context);
            out.refer(ResourceType::Secret, &table.name);
            out.insert(
                ResourceType::Secret,
                XdsResource::new(table.name.clone(), tollgate_proto::pack_any(&table)),
            );
        }
        NodeKind::Envoy | NodeKind::Other if uses_api_keys || uses_rate_limits => {
            let cluster = policy::control_plane_cluster(context);
            out.refer(ResourceType::Cluster, &cluster.name);
            out.insert_cluster(&cluster);
        }
        NodeKind::Tollgate | NodeKind::Envoy | NodeKind::Other => {}
    }
    out.check_consistent()?;
    Ok(out)
}

/// A config source that says "over the same ADS stream".
fn ads_config_source() -> envoy::config::core::v3::ConfigSource {
    use envoy::config::core::v3::{
        AggregatedConfigSource, ApiVersion, ConfigSource, config_source,
    };
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..ConfigSource::default()
    }
}

/// A map for a protobuf message that encodes to the same bytes for the same entries.
///
/// Resource versions are hashes of the encoded bytes, and prost encodes a `HashMap` in its
/// iteration order, which depends on the map's random hash seed: an unchanged resource with
/// two entries in a map would get a new version on every translation (and Envoy would drain
/// and rebuild an unchanged listener). Every map built here shares one seed and gets its
/// entries in sorted order, so equal entries iterate, and encode, alike within this process.
fn stable_map<V>(
    entries: impl IntoIterator<Item = (String, V)>,
) -> std::collections::HashMap<String, V> {
    static SEED: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    let mut sorted: Vec<(String, V)> = entries.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = std::collections::HashMap::with_capacity_and_hasher(sorted.len(), SEED.clone());
    map.extend(sorted);
    map
}

fn duration_ms(ms: u32) -> tollgate_proto::google::protobuf::Duration {
    tollgate_proto::google::protobuf::Duration {
        seconds: i64::from(ms / 1000),
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod tests;
