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
mod memo;
mod validate;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicySet, Request, RequestBuilder, Response, RestrictedExpression,
    Schema,
};
use keygate_core::model::Policy;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use catalog::ToolCatalog;
use memo::Memo;
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
///
/// Decisions are memoized per (principal, action, target): Cedar's partial evaluation with the
/// call's context unknown settles every policy that does not read the arguments, once; a call
/// then evaluates only the policies left over (none, mostly) with its arguments. Recompiling
/// (a policy change) starts with an empty memo.
#[derive(Debug)]
pub struct Compiled {
    /// `None`: no enabled policy, everything is allowed.
    set: Option<PolicySet>,
    /// A stored policy that does not compile denies everything (fail closed).
    broken: Vec<CompileError>,
    memo: Memo<Prepared>,
}

/// What partial evaluation settled for one (principal, action, target).
#[derive(Debug)]
struct Prepared {
    outcome: Outcome,
    /// Whether some arguments could be permitted (what lists show).
    may_ever: bool,
}

#[derive(Debug)]
enum Outcome {
    /// No policy reads the arguments (or none that still matters): the decision itself.
    /// (The arguments need no converting then: a JSON object's keys are unique, so its Cedar
    /// record always builds.)
    Settled(Decision),
    /// The policies that read the arguments remain, to evaluate with each call's.
    Pending(Box<Pending>),
    /// A policy fails whatever the arguments: each call takes the full evaluation, which
    /// names every failing policy (and denies).
    Failing,
}

#[derive(Debug)]
struct Pending {
    /// The policies satisfied whatever the arguments.
    satisfied: Vec<cedar_policy::PolicyId>,
    /// The policies the arguments decide, unchanged (so their errors read as the full
    /// evaluation's), in the set's order.
    residual: PolicySet,
    entities: Entities,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
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
                memo: Memo::new(),
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
            memo: Memo::new(),
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

    /// The decision for `principal` doing `action` on `target` with `arguments`: the same as
    /// [`Compiled::decide_uncached`], from what is memoized for the key plus the evaluation
    /// of the policies that read the arguments.
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
        let prepared = self.prepared(set, principal, action, target);
        match &prepared.outcome {
            Outcome::Settled(decision) => decision.clone(),
            Outcome::Pending(pending) => finish(set, pending, arguments),
            Outcome::Failing => self.decide_uncached(principal, action, target, arguments),
        }
    }

    /// The decision evaluating every policy with the call's entities and arguments, memoizing
    /// nothing: what [`Compiled::decide`] must always agree with.
    pub fn decide_uncached(
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
            Err(cause) => return unbuildable(cause),
        };
        let response = Authorizer::new().is_authorized(&req, set, &entities);
        let diagnostics = response.diagnostics();
        if diagnostics.errors().next().is_some() {
            return failure(&response);
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
        self.prepared(set, principal, action, target).may_ever
    }

    /// How many (principal, action, target) keys are memoized.
    pub fn memoized(&self) -> usize {
        self.memo.len()
    }

    fn prepared(
        &self,
        set: &PolicySet,
        principal: &Principal,
        action: Action,
        target: &Target,
    ) -> Arc<Prepared> {
        self.memo.get_or_make(principal, action, target, || {
            prepare(set, principal, action, target)
        })
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

/// Partially evaluates every policy for the key with the context unknown.
fn prepare(set: &PolicySet, principal: &Principal, action: Action, target: &Target) -> Prepared {
    let entities = match entities(principal, action, target) {
        Ok(entities) => entities,
        Err(cause) => {
            return Prepared {
                outcome: Outcome::Settled(unbuildable(cause)),
                may_ever: false,
            };
        }
    };
    let (principal, action, resource) = (user_uid(principal), action_uid(action), tool_uid(target));
    let req = RequestBuilder::default()
        .principal(principal.clone())
        .action(action.clone())
        .resource(resource.clone())
        .build();
    let partial = Authorizer::new().is_authorized_partial(&req, set, &entities);
    let may_ever = partial.decision() != Some(CedarDecision::Deny);
    if partial.definitely_errored().next().is_some() {
        return Prepared {
            outcome: Outcome::Failing,
            may_ever,
        };
    }
    let satisfied: Vec<_> = partial
        .definitely_satisfied()
        .map(|p| p.id().clone())
        .collect();
    let open: HashSet<_> = partial
        .nontrivial_residuals()
        .map(|p| p.id().clone())
        .collect();
    if open.is_empty() {
        return Prepared {
            outcome: Outcome::Settled(conclude(set, satisfied.iter())),
            may_ever,
        };
    }
    let mut residual = PolicySet::new();
    for policy in set.policies().filter(|p| open.contains(p.id())) {
        if residual.add(policy.clone()).is_err() {
            // Cannot happen (the ids are unique in `set`); the full evaluation stays right.
            return Prepared {
                outcome: Outcome::Failing,
                may_ever,
            };
        }
    }
    Prepared {
        outcome: Outcome::Pending(Box::new(Pending {
            satisfied,
            residual,
            entities,
            principal,
            action,
            resource,
        })),
        may_ever,
    }
}

/// The decision for one call of a pending key: its residual policies evaluated with the
/// call's arguments, joined with the policies satisfied whatever the arguments.
fn finish(set: &PolicySet, pending: &Pending, arguments: Option<&Value>) -> Decision {
    let req = match call_context(arguments).and_then(|context| {
        Request::new(
            pending.principal.clone(),
            pending.action.clone(),
            pending.resource.clone(),
            context,
            None,
        )
        .map_err(|e| e.to_string())
    }) {
        Ok(req) => req,
        Err(cause) => return unbuildable(cause),
    };
    let response = Authorizer::new().is_authorized(&req, &pending.residual, &pending.entities);
    decision_of(set, &response, pending.satisfied.iter())
}

/// The decision from Cedar's response, with `satisfied` (policies known satisfied beyond
/// the response's) joined in.
fn decision_of<'a>(
    set: &PolicySet,
    response: &'a Response,
    satisfied: impl IntoIterator<Item = &'a cedar_policy::PolicyId>,
) -> Decision {
    let diagnostics = response.diagnostics();
    if diagnostics.errors().next().is_some() {
        return failure(response);
    }
    conclude(set, satisfied.into_iter().chain(diagnostics.reason()))
}

/// The denial when policies failed: it names them and why (fail closed).
fn failure(response: &Response) -> Decision {
    let errors: Vec<_> = response.diagnostics().errors().collect();
    let ids = errors.iter().map(|e| match e {
        cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
            stored_id(e.policy_id().as_ref())
        }
    });
    Decision {
        allowed: false,
        policy_ids: ids.collect::<BTreeSet<_>>().into_iter().collect(),
        errors: errors.iter().map(ToString::to_string).collect(),
        approval: false,
    }
}

/// The decision when exactly the policies `satisfied` hold and none failed: Cedar's rule.
fn conclude<'a>(
    set: &PolicySet,
    satisfied: impl Iterator<Item = &'a cedar_policy::PolicyId>,
) -> Decision {
    let (mut forbids, mut permits) = (BTreeSet::new(), BTreeSet::new());
    let mut approval = false;
    for id in satisfied {
        let Some(policy) = set.policy(id) else {
            continue;
        };
        match policy.effect() {
            Effect::Forbid => {
                forbids.insert(stored_id(id.as_ref()));
            }
            Effect::Permit => {
                approval |= policy.annotation(APPROVAL_ANNOTATION).is_some();
                permits.insert(stored_id(id.as_ref()));
            }
        }
    }
    if !forbids.is_empty() {
        return Decision {
            allowed: false,
            policy_ids: forbids.into_iter().collect(),
            errors: Vec::new(),
            approval: false,
        };
    }
    Decision {
        allowed: !permits.is_empty(),
        approval: approval && !permits.is_empty(),
        policy_ids: permits.into_iter().collect(),
        errors: Vec::new(),
    }
}

/// The denial when the request itself cannot be built.
fn unbuildable(cause: String) -> Decision {
    Decision {
        allowed: false,
        policy_ids: Vec::new(),
        errors: vec![cause],
        approval: false,
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

/// The schema's entity types, parsed once.
struct Types {
    user: EntityTypeName,
    tool: EntityTypeName,
    actions: [EntityUid; 3],
}

fn types() -> &'static Types {
    static TYPES: OnceLock<Types> = OnceLock::new();
    TYPES.get_or_init(|| {
        let name = |n: &str| EntityTypeName::from_str(n).expect("a schema type name");
        let action =
            |a: Action| EntityUid::from_type_name_and_id(name("Action"), EntityId::new(a.as_str()));
        Types {
            user: name("User"),
            tool: name("Tool"),
            actions: [
                action(Action::CallTool),
                action(Action::GetPrompt),
                action(Action::ReadResource),
            ],
        }
    })
}

fn user_uid(principal: &Principal) -> EntityUid {
    EntityUid::from_type_name_and_id(types().user.clone(), EntityId::new(&principal.id))
}

fn tool_uid(target: &Target) -> EntityUid {
    let id = format!("{}/{}", target.integration.slug, target.name);
    EntityUid::from_type_name_and_id(types().tool.clone(), EntityId::new(id))
}

fn action_uid(action: Action) -> EntityUid {
    let index = match action {
        Action::CallTool => 0,
        Action::GetPrompt => 1,
        Action::ReadResource => 2,
    };
    types().actions[index].clone()
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

/// The context of a call: its arguments.
fn call_context(arguments: Option<&Value>) -> Result<Context, String> {
    let arguments = convert::record(arguments.unwrap_or(&Value::Null))?;
    Context::from_pairs([("arguments".to_owned(), arguments)]).map_err(|e| e.to_string())
}

fn request(
    principal: &Principal,
    action: Action,
    target: &Target,
    arguments: Option<&Value>,
) -> Result<(Request, Entities), String> {
    let entities = entities(principal, action, target)?;
    let context = call_context(arguments)?;
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

    /// Policies of every kind a decision can take: the README's examples, per-user forbids,
    /// argument conditions (one reading an argument without `has`, which fails when absent),
    /// approvals, a permit that reads arguments.
    fn mixed_policies() -> Vec<Policy> {
        [
            r#"permit (principal, action, resource)
               when { principal.role != "member" || resource.readOnlyHint };"#,
            r#"forbid (principal, action == Action::"call_tool", resource)
               when { resource.integration.slug == "production" && resource.name like "delete_*" };"#,
            r#"forbid (principal, action == Action::"call_tool", resource)
               when { resource.name == "transfer" &&
                      !(context.arguments has amount && context.arguments.amount < 100) };"#,
            r#"@approval("user") permit (principal, action == Action::"call_tool", resource)
               when { resource.name == "send_email" };"#,
            r#"forbid (principal == User::"u2", action, resource) when { resource.name == "wire" };"#,
            r#"forbid (principal, action, resource)
               when { principal.email like "*@contractor.example" && resource.integration.host like "*.prod" };"#,
            r#"forbid (principal, action == Action::"call_tool", resource)
               when { resource.name == "pay" && context.arguments.amount > 50 };"#,
            r#"permit (principal, action, resource)
               when { resource.name == "transfer" && context.arguments has to && context.arguments.to == "self" };"#,
            r#"@approval("user") permit (principal, action, resource)
               when { resource.integration.slug == "finance" && resource.destructiveHint };"#,
            r#"permit (principal, action == Action::"get_prompt", resource) when { resource.kind == "prompt" };"#,
        ]
        .into_iter()
        .map(|text| stored(text, true))
        .collect()
    }

    fn principals() -> Vec<Principal> {
        let p = |id: &str, email: &str, role: &str| Principal {
            id: id.into(),
            email: email.into(),
            role: role.into(),
        };
        vec![
            p("u1", "m@example.com", "member"),
            p("u2", "n@example.com", "member"),
            p("u3", "o@example.com", "owner"),
            p("u4", "c@contractor.example", "member"),
            p("u5", "d@contractor.example", "admin"),
        ]
    }

    fn targets() -> Vec<Target> {
        let mut targets = Vec::new();
        for (slug, host) in [
            ("bank", "bank.example"),
            ("production", "api.prod"),
            ("finance", "fin.example"),
        ] {
            for name in [
                "transfer",
                "pay",
                "send_email",
                "wire",
                "delete_all",
                "read",
            ] {
                for read_only in [false, true] {
                    targets.push(Target {
                        name: name.into(),
                        integration: IntegrationRef {
                            slug: slug.into(),
                            host: host.into(),
                        },
                        application: "app".into(),
                        annotations: Annotations {
                            read_only_hint: read_only,
                            destructive_hint: !read_only,
                            ..Annotations::default()
                        },
                    });
                }
            }
        }
        targets
    }

    fn argument_sets() -> Vec<Option<Value>> {
        vec![
            None,
            Some(json!({})),
            Some(json!({"amount": 10})),
            Some(json!({"amount": 100, "to": "self"})),
            Some(json!({"amount": 60, "to": "other"})),
            Some(json!({"amount": "lots"})),
            Some(json!({"to": "self"})),
            Some(json!({"amount": 1.5, "nested": {"a": [1, null, "x"]}})),
            Some(json!([1, 2])),
        ]
    }

    /// Every decision (and list filter) of the memoized path against the full evaluation,
    /// each key asked with every argument set in turn, twice: a key's first call's arguments
    /// must not carry into the next call's decision.
    fn assert_equivalent(compiled: &Compiled) {
        let actions = [Action::CallTool, Action::GetPrompt, Action::ReadResource];
        let mut outcomes = BTreeSet::new();
        for round in 0..2 {
            for principal in &principals() {
                for action in actions {
                    for target in &targets() {
                        for arguments in &argument_sets() {
                            let expected = compiled.decide_uncached(
                                principal,
                                action,
                                target,
                                arguments.as_ref(),
                            );
                            let got =
                                compiled.decide(principal, action, target, arguments.as_ref());
                            assert_eq!(
                                got, expected,
                                "round {round}: {principal:?} {action:?} {target:?} {arguments:?}"
                            );
                            outcomes.insert((
                                expected.allowed,
                                expected.approval,
                                !expected.errors.is_empty(),
                            ));
                        }
                        assert_eq!(
                            compiled.may_ever(principal, action, target),
                            may_ever_uncached(compiled, principal, action, target),
                            "{principal:?} {action:?} {target:?}"
                        );
                    }
                }
            }
        }
        if compiled.broken.is_empty() {
            // The policies reach every kind of outcome: allowed with and without approval,
            // denied by a policy, denied by an error.
            for outcome in [
                (true, false, false),
                (true, true, false),
                (false, false, false),
                (false, false, true),
            ] {
                assert!(outcomes.contains(&outcome), "{outcome:?} never decided");
            }
        }
    }

    /// The list filter evaluated directly, without the memo.
    fn may_ever_uncached(
        compiled: &Compiled,
        principal: &Principal,
        action: Action,
        target: &Target,
    ) -> bool {
        let Some(set) = &compiled.set else {
            return true;
        };
        if !compiled.broken.is_empty() {
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

    #[test]
    fn memoized_decisions_equal_the_full_evaluation() {
        let compiled = Compiled::new(&mixed_policies());
        assert!(compiled.broken().is_empty(), "{:?}", compiled.broken());
        assert_equivalent(&compiled);
        assert!(compiled.memoized() > 0);
    }

    #[test]
    fn a_calls_arguments_never_carry_into_the_next_call_of_its_key() {
        let compiled = Compiled::new(&mixed_policies());
        let transfer = &targets()[0];
        let decide = |arguments: Value| {
            compiled
                .decide(&member(), Action::CallTool, transfer, Some(&arguments))
                .allowed
        };
        assert!(decide(json!({"amount": 10, "to": "self"})));
        assert!(!decide(json!({"amount": 500, "to": "self"})));
        assert!(decide(json!({"amount": 10, "to": "self"})));
        assert!(!decide(json!({"amount": 10, "to": "other"})));
        assert_eq!(compiled.memoized(), 1);
    }

    #[test]
    fn a_policy_failing_whatever_the_arguments_is_named_on_the_memoized_path() {
        let mut policies = mixed_policies();
        // `principal.team` does not exist: it fails for every call it is reached in.
        policies.push(stored(
            r#"forbid (principal, action, resource) when { resource.name == "wire" && principal.team == "x" };"#,
            true,
        ));
        let failing = policies.last().unwrap().id.to_string();
        let compiled = Compiled::new(&policies);
        assert_equivalent(&compiled);
        let d = compiled.decide(&principals()[2], Action::CallTool, &targets()[6], None);
        assert_eq!(
            (d.allowed, d.policy_ids.contains(&failing)),
            (false, true),
            "{d:?}"
        );
    }

    #[test]
    fn a_broken_policy_denies_everything_on_the_memoized_path() {
        let mut policies = mixed_policies();
        policies.push(stored("permit (principal, action, resource) when {", true));
        let compiled = Compiled::new(&policies);
        assert_eq!(compiled.broken().len(), 1);
        assert_equivalent(&compiled);
        assert!(!compiled.may_ever(&principals()[2], Action::CallTool, &targets()[0]));
    }

    #[test]
    fn the_memo_is_bounded() {
        let compiled = Compiled::new(&mixed_policies());
        let mut target = targets()[0].clone();
        for n in 0..memo::CAPACITY + 10 {
            target.name = format!("tool_{n}");
            compiled.decide(&member(), Action::CallTool, &target, None);
        }
        assert!(compiled.memoized() <= memo::CAPACITY);
        assert!(compiled.memoized() > 0);
    }
}
