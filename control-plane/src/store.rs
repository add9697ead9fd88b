//! The versioned configuration store, the first stop of every admin write.
//!
//! Each write is validated against the whole resulting configuration, committed to the
//! backend as one transaction with a new monotonic revision, and then published as an
//! immutable [`StoreSnapshot`] on a `watch` channel: the change feed the xDS side follows.

mod sqlite;

pub use sqlite::SqliteBackend;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::{self, Metrics};

use crate::model::{
    ApiKeyHasher, Certificate, Cluster, Consumer, Listener, Policy, ReferenceError, Resource,
    ResourceKind, Route, ValidationError, check_references, check_unique_api_keys,
};

/// The whole configuration at one revision. Cheap to share, never mutated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSnapshot {
    /// The revision this configuration was committed at (0: nothing written yet).
    pub revision: u64,
    /// Clusters by name.
    pub clusters: BTreeMap<String, Cluster>,
    /// Routes by name.
    pub routes: BTreeMap<String, Route>,
    /// Listeners by name.
    pub listeners: BTreeMap<String, Listener>,
    /// TLS certificates by name.
    pub certificates: BTreeMap<String, Certificate>,
    /// Consumers by name.
    pub consumers: BTreeMap<String, Consumer>,
    /// Policies by name.
    pub policies: BTreeMap<String, Policy>,
    /// When this revision was committed by this process (`None` for the revision loaded at
    /// start-up); lets the xDS side measure commit-to-ACK time without reading clocks itself.
    pub committed_at: Option<std::time::Instant>,
}

impl StoreSnapshot {
    /// Looks a resource up by kind and name.
    pub fn get(&self, kind: ResourceKind, name: &str) -> Option<Resource> {
        match kind {
            ResourceKind::Cluster => self.clusters.get(name).cloned().map(Resource::Cluster),
            ResourceKind::Route => self.routes.get(name).cloned().map(Resource::Route),
            ResourceKind::Listener => self.listeners.get(name).cloned().map(Resource::Listener),
            ResourceKind::Certificate => self
                .certificates
                .get(name)
                .cloned()
                .map(Resource::Certificate),
            ResourceKind::Consumer => self.consumers.get(name).cloned().map(Resource::Consumer),
            ResourceKind::Policy => self.policies.get(name).cloned().map(Resource::Policy),
        }
    }

    /// All resources of a kind, ordered by name.
    pub fn list(&self, kind: ResourceKind) -> Vec<Resource> {
        fn all<T: Clone>(map: &BTreeMap<String, T>, wrap: fn(T) -> Resource) -> Vec<Resource> {
            map.values().cloned().map(wrap).collect()
        }
        match kind {
            ResourceKind::Cluster => all(&self.clusters, Resource::Cluster),
            ResourceKind::Route => all(&self.routes, Resource::Route),
            ResourceKind::Listener => all(&self.listeners, Resource::Listener),
            ResourceKind::Certificate => all(&self.certificates, Resource::Certificate),
            ResourceKind::Consumer => all(&self.consumers, Resource::Consumer),
            ResourceKind::Policy => all(&self.policies, Resource::Policy),
        }
    }

    fn put(&mut self, resource: Resource) {
        match resource {
            Resource::Cluster(c) => {
                self.clusters.insert(c.name.clone(), c);
            }
            Resource::Route(r) => {
                self.routes.insert(r.name.clone(), r);
            }
            Resource::Listener(l) => {
                self.listeners.insert(l.name.clone(), l);
            }
            Resource::Certificate(c) => {
                self.certificates.insert(c.name.clone(), c);
            }
            Resource::Consumer(c) => {
                self.consumers.insert(c.name.clone(), c);
            }
            Resource::Policy(p) => {
                self.policies.insert(p.name().to_owned(), p);
            }
        }
    }

    fn remove(&mut self, kind: ResourceKind, name: &str) -> bool {
        match kind {
            ResourceKind::Cluster => self.clusters.remove(name).is_some(),
            ResourceKind::Route => self.routes.remove(name).is_some(),
            ResourceKind::Listener => self.listeners.remove(name).is_some(),
            ResourceKind::Certificate => self.certificates.remove(name).is_some(),
            ResourceKind::Consumer => self.consumers.remove(name).is_some(),
            ResourceKind::Policy => self.policies.remove(name).is_some(),
        }
    }
}

/// One change in a write.
#[allow(clippy::large_enum_variant)] // see `Resource`
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create or replace a resource.
    Put(Resource),
    /// Remove a resource; removing one that does not exist is an error.
    Delete {
        /// Kind of the resource.
        kind: ResourceKind,
        /// Name of the resource.
        name: String,
    },
}

/// What one change did to one resource, as recorded in the revision history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ChangedResource {
    /// Kind of the resource.
    pub kind: ResourceKind,
    /// Name of the resource.
    pub name: String,
    /// `created`, `updated` or `deleted`.
    pub op: ChangeOp,
}

/// How a resource changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// It did not exist before.
    Created,
    /// It existed and now differs.
    Updated,
    /// It was removed.
    Deleted,
}

/// The outcome of a successful write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// The store's revision after the write. Unchanged when the write changed nothing.
    pub revision: u64,
    /// What changed; empty for a write that repeated the current state.
    pub changed: Vec<ChangedResource>,
    /// The configuration this write produced (for a dry run, would produce). Read the written
    /// resources from here, not from [`Store::current`]: a concurrent write may already have
    /// replaced or deleted them.
    pub snapshot: Arc<StoreSnapshot>,
}

/// Why a write was refused or failed. A refused write changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A resource is malformed.
    #[error("{kind} {name}: {source}")]
    Invalid {
        /// Kind of the resource.
        kind: ResourceKind,
        /// Name of the resource.
        name: String,
        /// The field and what is wrong with it.
        source: ValidationError,
    },
    /// The write would leave a dangling or conflicting reference.
    #[error(transparent)]
    Conflict(#[from] ReferenceError),
    /// A resource to delete does not exist.
    #[error("{kind} {name} not found")]
    NotFound {
        /// Kind of the resource.
        kind: ResourceKind,
        /// Name of the resource.
        name: String,
    },
    /// A revision that does not exist was named.
    #[error("revision {revision} does not exist (current is {current})")]
    UnknownRevision {
        /// The revision named.
        revision: u64,
        /// The current revision.
        current: u64,
    },
    /// The backend failed; the write was rolled back.
    #[error("store backend: {0}")]
    Backend(String),
}

/// One entry of the revision history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RevisionRecord {
    /// The revision number.
    pub revision: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub committed_at_ms: u64,
    /// What made it: `api`, `config` (a whole-config replace) or `rollback to N`.
    pub origin: String,
    /// What changed.
    pub changes: Vec<ChangedResource>,
}

/// Persistence behind the store. Implementations commit one revision atomically.
pub trait Backend: Send + 'static {
    /// Reads the latest committed configuration.
    fn load(&mut self) -> Result<StoreSnapshot, StoreError>;
    /// Commits `changes` as `revision` (exactly one more than the last) in one transaction.
    fn commit(
        &mut self,
        revision: u64,
        origin: &str,
        changes: &[(ChangedResource, Option<&Resource>)],
    ) -> Result<(), StoreError>;
    /// Up to `limit` history entries older than `before` (newest first).
    fn history(
        &mut self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RevisionRecord>, StoreError>;
    /// Every resource as it was at `revision`.
    fn state_at(&mut self, revision: u64) -> Result<Vec<Resource>, StoreError>;
    /// The server secret API keys are hashed under, created (random) on first use and kept.
    fn api_key_secret(&mut self) -> Result<Vec<u8>, StoreError>;
}

/// A new random secret for keyed hashes.
pub(crate) fn random_secret() -> Vec<u8> {
    use rand::RngCore;
    let mut secret = vec![0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    secret
}

/// One resource as a revision left it (`None`: deleted).
type RecordedChange = (ResourceKind, String, Option<Resource>);

/// A backend that keeps everything in memory, history included: for unit tests.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    history: Vec<(RevisionRecord, Vec<RecordedChange>)>,
    secret: Option<Vec<u8>>,
}

impl Backend for MemoryBackend {
    fn load(&mut self) -> Result<StoreSnapshot, StoreError> {
        let mut snapshot = StoreSnapshot::default();
        if let Some((last, _)) = self.history.last() {
            snapshot.revision = last.revision;
            for resource in self.state_at(last.revision)? {
                snapshot.put(resource);
            }
        }
        Ok(snapshot)
    }

    fn commit(
        &mut self,
        revision: u64,
        origin: &str,
        changes: &[(ChangedResource, Option<&Resource>)],
    ) -> Result<(), StoreError> {
        let record = RevisionRecord {
            revision,
            committed_at_ms: now_ms(),
            origin: origin.to_owned(),
            changes: changes.iter().map(|(c, _)| c.clone()).collect(),
        };
        let specs = changes
            .iter()
            .map(|(c, r)| (c.kind, c.name.clone(), r.cloned()))
            .collect();
        self.history.push((record, specs));
        Ok(())
    }

    fn history(
        &mut self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RevisionRecord>, StoreError> {
        Ok(self
            .history
            .iter()
            .rev()
            .filter(|(r, _)| before.is_none_or(|b| r.revision < b))
            .take(limit)
            .map(|(r, _)| r.clone())
            .collect())
    }

    fn state_at(&mut self, revision: u64) -> Result<Vec<Resource>, StoreError> {
        let mut state: BTreeMap<(ResourceKind, String), Resource> = BTreeMap::new();
        for (record, specs) in &self.history {
            if record.revision > revision {
                break;
            }
            for (kind, name, spec) in specs {
                match spec {
                    Some(resource) => state.insert((*kind, name.clone()), resource.clone()),
                    None => state.remove(&(*kind, name.clone())),
                };
            }
        }
        Ok(state.into_values().collect())
    }

    fn api_key_secret(&mut self) -> Result<Vec<u8>, StoreError> {
        Ok(self.secret.get_or_insert_with(random_secret).clone())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The store: serialises writes, validates them, commits them and publishes the result.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    // Writes hold this lock from validation to publication, so revisions are published in order
    // and each write validates against the state it will replace.
    backend: Mutex<Box<dyn Backend>>,
    feed: watch::Sender<Arc<StoreSnapshot>>,
    hasher: ApiKeyHasher,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("revision", &self.current().revision)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens a store over `backend`, loading its latest revision.
    pub fn open(mut backend: impl Backend) -> Result<Self, StoreError> {
        let snapshot = backend.load()?;
        let hasher = ApiKeyHasher::new(backend.api_key_secret()?);
        let (feed, _) = watch::channel(Arc::new(snapshot));
        Ok(Self {
            inner: Arc::new(Inner {
                backend: Mutex::new(Box::new(backend)),
                feed,
                hasher,
                metrics: Arc::new(Metrics::default()),
            }),
        })
    }

    /// A store that keeps nothing on disk: for unit tests.
    pub fn in_memory() -> Self {
        Self::open(MemoryBackend::default()).expect("memory backend cannot fail")
    }

    /// Opens (creating if needed) a SQLite store at `path`.
    pub fn sqlite(path: &std::path::Path) -> Result<Self, StoreError> {
        Self::open(SqliteBackend::open(path)?)
    }

    /// The control plane's metrics; the store records its writes here.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Hashes API keys under this store's server secret.
    pub fn api_key_hasher(&self) -> &ApiKeyHasher {
        &self.inner.hasher
    }

    /// The current configuration.
    pub fn current(&self) -> Arc<StoreSnapshot> {
        self.inner.feed.borrow().clone()
    }

    /// The change feed: a receiver that sees every published revision (or the latest of
    /// several published in quick succession).
    pub fn subscribe(&self) -> watch::Receiver<Arc<StoreSnapshot>> {
        self.inner.feed.subscribe()
    }

    /// Applies `changes` as one revision. Blocks the calling async task only for the commit
    /// itself, on a blocking thread.
    pub async fn write(&self, changes: Vec<Change>) -> Result<WriteOutcome, StoreError> {
        self.write_as(changes, "api").await
    }

    /// As [`Store::write`], recording `origin` in the revision history.
    pub async fn write_as(
        &self,
        changes: Vec<Change>,
        origin: &str,
    ) -> Result<WriteOutcome, StoreError> {
        let inner = self.inner.clone();
        let origin = origin.to_owned();
        tokio::task::spawn_blocking(move || inner.write(&origin, |_| Ok(changes)))
            .await
            .map_err(|e| StoreError::Backend(format!("write task failed: {e}")))?
    }

    /// Up to `limit` revisions older than `before`, newest first.
    pub async fn history(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RevisionRecord>, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.lock()?.history(before, limit))
            .await
            .map_err(|e| StoreError::Backend(format!("history task failed: {e}")))?
    }

    /// Makes a new revision whose configuration equals revision `target`'s.
    pub async fn rollback(&self, target: u64) -> Result<WriteOutcome, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.write(&format!("rollback to {target}"), |backend| {
                let current = inner.feed.borrow().revision;
                if target == 0 || target > current {
                    return Err(StoreError::UnknownRevision {
                        revision: target,
                        current,
                    });
                }
                let wanted = backend.state_at(target)?;
                Ok(replace_all(&inner.feed.borrow(), wanted))
            })
        })
        .await
        .map_err(|e| StoreError::Backend(format!("rollback task failed: {e}")))?
    }

    /// As [`Store::write`], but only reports what would change.
    pub fn dry_run(&self, changes: Vec<Change>) -> Result<WriteOutcome, StoreError> {
        let current = self.current();
        let (next, changed) = plan(&current, changes)?;
        Ok(WriteOutcome {
            revision: current.revision,
            changed,
            snapshot: Arc::new(next),
        })
    }
}

impl Inner {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Box<dyn Backend>>, StoreError> {
        self.backend
            .lock()
            .map_err(|_| StoreError::Backend("store lock poisoned".to_owned()))
    }

    /// Under the write lock: asks `changes` for the changes (it may read the backend), applies
    /// and validates them, commits and publishes.
    fn write(
        &self,
        origin: &str,
        changes: impl FnOnce(&mut dyn Backend) -> Result<Vec<Change>, StoreError>,
    ) -> Result<WriteOutcome, StoreError> {
        let started = std::time::Instant::now();
        let result = self.write_locked(origin, changes);
        let outcome = match &result {
            Ok(out) if out.changed.is_empty() => metrics::WriteOutcome::Unchanged,
            Ok(_) => metrics::WriteOutcome::Committed,
            Err(StoreError::Backend(_)) => metrics::WriteOutcome::Failed,
            Err(_) => metrics::WriteOutcome::Rejected,
        };
        self.metrics.store_write(outcome, started.elapsed());
        result
    }

    fn write_locked(
        &self,
        origin: &str,
        changes: impl FnOnce(&mut dyn Backend) -> Result<Vec<Change>, StoreError>,
    ) -> Result<WriteOutcome, StoreError> {
        let mut backend = self.lock()?;
        let changes = changes(backend.as_mut())?;
        let current = self.feed.borrow().clone();
        let (mut next, changed) = plan(&current, changes)?;
        if changed.is_empty() {
            return Ok(WriteOutcome {
                revision: current.revision,
                changed,
                snapshot: current,
            });
        }
        next.revision = current.revision + 1;
        next.committed_at = Some(std::time::Instant::now());
        let records: Vec<_> = changed
            .iter()
            .map(|c| (c.clone(), next.get(c.kind, &c.name)))
            .collect();
        let borrowed: Vec<_> = records
            .iter()
            .map(|(c, r)| (c.clone(), r.as_ref()))
            .collect();
        backend.commit(next.revision, origin, &borrowed)?;
        let revision = next.revision;
        tracing::info!(
            revision,
            origin,
            changes = changed.len(),
            "store revision committed"
        );
        let snapshot = Arc::new(next);
        self.feed.send_replace(snapshot.clone());
        Ok(WriteOutcome {
            revision,
            changed,
            snapshot,
        })
    }
}

/// Secrets are write-only, so clients cannot send them back: a certificate written without a
/// key keeps the key stored under its name, and a consumer written without API keys keeps its
/// stored key hashes. Every write path applies this before validating.
pub fn keep_stored_secrets(current: &StoreSnapshot, resource: &mut Resource) {
    match resource {
        Resource::Certificate(cert) if cert.key_pem.is_none() => {
            cert.key_pem = current
                .certificates
                .get(&cert.name)
                .and_then(|c| c.key_pem.clone());
        }
        Resource::Consumer(consumer) if consumer.api_key_hashes.is_none() => {
            consumer.api_key_hashes = current
                .consumers
                .get(&consumer.name)
                .and_then(|c| c.api_key_hashes.clone());
        }
        _ => {}
    }
}

/// The changes that turn `current` into exactly `wanted`: puts for every wanted resource,
/// deletes for the rest (unchanged ones are dropped when the write is planned).
pub fn replace_all(current: &StoreSnapshot, wanted: Vec<Resource>) -> Vec<Change> {
    let keep: std::collections::BTreeSet<(ResourceKind, &str)> =
        wanted.iter().map(|r| (r.kind(), r.name())).collect();
    let mut changes = Vec::new();
    for kind in ResourceKind::ALL {
        for resource in current.list(kind) {
            if !keep.contains(&(kind, resource.name())) {
                changes.push(Change::Delete {
                    kind,
                    name: resource.name().to_owned(),
                });
            }
        }
    }
    changes.extend(wanted.iter().cloned().map(Change::Put));
    changes
}

/// Applies `changes` to a copy of `current` and validates the result; no I/O.
fn plan(
    current: &StoreSnapshot,
    changes: Vec<Change>,
) -> Result<(StoreSnapshot, Vec<ChangedResource>), StoreError> {
    let mut next = current.clone();
    let mut touched: BTreeMap<(ResourceKind, String), ()> = BTreeMap::new();
    for change in changes {
        match change {
            Change::Put(mut resource) => {
                keep_stored_secrets(&next, &mut resource);
                resource.validate().map_err(|source| StoreError::Invalid {
                    kind: resource.kind(),
                    name: resource.name().to_owned(),
                    source,
                })?;
                touched.insert((resource.kind(), resource.name().to_owned()), ());
                next.put(resource);
            }
            Change::Delete { kind, name } => {
                if !next.remove(kind, &name) {
                    return Err(StoreError::NotFound { kind, name });
                }
                touched.insert((kind, name), ());
            }
        }
    }
    check_references(
        &next.clusters,
        &next.routes,
        &next.listeners,
        &next.certificates,
        &next.policies,
    )?;
    check_unique_api_keys(&next.consumers)?;
    let changed = touched
        .into_keys()
        .filter_map(|(kind, name)| {
            let op = match (current.get(kind, &name), next.get(kind, &name)) {
                (None, Some(_)) => ChangeOp::Created,
                (Some(a), Some(b)) if a != b => ChangeOp::Updated,
                (Some(_), None) => ChangeOp::Deleted,
                _ => return None,
            };
            Some(ChangedResource { kind, name, op })
        })
        .collect();
    Ok((next, changed))
}

#[cfg(test)]
mod tests;
