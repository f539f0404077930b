//! Tool policies: the Cedar schema the gateway publishes, validation of policy text, and the
//! one access decision both MCP routes and the management API's dry run make.
//!
//! The rule: an organization without any enabled policy allows everything (as before policies
//! existed). Once it has one, Cedar decides: a call is allowed only if some `permit` matches and
//! no `forbid` does, so an organization that adds only `forbid`s must also add a `permit` for
//! what stays allowed. A policy whose evaluation fails (an argument the call lacks, say) denies
//! the call: errors fail closed, whichever effect the policy has.
//!
//! Entities: the principal is a `User` (`id`, `email`, `role`), the action one of
//! `call_tool`, `get_prompt`, `read_resource`, the resource a `Tool` (`name`, `kind`,
//! `integration.slug`/`.host`, `application` and the MCP annotations with the specification's
//! defaults when absent), and `context.arguments` the call's arguments. The arguments are not
//! typed by the schema (they differ per tool): validation checks everything else, and reading
//! an argument a call does not carry is an evaluation error, which denies. Guard with
//! `context.arguments has amount && …`.
//!
//! Approval: a `permit` annotated `@approval("user")` allows only once the user has approved
//! the call. A decision an annotated permit takes part in says so ([`Decision::approval`]);
//! asking is the gateway's (an MCP elicitation). `user` is the only approver there is.

mod catalog;
mod convert;
mod validate;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicySet, Request, RequestBuilder, RestrictedExpression, Schema,
};
use keygate_core::model::Policy;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use catalog::ToolCatalog;
pub use validate::{Problem, validate};

/// The Cedar schema (human-readable format) every policy is validated against.
pub const SCHEMA: &str = r#"// The gateway's policy schema. `context.arguments` (the call's arguments) is not typed:
// it differs per tool.
entity User = {
  "id": String,
  "email": String,
  "role": String,
};
entity Tool = {
  "name": String,
  "kind": String,
  "integration": { "slug": String, "host": String },
  "application": String,
  "readOnlyHint": Bool,
  "destructiveHint": Bool,
  "idempotentHint": Bool,
  "openWorldHint": Bool,
};
action call_tool, get_prompt, read_resource appliesTo {
  principal: User,
  resource: Tool,
};
"#;

/// The compiled schema.
pub fn schema() -> &'static Schema {
    static SCHEMA_COMPILED: OnceLock<Schema> = OnceLock::new();
    SCHEMA_COMPILED.get_or_init(|| {
        Schema::from_cedarschema_str(SCHEMA)
            .map(|(schema, _warnings)| schema)
            .expect("the built-in schema is valid")
    })
}

/// Largest policy text accepted.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// What is asked of a tool, prompt or resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    CallTool,
    GetPrompt,
    ReadResource,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CallTool => "call_tool",
            Action::GetPrompt => "get_prompt",
            Action::ReadResource => "read_resource",
        }
    }

    /// The action an MCP request method asks for, if it is one policies govern.
    pub fn of_method(method: &str) -> Option<Self> {
        match method {
            "tools/call" => Some(Action::CallTool),
            "prompts/get" => Some(Action::GetPrompt),
            "resources/read" => Some(Action::ReadResource),
            _ => None,
        }
    }

    /// The action governing the items of an MCP list method, and the result field they are in.
    pub fn of_list(method: &str) -> Option<(Self, &'static str)> {
        match method {
            "tools/list" => Some((Action::CallTool, "tools")),
            "prompts/list" => Some((Action::GetPrompt, "prompts")),
            "resources/list" => Some((Action::ReadResource, "resources")),
            _ => None,
        }
    }

    /// The `kind` attribute of the resource this action applies to.
    pub fn kind(self) -> &'static str {
        match self {
            Action::CallTool => "tool",
            Action::GetPrompt => "prompt",
            Action::ReadResource => "resource",
        }
    }
}

/// The user asking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub email: String,
    pub role: String,
}

/// MCP tool annotations, with the specification's defaults for those absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Annotations {
    pub read_only_hint: bool,
    pub destructive_hint: bool,
    pub idempotent_hint: bool,
    pub open_world_hint: bool,
}

impl Default for Annotations {
    fn default() -> Self {
        Self {
            read_only_hint: false,
            destructive_hint: true,
            idempotent_hint: false,
            open_world_hint: true,
        }
    }
}

impl Annotations {
    /// The annotations of a listed tool (its `annotations` object); a hint that is absent or
    /// not a boolean takes the default.
    pub fn of_listed(item: &Value) -> Self {
        let a = &item["annotations"];
        let d = Self::default();
        let hint = |name: &str, default: bool| a[name].as_bool().unwrap_or(default);
        Self {
            read_only_hint: hint("readOnlyHint", d.read_only_hint),
            destructive_hint: hint("destructiveHint", d.destructive_hint),
            idempotent_hint: hint("idempotentHint", d.idempotent_hint),
            open_world_hint: hint("openWorldHint", d.open_world_hint),
        }
    }
}

/// The integration a tool belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrationRef {
    pub slug: String,
    pub host: String,
}

/// A tool, prompt or resource (by URI) of an integration, as the integration names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub name: String,
    pub integration: IntegrationRef,
    pub application: String,
    #[serde(default)]
    pub annotations: Annotations,
}

/// The outcome of a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub allowed: bool,
    /// The stored policies behind it: the permits that allowed, the forbids that denied, or
    /// the policies whose evaluation failed (empty when no permit matched).
    pub policy_ids: Vec<String>,
    /// Why evaluation failed, per policy (a denial).
    pub errors: Vec<String>,
    /// Allowed only once the user approves: a permit behind the decision is annotated
    /// `@approval("user")`.
    pub approval: bool,
}

impl Decision {
    fn allow_all() -> Self {
        Self {
            allowed: true,
            policy_ids: Vec::new(),
            errors: Vec::new(),
            approval: false,
        }
    }
}

/// The annotation that makes a permit ask for approval, and the one approver it names.
pub const APPROVAL_ANNOTATION: &str = "approval";
pub const APPROVER_USER: &str = "user";

/// A stored policy that no longer compiles (it was valid when stored).
#[derive(Debug, thiserror::Error)]
#[error("stored policy {id} does not compile: {cause}")]
pub struct CompileError {
    pub id: String,
    pub cause: String,
}

/// An organization's enabled policies, compiled: build once per store change generation.
#[derive(Debug)]
pub struct Compiled {
    /// `None`: no enabled policy, everything is allowed.
    set: Option<PolicySet>,
    /// A stored policy that does not compile denies everything (fail closed).
    broken: Vec<CompileError>,
}

impl Compiled {
    /// Compiles the enabled policies among `stored`. Each Cedar statement gets the id
    /// `{stored id}#{n}`; decisions report the stored ids.
    pub fn new(stored: &[Policy]) -> Self {
        let enabled: Vec<&Policy> = stored.iter().filter(|p| p.enabled).collect();
        if enabled.is_empty() {
            return Self {
                set: None,
                broken: Vec::new(),
            };
        }
        let mut set = PolicySet::new();
        let mut broken = Vec::new();
        for policy in enabled {
            if let Err(cause) = add_statements(&mut set, &policy.id.to_string(), &policy.text) {
                broken.push(CompileError {
                    id: policy.id.to_string(),
                    cause,
                });
            }
        }
        Self {
            set: Some(set),
            broken,
        }
    }

    /// The stored policies that do not compile (each denies everything while enabled).
    pub fn broken(&self) -> &[CompileError] {
        &self.broken
    }

    /// Whether any policy applies (when none does, nothing needs parsing or rewriting).
    pub fn governs(&self) -> bool {
        self.set.is_some()
    }

    /// The decision for `principal` doing `action` on `target` with `arguments`.
    pub fn decide(
        &self,
        principal: &Principal,
        action: Action,
        target: &Target,
        arguments: Option<&Value>,
    ) -> Decision {
        let Some(set) = &self.set else {
            return Decision::allow_all();
        };
        if let Some(denial) = self.broken_denial() {
            return denial;
        }
        let built = request(principal, action, target, arguments);
        let (req, entities) = match built {
            Ok(built) => built,
            Err(cause) => {
                return Decision {
                    allowed: false,
                    policy_ids: Vec::new(),
                    errors: vec![cause],
                    approval: false,
                };
            }
        };
        let response = Authorizer::new().is_authorized(&req, set, &entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<_> = diagnostics.errors().collect();
        if !errors.is_empty() {
            let ids = errors.iter().map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                    stored_id(e.policy_id().as_ref())
                }
            });
            return Decision {
                allowed: false,
                policy_ids: ids.collect::<BTreeSet<_>>().into_iter().collect(),
                errors: errors.iter().map(ToString::to_string).collect(),
                approval: false,
            };
        }
        let allowed = response.decision() == CedarDecision::Allow;
        let approval = allowed
            && diagnostics.reason().any(|id| {
                set.policy(id)
                    .and_then(|p| p.annotation(APPROVAL_ANNOTATION))
                    .is_some()
            });
        let reason = diagnostics.reason().map(|id| stored_id(id.as_ref()));
        Decision {
            allowed,
            policy_ids: reason.collect::<BTreeSet<_>>().into_iter().collect(),
            errors: Vec::new(),
            approval,
        }
    }

    /// Whether `principal` may ever do `action` on `target`, whatever the arguments: what
    /// decides if a list shows it. Only a definite denial hides it.
    pub fn may_ever(&self, principal: &Principal, action: Action, target: &Target) -> bool {
        let Some(set) = &self.set else {
            return true;
        };
        if !self.broken.is_empty() {
            return false;
        }
        let Ok(entities) = entities(principal, action, target) else {
            return false;
        };
        let req = RequestBuilder::default()
            .principal(user_uid(principal))
            .action(action_uid(action))
            .resource(tool_uid(target))
            .build();
        let partial = Authorizer::new().is_authorized_partial(&req, set, &entities);
        partial.decision() != Some(CedarDecision::Deny)
    }

    fn broken_denial(&self) -> Option<Decision> {
        (!self.broken.is_empty()).then(|| Decision {
            allowed: false,
            policy_ids: self.broken.iter().map(|b| b.id.clone()).collect(),
            errors: self.broken.iter().map(ToString::to_string).collect(),
            approval: false,
        })
    }
}

/// Adds the statements of one stored policy to `set` under ids derived from `stored_id`.
fn add_statements(set: &mut PolicySet, stored_id: &str, text: &str) -> Result<(), String> {
    let parsed = PolicySet::from_str(text).map_err(|e| e.to_string())?;
    if parsed.templates().next().is_some() {
        return Err("templates (`?principal`, `?resource`) are not supported".into());
    }
    for (n, statement) in parsed.policies().enumerate() {
        let id = cedar_policy::PolicyId::new(format!("{stored_id}#{n}"));
        set.add(statement.new_id(id)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The stored policy a Cedar statement id belongs to.
fn stored_id(cedar_id: &str) -> String {
    cedar_id
        .split_once('#')
        .map_or(cedar_id, |(stored, _)| stored)
        .to_owned()
}

fn uid(type_name: &str, id: &str) -> EntityUid {
    let type_name = EntityTypeName::from_str(type_name).expect("a schema type name");
    EntityUid::from_type_name_and_id(type_name, EntityId::new(id))
}

fn user_uid(principal: &Principal) -> EntityUid {
    uid("User", &principal.id)
}

fn tool_uid(target: &Target) -> EntityUid {
    uid(
        "Tool",
        &format!("{}/{}", target.integration.slug, target.name),
    )
}

fn action_uid(action: Action) -> EntityUid {
    uid("Action", action.as_str())
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn entities(principal: &Principal, action: Action, target: &Target) -> Result<Entities, String> {
    let user = Entity::new(
        user_uid(principal),
        HashMap::from([
            ("id".to_owned(), string(&principal.id)),
            ("email".to_owned(), string(&principal.email)),
            ("role".to_owned(), string(&principal.role)),
        ]),
        HashSet::new(),
    )
    .map_err(|e| e.to_string())?;
    let integration = RestrictedExpression::new_record([
        ("slug".to_owned(), string(&target.integration.slug)),
        ("host".to_owned(), string(&target.integration.host)),
    ])
    .map_err(|e| e.to_string())?;
    let a = target.annotations;
    let tool = Entity::new(
        tool_uid(target),
        HashMap::from([
            ("name".to_owned(), string(&target.name)),
            ("kind".to_owned(), string(action.kind())),
            ("integration".to_owned(), integration),
            ("application".to_owned(), string(&target.application)),
            (
                "readOnlyHint".to_owned(),
                RestrictedExpression::new_bool(a.read_only_hint),
            ),
            (
                "destructiveHint".to_owned(),
                RestrictedExpression::new_bool(a.destructive_hint),
            ),
            (
                "idempotentHint".to_owned(),
                RestrictedExpression::new_bool(a.idempotent_hint),
            ),
            (
                "openWorldHint".to_owned(),
                RestrictedExpression::new_bool(a.open_world_hint),
            ),
        ]),
        HashSet::new(),
    )
    .map_err(|e| e.to_string())?;
    Entities::from_entities([user, tool], None).map_err(|e| e.to_string())
}

fn request(
    principal: &Principal,
    action: Action,
    target: &Target,
    arguments: Option<&Value>,
) -> Result<(Request, Entities), String> {
    let entities = entities(principal, action, target)?;
    let arguments = convert::record(arguments.unwrap_or(&Value::Null))?;
    let context =
        Context::from_pairs([("arguments".to_owned(), arguments)]).map_err(|e| e.to_string())?;
    let req = Request::new(
        user_uid(principal),
        action_uid(action),
        tool_uid(target),
        context,
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok((req, entities))
}

#[cfg(test)]
mod tests {
    use keygate_core::{OrgId, PolicyId, Timestamp};
    use serde_json::json;

    use super::*;

    fn stored(text: &str, enabled: bool) -> Policy {
        Policy {
            id: PolicyId::new(),
            org_id: OrgId::new(),
            name: "p".into(),
            description: String::new(),
            enabled,
            text: text.into(),
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
        }
    }

    fn member() -> Principal {
        Principal {
            id: "u1".into(),
            email: "m@example.com".into(),
            role: "member".into(),
        }
    }

    fn tool(name: &str, read_only: bool) -> Target {
        Target {
            name: name.into(),
            integration: IntegrationRef {
                slug: "bank".into(),
                host: "bank.example".into(),
            },
            application: "app".into(),
            annotations: Annotations {
                read_only_hint: read_only,
                ..Annotations::default()
            },
        }
    }

    const PERMIT_ALL: &str = "permit (principal, action, resource);";

    #[test]
    fn without_enabled_policies_everything_is_allowed() {
        let forbid = stored("forbid (principal, action, resource);", false);
        let compiled = Compiled::new(&[forbid]);
        assert!(!compiled.governs());
        assert!(
            compiled
                .decide(&member(), Action::CallTool, &tool("x", false), None)
                .allowed
        );
    }

    #[test]
    fn a_forbid_names_itself_in_the_denial() {
        let forbid = stored(
            r#"forbid (principal, action, resource) when { resource.name == "wire" };"#,
            true,
        );
        let id = forbid.id.to_string();
        let compiled = Compiled::new(&[stored(PERMIT_ALL, true), forbid]);
        let d = compiled.decide(&member(), Action::CallTool, &tool("wire", false), None);
        assert_eq!((d.allowed, d.policy_ids), (false, vec![id]));
        assert!(
            compiled
                .decide(&member(), Action::CallTool, &tool("read", false), None)
                .allowed
        );
    }

    #[test]
    fn with_policies_only_what_a_permit_matches_is_allowed() {
        let compiled = Compiled::new(&[stored(
            r#"permit (principal, action, resource) when { resource.readOnlyHint };"#,
            true,
        )]);
        assert!(
            compiled
                .decide(&member(), Action::CallTool, &tool("r", true), None)
                .allowed
        );
        assert!(
            !compiled
                .decide(&member(), Action::CallTool, &tool("w", false), None)
                .allowed
        );
    }

    #[test]
    fn arguments_are_compared_as_numbers() {
        let compiled = Compiled::new(&[stored(
            r#"permit (principal, action, resource) when { context.arguments.amount < 100 };"#,
            true,
        )]);
        let t = tool("transfer", false);
        let small = json!({"amount": 99});
        let large = json!({"amount": 100});
        assert!(
            compiled
                .decide(&member(), Action::CallTool, &t, Some(&small))
                .allowed
        );
        assert!(
            !compiled
                .decide(&member(), Action::CallTool, &t, Some(&large))
                .allowed
        );
    }

    #[test]
    fn a_missing_argument_fails_closed_even_in_a_forbid() {
        let forbid = stored(
            r#"forbid (principal, action, resource) when { context.arguments.amount >= 100 };"#,
            true,
        );
        let id = forbid.id.to_string();
        let compiled = Compiled::new(&[stored(PERMIT_ALL, true), forbid]);
        let d = compiled.decide(
            &member(),
            Action::CallTool,
            &tool("transfer", false),
            Some(&json!({})),
        );
        assert!(!d.allowed);
        assert_eq!(d.policy_ids, vec![id]);
        assert!(!d.errors.is_empty());
    }

    #[test]
    fn lists_hide_only_what_can_never_be_permitted() {
        let compiled = Compiled::new(&[
            stored(
                r#"permit (principal, action, resource) when { context.arguments.amount < 100 };"#,
                true,
            ),
            stored(
                r#"forbid (principal, action, resource) when { resource.name == "wire" };"#,
                true,
            ),
        ]);
        assert!(compiled.may_ever(&member(), Action::CallTool, &tool("transfer", false)));
        assert!(!compiled.may_ever(&member(), Action::CallTool, &tool("wire", false)));
    }

    #[test]
    fn an_annotated_permit_asks_for_approval() {
        let compiled = Compiled::new(&[
            stored(
                r#"permit (principal, action, resource) when { resource.name != "transfer" };"#,
                true,
            ),
            stored(
                r#"@approval("user") permit (principal, action, resource) when { resource.name == "transfer" };"#,
                true,
            ),
        ]);
        let transfer = compiled.decide(&member(), Action::CallTool, &tool("transfer", false), None);
        assert!(transfer.allowed && transfer.approval);
        let read = compiled.decide(&member(), Action::CallTool, &tool("read", false), None);
        assert!(read.allowed && !read.approval);
    }

    #[test]
    fn a_denial_never_asks_for_approval() {
        let compiled = Compiled::new(&[
            stored(
                r#"@approval("user") permit (principal, action, resource);"#,
                true,
            ),
            stored(
                r#"forbid (principal, action, resource) when { resource.name == "wire" };"#,
                true,
            ),
        ]);
        let d = compiled.decide(&member(), Action::CallTool, &tool("wire", false), None);
        assert!(!d.allowed && !d.approval);
    }

    #[test]
    fn the_kind_follows_the_action() {
        let compiled = Compiled::new(&[stored(
            r#"permit (principal, action, resource) when { resource.kind == "prompt" };"#,
            true,
        )]);
        assert!(
            compiled
                .decide(&member(), Action::GetPrompt, &tool("p", false), None)
                .allowed
        );
        assert!(
            !compiled
                .decide(&member(), Action::CallTool, &tool("p", false), None)
                .allowed
        );
    }
}
