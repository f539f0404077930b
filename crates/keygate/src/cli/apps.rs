//! `keygate apps`: applications over the management API — list, get, create, update, delete
//! (archive), rotate-secret, and attach/detach an integration.

use clap::Subcommand;
use keygate_core::config::Config;
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{Columns, print, record, table, terminal_width, text};
use super::remote::Api;
use super::resources::{Common, app_id, integration_id};

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// List applications (owners and admins: the ones they created; --all: every one).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Show an application.
    Get { app: String },
    /// Create an application; a confidential client's secret is shown once.
    Create {
        #[arg(long)]
        name: String,
        /// The application's own OAuth client: public (PKCE, no secret) or confidential.
        #[arg(long = "type", default_value = "public", value_parser = ["public", "confidential"])]
        client_type: String,
        /// A redirect URI of the application's own OAuth client (repeatable).
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
    },
    /// Rename an application or replace its redirect URIs.
    Update {
        app: String,
        #[arg(long)]
        name: Option<String>,
        /// Replaces the redirect URIs (repeatable).
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
    },
    /// Archive an application: its tokens stop working.
    Delete { app: String },
    /// Replace a confidential application's client secret (shown once).
    RotateSecret { app: String },
    /// Attach an integration (id, slug or name) to an application.
    Attach { app: String, integration: String },
    /// Detach an integration from an application.
    Detach { app: String, integration: String },
}

const LIST: &Columns = &[
    ("id", "/id"),
    ("name", "/name"),
    ("integrations", "/integrationSlugs"),
    ("live sessions", "/liveSessionCount"),
];

const DETAIL: &Columns = &[
    ("id", "/id"),
    ("name", "/name"),
    ("mcp url", "/oauth/gatewayUrl"),
    ("client id", "/oauth/clientId"),
    ("client type", "/oauth/type"),
    ("redirect uris", "/oauth/redirectUris"),
    ("integrations", "/integrationSlugs"),
    ("sessions", "/sessionSummary"),
    ("created", "/createdAt"),
    ("archived", "/archivedAt"),
];

pub async fn run(config: &Config, common: Common, command: AppsCommand) -> anyhow::Result<()> {
    let mut api = Api::connect(config, &common.remote).await?;
    let json = common.json;
    match command {
        AppsCommand::List { all } => {
            let path = if all {
                "/applications?all=true"
            } else {
                "/applications"
            };
            let items = api.list(path).await?;
            let rows: Vec<Value> = items.iter().cloned().map(readable).collect();
            print(json, &json!({ "items": items }), |_| {
                table(LIST, &rows, terminal_width())
            })
        }
        AppsCommand::Get { app } => {
            let id = app_id(&mut api, &app).await?;
            let answer = api.get(&format!("/applications/{id}")).await?;
            print(json, &answer, |a| {
                record(DETAIL, &readable(a["application"].clone()))
            })
        }
        AppsCommand::Create {
            name,
            client_type,
            redirect_uris,
        } => {
            let body = json!({"name": name, "oauth": {"type": client_type, "redirectUris": redirect_uris}});
            let answer = api.call(Method::POST, "/applications", Some(&body)).await?;
            print(json, &answer, with_secret)
        }
        AppsCommand::Update {
            app,
            name,
            redirect_uris,
        } => {
            let id = app_id(&mut api, &app).await?;
            let mut body = json!({});
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if !redirect_uris.is_empty() {
                body["oauth"] = json!({ "redirectUris": redirect_uris });
            }
            let path = format!("/applications/{id}");
            let answer = api.call(Method::PATCH, &path, Some(&body)).await?;
            print(json, &answer, |a| {
                record(DETAIL, &readable(a["application"].clone()))
            })
        }
        AppsCommand::Delete { app } => {
            let id = app_id(&mut api, &app).await?;
            api.call(Method::DELETE, &format!("/applications/{id}"), None)
                .await?;
            eprintln!("archived application {id}");
            Ok(())
        }
        AppsCommand::RotateSecret { app } => {
            let id = app_id(&mut api, &app).await?;
            let path = format!("/applications/{id}/rotate-secret");
            let answer = api.call(Method::POST, &path, None).await?;
            print(json, &answer, with_secret)
        }
        AppsCommand::Attach { app, integration } => {
            attachment(&mut api, Method::POST, &app, &integration).await?;
            eprintln!("attached {integration} to {app}");
            Ok(())
        }
        AppsCommand::Detach { app, integration } => {
            attachment(&mut api, Method::DELETE, &app, &integration).await?;
            eprintln!("detached {integration} from {app}");
            Ok(())
        }
    }
}

async fn attachment(
    api: &mut Api,
    method: Method,
    app: &str,
    integration: &str,
) -> anyhow::Result<()> {
    let app = app_id(api, app).await?;
    let integration = integration_id(api, integration).await?;
    let path = format!("/applications/{app}/integrations/{integration}");
    api.call(method, &path, None).await?;
    Ok(())
}

/// A create or rotate-secret answer: the application, and its secret once.
fn with_secret(answer: &Value) -> String {
    let mut out = record(DETAIL, &readable(answer["application"].clone()));
    if let Some(secret) = answer["oauth"]["clientSecret"].as_str() {
        out.push_str(&format!(
            "client secret  {secret}\n(shown only now: store it where the application can read it)\n"
        ));
    }
    out
}

/// An application with the derived fields the tables show.
fn readable(mut app: Value) -> Value {
    let slugs: Vec<String> = app["integrations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| text(i, "/slug"))
        .collect();
    app["integrationSlugs"] = json!(slugs.join(","));
    app["sessionSummary"] = json!(format!(
        "{} live, {} total",
        text(&app, "/liveSessionCount"),
        text(&app, "/totalSessionCount")
    ));
    app
}
