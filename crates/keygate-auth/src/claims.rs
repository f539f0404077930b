//! Access-token claims.

use keygate_core::{AgentSessionId, OrgId, ServiceAccountId, UserId};
use serde::{Deserialize, Serialize};

/// The scope that grants the management API.
pub const MANAGEMENT_SCOPE: &str = "management:all";

/// Claims of every access token keygate issues.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// A user id, or a service account's `sa_<uuid>` client id.
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    /// The organization the token acts in.
    pub org: OrgId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<AgentSessionId>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Who a token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    User(UserId),
    ServiceAccount(ServiceAccountId),
}

impl Claims {
    pub fn subject(&self) -> Option<Subject> {
        if let Some(sa) = ServiceAccountId::from_client_id(&self.sub) {
            return Some(Subject::ServiceAccount(sa));
        }
        self.sub.parse().ok().map(Subject::User)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}
