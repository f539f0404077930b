//! The `authorization_code` and `refresh_token` grants.
//!
//! Redeeming a code creates the agent session (one per grant) whose id is the `sid` of every
//! access token and the family of every refresh token. Refresh tokens rotate; presenting a
//! used one (or replaying a code) revokes the whole family.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_core::{AgentSessionId, ApplicationId, OrgId, Timestamp, UserId};
use keygate_store::{NewAgentSession, RefreshToken, StoreError};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::claims::Claims;
use crate::clients::Client;
use crate::error::OAuthError;
use crate::router::AuthState;
use crate::secret::hash_secret;
use crate::token::{TokenRequest, TokenResponse};
use crate::web::random_token;

/// Refresh tokens live this long (each use rotates it).
pub const REFRESH_TTL_SECS: i64 = 30 * 86_400;

fn invalid_grant(why: &str) -> OAuthError {
    OAuthError::InvalidGrant(why.to_owned())
}

/// RFC 7636: `BASE64URL(SHA256(verifier)) == challenge`, verifier 43–128 unreserved chars.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    well_formed && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

/// What the agent told us about itself, recorded on its session.
pub struct AgentInfo {
    pub user_agent: Option<String>,
}

pub async fn authorization_code(
    state: &AuthState,
    req: &TokenRequest,
    client: &Client,
    agent: AgentInfo,
) -> Result<TokenResponse, OAuthError> {
    let code = req
        .get("code")
        .ok_or_else(|| OAuthError::InvalidRequest("code is required".into()))?;
    let code_hash = hash_secret(code);
    let grant = match state.store.redeem_authorization_code(&code_hash).await {
        Ok(g) => g,
        Err(StoreError::NotFound) => return Err(invalid_grant("the code is unknown")),
        Err(e) => return Err(e.into()),
    };
    if grant.used_at.is_some() {
        // RFC 6749 §4.1.2: a replayed code revokes what it produced.
        if let Some(session) = grant.session_id {
            state
                .store
                .revoke_agent_session(grant.org_id, session)
                .await?;
        }
        tracing::warn!(client = %client.id, "authorization code replayed; its grant is revoked");
        return Err(invalid_grant("the code has already been used"));
    }
    if grant.expires_at <= Timestamp::now() {
        return Err(invalid_grant("the code has expired"));
    }
    if grant.client_id != client.id {
        return Err(invalid_grant("the code was issued to another client"));
    }
    if req.get("redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return Err(invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    match (&grant.code_challenge, req.get("code_verifier")) {
        (Some(challenge), Some(verifier)) if pkce_matches(verifier, challenge) => {}
        (Some(_), Some(_)) => {
            return Err(invalid_grant(
                "code_verifier does not match the code_challenge",
            ));
        }
        (Some(_), None) => return Err(invalid_grant("code_verifier is required")),
        (None, Some(_)) => return Err(invalid_grant("no code_challenge was sent for this code")),
        (None, None) => {}
    }
    check_resource(req, &grant.resource)?;
    let session = match grant.application_id {
        Some(app) => {
            ensure_app_active(state, app).await?;
            let session = state
                .store
                .create_agent_session(
                    grant.org_id,
                    NewAgentSession {
                        application_id: app,
                        user_id: Some(grant.user_id),
                        agent_id: Some(client.id.clone()),
                        name: Some(client.display_name()),
                        hostname: None,
                        user_agent: agent.user_agent,
                        client_info: Some(
                            json!({"clientId": client.id, "clientName": client.display_name()}),
                        ),
                        token_expires_at: Some(
                            Timestamp::now().plus_seconds(state.access_token_ttl as i64),
                        ),
                    },
                )
                .await?;
            state.store.set_code_session(&code_hash, session.id).await?;
            Some(session.id)
        }
        None => None,
    };
    issue(
        state,
        Issue {
            org: grant.org_id,
            user: grant.user_id,
            client_id: &client.id,
            scope: &grant.scope,
            resource: &grant.resource,
            session,
        },
    )
    .await
}

pub async fn refresh_token(
    state: &AuthState,
    req: &TokenRequest,
    client: &Client,
) -> Result<TokenResponse, OAuthError> {
    let token = req
        .get("refresh_token")
        .ok_or_else(|| OAuthError::InvalidRequest("refresh_token is required".into()))?;
    let old = match state.store.use_refresh_token(&hash_secret(token)).await {
        Ok(t) => t,
        Err(StoreError::NotFound) => return Err(invalid_grant("the refresh token is unknown")),
        Err(e) => return Err(e.into()),
    };
    if old.client_id != client.id {
        return Err(invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    if old.used_at.is_some() {
        state
            .store
            .revoke_agent_session(old.org_id, old.session_id)
            .await?;
        tracing::warn!(client = %client.id, session = %old.session_id, "refresh token reused; family revoked");
        return Err(invalid_grant(
            "the refresh token has already been used; the grant is revoked",
        ));
    }
    if old.expires_at <= Timestamp::now() {
        return Err(invalid_grant("the refresh token has expired"));
    }
    if !state.store.agent_session_is_active(old.session_id).await? {
        return Err(invalid_grant("the session has been revoked"));
    }
    check_resource(req, &old.resource)?;
    let scope = match req.get("scope") {
        None => old.scope.clone(),
        Some(s)
            if s.split(' ')
                .all(|x| x.is_empty() || old.scope.split(' ').any(|o| o == x)) =>
        {
            s.to_owned()
        }
        Some(_) => {
            return Err(OAuthError::InvalidScope(
                "a refresh may only narrow the scope".into(),
            ));
        }
    };
    issue(
        state,
        Issue {
            org: old.org_id,
            user: old.user_id,
            client_id: &client.id,
            scope: &scope,
            resource: &old.resource,
            session: Some(old.session_id),
        },
    )
    .await
}

fn check_resource(req: &TokenRequest, granted: &str) -> Result<(), OAuthError> {
    match req.get("resource") {
        Some(r) if r.trim_end_matches('/') != granted => Err(OAuthError::InvalidTarget(
            "resource differs from the one authorized".into(),
        )),
        _ => Ok(()),
    }
}

async fn ensure_app_active(state: &AuthState, app: ApplicationId) -> Result<(), OAuthError> {
    match state.store.application_secret_hash(app).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound) => Err(invalid_grant("the application is archived")),
        Err(e) => Err(e.into()),
    }
}

struct Issue<'a> {
    org: OrgId,
    user: UserId,
    client_id: &'a str,
    scope: &'a str,
    resource: &'a str,
    session: Option<AgentSessionId>,
}

/// Signs an access token and, for grants with a session, rotates in a new refresh token.
async fn issue(state: &AuthState, i: Issue<'_>) -> Result<TokenResponse, OAuthError> {
    let now = Timestamp::now();
    let ttl = state.access_token_ttl as i64;
    let claims = Claims {
        iss: state.public_url.to_string(),
        sub: i.user.to_string(),
        aud: i.resource.to_owned(),
        client_id: i.client_id.to_owned(),
        scope: i.scope.to_owned(),
        org: i.org,
        sid: i.session,
        iat: now.seconds(),
        exp: now.seconds() + ttl,
        jti: Uuid::new_v4().to_string(),
    };
    let refresh_token = match i.session {
        Some(session) => {
            let token = random_token();
            state
                .store
                .insert_refresh_token(
                    &hash_secret(&token),
                    &RefreshToken {
                        session_id: session,
                        org_id: i.org,
                        client_id: i.client_id.to_owned(),
                        user_id: i.user,
                        scope: i.scope.to_owned(),
                        resource: i.resource.to_owned(),
                        expires_at: now.plus_seconds(REFRESH_TTL_SECS),
                        used_at: None,
                    },
                )
                .await?;
            state
                .store
                .touch_agent_session_token(session, now.plus_seconds(ttl))
                .await?;
            Some(token)
        }
        None => None,
    };
    Ok(TokenResponse {
        access_token: state.keys.sign(&claims),
        token_type: "Bearer",
        expires_in: state.access_token_ttl,
        scope: i.scope.to_owned(),
        refresh_token,
        issued_token_type: None,
        credentials: None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn pkce_s256_per_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(super::pkce_matches(verifier, challenge));
        assert!(!super::pkce_matches("short", challenge));
        assert!(!super::pkce_matches(&verifier.replace('d', "e"), challenge));
    }
}
