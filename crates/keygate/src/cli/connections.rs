//! `keygate connections`: the signed-in user's own credentials for per-user integrations
//! (`user_token`, `oauth`) — list, get, create (a personal token read from standard input) and
//! delete (an OAuth grant is revoked at its provider too).

use clap::Subcommand;
use keygate_core::config::Config;
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Columns, print, record, table, terminal_width};
use super::remote::Api;
use super::resources::{Common, integration_id, secret_from_stdin};

#[derive(Subcommand, Debug)]
pub enum ConnectionsCommand {
    /// Your connection status for every per-user integration.
    List,
    /// Your connection to an integration (id, slug or name).
    Get { integration: String },
    /// Store your personal access token or API key for a `user_token` integration.
    Create {
        integration: String,
        /// Read the token from the first line of stdin.
        #[arg(long)]
        token_stdin: bool,
        /// A label for the connection, e.g. the account it belongs to.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Remove your connection (an OAuth grant is revoked at the provider).
    Delete { integration: String },
}

const LIST: &Columns = &[
    ("integration", "/slug"),
    ("name", "/name"),
    ("auth", "/authMode"),
    ("status", "/userConnection/status"),
    ("account", "/userConnection/displayName"),
    ("expires", "/userConnection/expiresAt"),
];

const DETAIL: &Columns = &[
    ("status", "/connection/status"),
    ("account", "/connection/displayName"),
    ("expires", "/connection/expiresAt"),
];

pub async fn run(
    config: &Config,
    common: Common,
    command: ConnectionsCommand,
) -> anyhow::Result<()> {
    let mut api = Api::connect(config, &common.remote).await?;
    let json = common.json;
    match command {
        ConnectionsCommand::List => {
            let per_user: Vec<Value> = api
                .list("/integrations")
                .await?
                .into_iter()
                .filter(|i| matches!(i["authMode"].as_str(), Some("user_token" | "oauth")))
                .collect();
            print(json, &json!({ "items": per_user }), |_| {
                table(LIST, &per_user, terminal_width())
            })
        }
        ConnectionsCommand::Get { integration } => {
            let id = integration_id(&mut api, &integration).await?;
            let answer = api.get(&format!("/integrations/{id}/connection")).await?;
            print(json, &answer, |a| record(DETAIL, a))
        }
        ConnectionsCommand::Create {
            integration,
            token_stdin,
            display_name,
        } => {
            anyhow::ensure!(
                token_stdin,
                "pass --token-stdin and the token on stdin (an argument would show it to other \
                 local users); OAuth integrations connect through the connect link instead"
            );
            let id = integration_id(&mut api, &integration).await?;
            let mut body = json!({ "token": secret_from_stdin("token")? });
            if let Some(name) = display_name {
                body["displayName"] = json!(name);
            }
            let path = format!("/integrations/{id}/connection");
            let answer = api.call(Method::POST, &path, Some(&body)).await?;
            print(json, &answer, |a| record(DETAIL, a))
        }
        ConnectionsCommand::Delete { integration } => {
            let id = integration_id(&mut api, &integration).await?;
            let path = format!("/integrations/{id}/connection");
            api.call(Method::DELETE, &path, None).await?;
            eprintln!("removed your connection to {integration}");
            Ok(())
        }
    }
}
