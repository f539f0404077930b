//! The aggregated endpoint's `Mcp-Session-Id`: the upstream sessions behind it, sealed by the
//! vault (AES-256-GCM, bound to the organization and user), so any replica can continue the
//! session and no client can read or forge it. Upstreams of the 2026-07-28 era have no
//! session: they are listed with that protocol version, and the client's capabilities and
//! `clientInfo` from its `initialize` are kept for the `_meta` of every request they get.
//!
//! Each session also carries its own random id and when it was issued: it opens for
//! [`LIFETIME`], and a session its client ended (`DELETE`) is refused before that by its id
//! ([`super::ended`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_core::{ApplicationId, IntegrationId, OrgId, Timestamp, UserId};
use keygate_store::{Purpose, SealContext, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::era::MODERN;

/// How long a session can be used after its `initialize`; then the client initializes again.
/// It bounds how long an ended session's id must be remembered.
pub const LIFETIME_SECS: i64 = 24 * 3600;

/// One upstream session of an aggregated session.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpstreamSession {
    #[serde(rename = "i")]
    pub integration: IntegrationId,
    /// The upstream's `Mcp-Session-Id`, if it issued one.
    #[serde(rename = "s", skip_serializing_if = "Option::is_none", default)]
    pub session: Option<String>,
    /// The protocol version the upstream negotiated.
    #[serde(rename = "p", skip_serializing_if = "Option::is_none", default)]
    pub protocol: Option<String>,
}

impl UpstreamSession {
    /// An upstream of the 2026-07-28 era: no session to hold.
    pub fn modern(integration: IntegrationId) -> Self {
        Self {
            integration,
            session: None,
            protocol: Some(MODERN.to_owned()),
        }
    }

    pub fn is_modern(&self) -> bool {
        self.protocol.as_deref() == Some(MODERN)
    }
}

/// An aggregated session.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AggregatedSession {
    /// Random, unique per `initialize`: what ending the session records.
    #[serde(rename = "n")]
    pub id: String,
    /// When the session was issued (milliseconds since the epoch).
    #[serde(rename = "t")]
    pub issued_at: i64,
    #[serde(rename = "a")]
    pub app: ApplicationId,
    #[serde(rename = "u")]
    pub upstreams: Vec<UpstreamSession>,
    /// The client's `capabilities` from its `initialize`.
    #[serde(rename = "c", skip_serializing_if = "Option::is_none", default)]
    pub capabilities: Option<Value>,
    /// The client's `clientInfo` from its `initialize`.
    #[serde(rename = "ci", skip_serializing_if = "Option::is_none", default)]
    pub client_info: Option<Value>,
}

fn ctx(org: OrgId, user: UserId) -> SealContext {
    SealContext {
        purpose: Purpose::McpSession,
        org: Some(org),
        integration: None,
        user: Some(user),
    }
}

impl AggregatedSession {
    /// A new session of `app`, issued now.
    pub fn new(
        app: ApplicationId,
        upstreams: Vec<UpstreamSession>,
        capabilities: Option<Value>,
        client_info: Option<Value>,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            issued_at: Timestamp::now().millis(),
            app,
            upstreams,
            capabilities,
            client_info,
        }
    }

    /// When the session stops opening.
    pub fn expires_at(&self) -> Timestamp {
        Timestamp::from_millis(self.issued_at).plus_seconds(LIFETIME_SECS)
    }

    pub fn seal(&self, store: &Store, org: OrgId, user: UserId) -> String {
        let plain = serde_json::to_vec(self).expect("plain data serializes");
        URL_SAFE_NO_PAD.encode(store.vault().seal(&ctx(org, user), &plain))
    }

    /// The session a header names, if it was sealed for this organization and user and has not
    /// expired (whether its client ended it is [`super::ended`]'s to say).
    pub fn open(store: &Store, org: OrgId, user: UserId, header: &str) -> Option<Self> {
        let sealed = URL_SAFE_NO_PAD.decode(header.trim()).ok()?;
        let plain = store.vault().open(&ctx(org, user), &sealed).ok()?;
        let session: Self = serde_json::from_slice(&plain).ok()?;
        session.is_live_at(Timestamp::now()).then_some(session)
    }

    pub(crate) fn is_live_at(&self, now: Timestamp) -> bool {
        now.millis() < self.expires_at().millis()
    }

    pub fn upstream(&self, integration: IntegrationId) -> Option<&UpstreamSession> {
        self.upstreams.iter().find(|u| u.integration == integration)
    }

    /// The upstream's session if it is of the 2025 era (the only ones with a GET stream, a
    /// DELETE, notifications and `logging/setLevel`).
    pub fn legacy(&self, integration: IntegrationId) -> Option<&UpstreamSession> {
        self.upstream(integration).filter(|u| !u.is_modern())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_opens_for_its_lifetime_only() {
        let s = AggregatedSession::new(ApplicationId::new(), Vec::new(), None, None);
        let issued = Timestamp::from_millis(s.issued_at);
        assert!(s.is_live_at(issued.plus_seconds(LIFETIME_SECS - 1)));
        assert!(!s.is_live_at(issued.plus_seconds(LIFETIME_SECS)));
    }

    #[test]
    fn every_session_has_its_own_id() {
        let new = || AggregatedSession::new(ApplicationId::new(), Vec::new(), None, None);
        assert_ne!(new().id, new().id);
    }
}
