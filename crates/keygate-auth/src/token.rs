//! `POST /oauth2/token`.
//!
//! Grants implemented here: `client_credentials` for service accounts (the management API's
//! machine credentials); [`crate::grants`] has the code and refresh grants and
//! [`crate::exchange`] token exchange. Client authentication is HTTP Basic (RFC 6749 §2.3.1, form-encoded
//! id and secret) or `client_id` + `client_secret` in the body, never both.

use std::collections::HashMap;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keygate_core::{ServiceAccountId, Timestamp};
use keygate_store::StoreError;
use serde::Serialize;
use uuid::Uuid;

use crate::claims::{Claims, MANAGEMENT_SCOPE};
use crate::clients::{Client, is_service_account};
use crate::error::OAuthError;
use crate::grants::{self, AgentInfo};
use crate::limits::{ClientIp, retry_after_secs};
use crate::router::AuthState;
use crate::secret::verify_secret;

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Token exchange (RFC 8693 §2.2.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
    /// Token exchange for an integration with a `credentialSchema`: the stored credential map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<serde_json::Value>,
}

/// The form parameters, each present at most once.
pub struct TokenRequest {
    params: HashMap<String, String>,
    basic: Option<(String, String)>,
}

impl TokenRequest {
    /// Parses the body and the `Authorization` header, rejecting what RFC 6749 forbids.
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let form_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form_type {
            return Err(OAuthError::InvalidRequest(
                "the body must be application/x-www-form-urlencoded".into(),
            ));
        }
        let params = crate::authorize::unique_params(body).map_err(OAuthError::InvalidRequest)?;
        let basic = match headers.get(AUTHORIZATION) {
            None => None,
            Some(value) => Some(parse_basic(value.to_str().unwrap_or(""))?),
        };
        if basic.is_some() && params.contains_key("client_secret") {
            return Err(OAuthError::InvalidRequest(
                "use one client authentication method, not two".into(),
            ));
        }
        Ok(Self { params, basic })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The `client_id` the request names (HTTP Basic or the form), if any, before any check.
    pub fn client_id(&self) -> Option<&str> {
        match &self.basic {
            Some((id, _)) => Some(id),
            None => self.get("client_id"),
        }
    }

    /// `(client_id, client_secret, used_basic)`.
    pub fn client_credentials(&self) -> Result<(String, Option<String>, bool), OAuthError> {
        if let Some((id, secret)) = &self.basic {
            if self.get("client_id").is_some_and(|form_id| form_id != id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id does not match".into(),
                ));
            }
            return Ok((id.clone(), Some(secret.clone()), true));
        }
        let id = self
            .get("client_id")
            .ok_or(OAuthError::InvalidClient { basic: false })?
            .to_owned();
        Ok((id, self.get("client_secret").map(str::to_owned), false))
    }
}

fn parse_basic(value: &str) -> Result<(String, String), OAuthError> {
    let bad = || OAuthError::InvalidClient { basic: true };
    let encoded = value.strip_prefix("Basic ").ok_or_else(bad)?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).map_err(|_| bad())?)
        .map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok((unescape(id), unescape(secret)))
}

/// Runs `authenticated` (a request whose client authenticates) under the client
/// authentication limits: refused at once, before any secret is checked, while `client_id` or
/// the address must wait; a failed authentication (`invalid_client`) counts against both.
pub async fn limited<T>(
    state: &AuthState,
    ip: ClientIp,
    client_id: Option<&str>,
    authenticated: impl Future<Output = Result<T, OAuthError>>,
) -> Result<T, OAuthError> {
    if let Err(wait) = state.limits.check_client_auth(ip, client_id) {
        tracing::info!(client_id, ip = %ip.0, "client authentication throttled");
        return Err(OAuthError::TooManyAttempts {
            retry_after: retry_after_secs(wait),
        });
    }
    let result = authenticated.await;
    if matches!(result, Err(OAuthError::InvalidClient { .. })) {
        state.limits.client_auth_failed(ip, client_id);
    }
    result
}

/// Dispatches on `grant_type`.
pub async fn exchange(
    state: &AuthState,
    req: TokenRequest,
    agent: AgentInfo,
) -> Result<TokenResponse, OAuthError> {
    match req.get("grant_type") {
        Some("client_credentials") => client_credentials(state, &req).await,
        Some(grant @ ("authorization_code" | "refresh_token")) => {
            let (client_id, secret, basic) = req.client_credentials()?;
            if is_service_account(&client_id) {
                return Err(OAuthError::UnauthorizedClient(
                    "service accounts use client_credentials".into(),
                ));
            }
            let client = Client::authenticate(state, &client_id, secret.as_deref(), basic).await?;
            if grant == "authorization_code" {
                grants::authorization_code(state, &req, &client, agent).await
            } else {
                grants::refresh_token(state, &req, &client).await
            }
        }
        Some(crate::exchange::GRANT_TYPE) => {
            let (client_id, secret, basic) = req.client_credentials()?;
            if is_service_account(&client_id) {
                return Err(OAuthError::UnauthorizedClient(
                    "service accounts cannot exchange tokens for upstream credentials".into(),
                ));
            }
            let client = Client::authenticate(state, &client_id, secret.as_deref(), basic).await?;
            crate::exchange::token_exchange(state, &req, &client).await
        }
        Some(_) => Err(OAuthError::UnsupportedGrantType),
        None => Err(OAuthError::InvalidRequest("grant_type is required".into())),
    }
}

async fn client_credentials(
    state: &AuthState,
    req: &TokenRequest,
) -> Result<TokenResponse, OAuthError> {
    let (client_id, secret, basic) = req.client_credentials()?;
    let invalid = OAuthError::InvalidClient { basic };
    if !is_service_account(&client_id) {
        Client::authenticate(state, &client_id, secret.as_deref(), basic).await?;
        return Err(OAuthError::UnauthorizedClient(
            "only service accounts use client_credentials; applications obtain tokens for their \
             users with authorization_code"
                .into(),
        ));
    }
    let Some(sa_id) = ServiceAccountId::from_client_id(&client_id) else {
        return Err(invalid);
    };
    let found = match state.store.service_account_credentials(sa_id).await {
        Ok(found) => found,
        Err(StoreError::NotFound) => return Err(invalid),
        Err(e) => return Err(e.into()),
    };
    let secret_ok = secret.is_some_and(|s| verify_secret(&s, &found.secret_hash));
    if !secret_ok || found.account.archived_at.is_some() {
        return Err(invalid);
    }
    let scope = match req.get("scope") {
        None => MANAGEMENT_SCOPE.to_owned(),
        Some(s) if s.split(' ').all(|s| s == MANAGEMENT_SCOPE) => MANAGEMENT_SCOPE.to_owned(),
        Some(_) => {
            return Err(OAuthError::InvalidScope(format!(
                "service accounts may request only `{MANAGEMENT_SCOPE}`"
            )));
        }
    };
    let management_audience = state.management_audience();
    // The Kontext SDK sends `audience`; RFC 8707 clients send `resource`.
    for param in ["audience", "resource"] {
        if let Some(aud) = req.get(param)
            && aud.trim_end_matches('/') != management_audience
        {
            return Err(OAuthError::InvalidTarget(format!(
                "service account tokens are only for {management_audience}"
            )));
        }
    }
    let now = Timestamp::now().seconds();
    let jti = Uuid::new_v4().to_string();
    let exp = now + state.access_token_ttl as i64;
    // Noted before it is handed out: rotating the secret revokes it.
    state
        .store
        .record_service_account_token(sa_id, &jti, Timestamp::from_millis(exp * 1000))
        .await?;
    let claims = Claims {
        iss: state.keys.issuer().to_owned(),
        sub: client_id,
        aud: management_audience,
        client_id: sa_id.client_id(),
        scope: scope.clone(),
        org: found.account.org_id,
        sid: None,
        iat: now,
        exp,
        jti,
    };
    Ok(TokenResponse {
        access_token: state.keys.sign(&claims),
        token_type: "Bearer",
        expires_in: state.access_token_ttl,
        scope,
        refresh_token: None,
        issued_token_type: None,
        credentials: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let header = format!("Basic {}", STANDARD.encode("sa_x:a%2Bb%3Ac"));
        assert_eq!(
            parse_basic(&header).unwrap(),
            ("sa_x".into(), "a+b:c".into())
        );
        assert!(parse_basic("Bearer abc").is_err());
        assert!(parse_basic("Basic !!!").is_err());
    }

    #[test]
    fn repeated_parameters_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let err = TokenRequest::parse(&headers, b"grant_type=a&grant_type=b")
            .err()
            .unwrap();
        assert!(matches!(err, OAuthError::InvalidRequest(_)));
        let mut json = HeaderMap::new();
        json.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(TokenRequest::parse(&json, b"{}").is_err());
    }
}
