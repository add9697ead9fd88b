//! The snapshot cache: the translated resources of each node group at the store's latest
//! revision, built once per group and revision however many streams ask.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::StoreSnapshot;
use crate::translate::{NodeGroup, TranslateContext, XdsSnapshot, translate};

/// Per-node-group translated snapshots.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    context: TranslateContext,
    // Held across translation on purpose: when a revision lands, every stream of a group asks
    // at once, and all but the first should wait for its result rather than translate again.
    groups: Mutex<HashMap<NodeGroup, Arc<XdsSnapshot>>>,
}

impl SnapshotCache {
    /// An empty cache translating with `context`.
    pub fn new(context: TranslateContext) -> Self {
        Self {
            context,
            groups: Mutex::default(),
        }
    }

    /// The group's resources for `store`'s revision, translating them on first use.
    ///
    /// Should translation fail (the store validates writes, so this means a bug), the error is
    /// logged and the group keeps its last good snapshot: proxies are never sent a broken set.
    pub fn get(&self, group: &NodeGroup, store: &StoreSnapshot) -> Arc<XdsSnapshot> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(snapshot) = groups.get(group)
            && snapshot.revision >= store.revision
        {
            return snapshot.clone();
        }
        match translate(store, group, &self.context) {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                groups.insert(group.clone(), snapshot.clone());
                snapshot
            }
            Err(error) => {
                tracing::error!(?group, revision = store.revision, %error, "translation failed; keeping the last good snapshot");
                groups
                    .get(group)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(XdsSnapshot::default()))
            }
        }
    }
}
