//! State-of-the-world ADS: each response carries the full set of resources of its type the
//! client should hold (all of them for LDS/CDS, the named ones for RDS/EDS).

use std::collections::{BTreeMap, BTreeSet};

use tollgate_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::stream::{Push, RequestKind, StreamState, TypeState, Variant};
use crate::translate::{ResourceType, XdsResource};

/// The SotW variant's decisions.
#[derive(Debug)]
pub(crate) struct Sotw;

impl Variant for Sotw {
    fn plan<'a>(
        st: &TypeState,
        ty: ResourceType,
        desired: &[&'a XdsResource],
    ) -> Option<(Vec<&'a XdsResource>, Vec<String>)> {
        let changed = if st.wildcard {
            // Full state: a removal is a change too.
            desired.len() != st.sent.len()
                || desired
                    .iter()
                    .any(|r| st.sent.get(&r.name) != Some(&r.version))
        } else {
            // Named types: a resource that disappears is not removed by a SotW response (the
            // client drops it when nothing refers to it), so only additions and updates count.
            desired
                .iter()
                .any(|r| st.sent.get(&r.name) != Some(&r.version))
        };
        // A client asking for names that do not exist yet gets nothing until they appear;
        // a wildcard subscriber always gets an answer, even an empty one, so that it can
        // finish initialising.
        let owed = st.force && (ty.is_wildcard_capable() && st.wildcard || !desired.is_empty());
        (changed || owed).then(|| (desired.to_vec(), Vec::new()))
    }

    fn record_sent(st: &mut TypeState, resources: &[&XdsResource], _removed: &[String]) {
        st.sent = resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect::<BTreeMap<_, _>>();
    }
}

impl StreamState {
    /// Applies one SotW request: ACK/NACK bookkeeping, then the subscription it carries.
    pub(crate) fn on_sotw_request(&mut self, req: &DiscoveryRequest) -> RequestKind {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            return RequestKind::Unknown;
        };
        let st = self.type_mut(ty);
        let error = req.error_detail.as_ref().map(|e| e.message.as_str());
        let kind = st.classify(&req.response_nonce, error, |_| req.version_info.clone());
        if kind == RequestKind::Stale {
            // SotW: a stale request is ignored whole; the client sends a fresh one after it
            // sees the newer response.
            return kind;
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = names.contains("*") || (names.is_empty() && ty.is_wildcard_capable());
        let names: BTreeSet<String> = names.into_iter().filter(|n| n != "*").collect();
        if kind == RequestKind::Initial || wildcard != st.wildcard || names != st.names {
            st.force = true;
        }
        st.subscribed = true;
        st.wildcard = wildcard;
        st.names = names;
        kind
    }

    /// Decides the SotW responses due now.
    pub(crate) fn poll_sotw(&mut self) -> Vec<DiscoveryResponse> {
        self.poll::<Sotw>().into_iter().map(sotw_response).collect()
    }
}

fn sotw_response(push: Push) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: push.revision.to_string(),
        resources: push.resources.into_iter().map(|r| r.body).collect(),
        type_url: push.ty.type_url().to_owned(),
        nonce: push.nonce,
        ..Default::default()
    }
}
