//! Request handlers: parse, call the store or registry, answer with typed JSON bodies.
//!
//! Every `/v1` operation is annotated for the OpenAPI document; the router is built from these
//! annotations (see `lib.rs`), so an operation cannot be served without being documented.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tollgate_control_plane::model::{
    ApiKeyHasher, Certificate, Cluster, ConsumerSpec, Listener, Policy, Resource, ResourceKind,
    Route, validate_name,
};
use tollgate_control_plane::store::{Change, ChangeOp, StoreError};
use utoipa::IntoParams;

use crate::responses::{
    CertificateView, CertificateWritten, ClusterWritten, ConsumerView, ConsumerWritten, ErrorBody,
    Health, ListenerWritten, NodeList, Page, PolicyWritten, RevisionEntry, RevisionHistory,
    RevisionStatusBody, RolledBack, RouteWritten, Written,
};
use crate::{AdminState, ApiError, MAX_BODY_BYTES};

/// A resource kind served under `/v1/{plural}`.
pub(crate) trait Kind {
    /// What clients send.
    type Spec: DeserializeOwned;
    /// What clients are shown (secrets left out).
    type View: serde::Serialize;
    type Written: serde::Serialize;
    const KIND: ResourceKind;
    fn into_resource(
        spec: Self::Spec,
        name: String,
        hasher: &ApiKeyHasher,
    ) -> Result<Resource, ApiError>;
    fn from_resource(resource: Resource) -> Option<Self::View>;
    fn written(revision: u64, changed: bool, view: Self::View) -> Self::Written;
}

/// Body names must agree with the path; an absent body name takes the path's.
fn adopt_name(body_name: &mut String, path_name: String) -> Result<(), ApiError> {
    if !body_name.is_empty() && *body_name != path_name {
        return Err(ApiError::InvalidField {
            field: "name".to_owned(),
            message: format!("body names {body_name:?} but the path names {path_name:?}"),
        });
    }
    *body_name = path_name;
    Ok(())
}

macro_rules! kind {
    ($marker:ident, $spec:ident, $written:ident, $field:ident, $kind:expr) => {
        pub(crate) struct $marker;
        impl Kind for $marker {
            type Spec = $spec;
            type View = $spec;
            type Written = $written;
            const KIND: ResourceKind = $kind;
            fn into_resource(
                mut spec: $spec,
                name: String,
                _hasher: &ApiKeyHasher,
            ) -> Result<Resource, ApiError> {
                adopt_name(&mut spec.name, name)?;
                Ok(Resource::$spec(spec))
            }
            fn from_resource(resource: Resource) -> Option<$spec> {
                match resource {
                    Resource::$spec(spec) => Some(spec),
                    _ => None,
                }
            }
            fn written(revision: u64, changed: bool, $field: $spec) -> $written {
                $written {
                    revision,
                    changed,
                    $field,
                }
            }
        }
    };
}

kind!(
    Clusters,
    Cluster,
    ClusterWritten,
    cluster,
    ResourceKind::Cluster
);
kind!(Routes, Route, RouteWritten, route, ResourceKind::Route);
kind!(
    Listeners,
    Listener,
    ListenerWritten,
    listener,
    ResourceKind::Listener
);

pub(crate) struct Policies;
impl Kind for Policies {
    type Spec = Policy;
    type View = Policy;
    type Written = PolicyWritten;
    const KIND: ResourceKind = ResourceKind::Policy;
    fn into_resource(
        mut spec: Policy,
        name: String,
        _hasher: &ApiKeyHasher,
    ) -> Result<Resource, ApiError> {
        let mut body_name = spec.name().to_owned();
        adopt_name(&mut body_name, name)?;
        spec.set_name(body_name);
        Ok(Resource::Policy(spec))
    }
    fn from_resource(resource: Resource) -> Option<Policy> {
        match resource {
            Resource::Policy(policy) => Some(policy),
            _ => None,
        }
    }
    fn written(revision: u64, changed: bool, policy: Policy) -> PolicyWritten {
        PolicyWritten {
            revision,
            changed,
            policy,
        }
    }
}

pub(crate) struct Certificates;
impl Kind for Certificates {
    type Spec = Certificate;
    type View = CertificateView;
    type Written = CertificateWritten;
    const KIND: ResourceKind = ResourceKind::Certificate;
    fn into_resource(
        mut spec: Certificate,
        name: String,
        _hasher: &ApiKeyHasher,
    ) -> Result<Resource, ApiError> {
        adopt_name(&mut spec.name, name)?;
        Ok(Resource::Certificate(spec))
    }
    fn from_resource(resource: Resource) -> Option<CertificateView> {
        match resource {
            Resource::Certificate(cert) => CertificateView::of(&cert),
            _ => None,
        }
    }
    fn written(revision: u64, changed: bool, certificate: CertificateView) -> CertificateWritten {
        CertificateWritten {
            revision,
            changed,
            certificate,
        }
    }
}

pub(crate) struct Consumers;
impl Kind for Consumers {
    type Spec = ConsumerSpec;
    type View = ConsumerView;
    type Written = ConsumerWritten;
    const KIND: ResourceKind = ResourceKind::Consumer;
    fn into_resource(
        mut spec: ConsumerSpec,
        name: String,
        hasher: &ApiKeyHasher,
    ) -> Result<Resource, ApiError> {
        adopt_name(&mut spec.name, name)?;
        let consumer = spec
            .into_consumer(hasher)
            .map_err(|e| ApiError::InvalidField {
                field: e.field,
                message: e.message,
            })?;
        Ok(Resource::Consumer(consumer))
    }
    fn from_resource(resource: Resource) -> Option<ConsumerView> {
        match resource {
            Resource::Consumer(consumer) => Some(ConsumerView::of(&consumer)),
            _ => None,
        }
    }
    fn written(revision: u64, changed: bool, consumer: ConsumerView) -> ConsumerWritten {
        ConsumerWritten {
            revision,
            changed,
            consumer,
        }
    }
}

fn check_path_name(name: &str) -> Result<(), ApiError> {
    validate_name(name).map_err(|e| ApiError::InvalidField {
        field: "name".to_owned(),
        message: e.message,
    })
}

/// The request body, or the error for one that could not be read (413 when too large).
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            }
        } else {
            ApiError::InvalidJson {
                field: None,
                message: rejection.body_text(),
            }
        }
    })
}

/// Parses a JSON body, reporting the path of the field that failed.
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body_bytes(body)?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson {
        field: None,
        message: format!("request body is not valid JSON: {e}"),
    })?;
    // Serde's derived structs also accept arrays; every resource is a JSON object.
    if !value.is_object() {
        return Err(ApiError::InvalidJson {
            field: None,
            message: "request body must be a JSON object".to_owned(),
        });
    }
    serde_path_to_error::deserialize(value).map_err(|e| ApiError::InvalidJson {
        field: Some(e.path().to_string()).filter(|p| p != "."),
        message: e.into_inner().to_string(),
    })
}

/// Page size when `limit` is not given, and the largest accepted.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Paging through a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// Return resources named after this (the previous page's `next`).
    after: Option<String>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::InvalidField {
            field: "limit".to_owned(),
            message: format!("must be between 1 and {MAX_PAGE}"),
        }),
    }
}

async fn list<K: Kind>(
    state: AdminState,
    page: PageQuery,
) -> Result<Json<Page<K::View>>, ApiError> {
    let limit = page_limit(page.limit)?;
    let snapshot = state.store.current();
    let all = snapshot.list(K::KIND);
    let start = page
        .after
        .as_deref()
        .map_or(0, |after| all.partition_point(|r| r.name() <= after));
    let next = (start + limit < all.len()).then(|| all[start + limit - 1].name().to_owned());
    let items = all
        .into_iter()
        .skip(start)
        .take(limit)
        .filter_map(K::from_resource)
        .collect();
    Ok(Json(Page {
        revision: snapshot.revision,
        items,
        next,
    }))
}

async fn get_one<K: Kind>(state: AdminState, name: String) -> Result<Json<K::View>, ApiError> {
    check_path_name(&name)?;
    state
        .store
        .current()
        .get(K::KIND, &name)
        .and_then(K::from_resource)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("{} {name} not found", K::KIND)))
}

async fn put<K: Kind>(
    state: AdminState,
    name: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<K::Written>), ApiError> {
    check_path_name(&name)?;
    let spec: K::Spec = parse_body(body)?;
    let resource = K::into_resource(spec, name.clone(), state.store.api_key_hasher())?;
    let outcome = state.store.write(vec![Change::Put(resource)]).await?;
    let created = outcome.changed.iter().any(|c| c.op == ChangeOp::Created);
    // From the snapshot this write produced: a concurrent write may already have replaced or
    // deleted the resource in the store's current state.
    let stored = outcome
        .snapshot
        .get(K::KIND, &name)
        .and_then(K::from_resource)
        .ok_or_else(|| ApiError::Internal(format!("{} {name} missing after its write", K::KIND)))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(K::written(
            outcome.revision,
            !outcome.changed.is_empty(),
            stored,
        )),
    ))
}

async fn delete<K: Kind>(state: AdminState, name: String) -> Result<Json<Written>, ApiError> {
    check_path_name(&name)?;
    let outcome = state
        .store
        .write(vec![Change::Delete {
            kind: K::KIND,
            name: name.clone(),
        }])
        .await
        .map_err(|e| match e {
            StoreError::Conflict(reference) => ApiError::Conflict {
                message: format!(
                    "{} {name} is still in use: {} {} refers to it in {}",
                    K::KIND,
                    reference.kind,
                    reference.name,
                    reference.field
                ),
                field: "name".to_owned(),
            },
            other => other.into(),
        })?;
    Ok(Json(Written {
        revision: outcome.revision,
    }))
}

/// Declares the documented list/get/put/delete operations of one resource kind.
macro_rules! resource_endpoints {
    ($module:ident, $kind:ident, $spec:ident, $view:ident, $written:ident, $tag:tt, $collection:tt, $item:tt) => {
        pub(crate) mod $module {
            use super::*;

            /// List resources, a page at a time, ordered by name.
            #[utoipa::path(get, path = $collection, tag = $tag, params(PageQuery),
                responses(
                    (status = 200, description = "A page of resources", body = Page<$view>),
                    (status = 400, description = "Bad paging parameters", body = ErrorBody),
                    (status = 401, description = "Missing or wrong token", body = ErrorBody),
                ))]
            pub(crate) async fn list(
                State(state): State<AdminState>,
                Query(page): Query<PageQuery>,
            ) -> Result<Json<Page<$view>>, ApiError> {
                super::list::<$kind>(state, page).await
            }

            /// Read one resource.
            #[utoipa::path(get, path = $item, tag = $tag,
                params(("name" = String, Path, description = "Resource name")),
                responses(
                    (status = 200, description = "The resource", body = $view),
                    (status = 400, description = "Invalid name", body = ErrorBody),
                    (status = 401, description = "Missing or wrong token", body = ErrorBody),
                    (status = 404, description = "No such resource", body = ErrorBody),
                ))]
            pub(crate) async fn get(
                State(state): State<AdminState>,
                Path(name): Path<String>,
            ) -> Result<Json<$view>, ApiError> {
                super::get_one::<$kind>(state, name).await
            }

            /// Create or replace a resource (idempotent).
            #[utoipa::path(put, path = $item, tag = $tag,
                params(("name" = String, Path, description = "Resource name")),
                request_body(content = $spec, content_type = "application/json"),
                responses(
                    (status = 200, description = "Replaced, or unchanged", body = $written),
                    (status = 201, description = "Created", body = $written),
                    (status = 400, description = "Invalid body or name; `field` names the offending field", body = ErrorBody),
                    (status = 401, description = "Missing or wrong token", body = ErrorBody),
                    (status = 403, description = "Read-only token", body = ErrorBody),
                    (status = 409, description = "Refers to something that does not exist, or conflicts", body = ErrorBody),
                    (status = 413, description = "Body too large", body = ErrorBody),
                ))]
            pub(crate) async fn put(
                State(state): State<AdminState>,
                Path(name): Path<String>,
                body: Result<Bytes, BytesRejection>,
            ) -> Result<(StatusCode, Json<$written>), ApiError> {
                super::put::<$kind>(state, name, body).await
            }

            /// Delete a resource.
            #[utoipa::path(delete, path = $item, tag = $tag,
                params(("name" = String, Path, description = "Resource name")),
                responses(
                    (status = 200, description = "Deleted", body = Written),
                    (status = 400, description = "Invalid name", body = ErrorBody),
                    (status = 401, description = "Missing or wrong token", body = ErrorBody),
                    (status = 403, description = "Read-only token", body = ErrorBody),
                    (status = 404, description = "No such resource", body = ErrorBody),
                    (status = 409, description = "Still used by another resource", body = ErrorBody),
                ))]
            pub(crate) async fn delete(
                State(state): State<AdminState>,
                Path(name): Path<String>,
            ) -> Result<Json<Written>, ApiError> {
                super::delete::<$kind>(state, name).await
            }
        }
    };
}

resource_endpoints!(
    clusters,
    Clusters,
    Cluster,
    Cluster,
    ClusterWritten,
    "clusters",
    "/clusters",
    "/clusters/{name}"
);
resource_endpoints!(
    routes,
    Routes,
    Route,
    Route,
    RouteWritten,
    "routes",
    "/routes",
    "/routes/{name}"
);
resource_endpoints!(
    listeners,
    Listeners,
    Listener,
    Listener,
    ListenerWritten,
    "listeners",
    "/listeners",
    "/listeners/{name}"
);

resource_endpoints!(
    certificates,
    Certificates,
    Certificate,
    CertificateView,
    CertificateWritten,
    "certificates",
    "/certificates",
    "/certificates/{name}"
);

resource_endpoints!(
    consumers,
    Consumers,
    ConsumerSpec,
    ConsumerView,
    ConsumerWritten,
    "consumers",
    "/consumers",
    "/consumers/{name}"
);

resource_endpoints!(
    policies,
    Policies,
    Policy,
    Policy,
    PolicyWritten,
    "policies",
    "/policies",
    "/policies/{name}"
);

/// Liveness, without auth.
pub(crate) async fn healthz(State(state): State<AdminState>) -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        revision: state.store.current().revision,
    })
}

/// Prometheus metrics, without auth (they carry counts, never names or secrets).
pub(crate) async fn metrics(State(state): State<AdminState>) -> impl axum::response::IntoResponse {
    let body = state
        .store
        .metrics()
        .render(state.store.current().revision, &state.registry.list());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// Connected proxies and what each has acked or rejected.
#[utoipa::path(get, path = "/nodes", tag = "fleet",
    responses(
        (status = 200, description = "Connected nodes", body = NodeList),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
pub(crate) async fn nodes(State(state): State<AdminState>) -> Json<NodeList> {
    Json(NodeList {
        nodes: state.registry.list(),
    })
}

/// Waiting for convergence.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StatusQuery {
    /// Block until no node is pending, up to this long (`5s`, `500ms`, `1m`; at most 60 s).
    wait: Option<String>,
}

/// The longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// How many connected nodes hold revision `n`, and which rejected it.
#[utoipa::path(get, path = "/revisions/{revision}/status", tag = "fleet",
    params(("revision" = u64, Path, description = "Store revision"), StatusQuery),
    responses(
        (status = 200, description = "Convergence of the revision", body = RevisionStatusBody),
        (status = 400, description = "Bad revision or wait", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "Revision does not exist yet", body = ErrorBody),
    ))]
pub(crate) async fn revision_status(
    State(state): State<AdminState>,
    Path(revision): Path<String>,
    Query(query): Query<StatusQuery>,
) -> Result<Json<RevisionStatusBody>, ApiError> {
    let revision = parse_revision(&revision)?;
    let current = state.store.current().revision;
    if revision > current {
        return Err(ApiError::NotFound(format!(
            "revision {revision} does not exist yet (current is {current})"
        )));
    }
    let wait = match query.wait.as_deref() {
        None => Duration::ZERO,
        Some(text) => parse_duration(text).ok_or_else(|| ApiError::InvalidField {
            field: "wait".to_owned(),
            message: format!("{text:?} is not a duration like 5s or 500ms"),
        })?,
    }
    .min(MAX_WAIT);
    let status = state.registry.wait_revision(revision, wait).await;
    Ok(Json(RevisionStatusBody {
        status,
        current_revision: state.store.current().revision,
    }))
}

/// Paging through the history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// Return revisions older than this (the previous page's `next`).
    before: Option<u64>,
}

/// The revision history, newest first.
#[utoipa::path(get, path = "/revisions", tag = "revisions", params(HistoryQuery),
    responses(
        (status = 200, description = "Revisions, newest first", body = RevisionHistory),
        (status = 400, description = "Bad paging parameters", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
pub(crate) async fn revisions(
    State(state): State<AdminState>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<RevisionHistory>, ApiError> {
    let limit = page_limit(query.limit)?;
    let records = state.store.history(query.before, limit).await?;
    let next = (records.len() == limit)
        .then(|| records.last().map(|r| r.revision))
        .flatten()
        .filter(|r| *r > 1);
    let items = records
        .into_iter()
        .map(|r| RevisionEntry {
            revision: r.revision,
            committed_at: rfc3339_ms(r.committed_at_ms),
            committed_at_ms: r.committed_at_ms,
            origin: r.origin,
            changes: r.changes,
        })
        .collect();
    Ok(Json(RevisionHistory {
        current: state.store.current().revision,
        items,
        next,
    }))
}

/// Make a new revision whose configuration equals revision `n`'s.
#[utoipa::path(post, path = "/revisions/{revision}/rollback", tag = "revisions",
    params(("revision" = u64, Path, description = "The revision to restore")),
    responses(
        (status = 200, description = "Rolled back", body = RolledBack),
        (status = 400, description = "Bad revision", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Read-only token", body = ErrorBody),
        (status = 404, description = "No such revision", body = ErrorBody),
        (status = 409, description = "The old configuration conflicts", body = ErrorBody),
    ))]
pub(crate) async fn rollback(
    State(state): State<AdminState>,
    Path(revision): Path<String>,
) -> Result<Json<RolledBack>, ApiError> {
    let revision = parse_revision(&revision)?;
    let outcome = state.store.rollback(revision).await?;
    Ok(Json(RolledBack {
        revision: outcome.revision,
        rolled_back_to: revision,
        changes: outcome.changed,
    }))
}

fn parse_revision(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| ApiError::InvalidField {
        field: "revision".to_owned(),
        message: format!("{text:?} is not a revision number"),
    })
}

/// Formats milliseconds since the Unix epoch as RFC 3339 (UTC, millisecond precision).
fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parses `5s`, `500ms`, `1m` or a bare number of seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// Fallback for unknown paths.
pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".to_owned())
}

#[cfg(test)]
pub(crate) fn parse_duration_for_tests(text: &str) -> Option<Duration> {
    parse_duration(text)
}
