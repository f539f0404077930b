//! Routing by reference: which upstream of the aggregated endpoint a request belongs to when
//! its params name something of one upstream.
//!
//! - A tool or prompt, by its aggregated name `{slug}_{name}` ([`by_name`]): the upstream with
//!   that slug, which is sent its own name.
//! - A resource, by its URI ([`resource_owner`]): every upstream is asked to read it, in
//!   parallel and each within the fan-out deadline, and the first (in attachment order) whose
//!   answer is a result owns it. `resources/read` is answered with that read;
//!   `resources/subscribe` and `resources/unsubscribe` go to that upstream alone. URIs are not
//!   renamed, so what an upstream sends about a URI reaches the client unchanged.
//! - A completion, by its `ref` ([`completion`]): `ref/prompt` by the prompt's aggregated name,
//!   `ref/resource` by the upstream that lists that URI template (or, failing that, that
//!   resource URI).

use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::Value;

use super::era::{self, Era};
use super::upstream::{self, Downstream, Member, rpc, within};
use super::{SEPARATOR, list_one};
use crate::ProxyState;
use crate::error::ProxyError;
use crate::stage::McpCaller;

/// The upstream an aggregated tool or prompt name names, and its own name for it. Only that
/// upstream's credential is resolved ([`upstream::member`]).
pub async fn by_name<'n>(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    name: &'n str,
) -> Result<Option<(Member, &'n str)>, ProxyError> {
    let Some((slug, inner)) = name.split_once(SEPARATOR) else {
        return Ok(None);
    };
    let member = upstream::member(state, caller, slug).await?;
    Ok(member.map(|m| (m, inner)))
}

/// The upstream that owns the resource `read` (a `resources/read` request) names, and its
/// answer: the first whose answer is a result. An upstream that fails or misses the deadline
/// owns nothing; one that forgot a 2025 client's session fails the request.
pub async fn resource_owner<'a>(
    state: &ProxyState,
    members: &'a [Member],
    downstream: &Downstream,
    read: &Value,
) -> Result<Option<(&'a Member, Value)>, ProxyError> {
    let answers = join_all(
        members
            .iter()
            .map(|m| within(state, m, "resources/read", rpc(state, m, downstream, read))),
    )
    .await;
    let answers = answers
        .into_iter()
        .map(|a| a.transpose().map(Option::flatten))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(members
        .iter()
        .zip(answers)
        .find_map(|(m, answer)| answer.filter(|a| a.get("result").is_some()).map(|a| (m, a))))
}

/// The upstream a `completion/complete` request belongs to, and the request as that upstream
/// is sent it (a prompt under its own name); `None` for a `ref` no upstream has.
pub async fn completion(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    downstream: &Downstream,
    message: &Value,
) -> Result<Option<(Member, Value)>, ProxyError> {
    let reference = &message["params"]["ref"];
    match reference["type"].as_str() {
        Some("ref/prompt") => {
            let name = reference["name"].as_str().unwrap_or("");
            Ok(by_name(state, caller, name).await?.map(|(member, inner)| {
                let mut own = message.clone();
                own["params"]["ref"]["name"] = Value::from(inner);
                (member, own)
            }))
        }
        Some("ref/resource") => {
            let uri = reference["uri"].as_str().unwrap_or("");
            let members = upstream::members(state, caller).await?;
            let owner = listing_owner(state, &members, downstream, uri).await?;
            Ok(owner.map(|member| (member.clone(), message.clone())))
        }
        _ => Ok(None),
    }
}

/// The upstream that lists `uri` as a resource template, else as a resource (each list asked
/// of every upstream in parallel, within the fan-out deadline).
async fn listing_owner<'a>(
    state: &ProxyState,
    members: &'a [Member],
    downstream: &Downstream,
    uri: &str,
) -> Result<Option<&'a Member>, ProxyError> {
    for (method, key) in [
        ("resources/templates/list", "uriTemplate"),
        ("resources/list", "uri"),
    ] {
        let lists = join_all(
            members
                .iter()
                .map(|m| within(state, m, method, list_one(state, m, downstream, method))),
        )
        .await;
        for (member, list) in members.iter().zip(lists) {
            let Some(list) = list else {
                continue;
            };
            let (_, items) = list?;
            if items.iter().any(|item| item[key] == uri) {
                return Ok(Some(member));
            }
        }
    }
    Ok(None)
}

/// Whether `member` is spoken to in the 2026 era on behalf of `downstream` (as
/// `upstream::link` decides, without opening a session).
pub async fn speaks_modern(state: &ProxyState, member: &Member, downstream: &Downstream) -> bool {
    if let Downstream::Session(s) = downstream
        && let Some(up) = s.upstream(member.integration.id)
    {
        return up.is_modern();
    }
    matches!(era::era(state, member).await, Era::Modern(_))
}
