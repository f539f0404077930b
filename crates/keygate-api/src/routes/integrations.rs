//! `/integrations`: CRUD, upstream OAuth settings, validation, and the caller's own connection.
//! Owners, admins and service accounts manage integrations; members read the active ones and
//! manage only their own connection (README.md, "Roles").

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keygate_core::model::{AuthMode, Category, Integration, IntegrationOAuth, ValidationStatus};
use keygate_core::{IntegrationId, Secret};
use keygate_store::{IntegrationPatch, NewIntegration, StoreError};
use serde::Deserialize;
use url::Url;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{check_name, page_request};
use crate::ApiState;
use crate::caller::Caller;
use crate::dto::*;
use crate::error::{ApiError, ErrorBody, FieldError, OrNotFound};
use crate::extract::{ApiJson, ApiQuery, Id};
use crate::probe::Probe;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_integrations, create_integration))
        .routes(routes!(
            get_integration,
            update_integration,
            archive_integration
        ))
        .routes(routes!(validate_integration))
        .routes(routes!(get_oauth, put_oauth, delete_oauth))
        .routes(routes!(add_user_token, get_connection, delete_connection))
}

const NOT_FOUND: &str = "Integration not found";
const MAX_SECRET_LEN: usize = 16 * 1024;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    /// Case-insensitive substring of the name.
    name: Option<String>,
}

async fn active(
    state: &ApiState,
    caller: &Caller,
    id: IntegrationId,
) -> Result<Integration, ApiError> {
    let i = state
        .store()
        .get_integration(caller.org, id)
        .await
        .or_not_found(NOT_FOUND)?;
    if i.archived_at.is_some() {
        return Err(ApiError::NotFound(NOT_FOUND));
    }
    Ok(i)
}

/// The caller's own connection, for integrations that take one.
async fn view(
    state: &ApiState,
    caller: &Caller,
    i: &Integration,
) -> Result<IntegrationView, ApiError> {
    let personal = i.auth_mode.is_per_user();
    let connection = match caller.user_id() {
        Some(user) if personal => {
            match state.store().get_connection(caller.org, i.id, user).await {
                Ok(c) => Some(ConnectionView::of(Some(&c))),
                Err(StoreError::NotFound) => Some(ConnectionView::of(None)),
                Err(e) => return Err(e.into()),
            }
        }
        _ => None,
    };
    Ok(IntegrationView::new(i, connection))
}

fn check_url(field: &str, raw: &str) -> Result<String, ApiError> {
    let url = Url::parse(raw.trim())
        .map_err(|_| ApiError::validation(field, "must be an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::validation(field, "must be an http or https URL"));
    }
    if url.host().is_none() {
        return Err(ApiError::validation(field, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::validation(
            field,
            "must not embed credentials; use serverToken or a connection",
        ));
    }
    if url.fragment().is_some() {
        return Err(ApiError::validation(field, "must not contain a fragment"));
    }
    Ok(url.to_string())
}

fn check_secret(field: &str, value: &str) -> Result<Secret, ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_SECRET_LEN} bytes"),
        ));
    }
    Ok(Secret::new(value))
}

/// Extra forwarded request headers: each a header that cannot carry a credential, no
/// duplicates, at most `MAX_FORWARD_HEADERS`.
fn check_forward_headers(names: &[String]) -> Result<Vec<String>, ApiError> {
    const FIELD: &str = "forwardHeaders";
    if names.len() > keygate_core::model::MAX_FORWARD_HEADERS {
        return Err(ApiError::validation(FIELD, "must list at most 16 headers"));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let name = keygate_core::model::forwardable_header(name)
            .map_err(|m| ApiError::validation(FIELD, format!("`{name}` {m}")))?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn check_object(field: &str, value: &Option<serde_json::Value>) -> Result<(), ApiError> {
    match value {
        None | Some(serde_json::Value::Object(_)) => Ok(()),
        Some(_) => Err(ApiError::validation(field, "must be an object")),
    }
}

/// Splits OAuth input into the stored (non-secret) config and the secret to seal.
fn oauth_config(
    input: IntegrationOAuthInput,
    prefix: &str,
) -> Result<(IntegrationOAuth, Option<Secret>), ApiError> {
    let mut errors = Vec::new();
    let mut url = |name: &str, v: Option<String>| -> Option<String> {
        v.and_then(|raw| match check_url(&format!("{prefix}{name}"), &raw) {
            Ok(u) => Some(u),
            Err(ApiError::Validation { errors: e, .. }) => {
                errors.extend(e);
                None
            }
            Err(_) => None,
        })
    };
    let config = IntegrationOAuth {
        provider: input.provider.filter(|p| !p.trim().is_empty()),
        issuer: url("issuer", input.issuer),
        scopes: input.scopes,
        client_id: input.client_id.filter(|c| !c.trim().is_empty()),
        authorization_url: url("authorizationUrl", input.authorization_url),
        token_url: url("tokenUrl", input.token_url),
        revocation_url: url("revocationUrl", input.revocation_url),
        userinfo_url: url("userinfoUrl", input.userinfo_url),
    };
    if config.authorization_url.is_some() != config.token_url.is_some() {
        errors.push(FieldError::new(
            format!("{prefix}tokenUrl"),
            "authorizationUrl and tokenUrl go together",
        ));
    }
    let secret = match input.client_secret {
        Some(s) => {
            if config.client_id.is_none() {
                errors.push(FieldError::new(
                    format!("{prefix}clientId"),
                    "is required with clientSecret",
                ));
            }
            Some(check_secret(&format!("{prefix}clientSecret"), &s)?)
        }
        None => None,
    };
    if errors.is_empty() {
        Ok((config, secret))
    } else {
        Err(ApiError::fields(errors))
    }
}

/// List the organization's integrations.
#[utoipa::path(get, path = "/integrations", tag = "integrations", params(ListQuery),
    security(("bearer" = [])), responses((status = 200, body = IntegrationList), (status = 400, body = ErrorBody)))]
async fn list_integrations(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<IntegrationList>, ApiError> {
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let name = q.name.as_deref().filter(|n| !n.is_empty());
    let page = state
        .store()
        .list_integrations(caller.org, name, page)
        .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for i in &page.items {
        items.push(view(&state, &caller, i).await?);
    }
    Ok(Json(IntegrationList {
        items,
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// Create an integration. A server token is sealed and never returned.
#[utoipa::path(post, path = "/integrations", tag = "integrations", request_body = CreateIntegration,
    security(("bearer" = [])), responses((status = 201, body = IntegrationEnvelope), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_integration(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateIntegration>,
) -> Result<(StatusCode, Json<IntegrationEnvelope>), ApiError> {
    caller.require_privileged()?;
    let name = check_name("name", &body.name)?;
    let url = check_url("url", &body.url)?;
    let auth_mode = body.auth_mode.unwrap_or(AuthMode::None);
    check_object("capabilities", &body.capabilities)?;
    check_object("credentialSchema", &body.credential_schema)?;
    let forward_headers = check_forward_headers(&body.forward_headers)?;
    let server_token = match (auth_mode, body.server_token) {
        (AuthMode::ServerToken, Some(t)) => Some(check_secret("serverToken", &t)?),
        (AuthMode::ServerToken, None) => {
            return Err(ApiError::validation(
                "serverToken",
                "is required when authMode is server_token",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::validation(
                "serverToken",
                "is only used when authMode is server_token",
            ));
        }
        (_, None) => None,
    };
    let (oauth, oauth_client_secret) = match (auth_mode, body.oauth) {
        (AuthMode::Oauth, Some(o)) => {
            let (config, secret) = oauth_config(o, "oauth.")?;
            (Some(config), secret)
        }
        (AuthMode::Oauth, None) => (Some(IntegrationOAuth::default()), None),
        (_, Some(_)) => {
            return Err(ApiError::validation(
                "oauth",
                "is only used when authMode is oauth",
            ));
        }
        (_, None) => (None, None),
    };
    let new = NewIntegration {
        name,
        url,
        category: body.category.unwrap_or(Category::GatewayRemoteMcp),
        auth_mode,
        oauth,
        oauth_client_secret,
        capabilities: body.capabilities,
        credential_schema: body.credential_schema,
        forward_headers,
        server_token,
    };
    let integration = state.store().create_integration(caller.org, new).await?;
    let integration = view(&state, &caller, &integration).await?;
    Ok((
        StatusCode::CREATED,
        Json(IntegrationEnvelope { integration }),
    ))
}

/// Get an integration, with the caller's own connection status.
#[utoipa::path(get, path = "/integrations/{id}", tag = "integrations",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = IntegrationEnvelope), (status = 404, body = ErrorBody)))]
async fn get_integration(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
) -> Result<Json<IntegrationEnvelope>, ApiError> {
    let i = if caller.is_privileged() {
        state
            .store()
            .get_integration(caller.org, id)
            .await
            .or_not_found(NOT_FOUND)?
    } else {
        active(&state, &caller, id).await?
    };
    Ok(Json(IntegrationEnvelope {
        integration: view(&state, &caller, &i).await?,
    }))
}

/// Update an integration (only the fields sent). Changing `authMode` or `url` removes users'
/// connections; leaving `server_token` removes the server token.
#[utoipa::path(patch, path = "/integrations/{id}", tag = "integrations", request_body = UpdateIntegration,
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = IntegrationEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn update_integration(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
    ApiJson(body): ApiJson<UpdateIntegration>,
) -> Result<Json<IntegrationEnvelope>, ApiError> {
    caller.require_privileged()?;
    let current = active(&state, &caller, id).await?;
    let mode = body.auth_mode.unwrap_or(current.auth_mode);
    let server_token = match (mode, body.server_token) {
        (AuthMode::ServerToken, Some(Some(t))) => Some(Some(check_secret("serverToken", &t)?)),
        (AuthMode::ServerToken, Some(None)) => {
            return Err(ApiError::validation(
                "serverToken",
                "is required when authMode is server_token",
            ));
        }
        (AuthMode::ServerToken, None) if !current.server_token_configured => {
            return Err(ApiError::validation(
                "serverToken",
                "is required when authMode is server_token",
            ));
        }
        (AuthMode::ServerToken, None) => None,
        (_, Some(Some(_))) => {
            return Err(ApiError::validation(
                "serverToken",
                "is only used when authMode is server_token",
            ));
        }
        // Leaving server_token (or clearing explicitly) drops the sealed token.
        (_, Some(None)) => Some(None),
        (_, None) if current.server_token_configured => Some(None),
        (_, None) => None,
    };
    if let Some(Some(v)) = &body.capabilities {
        check_object("capabilities", &Some(v.clone()))?;
    }
    if let Some(Some(v)) = &body.credential_schema {
        check_object("credentialSchema", &Some(v.clone()))?;
    }
    let patch = IntegrationPatch {
        name: body
            .name
            .as_deref()
            .map(|n| check_name("name", n))
            .transpose()?,
        url: body
            .url
            .as_deref()
            .map(|u| check_url("url", u))
            .transpose()?,
        category: body.category,
        auth_mode: body.auth_mode,
        capabilities: body.capabilities,
        credential_schema: body.credential_schema,
        forward_headers: body
            .forward_headers
            .as_deref()
            .map(check_forward_headers)
            .transpose()?,
        server_token,
    };
    let i = state
        .store()
        .update_integration(caller.org, id, patch)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(Json(IntegrationEnvelope {
        integration: view(&state, &caller, &i).await?,
    }))
}

/// Archive an integration; it is detached from every application.
#[utoipa::path(delete, path = "/integrations/{id}", tag = "integrations",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn archive_integration(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
) -> Result<StatusCode, ApiError> {
    caller.require_privileged()?;
    state
        .store()
        .archive_integration(caller.org, id)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Check connectivity with a real MCP handshake and record the result on the integration.
///
/// The handshake uses the integration's server token, or for per-user modes the caller's own
/// connection if there is one. A server that asks for user authorization when no user
/// credential was offered counts as valid: that is what per-user integrations do.
#[utoipa::path(post, path = "/integrations/{id}/validate", tag = "integrations",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ValidationResult), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn validate_integration(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
) -> Result<Json<ValidationResult>, ApiError> {
    caller.require_privileged()?;
    let i = active(&state, &caller, id).await?;
    let store = state.store();
    let credential = store.upstream_credential(&i, caller.user_id()).await?;
    let (status, message) = match state.prober.probe(&i.url, credential.as_ref()).await {
        Probe::Valid(m) => (ValidationStatus::Valid, m),
        Probe::NeedsAuthorization(m)
            if credential.is_none()
                && i.auth_mode != AuthMode::None
                && i.auth_mode != AuthMode::ServerToken =>
        {
            (
                ValidationStatus::Valid,
                format!("reachable; {m} (connect an account to go further)"),
            )
        }
        Probe::NeedsAuthorization(m) | Probe::Invalid(m) => (ValidationStatus::Invalid, m),
    };
    let i = store
        .set_integration_validation(caller.org, id, status, Some(&message))
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(Json(ValidationResult {
        status: i.validation_status,
        message: i.validation_message,
    }))
}

/// The integration's OAuth settings (only for `authMode: oauth`).
#[utoipa::path(get, path = "/integrations/{id}/oauth", tag = "integrations",
    operation_id = "get_integration_oauth",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = IntegrationOAuthEnvelope), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn get_oauth(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
) -> Result<Json<IntegrationOAuthEnvelope>, ApiError> {
    caller.require_privileged()?;
    let i = active(&state, &caller, id).await?;
    match (&i.auth_mode, &i.oauth) {
        (AuthMode::Oauth, Some(o)) => Ok(Json(IntegrationOAuthEnvelope {
            oauth: IntegrationOAuthView::new(o, i.oauth_client_secret_configured),
        })),
        _ => Err(ApiError::NotFound("Integration has no OAuth configuration")),
    }
}

/// Replace the OAuth settings. Existing OAuth connections must re-authenticate.
#[utoipa::path(put, path = "/integrations/{id}/oauth", tag = "integrations", request_body = IntegrationOAuthInput,
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = IntegrationOAuthEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn put_oauth(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
    ApiJson(body): ApiJson<IntegrationOAuthInput>,
) -> Result<Json<IntegrationOAuthEnvelope>, ApiError> {
    caller.require_privileged()?;
    let i = active(&state, &caller, id).await?;
    if i.auth_mode != AuthMode::Oauth {
        return Err(ApiError::Conflict(
            "Set authMode to oauth before configuring OAuth".into(),
        ));
    }
    let (config, secret) = oauth_config(body, "")?;
    let i = state
        .store()
        .set_integration_oauth(caller.org, id, Some(&config), secret.as_ref())
        .await
        .or_not_found(NOT_FOUND)?;
    let oauth = IntegrationOAuthView::new(&config, i.oauth_client_secret_configured);
    Ok(Json(IntegrationOAuthEnvelope { oauth }))
}

/// Remove the OAuth settings (set another `authMode` first).
#[utoipa::path(delete, path = "/integrations/{id}/oauth", tag = "integrations",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn delete_oauth(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
) -> Result<StatusCode, ApiError> {
    caller.require_privileged()?;
    let i = active(&state, &caller, id).await?;
    if i.auth_mode == AuthMode::Oauth {
        return Err(ApiError::Conflict(
            "Set a different authMode before removing OAuth".into(),
        ));
    }
    state
        .store()
        .set_integration_oauth(caller.org, id, None, None)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Store the caller's personal token for a `user_token` integration (sealed, never returned).
#[utoipa::path(post, path = "/integrations/{id}/connection", tag = "integrations", request_body = AddUserToken,
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ConnectionEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_user_token(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
    ApiJson(body): ApiJson<AddUserToken>,
) -> Result<Json<ConnectionEnvelope>, ApiError> {
    let user = caller.require_user()?;
    let i = active(&state, &caller, id).await?;
    if i.auth_mode != AuthMode::UserToken {
        return Err(ApiError::validation(
            "token",
            "this integration does not take personal tokens",
        ));
    }
    let token = check_secret("token", &body.token)?;
    let display = body
        .display_name
        .as_deref()
        .map(|d| check_name("displayName", d))
        .transpose()?;
    let c = state
        .store()
        .put_user_token(caller.org, id, user, &token, display.as_deref())
        .await?;
    Ok(Json(ConnectionEnvelope {
        connection: ConnectionView::of(Some(&c)),
    }))
}

/// The caller's connection status for this integration.
#[utoipa::path(get, path = "/integrations/{id}/connection", tag = "integrations",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ConnectionEnvelope), (status = 404, body = ErrorBody)))]
async fn get_connection(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
) -> Result<Json<ConnectionEnvelope>, ApiError> {
    let user = caller.require_user()?;
    active(&state, &caller, id).await?;
    let connection = match state.store().get_connection(caller.org, id, user).await {
        Ok(c) => ConnectionView::of(Some(&c)),
        Err(StoreError::NotFound) => ConnectionView::of(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(ConnectionEnvelope { connection }))
}

/// Remove the caller's stored credential for this integration; an OAuth grant is first
/// revoked at the provider (RFC 7009) when it has a revocation endpoint.
#[utoipa::path(delete, path = "/integrations/{id}/connection", tag = "integrations",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_connection(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<IntegrationId>,
) -> Result<StatusCode, ApiError> {
    let user = caller.require_user()?;
    let integration = state
        .store()
        .get_integration(caller.org, id)
        .await
        .or_not_found(NOT_FOUND)?;
    state
        .auth
        .broker
        .disconnect(&integration, user)
        .await
        .map_err(|e| match e {
            keygate_auth::broker::BrokerError::Store(e) => ApiError::from(e),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok(StatusCode::NO_CONTENT)
}
