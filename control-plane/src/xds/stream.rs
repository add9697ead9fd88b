//! Per-stream xDS state shared by the SotW and Delta variants: what each client subscribed to,
//! what it holds, which response awaits its ACK, and whether it is in sync.
//!
//! The state machine does no I/O: the server feeds it requests and snapshots and sends what
//! [`StreamState::poll`] returns, which keeps ACK/NACK/nonce logic unit-testable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::translate::{ResourceType, XdsResource, XdsSnapshot};

/// What a request meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// First request for the type on this stream (no nonce).
    Initial,
    /// Accepts the latest response.
    Ack,
    /// Rejects the latest response.
    Nack,
    /// Quotes the latest, already answered, response: a subscription change.
    Subscription,
    /// Quotes a response that has since been superseded.
    Stale,
    /// A type Tollgate does not serve; ignored.
    Unknown,
}

/// A response that awaits the client's ACK or NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InFlight {
    pub(crate) nonce: String,
    pub(crate) revision: u64,
    pub(crate) committed_at: Option<std::time::Instant>,
}

/// A rejected response, as the client explained it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Nack {
    /// The store revision of the rejected response.
    pub revision: u64,
    /// The client's `error_detail.message`.
    pub message: String,
    /// When the NACK arrived (seconds since the Unix epoch).
    pub at_unix_secs: u64,
}

/// The last response the client accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Ack {
    /// The `version_info` the client reported (SotW) or the system version (Delta).
    pub version: String,
    /// The store revision of the accepted response.
    pub revision: u64,
}

/// One resource type's state on one stream.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// The client has sent at least one request for this type.
    pub(crate) subscribed: bool,
    /// The client wants every resource of the type.
    pub(crate) wildcard: bool,
    /// Names the client asked for (besides the wildcard).
    pub(crate) names: BTreeSet<String>,
    /// What the client holds, as far as the server knows: name → version.
    pub(crate) sent: BTreeMap<String, String>,
    /// The response awaiting ACK/NACK; only one at a time per type, which also coalesces
    /// bursts of changes for a slow client into one push of the latest state.
    pub(crate) in_flight: Option<InFlight>,
    /// The nonce of the latest response sent; a request quoting any other nonce is stale.
    pub(crate) last_nonce: Option<String>,
    /// A response is owed even if nothing changed (initial request, new subscription).
    pub(crate) force: bool,
    /// The client rejected the last response; the same content is not sent again.
    pub(crate) rejecting: bool,
    pub(crate) acked: Option<Ack>,
    /// When the revision of the last accepted response was committed, for commit-to-ACK time.
    pub(crate) acked_committed_at: Option<std::time::Instant>,
    pub(crate) last_nack: Option<Nack>,
    pub(crate) synced_revision: Option<u64>,
    pub(crate) responses_sent: u64,
}

impl TypeState {
    /// The resources this client should hold now.
    pub(crate) fn desired<'a>(
        &self,
        snapshot: &'a XdsSnapshot,
        ty: ResourceType,
    ) -> Vec<&'a XdsResource> {
        let all = snapshot.resources(ty);
        if self.wildcard {
            all.values().collect()
        } else {
            self.names.iter().filter_map(|n| all.get(n)).collect()
        }
    }

    /// Whether the subscription covers every name the snapshot needs the client to have.
    fn covers(&self, needed: &BTreeSet<String>) -> bool {
        self.wildcard || needed.is_subset(&self.names)
    }

    /// Reads the ACK/NACK part of a request: `nonce` is the response it answers (empty on a
    /// first request), `error` the client's rejection message.
    pub(crate) fn classify(
        &mut self,
        nonce: &str,
        error: Option<&str>,
        version: impl FnOnce(&InFlight) -> String,
    ) -> RequestKind {
        if nonce.is_empty() {
            return RequestKind::Initial;
        }
        if self.last_nonce.as_deref() != Some(nonce) {
            // The xDS protocol: a request quoting a superseded nonce is stale; the client will
            // answer the newer response too.
            return RequestKind::Stale;
        }
        match (&self.in_flight, error) {
            (Some(_), Some(message)) => {
                self.on_nack(message.to_owned());
                RequestKind::Nack
            }
            (Some(in_flight), None) => {
                let version = version(in_flight);
                self.on_ack(version);
                RequestKind::Ack
            }
            // The latest response was already answered: this request changes the subscription.
            (None, _) => RequestKind::Subscription,
        }
    }

    fn on_ack(&mut self, version: String) {
        if let Some(in_flight) = self.in_flight.take() {
            self.rejecting = false;
            self.acked_committed_at = in_flight.committed_at;
            self.acked = Some(Ack {
                version,
                revision: in_flight.revision,
            });
        }
    }

    fn on_nack(&mut self, message: String) {
        if let Some(in_flight) = self.in_flight.take() {
            self.rejecting = true;
            self.last_nack = Some(Nack {
                revision: in_flight.revision,
                message,
                at_unix_secs: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            });
        }
    }
}

/// A per-type status snapshot for the node registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TypeStatus {
    /// Subscribed to every resource of the type.
    pub wildcard: bool,
    /// Number of names subscribed to explicitly.
    pub subscribed_names: usize,
    /// Last accepted response.
    pub acked: Option<Ack>,
    /// Newest revision the client is known to hold for this type.
    pub synced_revision: Option<u64>,
    /// The client currently rejects this type's latest content.
    pub rejecting: bool,
    /// The most recent rejection, kept after a later ACK for the record.
    pub last_nack: Option<Nack>,
    /// Responses of this type sent on this stream.
    pub responses_sent: u64,
}

/// The state of one ADS stream.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(crate) types: BTreeMap<ResourceType, TypeState>,
    pub(crate) snapshot: Option<Arc<XdsSnapshot>>,
    next_nonce: u64,
}

/// A response [`StreamState::poll`] decided to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Push {
    pub(crate) ty: ResourceType,
    pub(crate) nonce: String,
    pub(crate) revision: u64,
    /// SotW: the whole set the client should hold; Delta: what changed.
    pub(crate) resources: Vec<XdsResource>,
    /// Delta only: names the client should drop.
    pub(crate) removed: Vec<String>,
}

/// How a protocol variant decides what to send for one type.
pub(crate) trait Variant {
    /// Returns the resources to send and the names to report removed, or `None` to send
    /// nothing. Called only when no response of the type is in flight.
    fn plan<'a>(
        st: &TypeState,
        ty: ResourceType,
        desired: &[&'a XdsResource],
    ) -> Option<(Vec<&'a XdsResource>, Vec<String>)>;

    /// Records that `resources` were sent and `removed` reported, in `st.sent`.
    fn record_sent(st: &mut TypeState, resources: &[&XdsResource], removed: &[String]);
}

impl StreamState {
    pub(crate) fn type_mut(&mut self, ty: ResourceType) -> &mut TypeState {
        self.types.entry(ty).or_default()
    }

    /// Adopts a new snapshot; what changed goes out on the next [`StreamState::poll`].
    pub(crate) fn on_snapshot(&mut self, snapshot: Arc<XdsSnapshot>) {
        self.snapshot = Some(snapshot);
    }

    /// Decides the responses due now, in push order (CDS, EDS, LDS, RDS).
    ///
    /// LDS and RDS wait while a CDS or EDS response is unacknowledged, or while the client has
    /// not yet subscribed to the endpoints of clusters it was sent, so that listeners and routes
    /// never arrive before the clusters they use are ready ("make before break").
    pub(crate) fn poll<V: Variant>(&mut self) -> Vec<Push> {
        let Some(snapshot) = self.snapshot.clone() else {
            return Vec::new();
        };
        let mut pushes = Vec::new();
        let mut clusters_settling = self.clusters_settling(&snapshot);
        for ty in ResourceType::ALL {
            let Some(st) = self.types.get_mut(&ty) else {
                continue;
            };
            if !st.subscribed || st.in_flight.is_some() {
                continue;
            }
            if matches!(ty, ResourceType::Listener | ResourceType::Route) && clusters_settling {
                continue;
            }
            let desired = st.desired(&snapshot, ty);
            if let Some((resources, removed)) = V::plan(st, ty, &desired) {
                self.next_nonce += 1;
                let nonce = self.next_nonce.to_string();
                V::record_sent(st, &resources, &removed);
                st.force = false;
                st.responses_sent += 1;
                st.in_flight = Some(InFlight {
                    nonce: nonce.clone(),
                    revision: snapshot.revision,
                    committed_at: snapshot.committed_at,
                });
                st.last_nonce = Some(nonce.clone());
                pushes.push(Push {
                    ty,
                    nonce,
                    revision: snapshot.revision,
                    resources: resources.into_iter().cloned().collect(),
                    removed,
                });
                if matches!(ty, ResourceType::Cluster | ResourceType::Endpoint) {
                    clusters_settling = true;
                }
            } else {
                if !st.rejecting && st.covers(snapshot.referenced(ty)) {
                    st.synced_revision = Some(snapshot.revision);
                }
                // Named resources that vanished are forgotten, so that they are sent again if
                // they come back.
                if !st.wildcard {
                    let keep: BTreeSet<&str> = desired.iter().map(|r| r.name.as_str()).collect();
                    st.sent.retain(|n, _| keep.contains(n.as_str()));
                }
            }
        }
        pushes
    }

    /// Clusters are not settled while a CDS/EDS response awaits its ACK, or while the client
    /// (having accepted CDS) has not yet asked for the endpoints of EDS clusters it holds.
    fn clusters_settling(&self, snapshot: &XdsSnapshot) -> bool {
        let busy = |ty| {
            self.types
                .get(&ty)
                .is_some_and(|st: &TypeState| st.in_flight.is_some())
        };
        if busy(ResourceType::Cluster) || busy(ResourceType::Endpoint) {
            return true;
        }
        let cds_accepted = self
            .types
            .get(&ResourceType::Cluster)
            .is_some_and(|st| st.subscribed && !st.rejecting);
        let eds = self.types.get(&ResourceType::Endpoint);
        let eds_names_needed = snapshot.referenced(ResourceType::Endpoint);
        cds_accepted
            && !eds_names_needed.is_empty()
            && eds.is_some_and(|st| st.subscribed)
            && !eds.is_some_and(|st| st.covers(eds_names_needed))
    }

    /// The newest revision the client holds completely: every type the snapshot needs is
    /// subscribed, acknowledged and current. `None` until the first complete sync.
    pub(crate) fn synced_revision(&self) -> Option<u64> {
        let snapshot = self.snapshot.as_ref()?;
        ResourceType::ALL
            .into_iter()
            .map(|ty| {
                let needed = ty.is_wildcard_capable() || !snapshot.referenced(ty).is_empty();
                match self.types.get(&ty) {
                    Some(st) if st.subscribed => st.synced_revision,
                    _ if !needed => Some(snapshot.revision),
                    _ => None,
                }
            })
            .min()
            .flatten()
    }

    /// Whether some type's latest content is currently rejected by the client.
    pub(crate) fn rejecting(&self) -> bool {
        self.types.values().any(|st| st.rejecting)
    }

    /// Per-type status for the node registry.
    pub(crate) fn status(&self) -> BTreeMap<ResourceType, TypeStatus> {
        self.types
            .iter()
            .filter(|(_, st)| st.subscribed)
            .map(|(ty, st)| {
                (
                    *ty,
                    TypeStatus {
                        wildcard: st.wildcard,
                        subscribed_names: st.names.len(),
                        acked: st.acked.clone(),
                        synced_revision: st.synced_revision,
                        rejecting: st.rejecting,
                        last_nack: st.last_nack.clone(),
                        responses_sent: st.responses_sent,
                    },
                )
            })
            .collect()
    }
}
