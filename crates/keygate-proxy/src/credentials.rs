//! The upstream credential for a request, by the integration's `authMode`. The agent's own
//! token is never among the candidates.

use axum::http::HeaderValue;
use keygate_core::model::{AuthMode, Integration};
use keygate_core::{Secret, UserId};
use serde_json::Value;

use crate::ProxyState;
use crate::error::ProxyError;
use crate::gate::McpCaller;

/// A cached credential lookup: the header to send (if any), or "this user must connect".
#[derive(Clone)]
pub enum Cached {
    Header(Option<HeaderValue>),
    Missing,
}

/// The `Authorization` value to send upstream, if any. A user without a connection gets
/// [`ProxyError::ConnectionRequired`] (with a null request id, for the caller to fill in).
/// Lookups are cached for the store's change generation.
pub async fn authorization(
    state: &ProxyState,
    caller: &McpCaller,
    integration: &Integration,
) -> Result<Option<HeaderValue>, ProxyError> {
    let per_user = matches!(integration.auth_mode, AuthMode::UserToken | AuthMode::Oauth);
    let key = (
        integration.id,
        if per_user {
            caller.user
        } else {
            UserId(uuid::Uuid::nil())
        },
    );
    let generation = state.auth.store.generation();
    let cached = match state.cache.credentials.get(&key, generation) {
        Some(c) => c,
        None => {
            let c = lookup(state, caller, integration).await?;
            state.cache.credentials.put(key, generation, c.clone());
            c
        }
    };
    match cached {
        Cached::Header(h) => Ok(h),
        Cached::Missing => {
            let (_, _, connect_url) = keygate_auth::connect::create_connect_session(
                &state.auth,
                caller.app.org_id,
                caller.app.id,
                caller.user,
            )
            .await?;
            Err(ProxyError::ConnectionRequired {
                request_id: Value::Null,
                integration_id: integration.id.to_string(),
                integration_name: integration.name.clone(),
                connect_url,
            })
        }
    }
}

async fn lookup(
    state: &ProxyState,
    caller: &McpCaller,
    integration: &Integration,
) -> Result<Cached, ProxyError> {
    let secret = state
        .auth
        .store
        .upstream_credential(integration, Some(caller.user))
        .await?;
    match (integration.auth_mode, secret) {
        (_, Some(secret)) => Ok(Cached::Header(Some(bearer(&secret)?))),
        (AuthMode::None, None) => Ok(Cached::Header(None)),
        (AuthMode::ServerToken, None) => Err(ProxyError::Internal(format!(
            "integration {} has no server token",
            integration.id
        ))),
        (AuthMode::UserToken | AuthMode::Oauth, None) => Ok(Cached::Missing),
    }
}

fn bearer(secret: &Secret) -> Result<HeaderValue, ProxyError> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", secret.expose())).map_err(|_| {
            ProxyError::Internal("the stored credential is not a valid header value".into())
        })?;
    value.set_sensitive(true);
    Ok(value)
}
