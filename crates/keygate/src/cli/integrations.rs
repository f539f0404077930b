//! `keygate integrations`: the organization's MCP servers over the management API — list, get,
//! create, update, delete (archive), validate (a real MCP handshake) and their OAuth settings
//! (`integration_oauth.rs`). A server token is read from standard input, never from an
//! argument.

use clap::Subcommand;
use keygate_core::config::Config;
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Columns, print, record, table, terminal_width};
use super::remote::Api;
use super::resources::{Common, integration_id, secret_from_stdin};

const AUTH_MODES: [&str; 4] = ["none", "server_token", "user_token", "oauth"];

#[derive(Subcommand, Debug)]
pub enum IntegrationsCommand {
    /// List integrations.
    List,
    /// Show an integration (id, slug or name).
    Get { integration: String },
    /// Create an integration for an MCP server's URL.
    Create {
        #[arg(long)]
        name: String,
        /// The MCP server's URL (Streamable HTTP, or legacy SSE); `--url` names the gateway.
        #[arg(long, value_name = "URL")]
        server_url: String,
        /// Which credential the gateway sends upstream (default: none).
        #[arg(long, value_parser = AUTH_MODES)]
        auth_mode: Option<String>,
        /// Read the server token (for --auth-mode server_token) from the first line of stdin.
        #[arg(long)]
        server_token_stdin: bool,
    },
    /// Change an integration.
    Update {
        integration: String,
        #[arg(long)]
        name: Option<String>,
        /// A new URL of the MCP server.
        #[arg(long, value_name = "URL")]
        server_url: Option<String>,
        #[arg(long, value_parser = AUTH_MODES)]
        auth_mode: Option<String>,
        /// Read a new server token from the first line of stdin.
        #[arg(long)]
        server_token_stdin: bool,
    },
    /// Archive an integration.
    Delete { integration: String },
    /// Check the integration with a real MCP handshake and record the result.
    Validate { integration: String },
    /// The provider settings of an `oauth` integration.
    #[command(subcommand)]
    Oauth(super::integration_oauth::OAuthCommand),
}

const LIST: &Columns = &[
    ("id", "/id"),
    ("slug", "/slug"),
    ("name", "/name"),
    ("auth", "/authMode"),
    ("status", "/validationStatus"),
    ("url", "/url"),
];

const DETAIL: &Columns = &[
    ("id", "/id"),
    ("slug", "/slug"),
    ("name", "/name"),
    ("url", "/url"),
    ("auth mode", "/authMode"),
    ("server token", "/serverTokenConfigured"),
    ("validation", "/validationStatus"),
    ("message", "/validationMessage"),
    ("your connection", "/userConnection/status"),
    ("created", "/createdAt"),
    ("archived", "/archivedAt"),
];

pub async fn run(
    config: &Config,
    common: Common,
    command: IntegrationsCommand,
) -> anyhow::Result<()> {
    let mut api = Api::connect(config, &common.remote).await?;
    let json = common.json;
    let detail = |answer: &Value| record(DETAIL, &answer["integration"]);
    match command {
        IntegrationsCommand::List => {
            let items = api.list("/integrations").await?;
            print(json, &json!({ "items": items }), |_| {
                table(LIST, &items, terminal_width())
            })
        }
        IntegrationsCommand::Get { integration } => {
            let id = integration_id(&mut api, &integration).await?;
            let answer = api.get(&format!("/integrations/{id}")).await?;
            print(json, &answer, detail)
        }
        IntegrationsCommand::Create {
            name,
            server_url,
            auth_mode,
            server_token_stdin,
        } => {
            let mut body = json!({"name": name, "url": server_url});
            if let Some(mode) = auth_mode {
                body["authMode"] = json!(mode);
            }
            if server_token_stdin {
                body["serverToken"] = json!(secret_from_stdin("server token")?);
            }
            let answer = api.call(Method::POST, "/integrations", Some(&body)).await?;
            print(json, &answer, detail)
        }
        IntegrationsCommand::Update {
            integration,
            name,
            server_url,
            auth_mode,
            server_token_stdin,
        } => {
            let id = integration_id(&mut api, &integration).await?;
            let mut body = json!({});
            for (field, value) in [("name", name), ("url", server_url), ("authMode", auth_mode)] {
                if let Some(value) = value {
                    body[field] = json!(value);
                }
            }
            if server_token_stdin {
                body["serverToken"] = json!(secret_from_stdin("server token")?);
            }
            let path = format!("/integrations/{id}");
            let answer = api.call(Method::PATCH, &path, Some(&body)).await?;
            print(json, &answer, detail)
        }
        IntegrationsCommand::Delete { integration } => {
            let id = integration_id(&mut api, &integration).await?;
            api.call(Method::DELETE, &format!("/integrations/{id}"), None)
                .await?;
            eprintln!("archived integration {id}");
            Ok(())
        }
        IntegrationsCommand::Validate { integration } => {
            let id = integration_id(&mut api, &integration).await?;
            let path = format!("/integrations/{id}/validate");
            let answer = api.call(Method::POST, &path, None).await?;
            print(json, &answer, |a| {
                record(&[("status", "/status"), ("message", "/message")], a)
            })?;
            // A script can tell a server that failed the check by the exit status.
            anyhow::ensure!(
                answer["status"].as_str() == Some("valid"),
                "the integration did not pass validation"
            );
            Ok(())
        }
        IntegrationsCommand::Oauth(command) => {
            super::integration_oauth::run(&mut api, json, command).await
        }
    }
}
