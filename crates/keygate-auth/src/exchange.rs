//! Token exchange (RFC 8693) at `/oauth2/token`: credential brokering without proxying.
//!
//! An application's **confidential** client, authenticated with its secret, presents a gateway
//! access token that its user obtained through that same application as `subject_token`, and
//! names an integration attached to the application as `resource` (its id, slug or URL). The
//! answer carries that user's own upstream credential — a fresh OAuth access token or a pasted
//! personal token — never anyone else's. A `server_token` is the organization's credential and
//! is never exchanged: a server that needs it is configured with it directly. Public clients
//! cannot authenticate, so they cannot exchange at all.

use keygate_core::model::{Application, Integration};
use keygate_core::{Secret, Timestamp, UserId};

use crate::clients::{Client, ClientKind};
use crate::credential::{self, CredentialError, Kind, Missing, Resolved};
use crate::error::OAuthError;
use crate::router::AuthState;
use crate::token::{TokenRequest, TokenResponse};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// A gateway access token (the user's, issued to this application).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

fn invalid_grant(why: &str) -> OAuthError {
    OAuthError::InvalidGrant(why.to_owned())
}

pub async fn token_exchange(
    state: &AuthState,
    req: &TokenRequest,
    client: &Client,
) -> Result<TokenResponse, OAuthError> {
    // The caller has authenticated (`Client::authenticate`); a public client did so without a
    // secret, which is no authentication at all for handing out credentials.
    if client.is_public() {
        return Err(OAuthError::InvalidClient { basic: false });
    }
    let ClientKind::Application(app) = &client.kind else {
        return Err(OAuthError::UnauthorizedClient(
            "only an application's client can exchange tokens".into(),
        ));
    };
    let subject = req
        .get("subject_token")
        .ok_or_else(|| OAuthError::InvalidRequest("subject_token is required".into()))?;
    let user = match req.get("subject_token_type") {
        Some(ACCESS_TOKEN_TYPE) => token_subject(state, client, app, subject).await?,
        Some(_) => {
            return Err(OAuthError::InvalidRequest(format!(
                "subject_token_type must be {ACCESS_TOKEN_TYPE}"
            )));
        }
        None => {
            return Err(OAuthError::InvalidRequest(
                "subject_token_type is required".into(),
            ));
        }
    };
    let target = req
        .get("resource")
        .or_else(|| req.get("audience"))
        .ok_or_else(|| {
            OAuthError::InvalidTarget("resource names the integration and is required".into())
        })?;
    let integration = target_integration(state, app, target).await?;
    // Only a user's own credential leaves here; the organization's is refused before it is
    // even opened.
    match Kind::of(integration.auth_mode) {
        Some(Kind::UserToken | Kind::OAuth) => {}
        Some(Kind::ServerToken) => return Err(server_token_refused()),
        None => return Err(no_credential()),
    }
    let credential = match credential::resolve(state, &integration, user)
        .await
        .map_err(resolve_error)?
    {
        Resolved::Credential(c) if c.kind.is_users() => c,
        Resolved::Credential(_) => return Err(server_token_refused()),
        Resolved::None => return Err(no_credential()),
        // The answer goes to the client, so this is where its connect link is minted.
        Resolved::NeedsConnection(missing) => {
            let connect_url =
                crate::connect::create_connect_session(state, app.org_id, app.id, user)
                    .await
                    .ok()
                    .map(|(_, _, url)| url);
            return Err(OAuthError::IntegrationRequired {
                reason: match missing {
                    Missing::NotConnected => "not_connected",
                    Missing::Disconnected => "disconnected_or_reauth_required",
                },
                integration_id: integration.id.to_string(),
                connect_url,
            });
        }
    };
    let expires_in = match credential.expires_at {
        Some(t) => (t.seconds() - Timestamp::now().seconds()).max(0) as u64,
        None => state.access_token_ttl,
    };
    Ok(TokenResponse {
        credentials: credential_map(&integration, &credential.secret),
        access_token: credential.secret.expose().to_owned(),
        token_type: "Bearer",
        issued_token_type: Some(ACCESS_TOKEN_TYPE),
        expires_in,
        scope: integration
            .oauth
            .as_ref()
            .map(|o| o.scopes.join(" "))
            .unwrap_or_default(),
        refresh_token: None,
    })
}

fn server_token_refused() -> OAuthError {
    OAuthError::TargetRefused {
        reason: "server_token_not_exchangeable",
        message: "a server token is the organization's credential, not a user's; \
                  configure the server with it directly"
            .into(),
    }
}

fn no_credential() -> OAuthError {
    OAuthError::TargetRefused {
        reason: "no_credential_required",
        message: "the integration uses no credential".into(),
    }
}

fn resolve_error(e: CredentialError) -> OAuthError {
    match e {
        CredentialError::Store(e) => e.into(),
        other => OAuthError::Server(other.to_string()),
    }
}

/// The user behind a gateway access token issued to this application.
async fn token_subject(
    state: &AuthState,
    client: &Client,
    app: &Application,
    token: &str,
) -> Result<UserId, OAuthError> {
    let claims = state
        .keys
        .verify_signature(token)
        .await
        .map_err(|_| invalid_grant("subject_token is invalid"))?;
    if claims.exp <= Timestamp::now().seconds() {
        return Err(invalid_grant("subject_token has expired"));
    }
    if claims.client_id != client.id || claims.org != app.org_id {
        return Err(invalid_grant(
            "subject_token was not issued to this application",
        ));
    }
    let user: UserId = claims
        .sub
        .parse()
        .map_err(|_| invalid_grant("subject_token does not belong to a user"))?;
    if !state
        .store
        .access_token_is_live(&claims.jti, claims.sid)
        .await?
    {
        return Err(invalid_grant("subject_token has been revoked"));
    }
    Ok(user)
}

/// The attached integration `target` names (id, slug or URL).
async fn target_integration(
    state: &AuthState,
    app: &Application,
    target: &str,
) -> Result<Integration, OAuthError> {
    let trimmed = target.trim_end_matches('/');
    let names = |i: &Integration| {
        i.id.to_string() == target || i.slug == target || i.url.trim_end_matches('/') == trimmed
    };
    let attached = state
        .store
        .attached_integrations(app.org_id, app.id)
        .await?;
    if let Some(i) = attached.into_iter().find(names) {
        return Ok(i);
    }
    let exists = match target.parse() {
        Ok(id) => state.store.get_integration(app.org_id, id).await.is_ok(),
        Err(_) => false,
    };
    Err(if exists {
        OAuthError::TargetRefused {
            reason: "not_attached_to_application",
            message: "the integration is not attached to this application".into(),
        }
    } else {
        OAuthError::TargetRefused {
            reason: "integration_not_found",
            message: "no integration of this application has that id, slug or URL".into(),
        }
    })
}

/// For an integration with a `credentialSchema`, a credential stored as a JSON object is handed
/// out as that map too.
fn credential_map(integration: &Integration, credential: &Secret) -> Option<serde_json::Value> {
    integration.credential_schema.as_ref()?;
    serde_json::from_str::<serde_json::Value>(credential.expose())
        .ok()
        .filter(serde_json::Value::is_object)
}
