//! The application's attached integrations (cached), and the answer to an unknown `/mcp/…`
//! path.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use keygate_core::model::{Application, Integration};

use crate::ProxyState;
use crate::error::ProxyError;
use crate::stage::authenticate;

/// The application's attached, active integrations, in attachment order (cached).
pub async fn attached(
    state: &ProxyState,
    app: &Application,
) -> Result<Arc<Vec<Arc<Integration>>>, ProxyError> {
    let store = &state.auth.store;
    let generation = store.generation();
    if let Some(list) = state.cache.attached.get(&app.id, generation) {
        return Ok(list);
    }
    let found = store.attached_integrations(app.org_id, app.id).await?;
    let list = Arc::new(found.into_iter().map(Arc::new).collect::<Vec<_>>());
    state.cache.attached.put(app.id, generation, list.clone());
    Ok(list)
}

/// One of the application's attached integrations, by slug or id.
pub async fn attached_by_ref(
    state: &ProxyState,
    app: &Application,
    r: &str,
) -> Result<Arc<Integration>, ProxyError> {
    let list = attached(state, app).await?;
    list.iter()
        .find(|i| i.slug == r || names_id(r, i))
        .cloned()
        .ok_or(ProxyError::NotFound("Integration not found"))
}

/// Whether `r` is the integration's id as it prints (hyphenated, lowercase).
fn names_id(r: &str, integration: &Integration) -> bool {
    let mut buf = uuid::Uuid::encode_buffer();
    r.len() == uuid::fmt::Hyphenated::LENGTH
        && integration.id.0.hyphenated().encode_lower(&mut buf) == r
}

/// Any other path under `/mcp/…`: authenticated first (an agent without a token learns where
/// to get one), then `404`.
pub async fn unknown(State(state): State<ProxyState>, req: Request) -> Response {
    match authenticate::caller(&state, req.headers(), req.uri()).await {
        Ok(_) => ProxyError::NotFound("No such runtime endpoint").into_response(),
        Err(e) => e.into_response(),
    }
}
