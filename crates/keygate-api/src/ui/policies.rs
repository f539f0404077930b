//! The policies page: the organization's Cedar tool policies listed, created and edited with
//! the API's validation problems shown at their line and column, enabled, disabled, deleted,
//! and a "try a decision" form over `POST /policies/evaluate`. Owners and admins change
//! policies; members read them and may try decisions.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::api::{Api, CallError};
use super::pages::{AppRow, Chrome, IntegrationRow, Items, Notice, Paged, PolicyRow, render};
use super::session::Session;
use super::{
    Ui, action_done, back_to, failure, form_field, require_form, require_session, respond,
    shown_refusal,
};

/// One problem of a policy text, where it is.
#[derive(Deserialize, Clone)]
pub struct Problem {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

#[derive(Deserialize)]
struct Validation {
    valid: bool,
    errors: Vec<Problem>,
}

/// What the policy form holds (kept as typed when it is shown again with its problems).
#[derive(Default, Clone)]
pub struct PolicyForm {
    pub name: String,
    pub description: String,
    pub text: String,
    pub enabled: bool,
}

impl PolicyForm {
    fn of_form(form: &HashMap<String, String>) -> Self {
        Self {
            name: form_field(form, "name").to_owned(),
            description: form_field(form, "description").to_owned(),
            // The text keeps its own whitespace (problems point into it).
            text: form.get("text").cloned().unwrap_or_default(),
            enabled: form.contains_key("enabled"),
        }
    }

    fn of_policy(p: &PolicyRow) -> Self {
        Self {
            name: p.name.clone(),
            description: p.description.clone(),
            text: p.text.clone(),
            enabled: p.enabled,
        }
    }
}

/// The "try a decision" form as typed.
#[derive(Clone)]
pub struct TryForm {
    pub user_id: String,
    pub email: String,
    pub role: String,
    pub action: String,
    pub tool: String,
    pub integration: String,
    pub application: String,
    pub read_only: bool,
    pub destructive: bool,
    pub arguments: String,
}

impl TryForm {
    fn fresh(session: &Session) -> Self {
        Self {
            user_id: String::new(),
            email: session.email.clone(),
            role: if session.privileged {
                "admin"
            } else {
                "member"
            }
            .to_owned(),
            action: "call_tool".to_owned(),
            tool: String::new(),
            integration: String::new(),
            application: String::new(),
            read_only: false,
            destructive: true,
            arguments: "{}".to_owned(),
        }
    }

    fn of_form(form: &HashMap<String, String>) -> Self {
        let field = |k: &str| form_field(form, k).to_owned();
        Self {
            user_id: field("user_id"),
            email: field("email"),
            role: field("role"),
            action: field("action"),
            tool: field("tool"),
            integration: field("integration"),
            application: field("application"),
            read_only: form.contains_key("read_only"),
            destructive: form.contains_key("destructive"),
            arguments: field("arguments"),
        }
    }
}

/// The decision `evaluate` gave.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tried {
    pub decision: String,
    pub policy_ids: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/policies.html")]
pub struct PoliciesPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub policies: Vec<PolicyRow>,
    /// The create form (privileged) and the problems of its last submission.
    pub form: PolicyForm,
    pub problems: Vec<Problem>,
    pub try_form: TryForm,
    pub tried: Option<Tried>,
    pub apps: Vec<AppRow>,
    pub integrations: Vec<IntegrationRow>,
}

impl PoliciesPage {
    /// `choices`, each with whether it is `current` (for a `<select>`).
    pub fn options(&self, choices: &[&'static str], current: &str) -> Vec<(&'static str, bool)> {
        choices.iter().map(|c| (*c, *c == current)).collect()
    }

    /// A policy's name for an id `evaluate` cited.
    pub fn policy_name(&self, id: &str) -> String {
        self.policies
            .iter()
            .find(|p| p.id == id)
            .map_or_else(|| id.to_owned(), |p| p.name.clone())
    }
}

#[derive(Template)]
#[template(path = "ui/policy.html")]
pub struct PolicyPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub id: String,
    pub form: PolicyForm,
    pub problems: Vec<Problem>,
}

async fn policies_page(
    ui: &Ui,
    session: &Session,
    notice: Option<Notice>,
) -> Result<PoliciesPage, CallError> {
    let api = ui.api(session);
    let policies = all_policies(&api).await?;
    let apps: Items<AppRow> = api.get("/applications?limit=100").await?;
    let integrations: Items<IntegrationRow> = api.get("/integrations?limit=100").await?;
    Ok(PoliciesPage {
        chrome: Chrome::of(session, "/ui/policies"),
        notice,
        policies,
        form: PolicyForm {
            enabled: true,
            ..PolicyForm::default()
        },
        problems: Vec::new(),
        try_form: TryForm::fresh(session),
        tried: None,
        apps: apps.items,
        integrations: integrations.items,
    })
}

async fn all_policies(api: &Api) -> Result<Vec<PolicyRow>, CallError> {
    let mut all = Vec::new();
    let mut path = "/policies?limit=100".to_owned();
    loop {
        let page: Paged<PolicyRow> = api.get(&path).await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => {
                path = format!(
                    "/policies?{}",
                    serde_urlencoded::to_string([("limit", "100"), ("cursor", c.as_str())])
                        .expect("strings encode")
                )
            }
            None => return Ok(all),
        }
    }
}

/// `GET /ui/policies`.
pub async fn policies(
    State(ui): State<Ui>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let page = policies_page(&ui, &session, super::done_notice(&q)).await;
    respond(&ui, &headers, StatusCode::OK, page)
}

/// The problems of `text`, from the API's validation.
async fn problems_of(api: &Api, text: &str) -> Result<Vec<Problem>, CallError> {
    let v: Validation = api
        .post("/policies/validate", json!({ "text": text }))
        .await?;
    Ok(if v.valid { Vec::new() } else { v.errors })
}

/// `POST /ui/policies`: creates a policy, or shows the form again with its problems.
pub async fn create_policy(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let typed = PolicyForm::of_form(&form);
    let api = ui.api(&session);
    let problems = match problems_of(&api, &typed.text).await {
        Ok(p) => p,
        Err(e) => return failure(&ui, &headers, e),
    };
    if !problems.is_empty() {
        let notice = Notice::error("The policy text has problems; nothing was saved.");
        let page = policies_page(&ui, &session, notice).await.map(|mut p| {
            p.form = typed;
            p.problems = problems;
            p
        });
        return respond(&ui, &headers, StatusCode::BAD_REQUEST, page);
    }
    let body = json!({"name": typed.name, "description": typed.description,
        "text": typed.text, "enabled": typed.enabled});
    match api.post::<serde_json::Value>("/policies", body).await {
        Ok(_) => back_to("/ui/policies", &format!("Policy “{}” created.", typed.name)),
        Err(e) => match shown_refusal(e) {
            Ok((status, notice)) => {
                let page = policies_page(&ui, &session, notice).await.map(|mut p| {
                    p.form = typed;
                    p
                });
                respond(&ui, &headers, status, page)
            }
            Err(e) => failure(&ui, &headers, e),
        },
    }
}

/// `GET /ui/policies/{id}`: the policy, editable by owners and admins.
pub async fn policy(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(id): Path<uuid::Uuid>,
) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let found = ui
        .api(&session)
        .get::<PolicyEnvelope>(&format!("/policies/{id}"))
        .await;
    let page = found.map(|p| PolicyPage {
        chrome: Chrome::of(&session, "/ui/policies"),
        notice: None,
        id: p.policy.id.clone(),
        form: PolicyForm::of_policy(&p.policy),
        problems: Vec::new(),
    });
    respond(&ui, &headers, StatusCode::OK, page)
}

#[derive(Deserialize)]
struct PolicyEnvelope {
    policy: PolicyRow,
}

/// `POST /ui/policies/{id}`: saves an edit, or shows it again with its problems.
pub async fn update_policy(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let typed = PolicyForm::of_form(&form);
    let api = ui.api(&session);
    let problems = match problems_of(&api, &typed.text).await {
        Ok(p) => p,
        Err(e) => return failure(&ui, &headers, e),
    };
    let again = |notice, problems| PolicyPage {
        chrome: Chrome::of(&session, "/ui/policies"),
        notice,
        id: id.to_string(),
        form: typed.clone(),
        problems,
    };
    if !problems.is_empty() {
        let notice = Notice::error("The policy text has problems; nothing was saved.");
        return render(StatusCode::BAD_REQUEST, &again(notice, problems));
    }
    let body = json!({"name": typed.name, "description": typed.description,
        "text": typed.text, "enabled": typed.enabled});
    let saved = api
        .call_json::<serde_json::Value>(Method::PATCH, &format!("/policies/{id}"), body)
        .await;
    match saved {
        Ok(_) => back_to("/ui/policies", &format!("Policy “{}” saved.", typed.name)),
        Err(e) => match shown_refusal(e) {
            Ok((status, notice)) => render(status, &again(notice, Vec::new())),
            Err(e) => failure(&ui, &headers, e),
        },
    }
}

/// `POST /ui/policies/{id}/enable` and `/disable`.
pub async fn switch_policy(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((id, to)): Path<(uuid::Uuid, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (enabled, done) = match to.as_str() {
        "enable" => (true, "Policy enabled."),
        "disable" => (false, "Policy disabled."),
        _ => return back_to("/ui/policies", "Unknown action."),
    };
    let changed = ui
        .api(&session)
        .call_json::<serde_json::Value>(
            Method::PATCH,
            &format!("/policies/{id}"),
            json!({ "enabled": enabled }),
        )
        .await
        .map(drop);
    after_action(&ui, &session, &headers, changed, done).await
}

/// `POST /ui/policies/{id}/delete`.
pub async fn delete_policy(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let deleted = ui
        .api(&session)
        .send(Method::DELETE, &format!("/policies/{id}"))
        .await;
    after_action(&ui, &session, &headers, deleted, "Policy deleted.").await
}

async fn after_action(
    ui: &Ui,
    session: &Session,
    headers: &HeaderMap,
    result: Result<(), CallError>,
    done: &str,
) -> Response {
    action_done(ui, headers, result, ("/ui/policies", done), |notice| {
        policies_page(ui, session, notice)
    })
    .await
}

/// `POST /ui/policies/evaluate`: the decision the gateway would make, shown on the page.
pub async fn try_decision(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let typed = TryForm::of_form(&form);
    let mut page = match policies_page(&ui, &session, None).await {
        Ok(p) => p,
        Err(e) => return failure(&ui, &headers, e),
    };
    let arguments = if typed.arguments.is_empty() {
        Ok(json!({}))
    } else {
        serde_json::from_str::<serde_json::Value>(&typed.arguments)
    };
    let arguments = match arguments {
        Ok(a) if a.is_object() => a,
        _ => {
            page.notice =
                Notice::error("Arguments must be a JSON object, such as {\"amount\": 5}.");
            page.try_form = typed;
            return render(StatusCode::BAD_REQUEST, &page);
        }
    };
    let host = page
        .integrations
        .iter()
        .find(|i| i.slug == typed.integration)
        .and_then(|i| url::Url::parse(&i.url).ok())
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let body = json!({
        "principal": {"id": typed.user_id, "email": typed.email, "role": typed.role},
        "action": typed.action,
        "resource": {
            "name": typed.tool,
            "integration": {"slug": typed.integration, "host": host},
            "application": typed.application,
            "annotations": {"readOnlyHint": typed.read_only, "destructiveHint": typed.destructive},
        },
        "context": {"arguments": arguments},
    });
    let tried = ui
        .api(&session)
        .post::<Tried>("/policies/evaluate", body)
        .await;
    page.try_form = typed;
    match tried {
        Ok(t) => {
            page.tried = Some(t);
            render(StatusCode::OK, &page)
        }
        Err(e) => match shown_refusal(e) {
            Ok((status, notice)) => {
                page.notice = notice;
                render(status, &page)
            }
            Err(e) => failure(&ui, &headers, e),
        },
    }
}

/// One line of a policy text shown with the problems found on it.
pub struct ListingLine {
    pub number: usize,
    pub text: String,
    pub marks: Vec<Mark>,
}

/// A problem under its line: `pad` puts the caret under its column.
pub struct Mark {
    pub pad: String,
    pub column: usize,
    pub message: String,
}

/// `text`, numbered, each problem under the line it is on (problems without a place, after
/// the last line).
pub fn listing(text: &str, problems: &[Problem]) -> Vec<ListingLine> {
    let mut lines: Vec<ListingLine> = text
        .lines()
        .enumerate()
        .map(|(i, l)| ListingLine {
            number: i + 1,
            text: l.to_owned(),
            marks: Vec::new(),
        })
        .collect();
    if lines.is_empty() {
        lines.push(ListingLine {
            number: 1,
            text: String::new(),
            marks: Vec::new(),
        });
    }
    for p in problems {
        let line = p.line.unwrap_or(lines.len()).clamp(1, lines.len());
        let column = p.column.unwrap_or(1).max(1);
        lines[line - 1].marks.push(Mark {
            pad: " ".repeat(column - 1),
            column,
            message: p.message.clone(),
        });
    }
    lines
}

impl PoliciesPage {
    pub fn listing(&self) -> Vec<ListingLine> {
        listing(&self.form.text, &self.problems)
    }
}

impl PolicyPage {
    pub fn listing(&self) -> Vec<ListingLine> {
        listing(&self.form.text, &self.problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_shown_under_its_line_at_its_column() {
        let problems = [
            Problem {
                message: "unexpected token".into(),
                line: Some(2),
                column: Some(5),
            },
            Problem {
                message: "somewhere".into(),
                line: None,
                column: None,
            },
        ];
        let shown = listing("permit (\n    bad\n);", &problems);
        assert_eq!(shown.len(), 3);
        assert!(shown[0].marks.is_empty());
        assert_eq!(shown[1].marks[0].pad, "    ");
        assert_eq!(shown[1].marks[0].column, 5);
        assert_eq!(shown[2].marks[0].message, "somewhere");
    }
}
