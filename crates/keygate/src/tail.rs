//! `keygate tail`: follows `GET /api/v1/events/stream` of a running gateway and prints one
//! line per trace event (or the event's JSON with `--json`). A dropped connection is resumed
//! with `Last-Event-ID`, so no event is lost or printed twice; an expired service-account
//! token is renewed.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use keygate_core::config::Config;
use keygate_core::wire::sse::Decoder;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Only events of this application (agent) id.
    #[arg(long, value_name = "ID")]
    pub app: Option<String>,
    /// Only events of this user id.
    #[arg(long, value_name = "ID")]
    pub user: Option<String>,
    /// Only calls of this tool: the name the agent called (`github_create_issue` style on the
    /// aggregated endpoint).
    #[arg(long, value_name = "NAME")]
    pub tool: Option<String>,
    /// Only events with this status.
    #[arg(long, value_parser = ["ok", "warn", "error_remote", "error_proxy", "error_auth"])]
    pub status: Option<String>,
    /// Print each event as one line of JSON.
    #[arg(long)]
    pub json: bool,
    /// The gateway's URL (default: the configured public URL).
    #[arg(long, env = "KEYGATE_URL")]
    pub url: Option<String>,
    /// A management access token. Without one, KEYGATE_CLIENT_ID and KEYGATE_CLIENT_SECRET
    /// (a service account) obtain one.
    #[arg(long, env = "KEYGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The service account's credentials, when no token is given: client id, then secret.
pub const CREDENTIAL_VARS: [&str; 2] = ["KEYGATE_CLIENT_ID", "KEYGATE_CLIENT_SECRET"];

/// Where the token comes from.
enum Credentials {
    Token(String),
    Client { id: String, secret: String },
}

pub async fn run(config: &Config, args: TailArgs) -> anyhow::Result<()> {
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| config.public_url())
        .trim_end_matches('/')
        .to_owned();
    let credentials = match args.token.clone() {
        Some(t) => Credentials::Token(t),
        None => match (
            std::env::var(CREDENTIAL_VARS[0]),
            std::env::var(CREDENTIAL_VARS[1]),
        ) {
            (Ok(id), Ok(secret)) => Credentials::Client { id, secret },
            _ => anyhow::bail!(
                "no credentials: pass --token (or KEYGATE_TOKEN), or set KEYGATE_CLIENT_ID and KEYGATE_CLIENT_SECRET"
            ),
        },
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let mut token = token(&http, &base, &credentials).await?;
    let mut query: Vec<(&str, String)> = Vec::new();
    for (key, value) in [
        ("applicationId", &args.app),
        ("userId", &args.user),
        ("toolName", &args.tool),
        ("status", &args.status),
    ] {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    let mut last: Option<String> = None;
    let mut announced = false;
    loop {
        let mut req = http
            .get(format!("{base}/api/v1/events/stream"))
            .query(&query)
            .bearer_auth(&token)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = &last {
            req = req.header("last-event-id", id);
        }
        match req.send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::UNAUTHORIZED => {
                if matches!(credentials, Credentials::Token(_)) {
                    anyhow::bail!("the gateway refused the token (401)");
                }
                token = self::token(&http, &base, &credentials).await?;
                continue;
            }
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                anyhow::bail!("the gateway answered {status}: {body}");
            }
            Ok(resp) if resp.status().is_success() => {
                if !announced {
                    eprintln!("following trace events from {base} (Ctrl-C to stop)");
                    announced = true;
                }
                if let Err(e) = follow(resp, &mut last, args.json).await {
                    eprintln!("keygate tail: {e:#}; reconnecting");
                }
            }
            Ok(resp) => eprintln!(
                "keygate tail: the gateway answered {}; retrying",
                resp.status()
            ),
            Err(e) => eprintln!("keygate tail: {e}; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn token(
    http: &reqwest::Client,
    base: &str,
    credentials: &Credentials,
) -> anyhow::Result<String> {
    let (id, secret) = match credentials {
        Credentials::Token(t) => return Ok(t.clone()),
        Credentials::Client { id, secret } => (id, secret),
    };
    let resp = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "management:all"),
            ("audience", &format!("{base}/api/v1")),
        ])
        .send()
        .await
        .context("requesting a management token")?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the token endpoint answered {status}: {}", body["error"]))
}

/// The largest trace event read (one holds at most two captured payloads of 1 MiB).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Reads one SSE response to its end, printing events and remembering the last id.
async fn follow(
    resp: reqwest::Response,
    last: &mut Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let mut body = resp.bytes_stream();
    let mut events = Decoder::new(MAX_EVENT_BYTES);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let mut rest = &chunk[..];
        while let Some(decoded) = events.next_event(&mut rest) {
            let event = match decoded {
                Ok(event) => event,
                Err(e) => {
                    eprintln!("keygate tail: skipped {e}");
                    continue;
                }
            };
            let Some(data) = event.data.filter(|d| !d.is_empty()) else {
                continue; // a keep-alive comment
            };
            let line = if json {
                data
            } else {
                match serde_json::from_str::<Value>(&data) {
                    Ok(v) => readable(&v),
                    Err(_) => continue,
                }
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            if event.id.is_some() {
                *last = event.id;
            }
        }
    }
    anyhow::bail!("the stream ended")
}

/// `time  status  method  tool  duration  app=… user=… integration=…  error`
pub fn readable(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    let mut line = format!(
        "{}  {:<12} {:<16} {:<24} {:>6}ms  app={} user={} integration={}",
        s("createdAt"),
        s("status"),
        s("eventType"),
        s("toolName"),
        e["durationMs"].as_i64().unwrap_or(0),
        s("agentId"),
        s("userId"),
        s("integrationId"),
    );
    if let Some(m) = e["errorMessage"].as_str() {
        line.push_str("  ");
        line.push_str(m);
    }
    line
}
