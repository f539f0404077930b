//! The upstream credential for a request, by the integration's `authMode`. The agent's own
//! token is never among the candidates.

use axum::http::HeaderValue;
use keygate_auth::broker::BrokerError;
use keygate_core::model::{AuthMode, Integration};
use keygate_core::{IntegrationId, Secret, Timestamp, UserId};

use crate::ProxyState;
use crate::error::ProxyError;
use crate::gate::McpCaller;

/// A cached credential lookup: the header to send (if any) and, for an OAuth token, when it
/// is due for a refresh; or "this user must connect".
#[derive(Clone)]
pub enum Cached {
    Header(Option<HeaderValue>, Option<Timestamp>),
    Missing,
}

/// The `Authorization` value to send upstream, if any. A user without a connection gets
/// [`ProxyError::ConnectionRequired`] (answered with the request's id, as every error is).
/// Lookups are cached for the store's change generation; an OAuth token only while it is
/// fresh, after which the broker refreshes it.
pub async fn authorization(
    state: &ProxyState,
    caller: &McpCaller,
    integration: &Integration,
) -> Result<Option<HeaderValue>, ProxyError> {
    let key = cache_key(caller, integration);
    let generation = state.auth.store.generation();
    let cached = match state.cache.credentials.get(&key, generation) {
        Some(Cached::Header(h, refresh_at)) if state.auth.broker.is_fresh(refresh_at) => {
            Cached::Header(h, refresh_at)
        }
        Some(Cached::Missing) => Cached::Missing,
        _ => {
            let c = lookup(state, caller, integration).await?;
            state.cache.credentials.put(key, generation, c.clone());
            c
        }
    };
    match cached {
        Cached::Header(h, _) => Ok(h),
        Cached::Missing => Err(connection_required(state, caller, integration).await),
    }
}

/// After the upstream answered 401 to `sent`: for an OAuth integration, a refreshed token to
/// retry with once (`None` when there is nothing better to send).
pub async fn after_rejection(
    state: &ProxyState,
    caller: &McpCaller,
    integration: &Integration,
    sent: Option<&HeaderValue>,
) -> Result<Option<HeaderValue>, ProxyError> {
    if integration.auth_mode != AuthMode::Oauth {
        return Ok(None);
    }
    let Some(rejected) = sent
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Ok(None);
    };
    let rejected = Secret::new(rejected);
    match state
        .auth
        .broker
        .refresh_rejected(integration, caller.user, &rejected)
        .await
    {
        Ok(fresh) if fresh.access != rejected => {
            let header = bearer(&fresh.access)?;
            state.cache.credentials.put(
                cache_key(caller, integration),
                state.auth.store.generation(),
                Cached::Header(Some(header.clone()), fresh.refresh_at),
            );
            Ok(Some(header))
        }
        Ok(_) => Ok(None),
        Err(BrokerError::NotConnected | BrokerError::Disconnected) => {
            Err(connection_required(state, caller, integration).await)
        }
        Err(e) => Err(broker_error(e)),
    }
}

fn cache_key(caller: &McpCaller, integration: &Integration) -> (IntegrationId, UserId) {
    let per_user = matches!(integration.auth_mode, AuthMode::UserToken | AuthMode::Oauth);
    (
        integration.id,
        if per_user {
            caller.user
        } else {
            UserId(uuid::Uuid::nil())
        },
    )
}

/// `-32042` with a fresh connect link.
async fn connection_required(
    state: &ProxyState,
    caller: &McpCaller,
    integration: &Integration,
) -> ProxyError {
    match keygate_auth::connect::create_connect_session(
        &state.auth,
        caller.app.org_id,
        caller.app.id,
        caller.user,
    )
    .await
    {
        Ok((_, _, connect_url)) => ProxyError::ConnectionRequired {
            integration_id: integration.id.to_string(),
            integration_name: integration.name.clone(),
            connect_url,
        },
        Err(e) => e.into(),
    }
}

fn broker_error(e: BrokerError) -> ProxyError {
    match e {
        BrokerError::Store(e) => e.into(),
        other => ProxyError::Upstream(other.to_string()),
    }
}

async fn lookup(
    state: &ProxyState,
    caller: &McpCaller,
    integration: &Integration,
) -> Result<Cached, ProxyError> {
    if integration.auth_mode == AuthMode::Oauth {
        return match state
            .auth
            .broker
            .access_token(integration, caller.user)
            .await
        {
            Ok(fresh) => Ok(Cached::Header(
                Some(bearer(&fresh.access)?),
                fresh.refresh_at,
            )),
            Err(BrokerError::NotConnected | BrokerError::Disconnected) => Ok(Cached::Missing),
            Err(e) => Err(broker_error(e)),
        };
    }
    let secret = state
        .auth
        .store
        .upstream_credential(integration, Some(caller.user))
        .await?;
    match (integration.auth_mode, secret) {
        (_, Some(secret)) => Ok(Cached::Header(Some(bearer(&secret)?), None)),
        (AuthMode::None, None) => Ok(Cached::Header(None, None)),
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
