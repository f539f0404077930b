//! The policy stage, after routing and before the credential: a thin layer over
//! [`crate::policy::Stage`], which holds the decision (Cedar, compiled once per organization and
//! store generation). Both routes ask [`of`] once per request (`None`: the organization has no
//! enabled policies, and nothing is read or rewritten), then [`check`] every message before its
//! credential is resolved — `-32043`, or a call the user must approve first — and
//! [`filter_list`] every list answer. On pass-through the answers to list requests are filtered
//! on their way back ([`Governed`], [`lets_through`]: JSON read whole, SSE event by event).

use std::sync::Arc;

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use keygate_core::model::Integration;
use serde_json::Value;

use super::{Call, McpCaller};
use crate::ProxyState;
use crate::approval::Asked;
use crate::error::ProxyError;
use crate::passthrough::MAX_REQUEST_BYTES;
pub use crate::policy::Stage;
use crate::sse::is_event_stream;

/// The stage for `caller`, or `None` when no policy applies to its organization.
pub async fn of(state: &ProxyState, caller: &McpCaller) -> Result<Option<Stage>, ProxyError> {
    Stage::of(state, caller).await
}

/// Judges one message of the call (`name`: the integration's own name of the tool or prompt,
/// when the route renamed it): denied (`-32043`), passed (`None`), or a call to ask the user
/// about first.
pub fn check(
    call: Call<'_>,
    stage: &Stage,
    message: &Value,
    name: Option<&str>,
) -> Result<Option<Asked>, ProxyError> {
    stage.check(call.state, call.integration, message, name)
}

/// Keeps the items of the call's list answer (`method`'s) that the caller may ever be
/// permitted, and remembers listed tools' annotations.
pub fn filter_list(call: Call<'_>, stage: &Stage, method: &str, items: &mut Vec<Value>) {
    stage.filter_list(call.state, call.integration, method, items);
}

/// The list requests among a body's messages: (id, method), to filter the answers to them.
type ListRequests = Arc<Vec<(Value, String)>>;

/// What the answer to a pass-through request the stage judged goes through: the stage, and the
/// list requests among its messages, whose answers are filtered.
pub struct Governed {
    stage: Arc<Stage>,
    lists: ListRequests,
}

impl Governed {
    /// The answer side of `stage`, for a request of `messages`.
    pub fn new(stage: Stage, messages: &[Value]) -> Self {
        Self {
            stage: Arc::new(stage),
            lists: Arc::new(list_requests(messages)),
        }
    }
}

fn list_requests(messages: &[Value]) -> Vec<(Value, String)> {
    messages
        .iter()
        .filter_map(|m| {
            let method = m["method"].as_str()?;
            keygate_policy::Action::of_list(method)?;
            Some((m.get("id")?.clone(), method.to_owned()))
        })
        .collect()
}

/// Filters the answers (one, or a batch's) to the list requests among them, in place.
fn filter_answers(
    state: &ProxyState,
    stage: &Stage,
    integration: &Integration,
    lists: &[(Value, String)],
    answer: &mut Value,
) {
    let answers = match answer {
        Value::Array(batch) => batch.as_mut_slice(),
        single => std::slice::from_mut(single),
    };
    for a in answers {
        if let Some((_, method)) = lists.iter().find(|(id, _)| a.get("id") == Some(id)) {
            stage.filter_answer(state, integration, method, a);
        }
    }
}

/// A pass-through answer as the policy stage lets it through: the answers to list requests
/// filtered ([`filter_list_answer`]), anything else unchanged.
pub async fn lets_through(call: Call<'_>, governed: Option<&Governed>, resp: Response) -> Response {
    match governed {
        Some(g) if !g.lists.is_empty() => {
            let (stage, lists) = (g.stage.clone(), g.lists.clone());
            filter_list_answer(call.state, stage, call.integration, lists, resp).await
        }
        _ => resp,
    }
}

/// A list answer without the items the caller may never use: a JSON answer read whole
/// (bounded) and written anew, an SSE answer event by event. Other answers pass unchanged.
async fn filter_list_answer(
    state: &ProxyState,
    stage: Arc<Stage>,
    integration: &Integration,
    lists: ListRequests,
    resp: Response,
) -> Response {
    if !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    if is_event_stream(&parts.headers) {
        let (state, integration) = (state.clone(), integration.clone());
        let body = crate::aggregate::events::relay(body, std::future::pending(), move |event| {
            let filter = |mut answer: Value| {
                filter_answers(&state, &stage, &integration, &lists, &mut answer);
                answer
            };
            crate::aggregate::events::map_event(event, filter, str::to_owned)
        });
        return Response::from_parts(parts, body);
    }
    let bytes = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let e = ProxyError::upstream("reading the list answer", e);
            return e.of_integration(integration).answer(None);
        }
    };
    let Ok(mut answer) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    filter_answers(state, &stage, integration, &lists, &mut answer);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(answer.to_string()))
}
