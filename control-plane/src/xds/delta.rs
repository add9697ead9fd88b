//! Incremental (Delta) ADS: responses carry only the resources that changed and the names of
//! those removed; per-resource versions are content hashes.

use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::stream::{Push, RequestKind, StreamState, TypeState, Variant};
use crate::translate::{ResourceType, XdsResource};

/// The Delta variant's decisions.
#[derive(Debug)]
pub(crate) struct Delta;

impl Variant for Delta {
    fn plan<'a>(
        st: &TypeState,
        ty: ResourceType,
        desired: &[&'a XdsResource],
    ) -> Option<(Vec<&'a XdsResource>, Vec<String>)> {
        let changed: Vec<&XdsResource> = desired
            .iter()
            .copied()
            .filter(|r| st.sent.get(&r.name) != Some(&r.version))
            .collect();
        let removed: Vec<String> = st
            .sent
            .keys()
            .filter(|name| !desired.iter().any(|r| &r.name == *name))
            .cloned()
            .collect();
        // A wildcard subscriber is owed a first answer, even an empty one, to finish its
        // initialisation; otherwise only actual changes are sent.
        let owed = st.force && st.wildcard && ty.is_wildcard_capable();
        (!changed.is_empty() || !removed.is_empty() || owed).then_some((changed, removed))
    }

    fn record_sent(st: &mut TypeState, resources: &[&XdsResource], removed: &[String]) {
        for r in resources {
            st.sent.insert(r.name.clone(), r.version.clone());
        }
        for name in removed {
            st.sent.remove(name);
        }
    }
}

impl StreamState {
    /// Applies one Delta request: ACK/NACK bookkeeping, then subscription changes (which, unlike
    /// SotW, are honoured even on a request with a stale nonce).
    pub(crate) fn on_delta_request(&mut self, req: &DeltaDiscoveryRequest) -> RequestKind {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            return RequestKind::Unknown;
        };
        let st = self.type_mut(ty);
        let first = !st.subscribed;
        let error = req.error_detail.as_ref().map(|e| e.message.as_str());
        let kind = st.classify(&req.response_nonce, error, |in_flight| {
            in_flight.revision.to_string()
        });
        if first {
            st.subscribed = true;
            // What the client already holds (after a reconnect) need not be sent again.
            st.sent = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // Legacy wildcard: a first request that names nothing wants everything.
            st.wildcard = req.resource_names_subscribe.is_empty();
            st.force = true;
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else if st.names.insert(name.clone())
                && !req.initial_resource_versions.contains_key(name)
            {
                // A fresh subscription gets the resource even if an earlier one was sent.
                st.sent.remove(name);
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(name);
                if !st.wildcard {
                    st.sent.remove(name);
                }
            }
        }
        kind
    }

    /// Decides the Delta responses due now.
    pub(crate) fn poll_delta(&mut self) -> Vec<DeltaDiscoveryResponse> {
        self.poll::<Delta>()
            .into_iter()
            .map(delta_response)
            .collect()
    }
}

fn delta_response(push: Push) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: push.revision.to_string(),
        resources: push
            .resources
            .into_iter()
            .map(|r| Resource {
                name: r.name,
                version: r.version,
                resource: Some(r.body),
                ..Default::default()
            })
            .collect(),
        type_url: push.ty.type_url().to_owned(),
        removed_resources: push.removed,
        nonce: push.nonce,
        ..Default::default()
    }
}
