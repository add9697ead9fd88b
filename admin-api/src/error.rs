//! API errors and their one mapping to HTTP responses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tollgate_control_plane::store::StoreError;

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not of the expected shape.
    #[error("{message}")]
    InvalidJson {
        /// Path of the field where parsing failed, if any.
        field: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// A field's value is not acceptable.
    #[error("{field}: {message}")]
    InvalidField {
        /// Path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The write would leave a dangling or conflicting reference.
    #[error("{message}")]
    Conflict {
        /// The field holding the reference.
        field: String,
        /// What conflicts.
        message: String,
    },
    /// No or a wrong token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The token may not do this (a read-only token writing).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The body exceeds the limit.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A fault on our side; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidJson { .. } => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict { .. } => (StatusCode::CONFLICT, "reference_conflict"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidJson { field, .. } => field.as_deref(),
            Self::InvalidField { field, .. } | Self::Conflict { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(detail) = &self {
            tracing::error!(detail, "admin api internal error");
        }
        let mut error = json!({"code": code, "message": self.to_string()});
        if let Some(field) = self.field() {
            error["field"] = field.into();
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Invalid { source, .. } => Self::InvalidField {
                field: source.field,
                message: source.message,
            },
            StoreError::Conflict(e) => Self::Conflict {
                message: e.to_string(),
                field: e.field,
            },
            e @ (StoreError::NotFound { .. } | StoreError::UnknownRevision { .. }) => {
                Self::NotFound(e.to_string())
            }
            StoreError::Backend(detail) => Self::Internal(detail),
        }
    }
}
