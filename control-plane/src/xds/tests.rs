//! Unit tests of the ADS state machine, both variants, without sockets.

use std::sync::Arc;

use tollgate_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tollgate_proto::google::rpc;

use super::stream::RequestKind;
use super::stream::StreamState;
use crate::model::{Cluster, Listener, Route};
use crate::store::StoreSnapshot;
use crate::translate::{NodeGroup, NodeKind, ResourceType, XdsSnapshot, translate};

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::Endpoint;
const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::Route;

/// A store with clusters `a` (port) and optionally `b`, a route to `a`, and a listener.
fn store(revision: u64, port_a: u16, with_b: bool) -> StoreSnapshot {
    let mut s = StoreSnapshot {
        revision,
        ..StoreSnapshot::default()
    };
    let cluster = |name: &str, port: u16| -> Cluster {
        serde_json::from_value(serde_json::json!({"name": name,
            "endpoints": [{"address": "127.0.0.1", "port": port}]}))
        .unwrap()
    };
    s.clusters.insert("a".into(), cluster("a", port_a));
    if with_b {
        s.clusters.insert("b".into(), cluster("b", 9));
    }
    let route: Route = serde_json::from_value(serde_json::json!({"name": "r",
        "match": {"path_prefix": "/"}, "cluster": "a"}))
    .unwrap();
    s.routes.insert("r".into(), route);
    let listener: Listener =
        serde_json::from_value(serde_json::json!({"name": "l", "port": 10000})).unwrap();
    s.listeners.insert("l".into(), listener);
    s
}

fn snap(store: &StoreSnapshot) -> Arc<XdsSnapshot> {
    let group = NodeGroup {
        kind: NodeKind::Envoy,
        cluster: "edge".into(),
    };
    Arc::new(translate(store, &group, &Default::default()).unwrap())
}

fn req(ty: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url().into(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn nack(mut r: DiscoveryRequest, message: &str) -> DiscoveryRequest {
    r.error_detail = Some(rpc::Status {
        code: 3,
        message: message.into(),
        ..Default::default()
    });
    r
}

fn names_of(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .map(|any| {
            // Every test resource is named after its kind's key; decode just enough.
            use prost::Message;
            match resp.type_url.as_str() {
                u if u == CDS.type_url() => {
                    tollgate_proto::envoy::config::cluster::v3::Cluster::decode(
                        any.value.as_slice(),
                    )
                    .unwrap()
                    .name
                }
                u if u == EDS.type_url() => {
                    tollgate_proto::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
                        any.value.as_slice(),
                    )
                    .unwrap()
                    .cluster_name
                }
                u if u == LDS.type_url() => {
                    tollgate_proto::envoy::config::listener::v3::Listener::decode(
                        any.value.as_slice(),
                    )
                    .unwrap()
                    .name
                }
                _ => {
                    tollgate_proto::envoy::config::route::v3::RouteConfiguration::decode(
                        any.value.as_slice(),
                    )
                    .unwrap()
                    .name
                }
            }
        })
        .collect()
}

/// Brings a SotW stream to a fully acked state at `store`, the way Envoy does it.
fn synced_sotw(store: &StoreSnapshot) -> StreamState {
    let mut st = StreamState::default();
    let snapshot = snap(store);
    let eds: Vec<String> = snapshot.referenced(EDS).iter().cloned().collect();
    let eds: Vec<&str> = eds.iter().map(String::as_str).collect();
    st.on_snapshot(snapshot);
    let rev = store.revision.to_string();
    st.on_sotw_request(&req(CDS, &[], "", ""));
    let r = st.poll_sotw();
    st.on_sotw_request(&req(CDS, &[], &rev, &r[0].nonce));
    st.on_sotw_request(&req(EDS, &eds, "", ""));
    st.on_sotw_request(&req(LDS, &[], "", ""));
    let r = st.poll_sotw();
    assert_eq!(r.len(), 1, "LDS waits for EDS to be acked");
    st.on_sotw_request(&req(EDS, &eds, &rev, &r[0].nonce));
    let r = st.poll_sotw();
    assert_eq!(r[0].type_url, LDS.type_url());
    st.on_sotw_request(&req(LDS, &[], &rev, &r[0].nonce));
    st.on_sotw_request(&req(RDS, &["l"], "", ""));
    let r = st.poll_sotw();
    st.on_sotw_request(&req(RDS, &["l"], &rev, &r[0].nonce));
    assert!(st.poll_sotw().is_empty());
    assert_eq!(st.synced_revision(), Some(store.revision));
    st
}

#[test]
fn sotw_initial_request_gets_the_full_set_and_ack_settles_it() {
    let mut st = StreamState::default();
    st.on_snapshot(snap(&store(1, 1, true)));
    assert_eq!(
        st.on_sotw_request(&req(CDS, &[], "", "")),
        RequestKind::Initial
    );
    let r = st.poll_sotw();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].version_info, "1");
    assert_eq!(names_of(&r[0]), ["a", "b"]);
    assert!(st.poll_sotw().is_empty(), "one response in flight per type");
    assert_eq!(
        st.on_sotw_request(&req(CDS, &[], "1", &r[0].nonce)),
        RequestKind::Ack
    );
    assert!(st.poll_sotw().is_empty());
    let status = &st.status()[&CDS];
    assert_eq!(status.acked.as_ref().unwrap().revision, 1);
    assert!(status.wildcard);
}

#[test]
fn sotw_empty_wildcard_still_gets_an_answer() {
    let mut st = StreamState::default();
    st.on_snapshot(snap(&StoreSnapshot::default()));
    st.on_sotw_request(&req(LDS, &[], "", ""));
    let r = st.poll_sotw();
    assert_eq!(r.len(), 1);
    assert!(r[0].resources.is_empty());
}

#[test]
fn sotw_full_state_on_change_and_removal() {
    let mut st = synced_sotw(&store(1, 1, true));
    st.on_snapshot(snap(&store(2, 1, false)));
    let r = st.poll_sotw();
    assert_eq!(r.len(), 1, "only CDS changed");
    assert_eq!(names_of(&r[0]), ["a"], "removal: the full set without b");
    assert_eq!(r[0].version_info, "2");
}

#[test]
fn sotw_nack_is_recorded_and_not_resent() {
    let mut st = synced_sotw(&store(1, 1, false));
    st.on_snapshot(snap(&store(2, 2, false)));
    let r = st.poll_sotw();
    assert_eq!(r[0].type_url, EDS.type_url());
    let kind = st.on_sotw_request(&nack(req(EDS, &["a"], "1", &r[0].nonce), "bad endpoint"));
    assert_eq!(kind, RequestKind::Nack);
    assert!(
        st.poll_sotw().is_empty(),
        "the rejected version is not sent again"
    );
    assert!(st.rejecting());
    assert_eq!(st.synced_revision(), Some(1));
    let status = &st.status()[&EDS];
    assert_eq!(status.last_nack.as_ref().unwrap().message, "bad endpoint");
    assert_eq!(status.last_nack.as_ref().unwrap().revision, 2);
    assert_eq!(status.acked.as_ref().unwrap().revision, 1);

    // An unrelated revision does not resend it either …
    let mut other = store(3, 2, false);
    other.routes.get_mut("r").unwrap().timeout_ms = Some(5);
    st.on_snapshot(snap(&other));
    let r = st.poll_sotw();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].type_url, RDS.type_url());
    // … but new content for the rejected resource is sent.
    st.on_sotw_request(&req(RDS, &["l"], "3", &r[0].nonce));
    let mut fixed = other.clone();
    fixed.revision = 4;
    fixed.clusters.get_mut("a").unwrap().endpoints[0].port = 3;
    st.on_snapshot(snap(&fixed));
    let r = st.poll_sotw();
    assert_eq!(r[0].type_url, EDS.type_url());
    st.on_sotw_request(&req(EDS, &["a"], "4", &r[0].nonce));
    assert!(!st.rejecting());
    assert_eq!(st.poll_sotw().len(), 0);
    assert_eq!(st.synced_revision(), Some(4));
}

#[test]
fn sotw_stale_nonce_is_ignored() {
    let mut st = StreamState::default();
    st.on_snapshot(snap(&store(1, 1, false)));
    st.on_sotw_request(&req(CDS, &[], "", ""));
    let first = st.poll_sotw();
    assert_eq!(
        st.on_sotw_request(&req(CDS, &[], "", "999")),
        RequestKind::Stale
    );
    assert!(st.status()[&CDS].acked.is_none());
    assert_eq!(
        st.on_sotw_request(&req(CDS, &[], "1", &first[0].nonce)),
        RequestKind::Ack
    );
}

#[test]
fn sotw_named_resource_is_sent_when_it_appears() {
    let mut st = StreamState::default();
    st.on_snapshot(snap(&store(1, 1, false)));
    st.on_sotw_request(&req(EDS, &["a", "b"], "", ""));
    let r = st.poll_sotw();
    assert_eq!(names_of(&r[0]), ["a"]);
    st.on_sotw_request(&req(EDS, &["a", "b"], "1", &r[0].nonce));
    assert!(st.poll_sotw().is_empty());
    st.on_snapshot(snap(&store(2, 1, true)));
    let r = st.poll_sotw();
    assert_eq!(names_of(&r[0]), ["a", "b"]);
}

#[test]
fn sotw_nonexistent_names_get_no_response() {
    let mut st = StreamState::default();
    st.on_snapshot(snap(&store(1, 1, false)));
    st.on_sotw_request(&req(EDS, &["nope"], "", ""));
    assert!(st.poll_sotw().is_empty());
}

#[test]
fn listeners_and_routes_wait_for_clusters() {
    let mut st = synced_sotw(&store(1, 1, false));
    // A new cluster and a route change in one revision: CDS goes first, RDS only after the
    // client has acked CDS and subscribed to (and acked) the new cluster's endpoints.
    let mut next = store(2, 1, true);
    next.routes.get_mut("r").unwrap().cluster = Some("b".into());
    st.on_snapshot(snap(&next));
    let r = st.poll_sotw();
    assert_eq!(
        r.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
        [CDS.type_url()]
    );
    st.on_sotw_request(&req(CDS, &[], "2", &r[0].nonce));
    assert!(
        st.poll_sotw().is_empty(),
        "routes wait until EDS for b is requested"
    );
    st.on_sotw_request(&req(EDS, &["a", "b"], "1", ""));
    let r = st.poll_sotw();
    assert_eq!(r.len(), 1);
    assert_eq!(names_of(&r[0]), ["a", "b"]);
    st.on_sotw_request(&req(EDS, &["a", "b"], "2", &r[0].nonce));
    let r = st.poll_sotw();
    assert_eq!(r[0].type_url, RDS.type_url());
    assert_eq!(
        st.synced_revision(),
        Some(1),
        "not synced before RDS is acked"
    );
    st.on_sotw_request(&req(RDS, &["l"], "2", &r[0].nonce));
    st.poll_sotw();
    assert_eq!(st.synced_revision(), Some(2));
}

fn dreq(
    ty: ResourceType,
    subscribe: &[&str],
    unsubscribe: &[&str],
    nonce: &str,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ty.type_url().into(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn dnames(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
    resp.resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn delta_sends_only_changes_and_removals() {
    let mut st = StreamState::default();
    st.on_snapshot(snap(&store(1, 1, true)));
    st.on_delta_request(&dreq(CDS, &[], &[], ""));
    let r = st.poll_delta();
    assert_eq!(dnames(&r[0]), ["a", "b"]);
    assert_eq!(r[0].system_version_info, "1");
    assert_eq!(
        st.on_delta_request(&dreq(CDS, &[], &[], &r[0].nonce)),
        RequestKind::Ack
    );

    let mut next = store(2, 1, true);
    next.clusters.get_mut("b").unwrap().connect_timeout_ms = 42;
    st.on_snapshot(snap(&next));
    let r = st.poll_delta();
    assert_eq!(dnames(&r[0]), ["b"], "only the changed resource");
    assert!(r[0].removed_resources.is_empty());
    st.on_delta_request(&dreq(CDS, &[], &[], &r[0].nonce));

    st.on_snapshot(snap(&store(3, 1, false)));
    let r = st.poll_delta();
    assert!(r[0].resources.is_empty());
    assert_eq!(r[0].removed_resources, ["b"]);
}

#[test]
fn delta_reconnect_skips_what_the_client_holds() {
    let store1 = store(1, 1, true);
    let snapshot = snap(&store1);
    let version_a = snapshot.resources(CDS)["a"].version.clone();
    let mut st = StreamState::default();
    st.on_snapshot(snapshot);
    let mut first = dreq(CDS, &[], &[], "");
    first
        .initial_resource_versions
        .insert("a".into(), version_a);
    first
        .initial_resource_versions
        .insert("gone".into(), "x".into());
    st.on_delta_request(&first);
    let r = st.poll_delta();
    assert_eq!(dnames(&r[0]), ["b"]);
    assert_eq!(r[0].removed_resources, ["gone"]);
}

#[test]
fn delta_named_subscribe_unsubscribe_and_nack() {
    let mut st = StreamState::default();
    st.on_snapshot(snap(&store(1, 1, true)));
    st.on_delta_request(&dreq(EDS, &["a"], &[], ""));
    let r = st.poll_delta();
    assert_eq!(dnames(&r[0]), ["a"]);
    st.on_delta_request(&dreq(EDS, &["b"], &[], &r[0].nonce));
    let r = st.poll_delta();
    assert_eq!(
        dnames(&r[0]),
        ["b"],
        "a fresh subscription is answered with just that name"
    );
    let mut rejected = dreq(EDS, &[], &["a"], &r[0].nonce);
    rejected.error_detail = Some(rpc::Status {
        code: 3,
        message: "no".into(),
        ..Default::default()
    });
    assert_eq!(st.on_delta_request(&rejected), RequestKind::Nack);
    assert!(
        st.poll_delta().is_empty(),
        "neither resent nor a removal for an unsubscribed name"
    );
    assert_eq!(st.status()[&EDS].last_nack.as_ref().unwrap().message, "no");
    assert_eq!(st.status()[&EDS].subscribed_names, 1);
}

#[test]
fn delta_empty_wildcard_still_gets_an_answer_but_named_does_not() {
    let mut st = StreamState::default();
    st.on_snapshot(snap(&StoreSnapshot::default()));
    st.on_delta_request(&dreq(LDS, &[], &[], ""));
    st.on_delta_request(&dreq(EDS, &["x"], &[], ""));
    let r = st.poll_delta();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].type_url, LDS.type_url());
}

#[test]
fn unknown_types_are_ignored() {
    let mut st = StreamState::default();
    st.on_snapshot(snap(&store(1, 1, false)));
    let mut r = req(CDS, &[], "", "");
    r.type_url = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into();
    assert_eq!(st.on_sotw_request(&r), RequestKind::Unknown);
    assert!(st.poll_sotw().is_empty());
}

#[test]
fn sotw_subscription_change_quoting_an_acked_nonce_is_honoured() {
    // Envoy acks EDS, then (after CDS adds a cluster) asks for more names quoting the same,
    // already acked, nonce. That is a subscription change, not a stale request.
    let mut st = StreamState::default();
    st.on_snapshot(snap(&store(1, 1, true)));
    st.on_sotw_request(&req(EDS, &["a"], "", ""));
    let r = st.poll_sotw();
    assert_eq!(
        st.on_sotw_request(&req(EDS, &["a"], "1", &r[0].nonce)),
        RequestKind::Ack
    );
    assert_eq!(
        st.on_sotw_request(&req(EDS, &["a", "b"], "1", &r[0].nonce)),
        RequestKind::Subscription
    );
    let r = st.poll_sotw();
    assert_eq!(names_of(&r[0]), ["a", "b"]);
}
