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

/// Parses a JSON body, reporting the path of the field that failed.
fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
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
    })?;
    let mut deserializer = serde_json::Deserializer::from_slice(&body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = (path != "." && !inner.is_syntax() && !inner.is_eof()).then_some(path);
        let message = if field.is_some() {
            inner.to_string()
        } else {
            format!("request body is not valid JSON: {inner}")
        };
        ApiError::InvalidJson { field, message }
    })?;
    deserializer.end().map_err(|e| ApiError::InvalidJson {
        field: None,
        message: format!("request body is not valid JSON: {e}"),
    })?;
    Ok(value)
}

/// `GET /healthz`: liveness, without auth.
pub(crate) async fn healthz(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({"status": "ok", "revision": state.store.current().revision}))
}

/// `GET /v1/{kind}`: every resource of the kind, by name.
pub(crate) async fn list<K: Kind>(State(state): State<AdminState>) -> Json<Value> {
    let snapshot = state.store.current();
    let items: Vec<Value> = snapshot.list(K::KIND).iter().map(resource_json).collect();
    Json(json!({"revision": snapshot.revision, "items": items}))
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
    let revision: u64 = revision.parse().map_err(|_| ApiError::InvalidField {
        field: "revision".to_owned(),
        message: format!("{revision:?} is not a revision number"),
    })?;
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
