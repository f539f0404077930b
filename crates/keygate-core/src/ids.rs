//! Typed UUID ids. Each resource has its own newtype so an `IntegrationId` can never be passed
//! where an `ApplicationId` is expected. New ids are UUID v7: time-ordered, which keeps keyset
//! pagination on the primary key stable and index-friendly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s).map(Self)
            }
        }
    };
}

id_type!(
    /// An organization: the tenant boundary. Every row carries one.
    OrgId
);
id_type!(
    /// A human user of an organization.
    UserId
);
id_type!(
    /// An application: one MCP gateway URL and one OAuth client (`app_<uuid>`).
    ApplicationId
);
id_type!(
    /// An integration: a remote MCP server or a credential-only upstream.
    IntegrationId
);
id_type!(
    /// A service account: machine credentials (`sa_<uuid>`) for the management API.
    ServiceAccountId
);
id_type!(
    /// A user's stored credential for one integration.
    ConnectionId
);
id_type!(
    /// One authorization grant held by an agent.
    AgentSessionId
);
id_type!(
    /// A Cedar tool policy of an organization.
    PolicyId
);

/// OAuth client id prefix of applications.
pub const APP_CLIENT_PREFIX: &str = "app_";
/// OAuth client id prefix of service accounts.
pub const SA_CLIENT_PREFIX: &str = "sa_";

impl ApplicationId {
    /// The application's OAuth client id, `app_<uuid>`.
    pub fn client_id(&self) -> String {
        format!("{APP_CLIENT_PREFIX}{self}")
    }
}

impl ServiceAccountId {
    /// The service account's OAuth client id, `sa_<uuid>`.
    pub fn client_id(&self) -> String {
        format!("{SA_CLIENT_PREFIX}{self}")
    }

    /// Parses `sa_<uuid>`; `None` for anything else.
    pub fn from_client_id(client_id: &str) -> Option<Self> {
        client_id.strip_prefix(SA_CLIENT_PREFIX)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip() {
        let id = ServiceAccountId::new();
        assert_eq!(ServiceAccountId::from_client_id(&id.client_id()), Some(id));
        assert_eq!(ServiceAccountId::from_client_id(&format!("app_{id}")), None);
        assert_eq!(ServiceAccountId::from_client_id("sa_not-a-uuid"), None);
    }

    #[test]
    fn new_ids_sort_by_creation() {
        let a = ApplicationId::new();
        let b = ApplicationId::new();
        assert!(a < b);
    }
}
