//! Admin authentication: a bearer token, compared in constant time.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::{AdminState, ApiError};

/// Rejects calls without `Authorization: Bearer <admin token>`.
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
    match presented {
        None => Err(ApiError::Unauthorized("missing bearer token")),
        // ct_eq compares equal-length slices in constant time (and returns false at once for
        // different lengths, which only reveals the token's length).
        Some(token) if bool::from(token.as_bytes().ct_eq(state.admin_token.as_bytes())) => {
            Ok(next.run(request).await)
        }
        Some(_) => Err(ApiError::Unauthorized("invalid bearer token")),
    }
}
