//! The aggregated endpoint's `Mcp-Session-Id`: the upstream sessions behind it, sealed by the
//! vault (AES-256-GCM, bound to the organization and user), so any replica can continue the
//! session and no client can read or forge it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_core::{ApplicationId, IntegrationId, OrgId, UserId};
use keygate_store::{Purpose, SealContext, Store};
use serde::{Deserialize, Serialize};

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

/// An aggregated session.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AggregatedSession {
    #[serde(rename = "a")]
    pub app: ApplicationId,
    #[serde(rename = "u")]
    pub upstreams: Vec<UpstreamSession>,
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
}
