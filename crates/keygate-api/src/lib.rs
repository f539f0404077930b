//! keygate's management REST API, `/api/v1`, wire-compatible with the Kontext API.
//!
//! Handlers live in [`routes`], one file per resource. Every route is registered through
//! `utoipa-axum`, so `/api/openapi.json` is generated from the same code that serves requests.
//! Requests pass, in order: request id → caller verification and rate limit (keyed on the
//! principal, or the client address before authentication) → body limit → handler, whose
//! extractors ([`extract`], [`caller`]) turn bad input into [`ApiError`]s in the one flat error
//! format.
#![forbid(unsafe_code)]

pub mod caller;
pub mod dto;
pub mod error;
pub mod extract;
pub mod overlay;
pub mod probe;
pub mod rate_limit;
pub mod request_id;
pub mod routes;
pub mod ui;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get};
use axum::{Extension, Json, Router, middleware};
use keygate_auth::AuthState;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

pub use caller::Caller;
pub use error::ApiError;
pub use rate_limit::Limiter;

/// What the management handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub auth: AuthState,
    /// Connectivity checks for `POST /integrations/:id/validate`.
    pub prober: Arc<dyn probe::Prober>,
    /// The trace pipeline: the live tail wakes when it writes.
    pub traces: keygate_trace::TraceSink,
    /// The tools the gateway has seen each integration list (the access graph's overlay).
    pub tools: Arc<keygate_policy::ToolCatalog>,
}

impl ApiState {
    pub fn store(&self) -> &keygate_store::Store {
        &self.auth.store
    }

    pub fn public_url(&self) -> &str {
        &self.auth.public_url
    }
}

/// Settings of the API layer.
#[derive(Clone)]
pub struct ApiOptions {
    pub max_body_bytes: usize,
    pub limiter: Limiter,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keygate management API", description = "Wire-compatible with the Kontext management API."),
    modifiers(&BearerAuth),
    tags(
        (name = "applications"), (name = "integrations"), (name = "service-accounts"),
        (name = "policies"), (name = "sessions"), (name = "traces"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document, generated from the registered routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) = api_routes().split_for_parts();
    doc
}

fn api_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/api/v1", routes::routes())
}

/// `/api/v1/*` and `/api/openapi.json`.
pub fn router(state: ApiState, options: ApiOptions) -> Router {
    let ui_state = state.clone();
    let (api, mut doc) = api_routes().split_for_parts();
    // The paths carry their `/api/v1` prefix, so the server is the gateway's own origin.
    doc.servers = Some(vec![utoipa::openapi::Server::new(
        state.auth.public_url.trim_end_matches('/'),
    )]);
    let doc = Arc::new(doc);
    let api = api
        .route("/api/v1/{*rest}", any(unknown_route))
        .layer(Extension(extract::MaxBody(options.max_body_bytes)))
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            (state.clone(), options.limiter),
            rate_limit::layer,
        ))
        .with_state(state);
    let api = Router::new()
        .route(
            "/api/openapi.json",
            get(move || async move { Json(doc.as_ref().clone()) }),
        )
        .merge(api)
        .layer(middleware::from_fn(request_id::layer));
    api.clone().merge(ui::router(ui_state, api))
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("No such endpoint")
}
