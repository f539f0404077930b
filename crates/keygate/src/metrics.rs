//! `GET /metrics`: Prometheus text exposition on the main port.
//!
//! Open by default — the labels name routes, MCP methods and statuses only, never a tenant,
//! user, tool or integration — or behind a bearer token (`telemetry.metrics_token`) for
//! gateways whose traffic volumes are themselves sensitive. `telemetry.metrics_enabled = false`
//! removes the route.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keygate_trace::Telemetry;

#[derive(Clone)]
struct MetricsState {
    telemetry: Arc<Telemetry>,
    /// The expected token, stored hashed for a constant-time comparison.
    token_hash: Option<Arc<str>>,
}

pub fn router(telemetry: Arc<Telemetry>, token: Option<String>) -> Router {
    let token_hash = token.map(|t| keygate_auth::secret::hash_secret(&t).into());
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(MetricsState {
            telemetry,
            token_hash,
        })
}

async fn metrics(State(state): State<MetricsState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.token_hash {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|t| keygate_auth::secret::verify_secret(t, expected)) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required",
            )
                .into_response();
        }
    }
    let body = state.telemetry.metrics.render(&state.telemetry.sink);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
