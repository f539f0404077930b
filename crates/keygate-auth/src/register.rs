//! `POST /oauth2/register`: dynamic client registration (RFC 7591), so a stock MCP client
//! that knows only the gateway's URL can connect. Registered clients may use the
//! authorization code grant (with PKCE) and refresh tokens, for MCP resources only.
//! Registrations are limited per client address and overall ([`crate::limits`]): each one is a
//! row anyone can make without credentials.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keygate_core::Timestamp;
use keygate_store::RegisteredClient;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::clients::{REGISTERED_CLIENT_PREFIX, is_loopback_http};
use crate::error::OAuthError;
use crate::limits::{ClientIp, retry_after_secs};
use crate::router::AuthState;
use crate::secret::{generate_client_secret, hash_secret};

const MAX_REDIRECT_URIS: usize = 16;

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    client_name: Option<String>,
    scope: Option<String>,
}

pub async fn register(State(state): State<AuthState>, ip: ClientIp, body: Bytes) -> Response {
    if let Err(wait) = state.limits.check_registration(ip) {
        tracing::info!(ip = %ip.0, "client registration throttled");
        return OAuthError::TooManyAttempts {
            retry_after: retry_after_secs(wait),
        }
        .into_response();
    }
    match register_inner(&state, &body).await {
        Ok(doc) => (StatusCode::CREATED, Json(doc)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn check_redirect(uri: &str) -> Result<(), OAuthError> {
    let bad = |why: &str| OAuthError::InvalidRedirectUri(format!("{uri}: {why}"));
    let url = Url::parse(uri).map_err(|_| bad("not an absolute URL"))?;
    if url.fragment().is_some() {
        return Err(bad("must not have a fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_http(uri) => Ok(()),
        "http" => Err(bad("http is allowed only for loopback hosts")),
        s if s.contains('.') => Ok(()),
        _ => Err(bad(
            "must be https, loopback http, or a reverse-domain private-use scheme",
        )),
    }
}

async fn register_inner(state: &AuthState, body: &[u8]) -> Result<serde_json::Value, OAuthError> {
    let meta: Metadata = serde_json::from_slice(body).map_err(|e| {
        OAuthError::InvalidClientMetadata(format!("not valid client metadata: {e}"))
    })?;
    if meta.redirect_uris.is_empty() || meta.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(OAuthError::InvalidRedirectUri(format!(
            "between 1 and {MAX_REDIRECT_URIS} redirect_uris are required"
        )));
    }
    for uri in &meta.redirect_uris {
        check_redirect(uri)?;
    }
    let auth_method = meta
        .token_endpoint_auth_method
        .unwrap_or_else(|| "client_secret_basic".into());
    if !matches!(
        auth_method.as_str(),
        "none" | "client_secret_basic" | "client_secret_post"
    ) {
        return Err(OAuthError::InvalidClientMetadata(format!(
            "token_endpoint_auth_method {auth_method} is not supported"
        )));
    }
    let grant_types = meta
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into()]);
    if grant_types
        .iter()
        .any(|g| g != "authorization_code" && g != "refresh_token")
    {
        return Err(OAuthError::InvalidClientMetadata(
            "only the authorization_code and refresh_token grants are available".into(),
        ));
    }
    let response_types = meta.response_types.unwrap_or_else(|| vec!["code".into()]);
    if response_types.iter().any(|r| r != "code") {
        return Err(OAuthError::InvalidClientMetadata(
            "only response_type code is available".into(),
        ));
    }
    let name = meta
        .client_name
        .map(|n| n.chars().take(200).collect::<String>());
    let secret = (auth_method != "none").then(generate_client_secret);
    let client_id = format!("{REGISTERED_CLIENT_PREFIX}{}", uuid::Uuid::now_v7());
    let now = Timestamp::now();
    let mut doc = json!({
        "client_id": client_id,
        "client_id_issued_at": now.seconds(),
        "redirect_uris": meta.redirect_uris,
        "token_endpoint_auth_method": auth_method,
        "grant_types": grant_types,
        "response_types": response_types,
    });
    if let Some(n) = &name {
        doc["client_name"] = json!(n);
    }
    if let Some(scope) = &meta.scope {
        doc["scope"] = json!(scope);
    }
    state
        .store
        .insert_registered_client(&RegisteredClient {
            client_id: client_id.clone(),
            name,
            redirect_uris: meta.redirect_uris,
            auth_method,
            secret_hash: secret.as_deref().map(hash_secret),
            metadata: doc.clone(),
            created_at: now,
        })
        .await?;
    if let Some(secret) = secret {
        doc["client_secret"] = json!(secret);
        doc["client_secret_expires_at"] = json!(0);
    }
    Ok(doc)
}
