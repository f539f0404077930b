//! The aggregated endpoint's `Mcp-Session-Id`: the upstream sessions behind it, sealed by the
//! vault (AES-256-GCM, bound to the organization and user), so any replica can continue the
//! session and no client can read or forge it. Upstreams of the 2026-07-28 era have no
//! session: they are listed with that protocol version, and the client's capabilities and
//! `clientInfo` from its `initialize` are kept for the `_meta` of every request they get.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_core::{ApplicationId, IntegrationId, OrgId, UserId};
use keygate_store::{Purpose, SealContext, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::era::MODERN;

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
    pub fn seal(&self, store: &Store, org: OrgId, user: UserId) -> String {
        let plain = serde_json::to_vec(self).expect("plain data serializes");
        URL_SAFE_NO_PAD.encode(store.vault().seal(&ctx(org, user), &plain))
    }

    /// The session a header names, if it was sealed for this organization and user.
    pub fn open(store: &Store, org: OrgId, user: UserId, header: &str) -> Option<Self> {
        let sealed = URL_SAFE_NO_PAD.decode(header.trim()).ok()?;
        let plain = store.vault().open(&ctx(org, user), &sealed).ok()?;
        serde_json::from_slice(&plain).ok()
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
