//! The access graph's policy overlay (`includePolicy=true`): for each user and each integration
//! some application has attached, what the organization's enabled policies decide for every
//! tool the gateway has seen that integration list ([`keygate_policy::ToolCatalog`]), with
//! the same [`Compiled`] decision the MCP routes make.

use std::collections::{BTreeSet, HashMap};

use keygate_core::model::{Integration, User};
use keygate_core::{ApplicationId, IntegrationId};
use keygate_policy::{
    Action, Annotations, Compiled, IntegrationRef, Principal, Target, ToolCatalog,
};
use keygate_store::AccessGraph;
use serde::Serialize;
use utoipa::ToSchema;

/// The access graph, with the policy overlay when asked for. The graph's own fields are
/// unchanged; `policyAccess` is added beside them.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessGraphView {
    #[serde(flatten)]
    pub graph: AccessGraph,
    /// With `includePolicy=true`: per user and attached integration, what the enabled
    /// policies allow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_access: Option<Vec<PolicyAccess>>,
}

/// What one user may do with one integration's tools.
#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAccess {
    pub user_id: String,
    pub integration_id: String,
    /// `all_allowed` (no enabled policy: everything is allowed), `allowed` (every known tool),
    /// `denied` (every known tool), `partial` (some of each, or depending on arguments or the
    /// application), or `no_tools_known` (policies apply but the gateway has not seen this
    /// integration list its tools yet).
    pub summary: &'static str,
    /// The integration's tools as last listed through the gateway.
    pub tools: Vec<ToolAccess>,
}

/// The decision for one tool.
#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ToolAccess {
    pub name: String,
    /// `allow`, `deny`, `depends_on_arguments` (denied without arguments, but some call
    /// could be permitted), or `varies_by_application` (see `applications`).
    pub decision: &'static str,
    /// The policies behind the decision (permits that allowed, forbids that denied).
    pub policy_ids: Vec<String>,
    /// Per application the integration is attached to, when the decision differs between them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<ApplicationDecision>,
}

/// The decision for one tool through one application.
#[derive(Serialize, ToSchema, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationDecision {
    pub application_id: String,
    pub decision: &'static str,
    pub policy_ids: Vec<String>,
}

/// What the overlay is computed from.
pub struct OverlayInput<'a> {
    pub compiled: &'a Compiled,
    pub catalog: &'a ToolCatalog,
    pub users: &'a [User],
    pub integrations: &'a [Integration],
    /// Which applications each integration is attached to.
    pub attached: &'a HashMap<IntegrationId, Vec<ApplicationId>>,
}

/// The overlay: every user against every integration some application attached.
pub fn overlay(input: &OverlayInput<'_>) -> Vec<PolicyAccess> {
    let mut out = Vec::new();
    for integration in input.integrations {
        let Some(apps) = input.attached.get(&integration.id) else {
            continue;
        };
        let tools = input.catalog.tools_of(integration.id);
        let reference = IntegrationRef {
            slug: integration.slug.clone(),
            host: host_of(&integration.url),
        };
        for user in input.users {
            let principal = Principal {
                id: user.id.to_string(),
                email: user.email.clone(),
                role: user.role.as_str().to_owned(),
            };
            let decided: Vec<ToolAccess> = tools
                .iter()
                .map(|(name, annotations)| {
                    tool_access(
                        input.compiled,
                        &principal,
                        &reference,
                        apps,
                        name,
                        *annotations,
                    )
                })
                .collect();
            out.push(PolicyAccess {
                user_id: user.id.to_string(),
                integration_id: integration.id.to_string(),
                summary: summary(input.compiled.governs(), &decided),
                tools: decided,
            });
        }
    }
    out
}

fn summary(governs: bool, tools: &[ToolAccess]) -> &'static str {
    if !governs {
        return "all_allowed";
    }
    if tools.is_empty() {
        return "no_tools_known";
    }
    if tools.iter().all(|t| t.decision == "allow") {
        "allowed"
    } else if tools.iter().all(|t| t.decision == "deny") {
        "denied"
    } else {
        "partial"
    }
}

fn tool_access(
    compiled: &Compiled,
    principal: &Principal,
    integration: &IntegrationRef,
    apps: &[ApplicationId],
    name: &str,
    annotations: Annotations,
) -> ToolAccess {
    let per_app: Vec<ApplicationDecision> = apps
        .iter()
        .map(|app| {
            let target = Target {
                name: name.to_owned(),
                integration: integration.clone(),
                application: app.to_string(),
                annotations,
            };
            let (decision, policy_ids) = decide(compiled, principal, &target);
            ApplicationDecision {
                application_id: app.to_string(),
                decision,
                policy_ids,
            }
        })
        .collect();
    let first = per_app.first().map_or("allow", |d| d.decision);
    if per_app.iter().all(|d| d.decision == first) {
        let ids: BTreeSet<String> = per_app.into_iter().flat_map(|d| d.policy_ids).collect();
        ToolAccess {
            name: name.to_owned(),
            decision: first,
            policy_ids: ids.into_iter().collect(),
            applications: Vec::new(),
        }
    } else {
        ToolAccess {
            name: name.to_owned(),
            decision: "varies_by_application",
            policy_ids: Vec::new(),
            applications: per_app,
        }
    }
}

/// A call without arguments decides; a denial that some arguments could turn into a permit
/// is `depends_on_arguments`.
fn decide(
    compiled: &Compiled,
    principal: &Principal,
    target: &Target,
) -> (&'static str, Vec<String>) {
    let decision = compiled.decide(principal, Action::CallTool, target, None);
    if decision.allowed {
        return ("allow", decision.policy_ids);
    }
    if compiled.may_ever(principal, Action::CallTool, target) {
        return ("depends_on_arguments", decision.policy_ids);
    }
    ("deny", decision.policy_ids)
}

/// The host of an integration's URL, as the proxy gives policies (empty without one).
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}
