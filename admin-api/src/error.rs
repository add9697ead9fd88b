//! API errors and their one mapping to HTTP responses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tollgate_control_plane::store::StoreError;

use crate::responses::{ErrorBody, ErrorDetail};

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
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                field: self.field().map(str::to_owned),
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
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

/// Turns the error responses axum's own extractors and router produce (plain text or empty:
/// bad query strings, unsupported methods) into the JSON error body every client expects.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_error || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    // "Failed to deserialize query string: limit: invalid digit found in string"
    let query_field = text
        .strip_prefix("Failed to deserialize query string: ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(field, _)| !field.is_empty() && !field.contains(' '));
    let (code, field, message) = match (status, query_field) {
        (StatusCode::BAD_REQUEST, Some((field, reason))) => (
            "invalid_field",
            Some(field.to_owned()),
            format!("{field}: {reason}"),
        ),
        (StatusCode::BAD_REQUEST, None) => ("invalid_request", None, text),
        (StatusCode::METHOD_NOT_ALLOWED, _) => (
            "method_not_allowed",
            None,
            "this endpoint does not support the method".to_owned(),
        ),
        (StatusCode::PAYLOAD_TOO_LARGE, _) => ("payload_too_large", None, text),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, _) => ("unsupported_media_type", None, text),
        _ => ("error", None, text),
    };
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            field,
            message: if message.is_empty() {
                status.canonical_reason().unwrap_or("error").to_lowercase()
            } else {
                message
            },
        },
    };
    let mut response = (status, Json(body)).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}
