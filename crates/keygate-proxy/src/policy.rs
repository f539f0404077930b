//! The policy stage: after authentication and route resolution, before the credential and the
//! upstream. A `tools/call`, `prompts/get` or `resources/read` that the organization's Cedar
//! policies deny is answered `-32043` (with `data.policyIds`) and never sent; list answers lose
//! the items the caller can never be permitted. The decision itself is
//! `keygate_policy::Compiled`, compiled once per organization and store change generation.
//!
//! An organization without enabled policies skips the stage entirely ([`Stage::of`] is
//! `None`): nothing is parsed, nothing rewritten.
//!
//! A `tools/call` names only the tool, so its annotations are those the integration's last list
//! answer through the gateway gave it (remembered in the shared [`keygate_policy::ToolCatalog`]),
//! or the MCP specification's defaults (not read-only, destructive, not idempotent, open world)
//! for a tool not listed yet: the pessimistic side of each hint.

use std::sync::Arc;

use keygate_core::model::Integration;
use keygate_core::{OrgId, UserId};
use keygate_policy::{Action, Annotations, Compiled, IntegrationRef, Principal, Target};
use keygate_store::GenCache;
use serde_json::Value;

use crate::ProxyState;
use crate::approval::Asked;
use crate::error::ProxyError;
use crate::stage::McpCaller;

/// What the stage keeps between requests.
#[derive(Default)]
pub struct PolicyCache {
    compiled: GenCache<OrgId, Arc<Compiled>>,
    principals: GenCache<(OrgId, UserId), Arc<Principal>>,
}

/// The organization's enabled policies, compiled (cached per change generation).
pub async fn compiled(state: &ProxyState, org: OrgId) -> Result<Arc<Compiled>, ProxyError> {
    let store = &state.auth.store;
    let generation = store.generation();
    if let Some(compiled) = state.cache.policies.compiled.get(&org, generation) {
        return Ok(compiled);
    }
    let stored = store.enabled_policies(org).await?;
    let compiled = Compiled::new(&stored);
    for broken in compiled.broken() {
        tracing::error!(%org, error = %broken, "a stored policy does not compile; every request is denied");
    }
    let compiled = Arc::new(compiled);
    state
        .cache
        .policies
        .compiled
        .put(org, generation, compiled.clone());
    Ok(compiled)
}

/// The policy stage for one caller, when the organization has enabled policies.
pub struct Stage {
    compiled: Arc<Compiled>,
    principal: Arc<Principal>,
    application: String,
}

impl Stage {
    /// The stage for `caller`, or `None` when no policy applies to its organization.
    pub async fn of(state: &ProxyState, caller: &McpCaller) -> Result<Option<Self>, ProxyError> {
        let org = caller.app.org_id;
        let compiled = compiled(state, org).await?;
        if !compiled.governs() {
            return Ok(None);
        }
        let principal = principal(state, org, caller.user).await?;
        Ok(Some(Self {
            compiled,
            principal,
            application: caller.app.id.to_string(),
        }))
    }

    /// Refuses a request the policies deny; anything else (other methods, notifications,
    /// responses) passes. `name` is the integration's own name of the tool or prompt. A
    /// request a `@approval("user")` permit allows comes back as what to ask the user
    /// ([`crate::approval`]), unless it is the user's approved request handled again.
    pub fn check(
        &self,
        state: &ProxyState,
        integration: &Integration,
        message: &Value,
        name: Option<&str>,
    ) -> Result<Option<Asked>, ProxyError> {
        let Some(action) = message["method"].as_str().and_then(Action::of_method) else {
            return Ok(None);
        };
        let params = &message["params"];
        let field = if action == Action::ReadResource {
            "uri"
        } else {
            "name"
        };
        let name = name.or(params[field].as_str()).unwrap_or("");
        let target = self.target(state, integration, action, name);
        let decision =
            self.compiled
                .decide(&self.principal, action, &target, params.get("arguments"));
        if decision.allowed {
            if !decision.approval || crate::approval::is_approved() {
                return Ok(None);
            }
            return Ok(Some(Asked {
                method: message["method"].as_str().unwrap_or("").to_owned(),
                name: name.to_owned(),
                integration_slug: integration.slug.clone(),
                integration_name: integration.name.clone(),
                integration: integration.id,
                arguments: params.get("arguments").cloned().unwrap_or(Value::Null),
                policy_ids: decision.policy_ids,
            }));
        }
        if !decision.errors.is_empty() {
            tracing::warn!(
                integration = %integration.slug,
                name,
                errors = ?decision.errors,
                "policy evaluation failed; the request is denied"
            );
        }
        Err(ProxyError::PolicyDenied {
            what: format!("{} {name} of {}", action.as_str(), integration.slug),
            policy_ids: decision.policy_ids,
        })
    }

    /// Keeps the items of a list answer (`method`'s) that the caller may ever be permitted,
    /// and remembers listed tools' annotations. Items are named as the integration names them.
    pub fn filter_list(
        &self,
        state: &ProxyState,
        integration: &Integration,
        method: &str,
        items: &mut Vec<Value>,
    ) {
        let Some((action, _)) = Action::of_list(method) else {
            return;
        };
        if action == Action::CallTool {
            state.tools.remember(integration.id, items);
        }
        let field = if action == Action::ReadResource {
            "uri"
        } else {
            "name"
        };
        items.retain(|item| {
            let name = item[field].as_str().unwrap_or("");
            let target = self.target(state, integration, action, name);
            self.compiled.may_ever(&self.principal, action, &target)
        });
    }

    /// Filters a list answer (a JSON-RPC response to `method`) in place.
    pub fn filter_answer(
        &self,
        state: &ProxyState,
        integration: &Integration,
        method: &str,
        answer: &mut Value,
    ) {
        let Some((_, key)) = Action::of_list(method) else {
            return;
        };
        if let Some(Value::Array(items)) = answer.get_mut("result").and_then(|r| r.get_mut(key)) {
            self.filter_list(state, integration, method, items);
        }
    }

    fn target(
        &self,
        state: &ProxyState,
        integration: &Integration,
        action: Action,
        name: &str,
    ) -> Target {
        let annotations = match action {
            Action::CallTool => state
                .tools
                .annotations(integration.id, name)
                .unwrap_or_default(),
            _ => Annotations::default(),
        };
        Target {
            name: name.to_owned(),
            integration: IntegrationRef {
                slug: integration.slug.clone(),
                host: host_of(&integration.url),
            },
            application: self.application.clone(),
            annotations,
        }
    }
}

/// The host of an integration's URL (empty for a URL without one).
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The user as policies see it (cached per change generation).
async fn principal(
    state: &ProxyState,
    org: OrgId,
    user: UserId,
) -> Result<Arc<Principal>, ProxyError> {
    let store = &state.auth.store;
    let generation = store.generation();
    let cache = &state.cache.policies.principals;
    if let Some(p) = cache.get(&(org, user), generation) {
        return Ok(p);
    }
    let found = store.get_user(org, user).await?;
    let principal = Arc::new(Principal {
        id: found.id.to_string(),
        email: found.email,
        role: found.role.as_str().to_owned(),
    });
    cache.put((org, user), generation, principal.clone());
    Ok(principal)
}
