//! `keygate integrations oauth`: how an `oauth` integration reaches its provider — show, set
//! (replaces the settings; the client secret is read from standard input and never shown
//! again) and delete.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Columns, print, record};
use super::remote::Api;
use super::resources::{integration_id, secret_from_stdin};

#[derive(Subcommand, Debug)]
pub enum OAuthCommand {
    /// Show an integration's OAuth settings.
    Get { integration: String },
    /// Replace an integration's OAuth settings (its `authMode` must be `oauth`); users connect
    /// again afterwards.
    Set {
        integration: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Remove the OAuth settings (after setting another `authMode`).
    Delete { integration: String },
}

/// The provider: named in the gateway's configuration, found from an issuer, or given by its
/// endpoints; with none of these the gateway discovers it from the MCP server.
#[derive(Args, Debug)]
pub struct Settings {
    /// A provider named in the gateway's configuration (`upstream_oauth.providers`).
    #[arg(long)]
    provider: Option<String>,
    /// An issuer whose metadata names the endpoints.
    #[arg(long)]
    issuer: Option<String>,
    /// A scope to ask for (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    #[arg(long)]
    client_id: Option<String>,
    /// Read the client secret from the first line of stdin.
    #[arg(long)]
    client_secret_stdin: bool,
    #[arg(long, value_name = "URL")]
    authorization_url: Option<String>,
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    #[arg(long, value_name = "URL")]
    revocation_url: Option<String>,
    #[arg(long, value_name = "URL")]
    userinfo_url: Option<String>,
}

impl Settings {
    fn body(self) -> anyhow::Result<Value> {
        let mut body = json!({ "scopes": self.scopes });
        for (field, value) in [
            ("provider", self.provider),
            ("issuer", self.issuer),
            ("clientId", self.client_id),
            ("authorizationUrl", self.authorization_url),
            ("tokenUrl", self.token_url),
            ("revocationUrl", self.revocation_url),
            ("userinfoUrl", self.userinfo_url),
        ] {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        if self.client_secret_stdin {
            body["clientSecret"] = json!(secret_from_stdin("client secret")?);
        }
        Ok(body)
    }
}

const DETAIL: &Columns = &[
    ("provider", "/oauth/provider"),
    ("issuer", "/oauth/issuer"),
    ("scopes", "/oauth/scopes"),
    ("client id", "/oauth/clientId"),
    ("client secret set", "/oauth/clientSecretConfigured"),
    ("authorization url", "/oauth/authorizationUrl"),
    ("token url", "/oauth/tokenUrl"),
    ("revocation url", "/oauth/revocationUrl"),
];

pub async fn run(api: &mut Api, json: bool, command: OAuthCommand) -> anyhow::Result<()> {
    let path = |id: &str| format!("/integrations/{id}/oauth");
    match command {
        OAuthCommand::Get { integration } => {
            let id = integration_id(api, &integration).await?;
            let answer = api.get(&path(&id)).await?;
            print(json, &answer, |a| record(DETAIL, a))
        }
        OAuthCommand::Set {
            integration,
            settings,
        } => {
            let body = settings.body()?;
            let id = integration_id(api, &integration).await?;
            let answer = api.call(Method::PUT, &path(&id), Some(&body)).await?;
            print(json, &answer, |a| record(DETAIL, a))
        }
        OAuthCommand::Delete { integration } => {
            let id = integration_id(api, &integration).await?;
            api.call(Method::DELETE, &path(&id), None).await?;
            eprintln!("removed the OAuth settings of {integration}");
            Ok(())
        }
    }
}
