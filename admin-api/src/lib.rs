//! The admin REST API: how people and CI pipelines change Tollgate.
//!
//! An axum router over the control plane's [`Store`] (writes, reads) and
//! [`NodeRegistry`] (what the fleet has taken up). Every call but `/healthz` needs the admin
//! bearer token; errors are JSON and name the offending field; a rejected write changes nothing.

mod auth;
pub mod client;
pub mod config;
mod error;
mod handlers;

pub use error::ApiError;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tollgate_control_plane::store::Store;
use tollgate_control_plane::xds::nodes::NodeRegistry;

/// The largest request body accepted (a whole-config upload fits comfortably).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The configuration store.
    pub store: Store,
    /// Connected nodes and what they acked.
    pub registry: Arc<NodeRegistry>,
    /// The bearer token that may do everything.
    pub admin_token: Arc<str>,
    /// A bearer token that may only read (`GET`), if configured.
    pub read_only_token: Option<Arc<str>>,
}

/// Builds the admin API router.
pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/clusters", get(handlers::list::<handlers::Clusters>))
        .route(
            "/clusters/{name}",
            get(handlers::get_one::<handlers::Clusters>)
                .put(handlers::put::<handlers::Clusters>)
                .delete(handlers::delete::<handlers::Clusters>),
        )
        .route("/routes", get(handlers::list::<handlers::Routes>))
        .route(
            "/routes/{name}",
            get(handlers::get_one::<handlers::Routes>)
                .put(handlers::put::<handlers::Routes>)
                .delete(handlers::delete::<handlers::Routes>),
        )
        .route("/listeners", get(handlers::list::<handlers::Listeners>))
        .route(
            "/listeners/{name}",
            get(handlers::get_one::<handlers::Listeners>)
                .put(handlers::put::<handlers::Listeners>)
                .delete(handlers::delete::<handlers::Listeners>),
        )
        .route("/nodes", get(handlers::nodes))
        .route("/revisions", get(handlers::revisions))
        .route(
            "/revisions/{revision}/status",
            get(handlers::revision_status),
        )
        .route(
            "/revisions/{revision}/rollback",
            axum::routing::post(handlers::rollback),
        )
        .route("/config", get(config::export).put(config::apply))
        .fallback(handlers::not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin_token,
        ));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .nest("/v1", v1)
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[cfg(test)]
mod tests;
