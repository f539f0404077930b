//! `keygate service-accounts`: the organization's machine credentials over the management API
//! — list, get, create and rotate-secret (the secret is shown once), delete (revoke: its tokens
//! stop working at once). `keygate service-account create` is the local bootstrap command that
//! needs no running gateway.

use clap::Subcommand;
use keygate_core::config::Config;
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Columns, print, record, table, terminal_width};
use super::remote::{Api, encode};
use super::resources::Common;

#[derive(Subcommand, Debug)]
pub enum ServiceAccountsCommand {
    /// List service accounts.
    List,
    /// Show a service account (its id).
    Get { id: String },
    /// Create a service account; its secret is shown once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Revoke a service account: its tokens stop working at once.
    Delete { id: String },
    /// Replace a service account's secret (shown once); its current tokens stop working.
    RotateSecret { id: String },
}

const LIST: &Columns = &[
    ("id", "/id"),
    ("name", "/name"),
    ("description", "/description"),
    ("created", "/createdAt"),
];

const DETAIL: &Columns = &[
    ("id", "/serviceAccount/id"),
    ("name", "/serviceAccount/name"),
    ("description", "/serviceAccount/description"),
    ("acting user", "/serviceAccount/actingUserId"),
    ("created", "/serviceAccount/createdAt"),
    ("revoked", "/serviceAccount/archivedAt"),
];

pub async fn run(
    config: &Config,
    common: Common,
    command: ServiceAccountsCommand,
) -> anyhow::Result<()> {
    let mut api = Api::connect(config, &common.remote).await?;
    let json = common.json;
    match command {
        ServiceAccountsCommand::List => {
            let items = api.list("/service-accounts").await?;
            print(json, &json!({ "items": items }), |_| {
                table(LIST, &items, terminal_width())
            })
        }
        ServiceAccountsCommand::Get { id } => {
            let answer = api
                .get(&format!("/service-accounts/{}", encode(&id)))
                .await?;
            print(json, &answer, |a| record(DETAIL, a))
        }
        ServiceAccountsCommand::Create { name, description } => {
            let body = json!({"name": name, "description": description});
            let answer = api
                .call(Method::POST, "/service-accounts", Some(&body))
                .await?;
            print(json, &answer, with_credentials)
        }
        ServiceAccountsCommand::Delete { id } => {
            api.call(
                Method::DELETE,
                &format!("/service-accounts/{}", encode(&id)),
                None,
            )
            .await?;
            eprintln!("revoked service account {id}");
            Ok(())
        }
        ServiceAccountsCommand::RotateSecret { id } => {
            let path = format!("/service-accounts/{}/rotate-secret", encode(&id));
            let answer = api.call(Method::POST, &path, None).await?;
            print(json, &answer, with_credentials)
        }
    }
}

/// The account and, once, its credentials.
fn with_credentials(answer: &Value) -> String {
    let mut out = record(DETAIL, answer);
    out.push_str(&record(
        &[
            ("client id", "/credentials/clientId"),
            ("client secret", "/credentials/clientSecret"),
        ],
        answer,
    ));
    out.push_str("(the secret is shown only now)\n");
    out
}
