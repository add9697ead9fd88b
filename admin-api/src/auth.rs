//! Admin authentication: a bearer token, compared in constant time.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::{AdminState, ApiError};

/// Rejects calls without `Authorization: Bearer <admin token>`; the read-only token, when
/// configured, may only read.
pub(crate) async fn require_admin_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented else {
        return Err(ApiError::Unauthorized("missing bearer token"));
    };
    // ct_eq compares equal-length slices in constant time (and returns false at once for
    // different lengths, which only reveals a token's length).
    let matches = |expected: &str| bool::from(token.as_bytes().ct_eq(expected.as_bytes()));
    if matches(&state.admin_token) {
        return Ok(next.run(request).await);
    }
    if state.read_only_token.as_deref().is_some_and(matches) {
        if request.method() == Method::GET || request.method() == Method::HEAD {
            return Ok(next.run(request).await);
        }
        return Err(ApiError::Forbidden(
            "the read-only token cannot change configuration",
        ));
    }
    Err(ApiError::Unauthorized("invalid bearer token"))
}
