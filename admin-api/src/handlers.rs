//! Request handlers: parse, call the store or registry, answer JSON.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tollgate_control_plane::model::{
    Cluster, Listener, Resource, ResourceKind, Route, validate_name,
};
use tollgate_control_plane::store::{Change, ChangeOp, StoreError};

use crate::{AdminState, ApiError, MAX_BODY_BYTES};

/// A resource kind served under `/v1/{plural}`.
pub(crate) trait Kind {
    type Spec: DeserializeOwned;
    const KIND: ResourceKind;
    fn into_resource(spec: Self::Spec, name: String) -> Result<Resource, ApiError>;
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

pub(crate) struct Clusters;
impl Kind for Clusters {
    type Spec = Cluster;
    const KIND: ResourceKind = ResourceKind::Cluster;
    fn into_resource(mut spec: Cluster, name: String) -> Result<Resource, ApiError> {
        adopt_name(&mut spec.name, name)?;
        Ok(Resource::Cluster(spec))
    }
}

pub(crate) struct Routes;
impl Kind for Routes {
    type Spec = Route;
    const KIND: ResourceKind = ResourceKind::Route;
    fn into_resource(mut spec: Route, name: String) -> Result<Resource, ApiError> {
        adopt_name(&mut spec.name, name)?;
        Ok(Resource::Route(spec))
    }
}

pub(crate) struct Listeners;
impl Kind for Listeners {
    type Spec = Listener;
    const KIND: ResourceKind = ResourceKind::Listener;
    fn into_resource(mut spec: Listener, name: String) -> Result<Resource, ApiError> {
        adopt_name(&mut spec.name, name)?;
        Ok(Resource::Listener(spec))
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

/// `GET /healthz`: liveness, without auth.
pub(crate) async fn healthz(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({"status": "ok", "revision": state.store.current().revision}))
}

/// Page size when `limit` is not given, and the largest accepted.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    limit: Option<usize>,
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

/// `GET /v1/{kind}[?limit=100&after=NAME]`: resources of the kind ordered by name, a page at a
/// time; `next` is the `after` for the following page, null on the last.
pub(crate) async fn list<K: Kind>(
    State(state): State<AdminState>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(page.limit)?;
    let snapshot = state.store.current();
    let all = snapshot.list(K::KIND);
    let start = page
        .after
        .as_deref()
        .map_or(0, |after| all.partition_point(|r| r.name() <= after));
    let items: Vec<Value> = all[start..].iter().take(limit).map(resource_json).collect();
    let next = (start + limit < all.len()).then(|| all[start + limit - 1].name().to_owned());
    Ok(Json(
        json!({"revision": snapshot.revision, "items": items, "next": next}),
    ))
}

/// `GET /v1/{kind}/{name}`.
pub(crate) async fn get_one<K: Kind>(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_path_name(&name)?;
    state
        .store
        .current()
        .get(K::KIND, &name)
        .map(|r| Json(resource_json(&r)))
        .ok_or_else(|| ApiError::NotFound(format!("{} {name} not found", K::KIND)))
}

/// `PUT /v1/{kind}/{name}`: create or replace.
pub(crate) async fn put<K: Kind>(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_path_name(&name)?;
    let spec: K::Spec = parse_body(body)?;
    let resource = K::into_resource(spec, name.clone())?;
    let outcome = state.store.write(vec![Change::Put(resource)]).await?;
    let created = outcome.changed.iter().any(|c| c.op == ChangeOp::Created);
    let stored = state
        .store
        .current()
        .get(K::KIND, &name)
        .map(|r| resource_json(&r))
        .unwrap_or(Value::Null);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "revision": outcome.revision,
            "changed": !outcome.changed.is_empty(),
            K::KIND.as_str(): stored,
        })),
    )
        .into_response())
}

/// `DELETE /v1/{kind}/{name}`.
pub(crate) async fn delete<K: Kind>(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({"revision": outcome.revision})))
}

/// `GET /v1/nodes`: connected proxies and what they acked.
pub(crate) async fn nodes(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({"nodes": state.registry.list()}))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatusQuery {
    wait: Option<String>,
}

/// The longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// `GET /v1/revisions/{n}/status[?wait=5s]`.
pub(crate) async fn revision_status(
    State(state): State<AdminState>,
    Path(revision): Path<String>,
    Query(query): Query<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
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
    let mut body = serde_json::to_value(status).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["current_revision"] = current.into();
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

/// `GET /v1/revisions[?limit=100&before=N]`: the revision history, newest first.
pub(crate) async fn revisions(
    State(state): State<AdminState>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(query.limit)?;
    let records = state.store.history(query.before, limit).await?;
    let next = (records.len() == limit)
        .then(|| records.last().map(|r| r.revision))
        .flatten()
        .filter(|r| *r > 1);
    let items: Vec<Value> = records
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).expect("history serializes");
            v["committed_at"] = rfc3339_ms(r.committed_at_ms).into();
            v
        })
        .collect();
    Ok(Json(
        json!({"current": state.store.current().revision, "items": items, "next": next}),
    ))
}

/// `POST /v1/revisions/{n}/rollback`: a new revision equal to revision `n`.
pub(crate) async fn rollback(
    State(state): State<AdminState>,
    Path(revision): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let revision = parse_revision(&revision)?;
    let outcome = state.store.rollback(revision).await?;
    Ok(Json(json!({
        "revision": outcome.revision,
        "rolled_back_to": revision,
        "changes": outcome.changed,
    })))
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

fn resource_json(resource: &Resource) -> Value {
    serde_json::from_str(&resource.to_json()).expect("stored resources are JSON")
}

#[cfg(test)]
pub(crate) fn parse_duration_for_tests(text: &str) -> Option<Duration> {
    parse_duration(text)
}
