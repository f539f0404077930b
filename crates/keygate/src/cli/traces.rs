//! `keygate traces`: what went through the gateway — list traces (one per downstream MCP
//! session), get one with its events, and stats. `keygate tail` follows events live.

use clap::{Args, Subcommand};
use keygate_core::config::Config;
use serde_json::Value;

use super::output::{Columns, print, record, table, terminal_width};
use super::remote::{Api, encode};
use super::resources::{Common, app_id};

#[derive(Subcommand, Debug)]
pub enum TracesCommand {
    /// List the latest traces.
    List {
        #[command(flatten)]
        filter: Filter,
        /// At most this many (1–200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a trace and its events.
    Get { trace: String },
    /// Counts, error rate, latency and the busiest tools.
    Stats {
        #[command(flatten)]
        filter: Filter,
        /// `1d`, `7d` or `30d`.
        #[arg(long)]
        period: Option<String>,
    },
}

/// Which events count.
#[derive(Args, Debug)]
pub struct Filter {
    /// Only this application (id or name).
    #[arg(long)]
    app: Option<String>,
    /// Only this user (id).
    #[arg(long)]
    user: Option<String>,
    /// Only this status.
    #[arg(long, value_parser = ["ok", "warn", "error_remote", "error_proxy", "error_auth", "denied"])]
    status: Option<String>,
    /// Only calls of this tool.
    #[arg(long)]
    tool: Option<String>,
}

impl Filter {
    /// The query parameters, the application resolved to its id.
    async fn query(&self, api: &mut Api) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut query = Vec::new();
        if let Some(app) = &self.app {
            query.push(("applicationId", app_id(api, app).await?));
        }
        for (key, value) in [
            ("userId", &self.user),
            ("status", &self.status),
            ("toolName", &self.tool),
        ] {
            if let Some(v) = value {
                query.push((key, v.clone()));
            }
        }
        Ok(query)
    }
}

fn with_query(path: &str, query: &[(&str, String)]) -> String {
    let pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

const LIST: &Columns = &[
    ("trace", "/traceId"),
    ("started", "/startedAt"),
    ("application", "/agentName"),
    ("user", "/ownerEmail"),
    ("events", "/eventCount"),
    ("errors", "/errorCount"),
];

const TRACE: &Columns = &[
    ("trace", "/trace/traceId"),
    ("application", "/trace/agentName"),
    ("user", "/trace/ownerEmail"),
    ("session", "/trace/agentSessionName"),
    ("started", "/trace/startedAt"),
    ("ended", "/trace/endedAt"),
];

const EVENTS: &Columns = &[
    ("time", "/createdAt"),
    ("status", "/status"),
    ("method", "/eventType"),
    ("tool", "/toolName"),
    ("ms", "/durationMs"),
    ("error", "/errorMessage"),
];

const STATS: &Columns = &[
    ("traces", "/totalTraces"),
    ("events", "/totalEvents"),
    ("ok", "/okEvents"),
    ("warnings", "/warnEvents"),
    ("errors", "/errorEvents"),
    ("error rate", "/errorRate"),
    ("p50 ms", "/latency/p50"),
    ("p95 ms", "/latency/p95"),
    ("p99 ms", "/latency/p99"),
];

pub async fn run(config: &Config, common: Common, command: TracesCommand) -> anyhow::Result<()> {
    let mut api = Api::connect(config, &common.remote).await?;
    let json = common.json;
    match command {
        TracesCommand::List { filter, limit } => {
            let mut query = filter.query(&mut api).await?;
            query.push(("limit", limit.to_string()));
            let answer = api.get(&with_query("/traces", &query)).await?;
            let items = answer["items"].as_array().cloned().unwrap_or_default();
            print(json, &answer, |_| table(LIST, &items, terminal_width()))
        }
        TracesCommand::Get { trace } => {
            let answer = api.get(&format!("/traces/{}", encode(&trace))).await?;
            print(json, &answer, |a| {
                let events = a["events"].as_array().cloned().unwrap_or_default();
                format!(
                    "{}\n{}",
                    record(TRACE, a),
                    table(EVENTS, &events, terminal_width())
                )
            })
        }
        TracesCommand::Stats { filter, period } => {
            let mut query = filter.query(&mut api).await?;
            if let Some(period) = period {
                query.push(("period", period));
            }
            let answer = api.get(&with_query("/traces/stats", &query)).await?;
            print(json, &answer, stats)
        }
    }
}

fn stats(answer: &Value) -> String {
    let mut out = record(STATS, answer);
    let tools = answer["topTools"].as_array().cloned().unwrap_or_default();
    if !tools.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                ("tool", "/toolName"),
                ("calls", "/count"),
                ("errors", "/errorCount"),
            ],
            &tools,
            terminal_width(),
        ));
    }
    out
}
