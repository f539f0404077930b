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

/// An OpenTelemetry id of `N` bytes — a trace id ([`OtelTraceId`], 16) or a span id
/// ([`OtelSpanId`], 8) — kept as its bytes and shown as lowercase hex, as W3C `traceparent`
/// and the collectors write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OtelId<const N: usize>(pub [u8; N]);

/// The W3C trace id of an exchange's OpenTelemetry spans.
pub type OtelTraceId = OtelId<16>;
/// The id of one OpenTelemetry span.
pub type OtelSpanId = OtelId<8>;

impl<const N: usize> OtelId<N> {
    /// The id of exactly `N` bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl<const N: usize> fmt::Display for OtelId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl<const N: usize> FromStr for OtelId<N> {
    type Err = InvalidOtelId;

    /// Exactly `2 × N` hex digits, either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.as_bytes();
        if digits.len() != 2 * N {
            return Err(InvalidOtelId);
        }
        let mut id = [0u8; N];
        for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
            let nibble = |c: u8| char::from(c).to_digit(16).ok_or(InvalidOtelId);
            *byte = (nibble(pair[0])? << 4 | nibble(pair[1])?) as u8;
        }
        Ok(Self(id))
    }
}

/// Text that is not an OpenTelemetry id of the expected length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidOtelId;

impl fmt::Display for InvalidOtelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an OpenTelemetry id of the expected length in hex digits")
    }
}

impl std::error::Error for InvalidOtelId {}

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
    fn otel_ids_show_as_lowercase_hex_and_parse_back() {
        let id: OtelTraceId = "0AF7651916cd43dd8448eb211c80319c".parse().unwrap();
        assert_eq!(id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            OtelSpanId::from_slice(&[0xb7, 0xad, 0, 1, 2, 3, 4, 0xff])
                .unwrap()
                .to_string(),
            "b7ad0001020304ff"
        );
        assert_eq!("b7ad6b716920333".parse::<OtelSpanId>(), Err(InvalidOtelId));
        assert_eq!("b7ad6b716920333g".parse::<OtelSpanId>(), Err(InvalidOtelId));
        assert_eq!("+7ad6b7169203331".parse::<OtelSpanId>(), Err(InvalidOtelId));
        assert_eq!(OtelTraceId::from_slice(&[0; 8]), None);
    }

    #[test]
    fn new_ids_sort_by_creation() {
        let a = ApplicationId::new();
        let b = ApplicationId::new();
        assert!(a < b);
    }
}
