//! `GET /metrics`: Prometheus text exposition on the main port, plus the metrics that belong to
//! the program rather than the proxy: `keygate_build_info` and the `process_*` family (CPU,
//! memory, descriptors, start time, read from `/proc` on Linux when scraped).
//!
//! Open by default — the labels name routes, HTTP and MCP methods, statuses, integrations (by
//! id) and the tools they serve (capped; see `keygate_trace::metrics`), never a user, session
//! or application — or behind a bearer token (`telemetry.metrics_token`) for gateways whose
//! traffic volumes or tool names are themselves sensitive. `telemetry.metrics_enabled = false`
//! removes the route.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keygate_trace::{Metrics, Telemetry};
use prometheus::core::{Collector, Desc};
use prometheus::{Counter, Gauge, IntGauge, IntGaugeVec, Opts};

#[derive(Clone)]
struct MetricsState {
    telemetry: Arc<Telemetry>,
    /// The expected token, stored hashed for a constant-time comparison.
    token_hash: Option<Arc<str>>,
}

pub fn router(telemetry: Arc<Telemetry>, token: Option<String>) -> Router {
    let token_hash = token.map(|t| keygate_auth::secret::hash_secret(&t).into());
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(MetricsState {
            telemetry,
            token_hash,
        })
}

async fn metrics(State(state): State<MetricsState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.token_hash {
        let presented = keygate_auth::bearer_token(&headers);
        if !presented.is_some_and(|t| keygate_auth::secret::verify_secret(t, expected)) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required",
            )
                .into_response();
        }
    }
    let t = &state.telemetry;
    let body = t.metrics.render(&t.sink, t.spans.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Adds `keygate_build_info` and, where `/proc` is readable, the `process_*` metrics.
pub fn register_process_metrics(metrics: &Metrics) -> prometheus::Result<()> {
    metrics.register(Box::new(build_info()?))?;
    if let Some(process) = Process::new()? {
        metrics.register(Box::new(process))?;
    }
    Ok(())
}

/// `keygate_build_info{version, profile, os, arch} 1`.
fn build_info() -> prometheus::Result<IntGaugeVec> {
    let info = IntGaugeVec::new(
        Opts::new("keygate_build_info", "The running keygate build; always 1."),
        &["version", "profile", "os", "arch"],
    )?;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    info.with_label_values(&[
        env!("CARGO_PKG_VERSION"),
        profile,
        std::env::consts::OS,
        std::env::consts::ARCH,
    ])
    .set(1);
    Ok(info)
}

/// The standard `process_*` metrics of this process, read from `/proc` at each scrape.
struct Process {
    descs: Vec<Desc>,
    cpu_seconds: Counter,
    resident_bytes: IntGauge,
    virtual_bytes: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
}

/// What `/proc/self/stat` says (fields 14, 15, 20, 22, 23 and 24 of proc(5)).
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_ticks: u64,
    threads: i64,
    start_ticks: u64,
    virtual_bytes: i64,
    resident_pages: i64,
}

impl Stat {
    /// Parses the line; the command name (field 2) may hold spaces and parentheses, so the
    /// fields are counted from its last `)`.
    fn parse(line: &str) -> Option<Self> {
        let rest = &line[line.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `fields[0]` is field 3 (state).
        let field = |n: usize| fields.get(n - 3).copied();
        let int = |n: usize| field(n)?.parse::<i64>().ok();
        let uint = |n: usize| field(n)?.parse::<u64>().ok();
        Some(Self {
            cpu_ticks: uint(14)? + uint(15)?,
            threads: int(20)?,
            start_ticks: uint(22)?,
            virtual_bytes: int(23)?,
            resident_pages: int(24)?,
        })
    }
}

/// The system's boot time in Unix seconds (`btime` in `/proc/stat`).
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl Process {
    /// `None` where there is no `/proc` (not Linux): nothing to report.
    fn new() -> prometheus::Result<Option<Self>> {
        if std::fs::read_to_string("/proc/self/stat").is_err() {
            return Ok(None);
        }
        let process = Self {
            descs: Vec::new(),
            cpu_seconds: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )?,
            resident_bytes: IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )?,
            virtual_bytes: IntGauge::new(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )?,
            open_fds: IntGauge::new("process_open_fds", "Number of open file descriptors.")?,
            max_fds: IntGauge::new(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            )?,
            threads: IntGauge::new("process_threads", "Number of OS threads in the process.")?,
            start_time: Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
            )?,
        };
        let descs = process
            .collectors()
            .iter()
            .flat_map(|c| c.desc())
            .cloned()
            .collect();
        Ok(Some(Self { descs, ..process }))
    }

    fn collectors(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu_seconds,
            &self.resident_bytes,
            &self.virtual_bytes,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
        ]
    }

    /// Reads `/proc` now; a value that cannot be read keeps its last one.
    fn refresh(&self) {
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(Stat::parse)
        {
            let cpu = stat.cpu_ticks as f64 / ticks;
            let seen = self.cpu_seconds.get();
            if cpu > seen {
                self.cpu_seconds.inc_by(cpu - seen);
            }
            let page = rustix::param::page_size() as i64;
            self.resident_bytes.set(stat.resident_pages * page);
            self.virtual_bytes.set(stat.virtual_bytes);
            self.threads.set(stat.threads);
            if let Some(boot) = std::fs::read_to_string("/proc/stat")
                .ok()
                .as_deref()
                .and_then(boot_time)
            {
                self.start_time
                    .set(boot as f64 + stat.start_ticks as f64 / ticks);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            self.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
    }
}

impl Collector for Process {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.refresh();
        self.collectors().iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (key gate) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 50 0 0 20 0 \
                    7 0 123456 104857600 2560 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                cpu_ticks: 200,
                threads: 7,
                start_ticks: 123456,
                virtual_bytes: 104_857_600,
                resident_pages: 2560,
            })
        );
        assert_eq!(Stat::parse("4242 (truncated"), None);
    }

    #[test]
    fn the_boot_time_is_the_btime_line() {
        let stat = "cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(boot_time(stat), Some(1_700_000_000));
        assert_eq!(boot_time("cpu 1\n"), None);
    }
}
