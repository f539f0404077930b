//! Who is calling: a verified bearer token for `{publicUrl}/api/v1`, resolved to a live service
//! account or user of one organization.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use keygate_auth::keys::VerifyError;
use keygate_auth::{MANAGEMENT_SCOPE, Subject};
use keygate_core::model::Role;
use keygate_core::{OrgId, ServiceAccountId, UserId};
use keygate_store::StoreError;

use crate::ApiState;
use crate::error::ApiError;

/// The authenticated principal of a management request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub org: OrgId,
    pub kind: CallerKind,
}

#[derive(Clone, Debug)]
pub enum CallerKind {
    /// Service accounts administer the whole organization, as an admin does; they act for a
    /// user (their `actingUserId`) only where a user is needed, such as personal connections.
    ServiceAccount {
        id: ServiceAccountId,
        acting_user: Option<UserId>,
    },
    User {
        id: UserId,
        role: Role,
    },
}

impl Caller {
    /// Admins, owners and service accounts see and change the whole organization.
    pub fn is_privileged(&self) -> bool {
        match &self.kind {
            CallerKind::ServiceAccount { .. } => true,
            CallerKind::User { role, .. } => role.is_privileged(),
        }
    }

    /// Whose agent sessions the caller may see and revoke: `None` for the whole
    /// organization (owners, admins, service accounts), a member's own id otherwise.
    pub fn restricted_to(&self) -> Option<UserId> {
        match &self.kind {
            CallerKind::ServiceAccount { .. } => None,
            CallerKind::User { role, .. } if role.is_privileged() => None,
            CallerKind::User { id, .. } => Some(*id),
        }
    }

    /// The user this caller acts as, if any.
    pub fn user_id(&self) -> Option<UserId> {
        match &self.kind {
            CallerKind::ServiceAccount { acting_user, .. } => *acting_user,
            CallerKind::User { id, .. } => Some(*id),
        }
    }

    /// The user this caller acts as, or 403 when it acts for nobody.
    pub fn require_user(&self) -> Result<UserId, ApiError> {
        self.user_id().ok_or_else(|| {
            ApiError::Forbidden(
                "This service account has no acting user; personal connections need one".into(),
            )
        })
    }

    /// Managing the organization (applications, attachments, integrations, service accounts)
    /// is for owners, admins and service accounts; members get 403.
    pub fn require_privileged(&self) -> Result<(), ApiError> {
        if self.is_privileged() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "This action requires an admin or owner".into(),
            ))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    /// The caller the rate limit already verified, or a fresh verification.
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        match parts.extensions.get::<Caller>() {
            Some(caller) => Ok(caller.clone()),
            None => Self::resolve(state, &parts.headers).await,
        }
    }
}

impl Caller {
    /// Verifies the request's bearer token and resolves its live principal.
    pub async fn resolve(state: &ApiState, headers: &HeaderMap) -> Result<Self, ApiError> {
        let token = keygate_auth::bearer_token(headers)
            .ok_or(ApiError::Unauthorized("A bearer token is required"))?;
        let claims = state
            .auth
            .verify_access_token(token, &state.auth.management_audience())
            .await
            .map_err(|e| match e {
                VerifyError::Expired => ApiError::Unauthorized("The access token has expired"),
                VerifyError::Invalid => ApiError::Unauthorized("The access token is invalid"),
                VerifyError::Revoked => ApiError::Unauthorized("The access token has been revoked"),
                VerifyError::Unavailable => {
                    ApiError::Internal("token revocation state unavailable".into())
                }
            })?;
        let revoked = || ApiError::Unauthorized("The access token's principal is no longer active");
        match claims.subject() {
            Some(Subject::ServiceAccount(id)) => {
                if !claims.has_scope(MANAGEMENT_SCOPE) {
                    return Err(ApiError::Forbidden(format!(
                        "The token lacks `{MANAGEMENT_SCOPE}`"
                    )));
                }
                let account = match state.auth.store.get_service_account(claims.org, id).await {
                    Ok(a) if a.archived_at.is_none() => a,
                    Ok(_) | Err(StoreError::NotFound) => return Err(revoked()),
                    Err(e) => return Err(e.into()),
                };
                Ok(Caller {
                    org: claims.org,
                    kind: CallerKind::ServiceAccount {
                        id,
                        acting_user: account.acting_user_id,
                    },
                })
            }
            Some(Subject::User(id)) => {
                let user = match state.auth.store.get_user(claims.org, id).await {
                    Ok(u) => u,
                    Err(StoreError::NotFound) => return Err(revoked()),
                    Err(e) => return Err(e.into()),
                };
                Ok(Caller {
                    org: claims.org,
                    kind: CallerKind::User {
                        id,
                        role: user.role,
                    },
                })
            }
            None => Err(ApiError::Unauthorized("The access token is invalid")),
        }
    }
}
