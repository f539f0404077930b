//! `/applications`: CRUD, secret rotation, OAuth client settings, attached integrations and
//! the access graph. Owners, admins and service accounts manage applications and their
//! attachments; members only read the active ones (README.md, "Roles").

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keygate_auth::secret::{generate_client_secret, hash_secret};
use keygate_core::model::{Application, ClientType, OAuthClient};
use keygate_core::{ApplicationId, IntegrationId, Timestamp};
use keygate_store::{
    AccessGraph, ApplicationFilter, ApplicationPatch, NewApplication, OAuthClientPatch,
};
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
use crate::extract::{ApiJson, ApiQuery, Id, Ids, parse_id};
use crate::overlay::AccessGraphView;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_applications, create_application))
        .routes(routes!(access_graph))
        .routes(routes!(
            get_application,
            update_application,
            archive_application
        ))
        .routes(routes!(rotate_secret))
        .routes(routes!(get_oauth, update_oauth))
        .routes(routes!(list_integrations, replace_integrations))
        .routes(routes!(attach_integration, detach_integration))
}

const NOT_FOUND: &str = "Application not found";

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    /// Admins and owners: list every application of the organization.
    all: Option<bool>,
}

/// An application the caller may see: privileged callers any of the organization's, members
/// the active ones (any user of the organization may sign in through them). Anything else is
/// "not found".
pub(super) async fn visible(
    state: &ApiState,
    caller: &Caller,
    id: ApplicationId,
) -> Result<Application, ApiError> {
    let app = state
        .store()
        .get_application(caller.org, id)
        .await
        .or_not_found(NOT_FOUND)?;
    if caller.is_privileged() || app.archived_at.is_none() {
        Ok(app)
    } else {
        Err(ApiError::NotFound(NOT_FOUND))
    }
}

/// An application the caller may change: owners, admins and service accounts only (members
/// get 403 before anything is looked up), and not archived.
async fn modifiable(
    state: &ApiState,
    caller: &Caller,
    id: ApplicationId,
) -> Result<Application, ApiError> {
    caller.require_privileged()?;
    let app = visible(state, caller, id).await?;
    if app.archived_at.is_some() {
        return Err(ApiError::Conflict("Application is archived".into()));
    }
    Ok(app)
}

async fn view(
    state: &ApiState,
    caller: &Caller,
    app: &Application,
    secret: Option<String>,
) -> Result<ApplicationView, ApiError> {
    let store = state.store();
    let counts = store
        .session_counts(caller.org, app.id, Timestamp::now())
        .await?;
    let integrations = store
        .attached_integrations(caller.org, app.id)
        .await?
        .iter()
        .map(|i| IntegrationView::new(i, None))
        .collect();
    let can_modify = caller.is_privileged() && app.archived_at.is_none();
    Ok(ApplicationView::new(
        app,
        state.public_url(),
        can_modify,
        counts,
        integrations,
        secret,
    ))
}

fn check_redirect_uri(uri: &str) -> Result<(), &'static str> {
    let url = Url::parse(uri).map_err(|_| "must be an absolute URL")?;
    if url.fragment().is_some() {
        return Err("must not contain a fragment");
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" => match url.host() {
            Some(url::Host::Domain("localhost")) => Ok(()),
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(()),
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(()),
            _ => Err("may use http only for loopback hosts"),
        },
        // RFC 8252 §7.1: private-use schemes of native apps are reverse domain names.
        scheme if scheme.contains('.') => Ok(()),
        _ => Err("must be https, loopback http, or a reverse-domain private-use scheme"),
    }
}

fn check_oauth_lists(
    redirect_uris: Option<&[String]>,
    scopes: Option<&[String]>,
    resources: Option<&[String]>,
    prefix: &str,
) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    for (i, uri) in redirect_uris.unwrap_or_default().iter().enumerate() {
        if let Err(msg) = check_redirect_uri(uri) {
            errors.push(FieldError::new(format!("{prefix}redirectUris[{i}]"), msg));
        }
    }
    for (i, scope) in scopes.unwrap_or_default().iter().enumerate() {
        let legal = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !legal {
            errors.push(FieldError::new(
                format!("{prefix}scopes[{i}]"),
                "is not a valid scope token",
            ));
        }
    }
    for (i, resource) in resources.unwrap_or_default().iter().enumerate() {
        let ok =
            Url::parse(resource).is_ok_and(|u| u.fragment().is_none() && !u.cannot_be_a_base());
        if !ok {
            errors.push(FieldError::new(
                format!("{prefix}allowedResources[{i}]"),
                "must be an absolute URL without a fragment",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::fields(errors))
    }
}

/// List applications.
#[utoipa::path(get, path = "/applications", tag = "applications", params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, body = ApplicationList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_applications(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ApplicationList>, ApiError> {
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let filter = match (&caller.kind, q.all.unwrap_or(false)) {
        (crate::caller::CallerKind::ServiceAccount { .. }, _) => ApplicationFilter::All,
        (_, true) => {
            caller.require_privileged()?;
            ApplicationFilter::All
        }
        // Members: every active application, the ones they can sign in through.
        (_, false) if !caller.is_privileged() => ApplicationFilter::Active,
        (_, false) => match caller.user_id() {
            Some(user) => ApplicationFilter::OwnedBy(user),
            None => ApplicationFilter::All,
        },
    };
    let page = state
        .store()
        .list_applications(caller.org, filter, page)
        .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for app in &page.items {
        items.push(view(&state, &caller, app, None).await?);
    }
    Ok(Json(ApplicationList {
        items,
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// Create an application. A confidential client's secret is in the response, once.
#[utoipa::path(post, path = "/applications", tag = "applications", request_body = CreateApplication,
    security(("bearer" = [])),
    responses((status = 201, body = ApplicationWithSecret), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_application(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateApplication>,
) -> Result<(StatusCode, Json<ApplicationWithSecret>), ApiError> {
    caller.require_privileged()?;
    let name = check_name("name", &body.name)?;
    let o = body.oauth;
    check_oauth_lists(
        Some(&o.redirect_uris),
        Some(&o.scopes),
        Some(&o.allowed_resources),
        "oauth.",
    )?;
    let secret = (o.client_type == ClientType::Confidential).then(generate_client_secret);
    let new = NewApplication {
        name,
        owner_user_id: caller.user_id(),
        oauth: OAuthClient {
            client_type: o.client_type,
            redirect_uris: o.redirect_uris,
            pkce_required: o.pkce_required.unwrap_or(true),
            scopes: o.scopes,
            allowed_resources: o.allowed_resources,
        },
        client_secret_hash: secret.as_deref().map(hash_secret),
    };
    let app = state.store().create_application(caller.org, new).await?;
    let application = view(&state, &caller, &app, secret.clone()).await?;
    let oauth = ApplicationOAuthView::new(&app, state.public_url(), secret);
    Ok((
        StatusCode::CREATED,
        Json(ApplicationWithSecret { application, oauth }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct GraphQuery {
    /// Include computed policy overlays.
    include_policy: Option<bool>,
}

/// The organization's access graph (admins only). With `includePolicy=true`, nodes and edges
/// carry their computed settings and `policyAccess` says, per user and attached integration,
/// what the enabled policies decide for each tool the gateway has seen it list.
#[utoipa::path(get, path = "/applications/access-graph", tag = "applications", params(GraphQuery),
    security(("bearer" = [])),
    responses((status = 200, body = AccessGraphView), (status = 403, body = ErrorBody)))]
async fn access_graph(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<GraphQuery>,
) -> Result<Json<AccessGraphView>, ApiError> {
    caller.require_privileged()?;
    let include_policy = q.include_policy.unwrap_or(false);
    let store = state.store();
    let graph = store.access_graph(caller.org, include_policy).await?;
    let policy_access = if include_policy {
        Some(policy_access(&state, caller.org, &graph).await?)
    } else {
        None
    };
    Ok(Json(AccessGraphView {
        graph,
        policy_access,
    }))
}

async fn policy_access(
    state: &ApiState,
    org: keygate_core::OrgId,
    graph: &AccessGraph,
) -> Result<Vec<crate::overlay::PolicyAccess>, ApiError> {
    let store = state.store();
    let users = store.list_users(org).await?;
    let integrations = store.list_all_integrations(org).await?;
    let compiled = keygate_policy::Compiled::new(&store.enabled_policies(org).await?);
    let mut attached: HashMap<IntegrationId, Vec<ApplicationId>> = HashMap::new();
    for edge in graph.edges.iter().filter(|e| e.kind == "attached") {
        if let (Ok(app), Ok(integration)) = (edge.from.parse(), edge.to.parse()) {
            attached.entry(integration).or_default().push(app);
        }
    }
    Ok(crate::overlay::overlay(&crate::overlay::OverlayInput {
        compiled: &compiled,
        catalog: &state.tools,
        users: &users,
        integrations: &integrations,
        attached: &attached,
    }))
}

/// Get an application.
#[utoipa::path(get, path = "/applications/{id}", tag = "applications",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ApplicationEnvelope), (status = 404, body = ErrorBody)))]
async fn get_application(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
) -> Result<Json<ApplicationEnvelope>, ApiError> {
    let app = visible(&state, &caller, id).await?;
    Ok(Json(ApplicationEnvelope {
        application: view(&state, &caller, &app, None).await?,
    }))
}

fn oauth_patch(
    o: Option<UpdateApplicationOAuth>,
    prefix: &str,
) -> Result<OAuthClientPatch, ApiError> {
    let o = o.unwrap_or_default();
    check_oauth_lists(
        o.redirect_uris.as_deref(),
        o.scopes.as_deref(),
        o.allowed_resources.as_deref(),
        prefix,
    )?;
    Ok(OAuthClientPatch {
        redirect_uris: o.redirect_uris,
        pkce_required: o.pkce_required,
        scopes: o.scopes,
        allowed_resources: o.allowed_resources,
    })
}

/// Update an application (only the fields sent).
#[utoipa::path(patch, path = "/applications/{id}", tag = "applications", request_body = UpdateApplication,
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ApplicationEnvelope), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn update_application(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
    ApiJson(body): ApiJson<UpdateApplication>,
) -> Result<Json<ApplicationEnvelope>, ApiError> {
    modifiable(&state, &caller, id).await?;
    let patch = ApplicationPatch {
        name: body
            .name
            .as_deref()
            .map(|n| check_name("name", n))
            .transpose()?,
        oauth: oauth_patch(body.oauth, "oauth.")?,
    };
    let app = state
        .store()
        .update_application(caller.org, id, patch)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(Json(ApplicationEnvelope {
        application: view(&state, &caller, &app, None).await?,
    }))
}

/// Archive an application: sets `archivedAt` and revokes its sessions.
#[utoipa::path(delete, path = "/applications/{id}", tag = "applications",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn archive_application(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
) -> Result<StatusCode, ApiError> {
    caller.require_privileged()?;
    visible(&state, &caller, id).await?;
    state
        .store()
        .archive_application(caller.org, id)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate the client secret; the previous one stops working at once.
#[utoipa::path(post, path = "/applications/{id}/rotate-secret", tag = "applications",
    operation_id = "rotate_application_secret",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ApplicationWithSecret), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn rotate_secret(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
) -> Result<Json<ApplicationWithSecret>, ApiError> {
    let app = modifiable(&state, &caller, id).await?;
    if app.oauth.client_type == ClientType::Public {
        return Err(ApiError::validation(
            "oauth.type",
            "public clients have no secret to rotate",
        ));
    }
    let secret = generate_client_secret();
    let app = state
        .store()
        .set_application_secret(caller.org, id, &hash_secret(&secret))
        .await
        .or_not_found(NOT_FOUND)?;
    let application = view(&state, &caller, &app, Some(secret.clone())).await?;
    let oauth = ApplicationOAuthView::new(&app, state.public_url(), Some(secret));
    Ok(Json(ApplicationWithSecret { application, oauth }))
}

/// Get the OAuth client settings.
#[utoipa::path(get, path = "/applications/{id}/oauth", tag = "applications",
    operation_id = "get_application_oauth",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ApplicationOAuthEnvelope), (status = 404, body = ErrorBody)))]
async fn get_oauth(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
) -> Result<Json<ApplicationOAuthEnvelope>, ApiError> {
    let app = visible(&state, &caller, id).await?;
    Ok(Json(ApplicationOAuthEnvelope {
        oauth: ApplicationOAuthView::new(&app, state.public_url(), None),
    }))
}

/// Update the OAuth client settings (only the fields sent).
#[utoipa::path(patch, path = "/applications/{id}/oauth", tag = "applications", request_body = UpdateApplicationOAuth,
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = ApplicationOAuthEnvelope), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn update_oauth(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
    ApiJson(body): ApiJson<UpdateApplicationOAuth>,
) -> Result<Json<ApplicationOAuthEnvelope>, ApiError> {
    modifiable(&state, &caller, id).await?;
    let patch = ApplicationPatch {
        name: None,
        oauth: oauth_patch(Some(body), "")?,
    };
    let app = state
        .store()
        .update_application(caller.org, id, patch)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(Json(ApplicationOAuthEnvelope {
        oauth: ApplicationOAuthView::new(&app, state.public_url(), None),
    }))
}

/// Ids of the attached integrations.
#[utoipa::path(get, path = "/applications/{id}/integrations", tag = "applications",
    operation_id = "list_application_integrations",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = IntegrationIds), (status = 404, body = ErrorBody)))]
async fn list_integrations(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
) -> Result<Json<IntegrationIds>, ApiError> {
    visible(&state, &caller, id).await?;
    let ids = state
        .store()
        .attached_integration_ids(caller.org, id)
        .await?;
    Ok(Json(IntegrationIds {
        integration_ids: ids.iter().map(ToString::to_string).collect(),
    }))
}

/// Replace the whole set of attached integrations.
#[utoipa::path(put, path = "/applications/{id}/integrations", tag = "applications", request_body = IntegrationIds,
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = IntegrationIds), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn replace_integrations(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
    ApiJson(body): ApiJson<IntegrationIds>,
) -> Result<Json<IntegrationIds>, ApiError> {
    modifiable(&state, &caller, id).await?;
    let mut ids: Vec<IntegrationId> = Vec::with_capacity(body.integration_ids.len());
    for (i, raw) in body.integration_ids.iter().enumerate() {
        let parsed: IntegrationId = parse_id(raw, &format!("integrationIds[{i}]"))?;
        if !ids.contains(&parsed) {
            ids.push(parsed);
        }
    }
    let found = state.store().integrations_by_ids(caller.org, &ids).await?;
    let missing: Vec<FieldError> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| !found.iter().any(|f| f.id == **id))
        .map(|(i, _)| {
            FieldError::new(
                format!("integrationIds[{i}]"),
                "is not an integration of this organization",
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::fields(missing));
    }
    state
        .store()
        .attach_integrations(caller.org, id, &ids, true)
        .await?;
    let ids = state
        .store()
        .attached_integration_ids(caller.org, id)
        .await?;
    Ok(Json(IntegrationIds {
        integration_ids: ids.iter().map(ToString::to_string).collect(),
    }))
}

/// Attach one integration (a no-op when already attached).
#[utoipa::path(post, path = "/applications/{id}/integrations/{integrationId}", tag = "applications",
    params(("id" = String, Path, format = Uuid), ("integrationId" = String, Path, format = Uuid)),
    security(("bearer" = [])), responses((status = 204), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn attach_integration(
    State(state): State<ApiState>,
    caller: Caller,
    Ids(id, integration): Ids<ApplicationId, IntegrationId>,
) -> Result<StatusCode, ApiError> {
    modifiable(&state, &caller, id).await?;
    if state
        .store()
        .integrations_by_ids(caller.org, &[integration])
        .await?
        .is_empty()
    {
        return Err(ApiError::NotFound("Integration not found"));
    }
    state
        .store()
        .attach_integrations(caller.org, id, &[integration], false)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Detach one integration. Users' connections to it remain.
#[utoipa::path(delete, path = "/applications/{id}/integrations/{integrationId}", tag = "applications",
    params(("id" = String, Path, format = Uuid), ("integrationId" = String, Path, format = Uuid)),
    security(("bearer" = [])), responses((status = 204), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn detach_integration(
    State(state): State<ApiState>,
    caller: Caller,
    Ids(id, integration): Ids<ApplicationId, IntegrationId>,
) -> Result<StatusCode, ApiError> {
    modifiable(&state, &caller, id).await?;
    state
        .store()
        .detach_integration(caller.org, id, integration)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
