//! `/service-accounts`: machine credentials for the management API. Admins only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keygate_auth::secret::{generate_client_secret, hash_secret};
use keygate_core::ServiceAccountId;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageQuery, check_name, page_request};
use crate::ApiState;
use crate::caller::Caller;
use crate::dto::*;
use crate::error::{ApiError, ErrorBody, OrNotFound};
use crate::extract::{ApiJson, ApiQuery, Id};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_service_accounts, create_service_account))
        .routes(routes!(get_service_account, revoke_service_account))
        .routes(routes!(rotate_secret))
}

const NOT_FOUND: &str = "Service account not found";

/// List service accounts.
#[utoipa::path(get, path = "/service-accounts", tag = "service-accounts", params(PageQuery),
    security(("bearer" = [])), responses((status = 200, body = ServiceAccountList), (status = 403, body = ErrorBody)))]
async fn list_service_accounts(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<ServiceAccountList>, ApiError> {
    caller.require_privileged()?;
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let page = state
        .store()
        .list_service_accounts(caller.org, page)
        .await?;
    Ok(Json(ServiceAccountList {
        items: page.items.iter().map(ServiceAccountView::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// Create a service account; its secret is in the response, once.
#[utoipa::path(post, path = "/service-accounts", tag = "service-accounts", request_body = CreateServiceAccount,
    security(("bearer" = [])), responses((status = 201, body = ServiceAccountWithCredentials), (status = 400, body = ErrorBody)))]
async fn create_service_account(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateServiceAccount>,
) -> Result<(StatusCode, Json<ServiceAccountWithCredentials>), ApiError> {
    caller.require_privileged()?;
    let name = check_name("name", &body.name)?;
    let description = body.description.filter(|d| !d.trim().is_empty());
    let secret = generate_client_secret();
    let sa = state
        .store()
        .create_service_account(
            caller.org,
            &name,
            description.as_deref(),
            caller.user_id(),
            &hash_secret(&secret),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ServiceAccountWithCredentials {
            service_account: ServiceAccountView::from(&sa),
            credentials: Credentials {
                client_id: sa.id.client_id(),
                client_secret: secret,
            },
        }),
    ))
}

/// Get a service account.
#[utoipa::path(get, path = "/service-accounts/{id}", tag = "service-accounts",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ServiceAccountEnvelope), (status = 404, body = ErrorBody)))]
async fn get_service_account(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ServiceAccountId>,
) -> Result<Json<ServiceAccountEnvelope>, ApiError> {
    caller.require_privileged()?;
    let sa = state
        .store()
        .get_service_account(caller.org, id)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(Json(ServiceAccountEnvelope {
        service_account: ServiceAccountView::from(&sa),
    }))
}

/// Revoke a service account: its secret and tokens stop working at once.
#[utoipa::path(delete, path = "/service-accounts/{id}", tag = "service-accounts",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke_service_account(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ServiceAccountId>,
) -> Result<StatusCode, ApiError> {
    caller.require_privileged()?;
    state
        .store()
        .archive_service_account(caller.org, id)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issue a new secret; the previous one and every token issued under it stop working at once.
#[utoipa::path(post, path = "/service-accounts/{id}/rotate-secret", tag = "service-accounts",
    operation_id = "rotate_service_account_secret",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ServiceAccountWithCredentials), (status = 404, body = ErrorBody)))]
async fn rotate_secret(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ServiceAccountId>,
) -> Result<Json<ServiceAccountWithCredentials>, ApiError> {
    caller.require_privileged()?;
    let secret = generate_client_secret();
    let sa = state
        .store()
        .set_service_account_secret(caller.org, id, &hash_secret(&secret))
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(Json(ServiceAccountWithCredentials {
        service_account: ServiceAccountView::from(&sa),
        credentials: Credentials {
            client_id: sa.id.client_id(),
            client_secret: secret,
        },
    }))
}
