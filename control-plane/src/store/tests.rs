use super::*;
use crate::model::{Cluster, Endpoint, LbPolicy, Listener, Route, RouteMatch};

fn cluster(name: &str, port: u16) -> Resource {
    Resource::Cluster(Cluster {
        name: name.to_owned(),
        endpoints: vec![Endpoint {
            address: "127.0.0.1".to_owned(),
            port,
            weight: 1,
        }],
        lb_policy: LbPolicy::RoundRobin,
        connect_timeout_ms: 1000,
        http2: false,
        health_check: None,
        outlier_detection: None,
        circuit_breakers: None,
        tls: None,
    })
}

fn route(name: &str, cluster: &str) -> Resource {
    Resource::Route(Route {
        name: name.to_owned(),
        matcher: RouteMatch {
            path_prefix: Some("/".to_owned()),
            ..RouteMatch::default()
        },
        cluster: Some(cluster.to_owned()),
        weighted_clusters: None,
        redirect: None,
        direct_response: None,
        rewrite: None,
        timeout_ms: None,
        retries: None,
        request_headers: Default::default(),
        response_headers: Default::default(),
        priority: 0,
        policies: Vec::new(),
    })
}

fn listener(name: &str, port: u16) -> Resource {
    Resource::Listener(Listener {
        name: name.to_owned(),
        address: "127.0.0.1".to_owned(),
        port,
        node_cluster: None,
        tls: None,
        access_log: None,
        trusted_proxy_hops: 0,
        policies: Vec::new(),
    })
}

#[tokio::test]
async fn each_write_is_one_revision_and_is_published() {
    let store = Store::in_memory();
    let mut feed = store.subscribe();
    let out = store
        .write(vec![
            Change::Put(cluster("a", 1)),
            Change::Put(route("r", "a")),
        ])
        .await
        .unwrap();
    assert_eq!(out.revision, 1);
    assert_eq!(out.changed.len(), 2);
    assert!(feed.has_changed().unwrap());
    let published = feed.borrow_and_update().clone();
    assert_eq!(published.revision, 1);
    assert!(published.routes.contains_key("r"));

    let out = store
        .write(vec![Change::Put(cluster("a", 2))])
        .await
        .unwrap();
    assert_eq!(out.revision, 2);
    assert_eq!(out.changed[0].op, ChangeOp::Updated);
}

#[tokio::test]
async fn repeating_the_current_state_creates_no_revision() {
    let store = Store::in_memory();
    store
        .write(vec![Change::Put(cluster("a", 1))])
        .await
        .unwrap();
    let mut feed = store.subscribe();
    let out = store
        .write(vec![Change::Put(cluster("a", 1))])
        .await
        .unwrap();
    assert_eq!(out.revision, 1);
    assert!(out.changed.is_empty());
    assert!(!feed.has_changed().unwrap());
    feed.borrow_and_update();
}

#[tokio::test]
async fn rejected_writes_change_nothing() {
    let store = Store::in_memory();
    store
        .write(vec![
            Change::Put(cluster("a", 1)),
            Change::Put(route("r", "a")),
        ])
        .await
        .unwrap();
    let before = store.current();

    // Deleting a cluster a route uses.
    let err = store
        .write(vec![Change::Delete {
            kind: ResourceKind::Cluster,
            name: "a".to_owned(),
        }])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref e) if e.field == "cluster"),
        "{err}"
    );

    // A valid change together with an invalid one: neither lands.
    let err = store
        .write(vec![
            Change::Put(cluster("b", 1)),
            Change::Put(cluster("c", 0)),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid { ref source, .. } if source.field == "endpoints[0].port")
    );

    let err = store
        .write(vec![Change::Delete {
            kind: ResourceKind::Route,
            name: "nope".to_owned(),
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));

    assert_eq!(*store.current(), *before);
}

#[tokio::test]
async fn deleting_a_route_and_its_cluster_together_is_allowed() {
    let store = Store::in_memory();
    store
        .write(vec![
            Change::Put(cluster("a", 1)),
            Change::Put(route("r", "a")),
        ])
        .await
        .unwrap();
    store
        .write(vec![
            Change::Delete {
                kind: ResourceKind::Cluster,
                name: "a".to_owned(),
            },
            Change::Delete {
                kind: ResourceKind::Route,
                name: "r".to_owned(),
            },
        ])
        .await
        .unwrap();
    assert!(store.current().clusters.is_empty());
}

#[tokio::test]
async fn sqlite_keeps_revisions_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.db");
    {
        let store = Store::sqlite(&path).unwrap();
        store
            .write(vec![
                Change::Put(cluster("a", 1)),
                Change::Put(route("r", "a")),
            ])
            .await
            .unwrap();
        store
            .write(vec![Change::Put(listener("l", 8080))])
            .await
            .unwrap();
        store
            .write(vec![Change::Delete {
                kind: ResourceKind::Route,
                name: "r".to_owned(),
            }])
            .await
            .unwrap();
    }
    let store = Store::sqlite(&path).unwrap();
    let snapshot = store.current();
    assert_eq!(snapshot.revision, 3);
    assert!(snapshot.routes.is_empty());
    assert_eq!(
        snapshot.get(ResourceKind::Cluster, "a"),
        Some(cluster("a", 1))
    );
    assert_eq!(
        snapshot.get(ResourceKind::Listener, "l"),
        Some(listener("l", 8080))
    );
    let out = store
        .write(vec![Change::Put(cluster("b", 2))])
        .await
        .unwrap();
    assert_eq!(out.revision, 4);
}

#[test]
fn dry_run_reports_without_writing() {
    let store = Store::in_memory();
    let out = store.dry_run(vec![Change::Put(cluster("a", 1))]).unwrap();
    assert_eq!(out.revision, 0);
    assert_eq!(out.changed[0].op, ChangeOp::Created);
    assert!(store.current().clusters.is_empty());
}

async fn history_and_rollback(store: Store) {
    store
        .write(vec![
            Change::Put(cluster("a", 1)),
            Change::Put(route("r", "a")),
        ])
        .await
        .unwrap();
    store
        .write(vec![
            Change::Put(cluster("a", 2)),
            Change::Put(listener("l", 80)),
        ])
        .await
        .unwrap();
    store
        .write(vec![
            Change::Delete {
                kind: ResourceKind::Route,
                name: "r".to_owned(),
            },
            Change::Put(cluster("b", 3)),
        ])
        .await
        .unwrap();
    let at_1 = store.current().clone();

    let history = store.history(None, 10).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.revision).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert_eq!(history[0].origin, "api");
    assert!(
        history[0]
            .changes
            .iter()
            .any(|c| c.name == "r" && c.op == ChangeOp::Deleted)
    );
    let older = store.history(Some(3), 1).await.unwrap();
    assert_eq!(older.iter().map(|r| r.revision).collect::<Vec<_>>(), [2]);

    let out = store.rollback(1).await.unwrap();
    assert_eq!(out.revision, 4);
    let now = store.current();
    assert_eq!(now.get(ResourceKind::Cluster, "a"), Some(cluster("a", 1)));
    assert_eq!(now.get(ResourceKind::Route, "r"), Some(route("r", "a")));
    assert!(now.listeners.is_empty() && !now.clusters.contains_key("b"));
    assert_ne!(*now, *at_1);
    assert_eq!(
        store.history(None, 1).await.unwrap()[0].origin,
        "rollback to 1"
    );

    // Rolling back to the current state changes nothing; unknown revisions are refused.
    assert_eq!(store.rollback(4).await.unwrap().revision, 4);
    assert!(matches!(
        store.rollback(9).await,
        Err(StoreError::UnknownRevision { .. })
    ));
    assert!(matches!(
        store.rollback(0).await,
        Err(StoreError::UnknownRevision { .. })
    ));
}

#[tokio::test]
async fn memory_history_and_rollback() {
    history_and_rollback(Store::in_memory()).await;
}

#[tokio::test]
async fn sqlite_history_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    history_and_rollback(Store::sqlite(&dir.path().join("t.db")).unwrap()).await;
}

#[test]
fn sqlite_keeps_the_api_key_secret_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let first = Store::sqlite(&path)
        .unwrap()
        .api_key_hasher()
        .hash("some-key-0123456789");
    let again = Store::sqlite(&path)
        .unwrap()
        .api_key_hasher()
        .hash("some-key-0123456789");
    assert_eq!(first, again);
    let elsewhere = Store::sqlite(&dir.path().join("other.db"))
        .unwrap()
        .api_key_hasher()
        .hash("some-key-0123456789");
    assert_ne!(first, elsewhere, "each store has its own random secret");
}

#[tokio::test]
async fn a_write_reports_the_snapshot_it_made_even_after_later_writes() {
    let store = Store::in_memory();
    let created = store
        .write(vec![Change::Put(cluster("a", 1))])
        .await
        .unwrap();
    store
        .write(vec![Change::Delete {
            kind: ResourceKind::Cluster,
            name: "a".to_owned(),
        }])
        .await
        .unwrap();
    assert!(store.current().clusters.is_empty());
    assert_eq!(created.snapshot.revision, 1);
    assert_eq!(
        created.snapshot.get(ResourceKind::Cluster, "a"),
        Some(cluster("a", 1))
    );
    let unchanged = store.write(vec![]).await.unwrap();
    assert_eq!(unchanged.snapshot.revision, 2);
}
