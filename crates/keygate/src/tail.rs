//! `keygate tail`: follows `GET /api/v1/events/stream` of a running gateway and prints one
//! line per trace event (or the event's JSON with `--json`), like `stern` does for pods.
//!
//! Lines name the application, integration and user (looked up once each through the API, by
//! id) in columns cut to the terminal's width; on a terminal (and without `NO_COLOR`) the
//! status is coloured and errors stand out. A dropped connection is resumed with
//! `Last-Event-ID`, so no event is lost or printed twice; while the gateway is down the tail
//! retries with growing delays and says so once; an expired token is renewed.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use keygate_core::config::Config;
use keygate_core::wire::sse::Decoder;
use serde_json::Value;

use crate::cli::output::terminal_width;
use crate::cli::remote::{Api, Remote, encode};
use crate::cli::resources::app_id;

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Only events of this application (id or name).
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// Only events of this user id.
    #[arg(long, value_name = "ID")]
    pub user: Option<String>,
    /// Only calls of this tool: the name the agent called (`github_create_issue` style on the
    /// aggregated endpoint).
    #[arg(long, value_name = "NAME")]
    pub tool: Option<String>,
    /// Only events with this status.
    #[arg(long, value_parser = ["ok", "warn", "error_remote", "error_proxy", "error_auth", "denied"])]
    pub status: Option<String>,
    /// Print each event as one line of JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
}

pub async fn run(config: &Config, args: TailArgs) -> anyhow::Result<()> {
    let mut api = Api::connect(config, &args.remote).await?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(app) = &args.app {
        query.push(("applicationId", app_id(&mut api, app).await?));
    }
    for (key, value) in [
        ("userId", &args.user),
        ("toolName", &args.tool),
        ("status", &args.status),
    ] {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    let query: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let url = format!("{}/api/v1/events/stream?{}", api.base, query.join("&"));
    let mut printer = Printer {
        json: args.json,
        color: crate::cli::use_color(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ),
        width: terminal_width(),
        names: Names::default(),
    };
    let mut last: Option<String> = None;
    let mut backoff = Backoff::default();
    // Whether the user has been told that the tail is following, or that it is reconnecting.
    let mut following = false;
    let mut down = false;
    loop {
        let mut req = api
            .http
            .get(&url)
            .bearer_auth(api.token())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = &last {
            req = req.header("last-event-id", id);
        }
        let trouble = match req.send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::UNAUTHORIZED => {
                api.renew(true).await?;
                continue;
            }
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                anyhow::bail!("{}", crate::cli::remote::api_error(status, &body));
            }
            Ok(resp) if resp.status().is_success() => {
                if !following {
                    eprintln!("following trace events from {} (Ctrl-C to stop)", api.base);
                    following = true;
                } else if down {
                    eprintln!("keygate tail: reconnected to {}", api.base);
                }
                down = false;
                backoff = Backoff::default();
                match follow(resp, &mut last, &mut api, &mut printer).await {
                    Ok(()) => "the stream ended".to_owned(),
                    Err(e) => format!("{e:#}"),
                }
            }
            Ok(resp) => format!("the gateway answered {}", resp.status()),
            Err(e) => format!("cannot reach {}: {e}", api.base),
        };
        if !down {
            eprintln!("keygate tail: {trouble}; reconnecting (with growing delays)…");
            down = true;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Delays between reconnection attempts: doubling from half a second up to 30 seconds.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_DELAY }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }
}

/// The largest trace event read (one holds at most two captured payloads of 1 MiB).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Reads one SSE response to its end, printing events and remembering the last id.
async fn follow(
    resp: reqwest::Response,
    last: &mut Option<String>,
    api: &mut Api,
    printer: &mut Printer,
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
            if let Some(line) = printer.line(api, data).await {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            if event.id.is_some() {
                *last = event.id;
            }
        }
    }
    Ok(())
}

/// Turns events into output lines.
struct Printer {
    json: bool,
    color: bool,
    width: Option<usize>,
    names: Names,
}

impl Printer {
    async fn line(&mut self, api: &mut Api, data: String) -> Option<String> {
        if self.json {
            return Some(data);
        }
        let event: Value = serde_json::from_str(&data).ok()?;
        let labels = Labels {
            app: self.names.app(api, event["agentId"].as_str()).await,
            integration: self
                .names
                .integration(api, event["integrationId"].as_str())
                .await,
            user: self.names.user(api, event["userId"].as_str()).await,
        };
        Some(render(&event, &labels, self.width, self.color))
    }
}

/// Display names by id, each looked up once (a failed lookup shows the id's first part).
#[derive(Default)]
struct Names {
    known: HashMap<String, String>,
}

impl Names {
    async fn app(&mut self, api: &mut Api, id: Option<&str>) -> String {
        self.lookup(api, id, "/applications/", |v| {
            v["application"]["name"].as_str()
        })
        .await
    }

    async fn integration(&mut self, api: &mut Api, id: Option<&str>) -> String {
        self.lookup(api, id, "/integrations/", |v| {
            v["integration"]["slug"].as_str()
        })
        .await
    }

    /// A user's email: the API has no user resource, but each trace names its user.
    async fn user(&mut self, api: &mut Api, id: Option<&str>) -> String {
        self.lookup(api, id, "/traces?limit=1&userId=", |v| {
            v["items"][0]["ownerEmail"].as_str()
        })
        .await
    }

    async fn lookup(
        &mut self,
        api: &mut Api,
        id: Option<&str>,
        path: &str,
        name: impl Fn(&Value) -> Option<&str>,
    ) -> String {
        let Some(id) = id else {
            return "-".to_owned();
        };
        if let Some(known) = self.known.get(id) {
            return known.clone();
        }
        let found = match api.get(&format!("{path}{}", encode(id))).await {
            Ok(answer) => name(&answer).map(str::to_owned),
            Err(_) => None,
        };
        let label = found.unwrap_or_else(|| id.chars().take(8).collect());
        self.known.insert(id.to_owned(), label.clone());
        label
    }
}

/// The names an event's line shows.
pub struct Labels {
    pub app: String,
    pub integration: String,
    pub user: String,
}

/// How a part of a line is coloured.
#[derive(Clone, Copy)]
enum Paint {
    Plain,
    Dim,
    Status,
    Error,
}

/// `time  status  application  integration  user  method tool  duration  error`, the columns
/// narrowed (and the error cut) to fit `width`, coloured with `color`.
pub fn render(e: &Value, labels: &Labels, width: Option<usize>, color: bool) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    let status = s("status");
    let call = match e["toolName"].as_str() {
        Some(tool) => format!("{} {tool}", s("eventType")),
        None => s("eventType"),
    };
    let time = s("createdAt").get(11..19).unwrap_or("-").to_owned();
    let duration = format!("{}ms", e["durationMs"].as_i64().unwrap_or(0));
    // (text, width, paint); the middle four give way on a narrow terminal.
    let mut cells = [
        (time, 8, Paint::Dim),
        (status.clone(), 12, Paint::Status),
        (labels.app.clone(), 16, Paint::Plain),
        (labels.integration.clone(), 14, Paint::Plain),
        (labels.user.clone(), 22, Paint::Plain),
        (call, 28, Paint::Plain),
        (duration, 8, Paint::Plain),
    ];
    let used = |cells: &[(String, usize, Paint)]| {
        cells.iter().map(|c| c.1).sum::<usize>() + GAP.len() * (cells.len() - 1)
    };
    if let Some(limit) = width {
        while used(&cells[..]) > limit {
            let Some(widest) = (2..=5)
                .filter(|&i| cells[i].1 > 6)
                .max_by_key(|&i| cells[i].1)
            else {
                break;
            };
            cells[widest].1 -= 1;
        }
    }
    let mut line: Vec<String> = cells
        .iter()
        .map(|(text, w, paint)| {
            let w = *w;
            let shown = match width {
                Some(_) => cut(text, w),
                None => text.clone(),
            };
            let padded = format!("{shown:<w$}");
            paint_with(color, *paint, &status, &padded)
        })
        .collect();
    if let Some(error) = e["errorMessage"].as_str() {
        let error = error.replace(['\n', '\r'], " ");
        let room = width.map(|w| w.saturating_sub(used(&cells[..]) + GAP.len()));
        let shown = match room {
            Some(0) => String::new(),
            Some(room) => cut(&error, room),
            None => error,
        };
        if !shown.is_empty() {
            line.push(paint_with(color, Paint::Error, &status, &shown));
        }
    }
    line.join(GAP).trim_end().to_owned()
}

const GAP: &str = "  ";

fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut kept: String = s.chars().take(width.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

/// `text` in ANSI colour: ok green, warn yellow, any error bold red, error messages red.
fn paint_with(color: bool, paint: Paint, status: &str, text: &str) -> String {
    if !color {
        return text.to_owned();
    }
    let code = match paint {
        Paint::Plain => return text.to_owned(),
        Paint::Dim => "2",
        Paint::Error => "31",
        Paint::Status if status == "ok" => "32",
        Paint::Status if status == "warn" => "33",
        Paint::Status => "1;31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({
            "createdAt": "2026-11-30T01:02:03.456Z", "status": "error_remote",
            "eventType": "tools/call", "toolName": "github_create_issue", "durationMs": 42,
            "errorMessage": "the upstream answered 500 Internal Server Error with a long body",
        })
    }

    fn labels() -> Labels {
        Labels {
            app: "Claude Desktop".into(),
            integration: "github".into(),
            user: "alice@example.com".into(),
        }
    }

    #[test]
    fn a_line_names_the_application_integration_and_user() {
        let line = render(&event(), &labels(), None, false);
        for part in [
            "01:02:03",
            "error_remote",
            "Claude Desktop",
            "github",
            "alice@example.com",
            "tools/call github_create_issue",
            "42ms",
            "Internal Server Error",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }

    #[test]
    fn a_line_never_outgrows_the_terminal() {
        for width in [60, 80, 120] {
            let line = render(&event(), &labels(), Some(width), false);
            assert!(line.chars().count() <= width, "{width}: {line}");
            assert!(line.contains("error_remote"), "{line}");
        }
    }

    #[test]
    fn colour_makes_errors_stand_out_and_is_off_without_a_terminal() {
        let plain = render(&event(), &labels(), None, false);
        assert!(!plain.contains('\x1b'), "{plain}");
        let coloured = render(&event(), &labels(), None, true);
        assert!(coloured.contains("\x1b[1;31merror_remote"), "{coloured}");
        let mut ok = event();
        ok["status"] = json!("ok");
        assert!(render(&ok, &labels(), None, true).contains("\x1b[32mok"));
    }

    #[test]
    fn reconnection_delays_double_up_to_half_a_minute() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }
}
