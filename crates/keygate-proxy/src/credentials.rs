//! The upstream credential for a request, by the integration's `authMode`. The agent's own
//! token is never among the candidates.

use axum::http::HeaderValue;
use keygate_core::Secret;
use keygate_core::model::{AuthMode, Integration};
use keygate_store::StoreError;
use serde_json::Value;

use crate::ProxyState;
use crate::error::ProxyError;
use crate::gate::McpCaller;

/// The `Authorization` value to send upstream, if any. A user without a connection gets
/// [`ProxyError::ConnectionRequired`] (with a null request id, for the caller to fill in).
pub async fn authorization(
    state: &ProxyState,
    caller: &McpCaller,
    integration: &Integration,
) -> Result<Option<HeaderValue>, ProxyError> {
    let store = &state.auth.store;
    let org = caller.app.org_id;
    let secret = match integration.auth_mode {
        AuthMode::None => return Ok(None),
        AuthMode::ServerToken => store
            .integration_server_token(org, integration.id)
            .await?
            .ok_or_else(|| {
                ProxyError::Internal(format!(
                    "integration {} has no server token",
                    integration.id
                ))
            })?,
        AuthMode::UserToken | AuthMode::Oauth => {
            match store
                .connection_credential(org, integration.id, caller.user)
                .await
            {
                Ok(s) => s,
                Err(StoreError::NotFound) => {
                    return Err(ProxyError::ConnectionRequired {
                        request_id: Value::Null,
                        integration_id: integration.id.to_string(),
                        integration_name: integration.name.clone(),
                        connect_url: format!(
                            "{}/oauth/connect?integration={}",
                            state.auth.public_url, integration.id
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    bearer(&secret).map(Some)
}

fn bearer(secret: &Secret) -> Result<HeaderValue, ProxyError> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", secret.expose())).map_err(|_| {
            ProxyError::Internal("the stored credential is not a valid header value".into())
        })?;
    value.set_sensitive(true);
    Ok(value)
}
