//! Declarative configuration: the whole store as one document (YAML or JSON), exported by
//! `GET /v1/config` and applied atomically by `PUT /v1/config`, like Kong's decK.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_control_plane::model::{
    ApiKeyHasher, Certificate, Cluster, Consumer, ConsumerSpec, Listener, Policy, Resource,
    ResourceKind, Route,
};
use tollgate_control_plane::store::{StoreError, StoreSnapshot, keep_stored_secrets, replace_all};

use crate::responses::{ConfigApplied, ConfigChange, ErrorBody};
use crate::{AdminState, ApiError};

/// The response header carrying the store revision of an exported document.
pub const REVISION_HEADER: &str = "tollgate-revision";

/// Everything in the store, in one document. Lists are ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigDocument {
    /// Upstream clusters.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// TLS certificates. Exported without their private keys; a certificate applied without
    /// `key_pem` keeps the key stored under its name.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// Consumers. Exported without their API keys; a consumer applied without `api_keys`
    /// keeps the keys stored under its name.
    #[serde(default)]
    pub consumers: Vec<ConsumerSpec>,
    /// Policies routes and listeners name.
    #[serde(default)]
    pub policies: Vec<Policy>,
}

impl ConfigDocument {
    /// The document describing `snapshot`.
    pub fn from_snapshot(snapshot: &StoreSnapshot) -> Self {
        Self {
            clusters: snapshot.clusters.values().cloned().collect(),
            routes: snapshot.routes.values().cloned().collect(),
            listeners: snapshot.listeners.values().cloned().collect(),
            certificates: snapshot
                .certificates
                .values()
                .map(Certificate::without_key)
                .collect(),
            consumers: snapshot.consumers.values().map(Consumer::to_spec).collect(),
            policies: snapshot.policies.values().cloned().collect(),
        }
    }

    /// The document's resources, each checked on its own; errors name the item, e.g.
    /// `routes[2].match.path_regex`.
    ///
    /// Stored secrets the document leaves out (exports omit them) are filled in first, by the
    /// store's own rule, so an exported document validates and re-applies unchanged.
    fn into_resources(
        self,
        hasher: &ApiKeyHasher,
        current: &StoreSnapshot,
    ) -> Result<Vec<(String, Resource)>, ApiError> {
        let mut consumers = Vec::with_capacity(self.consumers.len());
        for (i, spec) in self.consumers.into_iter().enumerate() {
            let path = format!("consumers[{i}]");
            let consumer = spec
                .into_consumer(hasher)
                .map_err(|e| ApiError::InvalidField {
                    field: format!("{path}.{}", e.field),
                    message: e.message,
                })?;
            consumers.push((path, Resource::Consumer(consumer)));
        }
        let mut out = Vec::new();
        let items = self
            .clusters
            .into_iter()
            .enumerate()
            .map(|(i, c)| (format!("clusters[{i}]"), Resource::Cluster(c)))
            .chain(
                self.routes
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (format!("routes[{i}]"), Resource::Route(r))),
            )
            .chain(
                self.listeners
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| (format!("listeners[{i}]"), Resource::Listener(l))),
            )
            .chain(
                self.certificates
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| (format!("certificates[{i}]"), Resource::Certificate(c))),
            )
            .chain(consumers)
            .chain(
                self.policies
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| (format!("policies[{i}]"), Resource::Policy(p))),
            );
        let mut seen = std::collections::HashSet::new();
        for (path, mut resource) in items {
            keep_stored_secrets(current, &mut resource);
            resource.validate().map_err(|e| ApiError::InvalidField {
                field: format!("{path}.{}", e.field),
                message: e.message,
            })?;
            if !seen.insert((resource.kind(), resource.name().to_owned())) {
                return Err(ApiError::InvalidField {
                    field: format!("{path}.name"),
                    message: format!("duplicate {} {}", resource.kind(), resource.name()),
                });
            }
            out.push((path, resource));
        }
        Ok(out)
    }
}

/// Whether a media type names YAML.
fn is_yaml(media_type: Option<&HeaderValue>) -> bool {
    media_type.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').any(|part| {
            let essence = part.split(';').next().unwrap_or_default().trim();
            matches!(
                essence,
                "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml"
            )
        })
    })
}

/// Export the whole configuration (JSON, or YAML when `Accept: application/yaml`).
#[utoipa::path(get, path = "/config", tag = "config",
    responses(
        (status = 200, description = "The configuration document; the `tollgate-revision` header carries its revision",
            content((ConfigDocument = "application/json"), (ConfigDocument = "application/yaml"))),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
pub(crate) async fn export(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let snapshot = state.store.current();
    let document = ConfigDocument::from_snapshot(&snapshot);
    let (content_type, body) = if is_yaml(headers.get(header::ACCEPT)) {
        let yaml = serde_saphyr::to_string(&document)
            .map_err(|e| ApiError::Internal(format!("yaml export: {e}")))?;
        ("application/yaml", yaml)
    } else {
        let mut json = serde_json::to_string_pretty(&document)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        json.push('\n');
        ("application/json", json)
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::HeaderName::from_static(REVISION_HEADER),
                HeaderValue::from(snapshot.revision),
            ),
        ],
        body,
    )
        .into_response())
}

/// Whether to only report the changes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ApplyQuery {
    /// Report what would change, change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Replace the whole configuration atomically; with `dry_run=true`, return the diff instead.
#[utoipa::path(put, path = "/config", tag = "config", params(ApplyQuery),
    request_body(content((ConfigDocument = "application/json"), (ConfigDocument = "application/yaml"))),
    responses(
        (status = 200, description = "Applied (or, on a dry run, what would change)", body = ConfigApplied),
        (status = 400, description = "Invalid document; `field` names the item, e.g. `routes[2].match.path_regex`", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Read-only token", body = ErrorBody),
        (status = 409, description = "A reference that does not hold", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ))]
pub(crate) async fn apply(
    State(state): State<AdminState>,
    Query(query): Query<ApplyQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ConfigApplied>, ApiError> {
    let document: ConfigDocument = if is_yaml(headers.get(header::CONTENT_TYPE)) {
        let body = crate::handlers::body_bytes(body)?;
        let text = std::str::from_utf8(&body).map_err(|_| ApiError::InvalidJson {
            field: None,
            message: "request body is not UTF-8".to_owned(),
        })?;
        serde_saphyr::from_str(text).map_err(|e| ApiError::InvalidJson {
            field: None,
            message: format!("request body is not a valid config document: {e}"),
        })?
    } else {
        crate::handlers::parse_body(body)?
    };
    let current = state.store.current();
    let items = document.into_resources(state.store.api_key_hasher(), &current)?;
    let index: HashMap<(ResourceKind, String), String> = items
        .iter()
        .map(|(path, r)| ((r.kind(), r.name().to_owned()), path.clone()))
        .collect();
    let wanted: Vec<Resource> = items.into_iter().map(|(_, r)| r).collect();
    let wanted_by_key: HashMap<(ResourceKind, String), Resource> = wanted
        .iter()
        .map(|r| ((r.kind(), r.name().to_owned()), r.clone()))
        .collect();
    let changes = replace_all(&current, wanted);
    // Reference errors name the document item holding the reference, e.g. `routes[1].cluster`.
    let located = |e: StoreError| match e {
        StoreError::Conflict(reference) => {
            let path = index.get(&(reference.kind, reference.name.clone()));
            ApiError::Conflict {
                field: path.map_or(reference.field.clone(), |p| {
                    format!("{p}.{}", reference.field)
                }),
                message: reference.to_string(),
            }
        }
        other => other.into(),
    };
    let outcome = if query.dry_run {
        state.store.dry_run(changes).map_err(located)?
    } else {
        state
            .store
            .write_as(changes, "config")
            .await
            .map_err(located)?
    };
    let as_json = |r: Option<Resource>| {
        r.map(|r| {
            serde_json::from_str::<Value>(&r.redacted().to_json()).expect("resources are JSON")
        })
    };
    let changes = outcome
        .changed
        .into_iter()
        .map(|c| {
            let (before, after) = if query.dry_run {
                // The diff: each changed resource as it is and as it would be.
                (
                    as_json(current.get(c.kind, &c.name)),
                    as_json(wanted_by_key.get(&(c.kind, c.name.clone())).cloned()),
                )
            } else {
                (None, None)
            };
            ConfigChange {
                kind: c.kind,
                name: c.name,
                op: c.op,
                before,
                after,
            }
        })
        .collect();
    Ok(Json(ConfigApplied {
        revision: outcome.revision,
        dry_run: query.dry_run,
        changes,
    }))
}
