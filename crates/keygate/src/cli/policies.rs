//! `keygate policies`: the organization's tool policies — list, show, create (from a Cedar
//! file or stdin), enable, disable, delete, validate a text without storing it, and evaluate a
//! dry run of the gateway's decision.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use keygate_core::config::Config;
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Columns, print, record, table, terminal_width};
use super::remote::{Api, encode};
use super::resources::Common;

#[derive(Subcommand, Debug)]
pub enum PoliciesCommand {
    /// List the organization's policies.
    List,
    /// Show one policy, with its text.
    Get { id: String },
    /// Store a policy (enabled unless `--disabled`); the text must validate.
    Create {
        #[arg(long)]
        name: String,
        /// The Cedar text: a file, or `-` (the default) for stdin.
        #[arg(long, default_value = "-")]
        file: PathBuf,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        disabled: bool,
    },
    /// Enable a policy.
    Enable { id: String },
    /// Disable a policy (it stays stored).
    Disable { id: String },
    /// Delete a policy.
    Delete { id: String },
    /// Validate a Cedar text against the gateway's schema without storing it.
    Validate {
        /// A file, or `-` (the default) for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// The decision the gateway makes for a call with the enabled policies (a dry run).
    Evaluate(Evaluate),
}

#[derive(Args, Debug)]
pub struct Evaluate {
    /// The user's id.
    #[arg(long)]
    user: String,
    #[arg(long)]
    email: String,
    /// `owner`, `admin` or `member`.
    #[arg(long, default_value = "member")]
    role: String,
    /// `call_tool`, `get_prompt` or `read_resource`.
    #[arg(long, default_value = "call_tool")]
    action: String,
    /// The tool or prompt (as the integration names it), or the resource's URI.
    #[arg(long)]
    name: String,
    /// The integration's slug.
    #[arg(long)]
    integration: String,
    /// The integration's host.
    #[arg(long, default_value = "")]
    host: String,
    /// The application's id.
    #[arg(long, default_value = "")]
    application: String,
    /// The call's arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    arguments: String,
    /// The tool's MCP annotations, a JSON object (absent hints take the defaults).
    #[arg(long, default_value = "{}")]
    annotations: String,
}

const LIST: &Columns = &[
    ("id", "/id"),
    ("name", "/name"),
    ("enabled", "/enabled"),
    ("updated", "/updatedAt"),
];

const DETAIL: &Columns = &[
    ("id", "/policy/id"),
    ("name", "/policy/name"),
    ("description", "/policy/description"),
    ("enabled", "/policy/enabled"),
    ("created", "/policy/createdAt"),
    ("updated", "/policy/updatedAt"),
];

pub async fn run(config: &Config, common: Common, command: PoliciesCommand) -> anyhow::Result<()> {
    let mut api = Api::connect(config, &common.remote).await?;
    let json = common.json;
    match command {
        PoliciesCommand::List => {
            let items = api.list("/policies").await?;
            let answer = json!({ "items": items });
            print(json, &answer, |_| table(LIST, &items, terminal_width()))
        }
        PoliciesCommand::Get { id } => {
            let answer = api.get(&format!("/policies/{}", encode(&id))).await?;
            print(json, &answer, with_text)
        }
        PoliciesCommand::Create {
            name,
            file,
            description,
            disabled,
        } => {
            let body = json!({"name": name, "description": description,
                "enabled": !disabled, "text": read_text(&file)?});
            let answer = api.call(Method::POST, "/policies", Some(&body)).await?;
            print(json, &answer, with_text)
        }
        PoliciesCommand::Enable { id } => set_enabled(&mut api, json, &id, true).await,
        PoliciesCommand::Disable { id } => set_enabled(&mut api, json, &id, false).await,
        PoliciesCommand::Delete { id } => {
            let path = format!("/policies/{}", encode(&id));
            let answer = api.call(Method::DELETE, &path, None).await?;
            print(json, &answer, |_| format!("deleted policy {id}\n"))
        }
        PoliciesCommand::Validate { file } => {
            let body = json!({ "text": read_text(&file)? });
            let answer = api
                .call(Method::POST, "/policies/validate", Some(&body))
                .await?;
            print(json, &answer, validation)?;
            anyhow::ensure!(answer["valid"] == true, "the policy text is not valid");
            Ok(())
        }
        PoliciesCommand::Evaluate(e) => {
            let body = evaluation(e)?;
            let answer = api
                .call(Method::POST, "/policies/evaluate", Some(&body))
                .await?;
            print(json, &answer, decision)
        }
    }
}

async fn set_enabled(api: &mut Api, json: bool, id: &str, enabled: bool) -> anyhow::Result<()> {
    let path = format!("/policies/{}", encode(id));
    let body = json!({ "enabled": enabled });
    let answer = api.call(Method::PATCH, &path, Some(&body)).await?;
    print(json, &answer, |a| record(DETAIL, a))
}

/// A policy's fields, then its text.
fn with_text(answer: &Value) -> String {
    let text = answer["policy"]["text"].as_str().unwrap_or("");
    format!("{}\n{text}\n", record(DETAIL, answer))
}

/// "valid", or each problem with its place.
fn validation(answer: &Value) -> String {
    if answer["valid"] == true {
        return "valid\n".to_owned();
    }
    let problems = answer["errors"].as_array().cloned().unwrap_or_default();
    problems
        .iter()
        .map(|p| {
            let at = match (p["line"].as_u64(), p["column"].as_u64()) {
                (Some(l), Some(c)) => format!("{l}:{c}: "),
                _ => String::new(),
            };
            format!("{at}{}\n", p["message"].as_str().unwrap_or(""))
        })
        .collect()
}

/// "allow"/"deny", the policies behind it, whether the user must approve, and any errors.
fn decision(answer: &Value) -> String {
    let ids: Vec<&str> = answer["policyIds"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = answer["decision"].as_str().unwrap_or("?").to_owned();
    if answer["approvalRequired"] == true {
        out.push_str(" (after the user's approval)");
    }
    if !ids.is_empty() {
        out.push_str(&format!(" by {}", ids.join(", ")));
    }
    out.push('\n');
    for e in answer["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("error: {}\n", e.as_str().unwrap_or("")));
    }
    out
}

fn evaluation(e: Evaluate) -> anyhow::Result<Value> {
    let arguments: Value = serde_json::from_str(&e.arguments).context("--arguments is not JSON")?;
    let annotations: Value =
        serde_json::from_str(&e.annotations).context("--annotations is not JSON")?;
    Ok(json!({
        "principal": {"id": e.user, "email": e.email, "role": e.role},
        "action": e.action,
        "resource": {"name": e.name, "integration": {"slug": e.integration, "host": e.host},
            "application": e.application, "annotations": annotations},
        "context": {"arguments": arguments},
    }))
}

/// A policy text from `file`, or stdin for `-` (at most what the API takes, and a little more
/// so that the API names the limit).
fn read_text(file: &PathBuf) -> anyhow::Result<String> {
    const MAX: u64 = 128 * 1024;
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().take(MAX).read_to_string(&mut text)?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("opening {}", file.display()))?
            .take(MAX)
            .read_to_string(&mut text)?;
    }
    Ok(text)
}
