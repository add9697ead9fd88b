//! Unit tests of the snapshot builder, on resources the control plane's translator emits.

use tollgate_control_plane::model::{
    Certificate, Cluster as ModelCluster, Listener as ModelListener,
};
use tollgate_control_plane::store::StoreSnapshot;
use tollgate_control_plane::translate::{
    NodeGroup, NodeKind, ResourceType, XdsSnapshot, translate,
};

use super::*;
use crate::xds::validate;

fn certificate(name: &str, host: &str) -> Certificate {
    let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    Certificate {
        name: name.to_owned(),
        cert_pem: certified.cert.pem(),
        key_pem: Some(certified.signing_key.serialize_pem()),
    }
}

/// Cluster `a`, route `r` to it, a plain listener `public` and a TLS listener `secure`.
fn store() -> StoreSnapshot {
    let mut s = StoreSnapshot {
        revision: 1,
        ..StoreSnapshot::default()
    };
    let cluster: ModelCluster = serde_json::from_value(serde_json::json!({"name": "a",
        "endpoints": [{"address": "127.0.0.1", "port": 8080}]}))
    .unwrap();
    s.clusters.insert("a".into(), cluster);
    s.routes.insert(
        "r".into(),
        serde_json::from_value(serde_json::json!({"name": "r",
            "match": {"path_prefix": "/"}, "cluster": "a"}))
        .unwrap(),
    );
    let listener = |name: &str, port: u16, tls: bool| -> ModelListener {
        let mut json = serde_json::json!({"name": name, "port": port});
        if tls {
            json["tls"] = serde_json::json!({"certificates": ["cert"]});
        }
        serde_json::from_value(json).unwrap()
    };
    s.listeners
        .insert("public".into(), listener("public", 8080, false));
    s.listeners
        .insert("secure".into(), listener("secure", 8443, true));
    s.certificates
        .insert("cert".into(), certificate("cert", "example.com"));
    s
}

fn xds() -> XdsSnapshot {
    let group = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    translate(&store(), &group, &Default::default()).unwrap()
}

fn ty(kind: Kind) -> ResourceType {
    match kind {
        Kind::Cluster => ResourceType::Cluster,
        Kind::Endpoints => ResourceType::Endpoint,
        Kind::Secret => ResourceType::Secret,
        Kind::Listener => ResourceType::Listener,
        Kind::RouteConfig => ResourceType::Route,
    }
}

/// Every resource of `kind` in `snapshot`, validated.
fn accepted(snapshot: &XdsSnapshot, kind: Kind) -> Vec<(String, Accepted)> {
    snapshot
        .resources(ty(kind))
        .values()
        .map(|r| {
            (
                r.version.clone(),
                validate(kind, &r.name, Some(&r.body)).unwrap(),
            )
        })
        .collect()
}

#[test]
fn complete_only_once_everything_referenced_is_held() {
    let x = xds();
    let mut b = SnapshotBuilder::new();
    let missing = b.complete().unwrap_err();
    assert_eq!(
        missing.awaiting,
        BTreeSet::from([Kind::Cluster, Kind::Listener])
    );

    assert!(b.apply(Kind::Cluster, "1", accepted(&x, Kind::Cluster), &[]));
    assert_eq!(b.wanted(Kind::Endpoints), BTreeSet::from(["a".to_owned()]));
    assert!(b.apply(Kind::Listener, "1", accepted(&x, Kind::Listener), &[]));
    let missing = b.complete().unwrap_err();
    assert!(missing.awaiting.is_empty());
    assert_eq!(missing.endpoints, BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        missing.route_configs,
        BTreeSet::from(["public".to_owned(), "secure".to_owned()])
    );
    assert_eq!(missing.secrets, BTreeSet::from(["cert".to_owned()]));

    b.apply(Kind::Endpoints, "1", accepted(&x, Kind::Endpoints), &[]);
    b.apply(Kind::RouteConfig, "1", accepted(&x, Kind::RouteConfig), &[]);
    assert_eq!(
        b.complete().unwrap_err().secrets,
        BTreeSet::from(["cert".to_owned()])
    );
    b.apply(Kind::Secret, "1", accepted(&x, Kind::Secret), &[]);

    let snap = b.complete().unwrap();
    assert_eq!(snap.version, "1");
    assert_eq!(
        snap.listeners.keys().collect::<Vec<_>>(),
        ["public", "secure"]
    );
    assert_eq!(snap.route_tables.len(), 2);
    assert_eq!(snap.clusters["a"].eds_service_name(), Some("a"));
    assert_eq!(snap.endpoints["a"].endpoints.len(), 1);
    assert_eq!(snap.certificates["cert"].name(), "cert");
    assert_eq!(
        snap.versions[&Kind::Listener]["public"],
        x.resources(ResourceType::Listener)["public"].version
    );
}

#[test]
fn empty_wildcards_make_an_empty_snapshot() {
    let mut b = SnapshotBuilder::new();
    assert!(b.apply(Kind::Cluster, "0", Vec::new(), &[]));
    assert!(b.complete().is_err());
    assert!(b.apply(Kind::Listener, "0", Vec::new(), &[]));
    let snap = b.complete().unwrap();
    assert!(snap.listeners.is_empty() && snap.clusters.is_empty());
    // Receiving the (still empty) wildcard again changes nothing.
    let generation = b.generation();
    assert!(!b.apply(Kind::Listener, "0", Vec::new(), &[]));
    assert_eq!(b.generation(), generation);
}

#[test]
fn same_version_is_no_change_and_removal_is() {
    let x = xds();
    let mut b = SnapshotBuilder::new();
    assert!(b.apply(Kind::Cluster, "1", accepted(&x, Kind::Cluster), &[]));
    let generation = b.generation();
    assert!(!b.apply(Kind::Cluster, "2", accepted(&x, Kind::Cluster), &[]));
    assert_eq!(b.generation(), generation);
    assert!(b.apply(Kind::Cluster, "3", Vec::new(), &["a".to_owned()]));
    assert!(b.generation() > generation);
    assert!(b.versions(Kind::Cluster).is_empty());
    assert!(b.wanted(Kind::Endpoints).is_empty());
    // Removing what is not held is no change.
    assert!(!b.apply(Kind::Cluster, "4", Vec::new(), &["a".to_owned()]));
}

#[test]
fn unreferenced_named_resources_are_dropped() {
    let x = xds();
    let mut b = SnapshotBuilder::new();
    b.apply(Kind::Cluster, "1", accepted(&x, Kind::Cluster), &[]);
    b.apply(Kind::Listener, "1", accepted(&x, Kind::Listener), &[]);
    b.apply(Kind::Endpoints, "1", accepted(&x, Kind::Endpoints), &[]);
    b.apply(Kind::RouteConfig, "1", accepted(&x, Kind::RouteConfig), &[]);
    b.apply(Kind::Secret, "1", accepted(&x, Kind::Secret), &[]);
    assert!(b.complete().is_ok());

    b.apply(Kind::Listener, "2", Vec::new(), &["secure".to_owned()]);
    assert_eq!(b.retain_wanted(Kind::RouteConfig), ["secure"]);
    assert_eq!(b.retain_wanted(Kind::Secret), ["cert"]);
    assert!(b.retain_wanted(Kind::Endpoints).is_empty());
    assert!(b.retain_wanted(Kind::Listener).is_empty());
    let snap = b.complete().unwrap();
    assert_eq!(snap.route_tables.keys().collect::<Vec<_>>(), ["public"]);
    assert!(snap.certificates.is_empty());
}

#[test]
fn kinds_round_trip_through_type_urls() {
    for kind in Kind::ALL {
        assert_eq!(Kind::from_type_url(kind.type_url()), Some(kind));
        assert_eq!(kind.type_url(), ty(kind).type_url());
    }
    assert_eq!(Kind::from_type_url("type.googleapis.com/x"), None);
}

#[test]
fn an_api_key_listener_waits_for_its_key_table() {
    use tollgate_control_plane::model::{Consumer, ConsumerSpec, Policy};
    use tollgate_control_plane::translate::TranslateContext;
    let mut store = store();
    let policy: Policy =
        serde_json::from_value(serde_json::json!({"type": "api_key", "name": "keys"})).unwrap();
    store.policies.insert("keys".into(), policy);
    store.routes.get_mut("r").unwrap().policies = vec!["keys".into()];
    let hasher = tollgate_control_plane::model::ApiKeyHasher::new(b"k".to_vec());
    let consumer: Consumer = ConsumerSpec {
        name: "acme".into(),
        tier: None,
        groups: Vec::new(),
        metadata: Default::default(),
        api_keys: Some(vec!["acme-key-0123456789".into()]),
    }
    .into_consumer(&hasher)
    .unwrap();
    store.consumers.insert("acme".into(), consumer);
    let context = TranslateContext {
        api_key_secret: std::sync::Arc::from(b"k".to_vec()),
        ..Default::default()
    };
    let group = NodeGroup {
        kind: NodeKind::Tollgate,
        cluster: "edge".into(),
    };
    let x = translate(&store, &group, &context).unwrap();

    let mut b = SnapshotBuilder::new();
    b.apply(Kind::Cluster, "1", accepted(&x, Kind::Cluster), &[]);
    b.apply(Kind::Listener, "1", accepted(&x, Kind::Listener), &[]);
    b.apply(Kind::Endpoints, "1", accepted(&x, Kind::Endpoints), &[]);
    b.apply(Kind::RouteConfig, "1", accepted(&x, Kind::RouteConfig), &[]);
    assert_eq!(
        b.wanted(Kind::Secret),
        BTreeSet::from(["cert".to_owned(), "tollgate:api-keys".to_owned()])
    );
    assert_eq!(
        b.complete().unwrap_err().secrets,
        BTreeSet::from(["cert".to_owned(), "tollgate:api-keys".to_owned()])
    );
    b.apply(Kind::Secret, "1", accepted(&x, Kind::Secret), &[]);
    let snap = b.complete().unwrap();
    assert_eq!(snap.certificates.keys().collect::<Vec<_>>(), ["cert"]);
    let table = &snap.api_key_tables["tollgate:api-keys"];
    assert_eq!(table.summary(), (1, 1));
    assert_eq!(table.lookup(b"acme-key-0123456789").unwrap().0.name, "acme");

    // A secret of the wrong kind under a key table's name does not complete the snapshot.
    use prost::Message as _;
    let cert = &x.resources(ResourceType::Secret)["cert"];
    let mut proto = tollgate_proto::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
        cert.body.value.as_slice(),
    )
    .unwrap();
    proto.name = "tollgate:api-keys".into();
    let impostor = tollgate_proto::pack_any(&proto);
    let impostor = validate(Kind::Secret, "tollgate:api-keys", Some(&impostor)).unwrap();
    b.apply(Kind::Secret, "2", vec![("v2".into(), impostor)], &[]);
    assert_eq!(
        b.complete().unwrap_err().secrets,
        BTreeSet::from(["tollgate:api-keys".to_owned()])
    );
}
