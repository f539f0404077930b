//! The credential stage (after the policy stage, before the send): the `Authorization` an
//! integration gets upstream for the caller, as the shared resolver decides it
//! ([`keygate_auth::credential`]), cached per store generation. The agent's own token is never
//! among the candidates. After an upstream `401` to an OAuth token, [`after_rejection`] gives
//! the send stage's one retry its refreshed token.
//!
//! Deciding writes nothing. A user who must connect first is reported
//! ([`Authorization::NeedsConnection`], [`ProxyError::NotConnected`]); the connect link of the
//! `-32042` answer is minted by [`with_connect_link`] only where that answer is sent, so an
//! aggregated `tools/list` that merely leaves an unconnected integration out costs no link.

use axum::http::HeaderValue;
use keygate_auth::broker::BrokerError;
use keygate_auth::credential::{self, CredentialError, Resolved};
use keygate_core::model::Integration;
use keygate_core::{IntegrationId, Secret, Timestamp, UserId};

use super::Call;
use crate::ProxyState;
use crate::error::ProxyError;
use crate::stage::McpCaller;

/// A cached decision: the header to send (if any) and, for an OAuth token, when it is due for
/// a refresh; or "this user must connect".
#[derive(Clone)]
pub enum Cached {
    Header(Option<HeaderValue>, Option<Timestamp>),
    Missing,
}

/// What the credential stage decided for one integration.
pub enum Authorization {
    /// Send with this `Authorization` (none for an integration without a credential).
    Header(Option<HeaderValue>),
    /// The user must connect the integration first.
    NeedsConnection,
}

/// The credential to send upstream for the call's caller. Lookups are cached for the store's
/// change generation; an OAuth token only while it is fresh, after which the broker refreshes
/// it.
pub async fn authorization(call: Call<'_>) -> Result<Authorization, ProxyError> {
    let Call {
        state,
        caller,
        integration,
        ..
    } = call;
    let key = cache_key(caller, integration);
    let generation = state.auth.store.generation();
    let cached = match state.cache.credentials.get(&key, generation) {
        Some(Cached::Header(h, refresh_at)) if state.auth.broker.is_fresh(refresh_at) => {
            Cached::Header(h, refresh_at)
        }
        Some(Cached::Missing) => Cached::Missing,
        _ => {
            // Boxed: a miss may refresh an OAuth token, a future far larger than the hit's,
            // which every caller would otherwise carry (and copy) on every request.
            let resolved = Box::pin(credential::resolve(&state.auth, integration, caller.user))
                .await
                .map_err(|e| resolve_error(e).of_integration(integration))?;
            let c = match resolved {
                Resolved::Credential(c) => Cached::Header(Some(bearer(&c.secret)?), c.refresh_at),
                Resolved::None => Cached::Header(None, None),
                Resolved::NeedsConnection(_) => Cached::Missing,
            };
            state.cache.credentials.put(key, generation, c.clone());
            c
        }
    };
    Ok(match cached {
        Cached::Header(h, _) => Authorization::Header(h),
        Cached::Missing => Authorization::NeedsConnection,
    })
}

/// After the upstream answered 401 to `sent`: for an OAuth integration, a refreshed token to
/// retry with once (`None` when there is nothing better to send), or
/// [`ProxyError::NotConnected`] when the grant is gone.
pub async fn after_rejection(
    call: Call<'_>,
    sent: Option<&HeaderValue>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let Call {
        state,
        caller,
        integration,
        ..
    } = call;
    let Some(rejected) = sent
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Ok(None);
    };
    let rejected = Secret::new(rejected);
    let replaced = credential::replace_refused(&state.auth, integration, caller.user, &rejected)
        .await
        .map_err(|e| resolve_error(e).of_integration(integration))?;
    match replaced {
        Some(Resolved::Credential(fresh)) => {
            let header = bearer(&fresh.secret)?;
            state.cache.credentials.put(
                cache_key(caller, integration),
                state.auth.store.generation(),
                Cached::Header(Some(header.clone()), fresh.refresh_at),
            );
            Ok(Some(header))
        }
        Some(Resolved::NeedsConnection(_)) => Err(not_connected(integration)),
        Some(Resolved::None) | None => Ok(None),
    }
}

/// "`caller` must connect `integration` first", without a link yet.
pub fn not_connected(integration: &Integration) -> ProxyError {
    ProxyError::NotConnected {
        integration_id: integration.id.to_string(),
        integration_name: integration.name.clone(),
    }
}

/// Readies an error for the client: a [`ProxyError::NotConnected`] becomes the `-32042` answer,
/// with a connect link minted now; any other error is returned as is. Call it only where the
/// answer is sent (which answers it with the request's id, as every error).
pub async fn with_connect_link(
    state: &ProxyState,
    caller: &McpCaller,
    error: ProxyError,
) -> ProxyError {
    let ProxyError::NotConnected {
        integration_id,
        integration_name,
    } = error
    else {
        return error;
    };
    match connect_link(state, caller).await {
        Ok(connect_url) => ProxyError::ConnectionRequired {
            integration_id,
            integration_name,
            connect_url,
        },
        Err(e) => e,
    }
}

/// A new connect link for `caller` (one connect-session row).
pub async fn connect_link(state: &ProxyState, caller: &McpCaller) -> Result<String, ProxyError> {
    let (_, _, url) = keygate_auth::connect::create_connect_session(
        &state.auth,
        caller.app.org_id,
        caller.app.id,
        caller.user,
    )
    .await?;
    Ok(url)
}

fn cache_key(caller: &McpCaller, integration: &Integration) -> (IntegrationId, UserId) {
    let per_user = integration.auth_mode.is_per_user();
    (
        integration.id,
        if per_user {
            caller.user
        } else {
            UserId(uuid::Uuid::nil())
        },
    )
}

/// A resolver's failure: the store's, an incomplete setup (the gateway's), unusable OAuth
/// settings, or the OAuth provider's (an upstream failure: it passes).
fn resolve_error(e: CredentialError) -> ProxyError {
    match e {
        CredentialError::Store(e) => e.into(),
        e @ CredentialError::NoServerToken(_) => ProxyError::internal("the credential", e),
        CredentialError::Broker(e @ BrokerError::Config(_)) => ProxyError::Misconfigured {
            integration: None,
            what: "the integration's OAuth settings",
            cause: Some(Box::new(e)),
        },
        CredentialError::Broker(e) => ProxyError::upstream("the OAuth provider", e),
    }
}

fn bearer(secret: &Secret) -> Result<HeaderValue, ProxyError> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", secret.expose())).map_err(|_| {
            ProxyError::Internal {
                what: "the stored credential is not a valid header value".into(),
                cause: None,
            }
        })?;
    value.set_sensitive(true);
    Ok(value)
}
