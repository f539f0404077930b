//! `keygate sessions`: the agent sessions of an application — list, get, and revoke
//! (disconnects them all; a member only her own).

use clap::Subcommand;
use keygate_core::config::Config;
use reqwest::Method;

use super::output::{Columns, print, record, table, terminal_width};
use super::remote::{Api, encode};
use super::resources::{Common, app_id};

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// List an application's agent sessions (id or name).
    List {
        app: String,
        /// Include expired and disconnected sessions.
        #[arg(long)]
        all: bool,
    },
    /// Show one agent session.
    Get { app: String, session: String },
    /// Disconnect the application's agent sessions: their tokens stop working.
    Revoke { app: String },
}

const LIST: &Columns = &[
    ("id", "/id"),
    ("name", "/name"),
    ("status", "/derivedStatus"),
    ("user", "/userId"),
    ("last active", "/lastActiveAt"),
    ("client", "/userAgent"),
];

const DETAIL: &Columns = &[
    ("id", "/session/id"),
    ("name", "/session/name"),
    ("status", "/session/derivedStatus"),
    ("user", "/session/userId"),
    ("client", "/session/userAgent"),
    ("connected", "/session/connectedAt"),
    ("last active", "/session/lastActiveAt"),
    ("token expires", "/session/tokenExpiresAt"),
    ("disconnected", "/session/disconnectedAt"),
];

pub async fn run(config: &Config, common: Common, command: SessionsCommand) -> anyhow::Result<()> {
    let mut api = Api::connect(config, &common.remote).await?;
    let json = common.json;
    match command {
        SessionsCommand::List { app, all } => {
            let id = app_id(&mut api, &app).await?;
            let answer = api
                .get(&format!(
                    "/applications/{id}/sessions?includeInactive={all}"
                ))
                .await?;
            let items = answer["items"].as_array().cloned().unwrap_or_default();
            print(json, &answer, |_| table(LIST, &items, terminal_width()))
        }
        SessionsCommand::Get { app, session } => {
            let id = app_id(&mut api, &app).await?;
            let answer = api
                .get(&format!("/applications/{id}/sessions/{}", encode(&session)))
                .await?;
            print(json, &answer, |a| record(DETAIL, a))
        }
        SessionsCommand::Revoke { app } => {
            let id = app_id(&mut api, &app).await?;
            let path = format!("/applications/{id}/sessions");
            let answer = api.call(Method::DELETE, &path, None).await?;
            print(json, &answer, |a| {
                format!("disconnected {} session(s)\n", a["disconnectedCount"])
            })?;
            Ok(())
        }
    }
}
