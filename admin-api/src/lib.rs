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
pub mod responses;

pub use error::ApiError;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use tollgate_control_plane::store::Store;
use tollgate_control_plane::xds::nodes::NodeRegistry;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// The OpenAPI document's fixed parts; operations and schemas come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Tollgate admin API", description = "Manage Tollgate's routes, clusters and listeners, and watch the fleet take them up."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// Declares the bearer-token security scheme.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// Every `/v1` operation, registered with its OpenAPI annotation: an operation cannot be served
/// without being in the document.
fn v1_routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::clusters::list))
        .routes(routes!(
            handlers::clusters::get,
            handlers::clusters::put,
            handlers::clusters::delete
        ))
        .routes(routes!(handlers::routes::list))
        .routes(routes!(
            handlers::routes::get,
            handlers::routes::put,
            handlers::routes::delete
        ))
        .routes(routes!(handlers::listeners::list))
        .routes(routes!(
            handlers::listeners::get,
            handlers::listeners::put,
            handlers::listeners::delete
        ))
        .routes(routes!(handlers::certificates::list))
        .routes(routes!(
            handlers::certificates::get,
            handlers::certificates::put,
            handlers::certificates::delete
        ))
        .routes(routes!(handlers::policies::list))
        .routes(routes!(
            handlers::policies::get,
            handlers::policies::put,
            handlers::policies::delete
        ))
        .routes(routes!(handlers::consumers::list))
        .routes(routes!(
            handlers::consumers::get,
            handlers::consumers::put,
            handlers::consumers::delete
        ))
        .routes(routes!(handlers::nodes))
        .routes(routes!(handlers::revisions))
        .routes(routes!(handlers::revision_status))
        .routes(routes!(handlers::rollback))
        .routes(routes!(config::export, config::apply))
}

/// The OpenAPI document of the admin API, with `/v1` paths.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/v1", v1_routes())
        .split_for_parts();
    add_openapi_path(&mut api);
    fold_tags_into_variants(&mut api, "Policy");
    api
}

/// Rewrites an internally tagged enum's schema (`#[serde(tag = "type")]`) into a `oneOf` of its
/// variants with a discriminator, moving the tag property into each variant's object schema.
///
/// utoipa describes each variant as `allOf: [variant, {type}]`; with variants that refuse
/// unknown fields (`additionalProperties: false`) nothing can satisfy both halves, so clients
/// generating bodies from the document (schemathesis) could produce none.
fn fold_tags_into_variants(api: &mut utoipa::openapi::OpenApi, enum_name: &str) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{Discriminator, OneOf, Schema};
    let Some(components) = api.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::OneOf(tagged))) = components.schemas.get(enum_name).cloned() else {
        return;
    };
    let mut variants = OneOf::new();
    variants.description = tagged.description.clone();
    let mut discriminator = Discriminator::new("type");
    for item in &tagged.items {
        let RefOr::T(Schema::AllOf(parts)) = item else {
            return;
        };
        let (Some(RefOr::Ref(variant)), Some(RefOr::T(Schema::Object(tag)))) =
            (parts.items.first(), parts.items.get(1))
        else {
            return;
        };
        let name = variant.ref_location.rsplit('/').next().unwrap_or_default();
        let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(name) else {
            return;
        };
        for (property, schema) in &tag.properties {
            object.properties.insert(property.clone(), schema.clone());
            if let RefOr::T(Schema::Object(values)) = schema
                && let Some(value) = values.enum_values.iter().flatten().next()
                && let Some(value) = value.as_str()
            {
                discriminator
                    .mapping
                    .insert(value.to_owned(), variant.ref_location.clone());
            }
        }
        for required in &tag.required {
            if !object.required.contains(required) {
                object.required.insert(0, required.clone());
            }
        }
        variants.items.push(RefOr::Ref(variant.clone()));
    }
    variants.discriminator = Some(discriminator);
    components
        .schemas
        .insert(enum_name.to_owned(), RefOr::T(Schema::OneOf(variants)));
}

/// Documents `GET /v1/openapi.json` itself.
fn add_openapi_path(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder};
    use utoipa::openapi::{ContentBuilder, ObjectBuilder, ResponseBuilder};
    let operation = OperationBuilder::new()
        .summary(Some("This OpenAPI document"))
        .tag("meta")
        .response(
            "200",
            ResponseBuilder::new()
                .description("OpenAPI 3 document")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new()))
                        .build(),
                ),
        )
        .build();
    api.paths
        .add_path_operation("/v1/openapi.json", vec![HttpMethod::Get], operation);
}

/// Builds the admin API router.
pub fn router(state: AdminState) -> Router {
    let document = Arc::new(openapi());
    let (v1, _) = v1_routes()
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .fallback(handlers::not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin_token,
        ))
        .split_for_parts();
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .nest("/v1", v1)
        .fallback(handlers::not_found)
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[cfg(test)]
mod tests;
