//! What the API-backed resource commands share: the `--json` and gateway flags, and finding an
//! application or integration by what a person types (an id, a name, a slug).

use anyhow::Context;
use clap::Args;
use keygate_core::{ApplicationId, IntegrationId};
use serde_json::Value;

use super::remote::{Api, Remote};

/// Flags of every resource command.
#[derive(Args, Debug, Clone, Default)]
pub struct Common {
    #[command(flatten)]
    pub remote: Remote,
    /// Print the API's JSON answer (for scripts) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A secret read from the first line of standard input (never from an argument, where other
/// local users could see it).
pub fn secret_from_stdin(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .with_context(|| format!("reading the {what} from stdin"))?;
    let secret = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!secret.is_empty(), "no {what} on stdin");
    Ok(secret)
}

/// The id of the application `reference` names: an id as it is, else the one application of
/// that name (the caller's own first; then, for admins, every one).
pub async fn app_id(api: &mut Api, reference: &str) -> anyhow::Result<String> {
    if reference.parse::<ApplicationId>().is_ok() {
        return Ok(reference.to_owned());
    }
    let named = |apps: &[Value]| -> Vec<Value> {
        apps.iter()
            .filter(|a| a["name"].as_str() == Some(reference))
            .cloned()
            .collect()
    };
    let mut found = named(&api.list("/applications").await?);
    if found.is_empty()
        && let Ok(all) = api.list("/applications?all=true").await
    {
        found = named(&all);
    }
    only("application", reference, &found)
}

/// The id of the integration `reference` names: an id as it is, else the one integration with
/// that slug or name.
pub async fn integration_id(api: &mut Api, reference: &str) -> anyhow::Result<String> {
    if reference.parse::<IntegrationId>().is_ok() {
        return Ok(reference.to_owned());
    }
    let all = api.list("/integrations").await?;
    let by_slug: Vec<Value> = all
        .iter()
        .filter(|i| i["slug"].as_str() == Some(reference))
        .cloned()
        .collect();
    if !by_slug.is_empty() {
        return only("integration", reference, &by_slug);
    }
    let by_name: Vec<Value> = all
        .into_iter()
        .filter(|i| i["name"].as_str() == Some(reference))
        .collect();
    only("integration", reference, &by_name)
}

/// The id of the single match, or an error that says there is none or which ids compete.
fn only(kind: &str, reference: &str, found: &[Value]) -> anyhow::Result<String> {
    let ids: Vec<&str> = found.iter().filter_map(|v| v["id"].as_str()).collect();
    match ids.as_slice() {
        [id] => Ok((*id).to_owned()),
        [] => anyhow::bail!("no {kind} is named {reference:?}"),
        many => anyhow::bail!(
            "{} {kind}s are named {reference:?}; name one by its id: {}",
            many.len(),
            many.join(", ")
        ),
    }
}
