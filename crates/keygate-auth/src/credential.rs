//! Which upstream credential an integration gets for a user: the one decision behind the proxy
//! (which injects it) and token exchange (which hands it out).
//!
//! [`resolve`] answers a [`Credential`] (and what it is), "the user must connect first", or
//! "none needed", and writes nothing of its own: a missing credential is reported, not turned
//! into a connect link — whoever actually tells the client mints that
//! ([`crate::connect::create_connect_session`]). The only write it can cause is an OAuth
//! token refresh that is due, which the broker coalesces ([`crate::broker::refresh`]).

use keygate_core::model::{AuthMode, Integration};
use keygate_core::{IntegrationId, Secret, Timestamp, UserId};
use keygate_store::StoreError;

use crate::broker::BrokerError;
use crate::broker::refresh::Fresh;
use crate::router::AuthState;

/// What a credential is, which also says whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The organization's token, configured on the integration.
    ServerToken,
    /// A token the user stored on the connect page.
    UserToken,
    /// The user's upstream OAuth access token, kept fresh by the broker.
    OAuth,
}

impl Kind {
    /// The kind of credential an `authMode` calls for; `None` for an integration without one.
    pub fn of(mode: AuthMode) -> Option<Kind> {
        match mode {
            AuthMode::None => None,
            AuthMode::ServerToken => Some(Kind::ServerToken),
            AuthMode::UserToken => Some(Kind::UserToken),
            AuthMode::Oauth => Some(Kind::OAuth),
        }
    }

    /// Whether the credential is the user's own rather than the organization's.
    pub fn is_users(self) -> bool {
        self != Kind::ServerToken
    }
}

/// A credential to use upstream.
#[derive(Clone, Debug)]
pub struct Credential {
    pub kind: Kind,
    pub secret: Secret,
    /// When it expires, if known (OAuth tokens that say so).
    pub expires_at: Option<Timestamp>,
    /// When it is due for a refresh ahead of expiry (`None`: never).
    pub refresh_at: Option<Timestamp>,
}

impl Credential {
    fn oauth(fresh: Fresh) -> Self {
        Self {
            kind: Kind::OAuth,
            secret: fresh.access,
            expires_at: fresh.expires_at,
            refresh_at: fresh.refresh_at,
        }
    }
}

/// Why the user must connect the integration first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// There is no connection yet.
    NotConnected,
    /// The connection's grant is gone (a refresh was refused, or there is no refresh token).
    Disconnected,
}

/// The decision for one integration and user.
#[derive(Clone, Debug)]
pub enum Resolved {
    Credential(Credential),
    NeedsConnection(Missing),
    /// The integration uses no credential (`authMode: none`).
    None,
}

/// Why no decision could be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A `server_token` integration whose token is not stored: the gateway's setup is
    /// incomplete.
    #[error("integration {0} has no server token")]
    NoServerToken(IntegrationId),
    /// The OAuth provider failed, or the integration's OAuth settings cannot be used.
    #[error(transparent)]
    Broker(BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The credential `integration` uses for `user` now: the server token, the user's stored token,
/// or the user's OAuth access token (refreshed first when it is due).
pub async fn resolve(
    auth: &AuthState,
    integration: &Integration,
    user: UserId,
) -> Result<Resolved, CredentialError> {
    let Some(kind) = Kind::of(integration.auth_mode) else {
        return Ok(Resolved::None);
    };
    if kind == Kind::OAuth {
        return from_broker(auth.broker.access_token(integration, user).await);
    }
    let secret = auth
        .store
        .upstream_credential(integration, Some(user))
        .await?;
    match (secret, kind) {
        (Some(secret), _) => Ok(Resolved::Credential(Credential {
            kind,
            secret,
            expires_at: None,
            refresh_at: None,
        })),
        (None, Kind::ServerToken) => Err(CredentialError::NoServerToken(integration.id)),
        (None, _) => Ok(Resolved::NeedsConnection(Missing::NotConnected)),
    }
}

/// After the upstream refused `refused`: for an OAuth integration, the token to send instead —
/// a peer's refresh if one replaced it meanwhile, else one refresh of our own — or that the
/// user must connect again. `None` when there is nothing better to send (not OAuth, or the
/// refresh handed back the refused token).
pub async fn replace_refused(
    auth: &AuthState,
    integration: &Integration,
    user: UserId,
    refused: &Secret,
) -> Result<Option<Resolved>, CredentialError> {
    if integration.auth_mode != AuthMode::Oauth {
        return Ok(None);
    }
    let outcome = auth
        .broker
        .refresh_rejected(integration, user, refused)
        .await;
    match from_broker(outcome)? {
        Resolved::Credential(c) if c.secret == *refused => Ok(None),
        other => Ok(Some(other)),
    }
}

fn from_broker(outcome: Result<Fresh, BrokerError>) -> Result<Resolved, CredentialError> {
    match outcome {
        Ok(fresh) => Ok(Resolved::Credential(Credential::oauth(fresh))),
        Err(BrokerError::NotConnected) => Ok(Resolved::NeedsConnection(Missing::NotConnected)),
        Err(BrokerError::Disconnected) => Ok(Resolved::NeedsConnection(Missing::Disconnected)),
        Err(BrokerError::Store(e)) => Err(CredentialError::Store(e)),
        Err(e) => Err(CredentialError::Broker(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_server_token_is_the_organizations() {
        let kinds = [
            AuthMode::None,
            AuthMode::ServerToken,
            AuthMode::UserToken,
            AuthMode::Oauth,
        ]
        .map(|m| Kind::of(m).map(Kind::is_users));
        assert_eq!(kinds, [None, Some(false), Some(true), Some(true)]);
    }
}
