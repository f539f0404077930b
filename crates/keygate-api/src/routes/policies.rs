//! `/policies`: the organization's Cedar tool policies. Everyone reads them; only owners,
//! admins and service accounts change them. Text is validated against the published schema
//! before it is stored; `evaluate` is a dry run of the gateway's own decision.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keygate_core::PolicyId;
use keygate_policy::{Action, Annotations, Compiled, IntegrationRef, Principal, Target};
use keygate_store::{NewPolicy, PolicyPatch};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageQuery, check_name, page_request};
use crate::ApiState;
use crate::caller::Caller;
use crate::dto::*;
use crate::error::{ApiError, ErrorBody, FieldError, OrNotFound};
use crate::extract::{ApiJson, ApiQuery, Id};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_policies, create_policy))
        .routes(routes!(get_policy, update_policy, delete_policy))
        .routes(routes!(validate_policy))
        .routes(routes!(evaluate_policy))
        .routes(routes!(policy_schema))
}

const NOT_FOUND: &str = "Policy not found";

/// The problems of a policy text as field errors of `text`.
fn text_errors(text: &str) -> Vec<FieldError> {
    match keygate_policy::validate(text) {
        Ok(()) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|p| FieldError::at("text", p.message, p.line, p.column))
            .collect(),
    }
}

fn check_text(text: &str) -> Result<(), ApiError> {
    let errors = text_errors(text);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::fields(errors))
    }
}

fn check_description(description: Option<String>) -> Result<String, ApiError> {
    let description = description.unwrap_or_default();
    if description.chars().count() > 2000 {
        return Err(ApiError::validation(
            "description",
            "must be at most 2000 characters",
        ));
    }
    Ok(description)
}

/// List policies.
#[utoipa::path(get, path = "/policies", tag = "policies", params(PageQuery),
    security(("bearer" = [])), responses((status = 200, body = PolicyList)))]
async fn list_policies(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<PolicyList>, ApiError> {
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let page = state.store().list_policies(caller.org, page).await?;
    Ok(Json(PolicyList {
        items: page.items.iter().map(PolicyView::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// Create a policy (enabled unless `enabled` is false). Its text must validate.
#[utoipa::path(post, path = "/policies", tag = "policies", request_body = CreatePolicy,
    security(("bearer" = [])), responses((status = 201, body = PolicyEnvelope),
    (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_policy(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreatePolicy>,
) -> Result<(StatusCode, Json<PolicyEnvelope>), ApiError> {
    caller.require_privileged()?;
    let name = check_name("name", &body.name)?;
    let description = check_description(body.description)?;
    check_text(&body.text)?;
    let new = NewPolicy {
        name,
        description,
        enabled: body.enabled.unwrap_or(true),
        text: body.text,
    };
    let policy = state.store().create_policy(caller.org, new).await?;
    Ok((
        StatusCode::CREATED,
        Json(PolicyEnvelope {
            policy: PolicyView::from(&policy),
        }),
    ))
}

/// Get a policy.
#[utoipa::path(get, path = "/policies/{id}", tag = "policies",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = PolicyEnvelope), (status = 404, body = ErrorBody)))]
async fn get_policy(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<PolicyId>,
) -> Result<Json<PolicyEnvelope>, ApiError> {
    let policy = state
        .store()
        .get_policy(caller.org, id)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(Json(PolicyEnvelope {
        policy: PolicyView::from(&policy),
    }))
}

/// Change a policy: name, description, `enabled`, text (validated).
#[utoipa::path(patch, path = "/policies/{id}", tag = "policies", request_body = UpdatePolicy,
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 200, body = PolicyEnvelope), (status = 400, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_policy(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<PolicyId>,
    ApiJson(body): ApiJson<UpdatePolicy>,
) -> Result<Json<PolicyEnvelope>, ApiError> {
    caller.require_privileged()?;
    let name = body
        .name
        .as_deref()
        .map(|n| check_name("name", n))
        .transpose()?;
    let description = match body.description {
        Some(d) => Some(check_description(Some(d))?),
        None => None,
    };
    if let Some(text) = &body.text {
        check_text(text)?;
    }
    let patch = PolicyPatch {
        name,
        description,
        enabled: body.enabled,
        text: body.text,
    };
    let policy = state
        .store()
        .update_policy(caller.org, id, patch)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(Json(PolicyEnvelope {
        policy: PolicyView::from(&policy),
    }))
}

/// Delete a policy.
#[utoipa::path(delete, path = "/policies/{id}", tag = "policies",
    params(("id" = String, Path, format = Uuid)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_policy(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<PolicyId>,
) -> Result<StatusCode, ApiError> {
    caller.require_privileged()?;
    state
        .store()
        .delete_policy(caller.org, id)
        .await
        .or_not_found(NOT_FOUND)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Validate a policy text against the schema without storing it.
#[utoipa::path(post, path = "/policies/validate", tag = "policies", request_body = ValidatePolicy,
    security(("bearer" = [])), responses((status = 200, body = PolicyValidation)))]
async fn validate_policy(
    _caller: Caller,
    ApiJson(body): ApiJson<ValidatePolicy>,
) -> Result<Json<PolicyValidation>, ApiError> {
    let errors = text_errors(&body.text);
    Ok(Json(PolicyValidation {
        valid: errors.is_empty(),
        errors,
    }))
}

/// Dry run: the decision the gateway makes for this principal, action, resource and context
/// with the organization's enabled policies.
#[utoipa::path(post, path = "/policies/evaluate", tag = "policies", request_body = EvaluatePolicy,
    security(("bearer" = [])), responses((status = 200, body = PolicyDecision), (status = 400, body = ErrorBody)))]
async fn evaluate_policy(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<EvaluatePolicy>,
) -> Result<Json<PolicyDecision>, ApiError> {
    let action = parse_action(&body.action)?;
    let principal = Principal {
        id: body.principal.id,
        email: body.principal.email,
        role: body.principal.role,
    };
    let r = body.resource;
    let target = Target {
        name: r.name,
        integration: IntegrationRef {
            slug: r.integration.slug,
            host: r.integration.host,
        },
        application: r.application,
        annotations: Annotations::of_listed(&serde_json::json!({ "annotations": r.annotations })),
    };
    let stored = state.store().enabled_policies(caller.org).await?;
    let arguments = Some(&body.context.arguments).filter(|a| !a.is_null());
    let decision = Compiled::new(&stored).decide(&principal, action, &target, arguments);
    Ok(Json(PolicyDecision {
        decision: if decision.allowed { "allow" } else { "deny" },
        policy_ids: decision.policy_ids,
        errors: decision.errors,
        approval_required: decision.approval,
    }))
}

fn parse_action(action: &str) -> Result<Action, ApiError> {
    [Action::CallTool, Action::GetPrompt, Action::ReadResource]
        .into_iter()
        .find(|a| a.as_str() == action)
        .ok_or_else(|| {
            ApiError::validation("action", "must be call_tool, get_prompt or read_resource")
        })
}

/// The Cedar schema policies are validated against.
#[utoipa::path(get, path = "/policies/schema", tag = "policies",
    security(("bearer" = [])), responses((status = 200, body = PolicySchema)))]
async fn policy_schema(_caller: Caller) -> Json<PolicySchema> {
    Json(PolicySchema {
        schema: keygate_policy::SCHEMA.to_owned(),
        actions: [Action::CallTool, Action::GetPrompt, Action::ReadResource]
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
    })
}
