//! Prometheus metrics, rendered as text at `/metrics`.
//!
//! Every label has a bounded set of values, whatever clients send: the route template, the
//! HTTP method and the MCP method from fixed lists (anything else is `other`), the trace
//! status, and two labels that name what the gateway serves — the integration (its id) and
//! the tool (its name). Those two are capped: the first [`MAX_INTEGRATION_LABELS`]
//! integrations and [`MAX_TOOL_LABELS`] integration/tool pairs seen get a series of their own,
//! later ones share `other`. A tool name gets its own label only once an upstream answered a
//! call of it without error (so made-up names cannot use up the slots) and only when it is
//! short and printable. No user, session or application ids.
//!
//! A call's series are looked up once and kept ([`Series`]): the per-call cost is one read
//! lock and a cheap hash per label set instead of the vectors' hashing of every label value.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

use keygate_core::IntegrationId;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::otel::Spans;
use crate::sink::TraceSink;

/// Latency buckets in seconds: 0.5 ms … 60 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Integrations with a label value of their own.
pub const MAX_INTEGRATION_LABELS: usize = 256;
/// Integration/tool pairs with a label value of their own.
pub const MAX_TOOL_LABELS: usize = 256;
/// Longest tool name used as a label value.
const MAX_TOOL_LABEL_CHARS: usize = 64;
/// The label value shared by everything past a cap or off a list.
const OTHER: &str = "other";

/// MCP methods that get their own label value.
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "batch",
];

/// HTTP methods that get their own label value.
const KNOWN_HTTP_METHODS: &[&str] = &["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"];

/// The trace statuses (`Status::as_str`), whose series are kept per integration and tool.
const STATUSES: &[&str] = &[
    "ok",
    "warn",
    "error_remote",
    "error_proxy",
    "error_auth",
    "denied",
];

/// A fast hasher for the series maps: their keys are label values the gateway chose (route
/// templates, fixed lists, admitted ids and tool names), and each map is capped.
type Fast = foldhash::fast::RandomState;

/// One finished exchange, as the metrics see it.
#[derive(Clone, Copy, Debug)]
pub struct Sample<'a> {
    /// The route template.
    pub route: &'static str,
    pub http_method: &'a str,
    /// The JSON-RPC method; `None` for a request that carries none (a GET stream, a DELETE).
    pub mcp_method: Option<&'a str>,
    pub status: &'static str,
    pub integration: Option<IntegrationId>,
    /// The tool of a `tools/call` (or the prompt of a `prompts/get`).
    pub tool: Option<&'a str>,
    pub seconds: f64,
}

/// The gateway's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    integration_requests: IntCounterVec,
    integration_latency: HistogramVec,
    tool_calls: IntCounterVec,
    tool_latency: HistogramVec,
    upstream: HistogramVec,
    open_streams: IntGauge,
    queue_depth: IntGauge,
    trace_drops: IntCounter,
    trace_written: IntCounter,
    span_drops: IntCounter,
    span_failures: IntCounter,
    labels: Arc<Labels>,
    series: Arc<Series>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Self {
        let exchange = &["route", "http_method", "mcp_method", "status"];
        let m = Self {
            registry: Registry::new(),
            requests: counter_vec(
                "keygate_mcp_requests_total",
                "Proxied MCP requests by route, HTTP method, MCP method and trace status.",
                exchange,
            ),
            latency: histogram_vec(
                "keygate_mcp_request_duration_seconds",
                "Duration of proxied MCP requests, until the response was relayed.",
                exchange,
            ),
            integration_requests: counter_vec(
                "keygate_integration_requests_total",
                "Proxied MCP requests by integration (id) and trace status.",
                &["integration", "status"],
            ),
            integration_latency: histogram_vec(
                "keygate_integration_request_duration_seconds",
                "Duration of proxied MCP requests by integration (id).",
                &["integration"],
            ),
            tool_calls: counter_vec(
                "keygate_tool_calls_total",
                "Tool calls (and prompt gets) by integration, tool and trace status.",
                &["integration", "tool", "status"],
            ),
            tool_latency: histogram_vec(
                "keygate_tool_call_duration_seconds",
                "Duration of tool calls (and prompt gets) by integration and tool.",
                &["integration", "tool"],
            ),
            upstream: histogram_vec(
                "keygate_upstream_response_seconds",
                "Time until an upstream MCP server sent its response headers.",
                &["route", "outcome"],
            ),
            open_streams: gauge(
                "keygate_open_streams",
                "Server-sent event streams being relayed to clients now.",
            ),
            queue_depth: gauge(
                "keygate_trace_queue_depth",
                "Trace events waiting to be written.",
            ),
            trace_drops: counter(
                "keygate_trace_events_dropped_total",
                "Trace events lost because the queue was full or the database refused them.",
            ),
            trace_written: counter(
                "keygate_trace_events_written_total",
                "Trace events written to the store.",
            ),
            span_drops: counter(
                "keygate_spans_dropped_total",
                "Finished spans dropped because the export queue was full.",
            ),
            span_failures: counter(
                "keygate_span_export_failures_total",
                "Spans in export requests the OTLP collector refused or did not answer.",
            ),
            labels: Default::default(),
            series: Default::default(),
        };
        for c in [
            Box::new(m.requests.clone()) as Box<dyn Collector>,
            Box::new(m.latency.clone()),
            Box::new(m.integration_requests.clone()),
            Box::new(m.integration_latency.clone()),
            Box::new(m.tool_calls.clone()),
            Box::new(m.tool_latency.clone()),
            Box::new(m.upstream.clone()),
            Box::new(m.open_streams.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.trace_drops.clone()),
            Box::new(m.trace_written.clone()),
            Box::new(m.span_drops.clone()),
            Box::new(m.span_failures.clone()),
        ] {
            m.register(c).expect("unique metric names");
        }
        m
    }

    /// Adds a collector of the embedding program's own (build, process).
    pub fn register(&self, collector: Box<dyn Collector>) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// Counts one finished exchange.
    pub fn exchange(&self, s: &Sample<'_>) {
        let (requests, latency) = self.exchange_series(s);
        requests.inc();
        latency.observe(s.seconds);
        let Some(integration) = s.integration else {
            return;
        };
        let Some(series) = self.integration_series(integration) else {
            // Past the integrations' cap: the shared label, looked up each time.
            self.integration_by_labels(OTHER, integration, s);
            return;
        };
        match status_index(s.status) {
            Some(i) => series.requests[i]
                .get_or_init(|| {
                    self.integration_requests
                        .with_label_values(&[&series.label, s.status])
                })
                .inc(),
            None => self
                .integration_requests
                .with_label_values(&[&series.label, s.status])
                .inc(),
        }
        series.latency.observe(s.seconds);
        let Some(tool) = s.tool else { return };
        if !matches!(s.mcp_method, Some("tools/call" | "prompts/get")) {
            return;
        }
        let tool_series = self.tool_series(&series, integration, tool, s.status == "ok");
        match status_index(s.status) {
            Some(i) => tool_series.calls[i]
                .get_or_init(|| {
                    self.tool_calls.with_label_values(&[
                        &series.label,
                        &tool_series.label,
                        s.status,
                    ])
                })
                .inc(),
            None => self
                .tool_calls
                .with_label_values(&[&series.label, &tool_series.label, s.status])
                .inc(),
        }
        tool_series.latency.observe(s.seconds);
    }

    /// The request counter and latency histogram of an exchange's route, methods and status.
    fn exchange_series(&self, s: &Sample<'_>) -> (IntCounter, Histogram) {
        let key = (
            s.route,
            listed(KNOWN_HTTP_METHODS, s.http_method),
            s.mcp_method.map_or("none", |m| listed(KNOWN_METHODS, m)),
            s.status,
        );
        if let Some(found) = read(&self.series.exchanges).get(&key) {
            return found.clone();
        }
        let labels = [key.0, key.1, key.2, key.3];
        let made = (
            self.requests.with_label_values(&labels),
            self.latency.with_label_values(&labels),
        );
        let mut all = write(&self.series.exchanges);
        if all.len() < MAX_EXCHANGE_SERIES {
            all.insert(key, made.clone());
        }
        made
    }

    /// The series of an integration with a label of its own; `None` past the cap.
    fn integration_series(&self, id: IntegrationId) -> Option<Arc<IntegrationSeries>> {
        if let Some(found) = read(&self.series.integrations).get(&id) {
            return Some(found.clone());
        }
        if !self.labels.integrations.admit(id) {
            return None;
        }
        let label = id.to_string();
        let made = Arc::new(IntegrationSeries {
            latency: self.integration_latency.with_label_values(&[&label]),
            requests: Default::default(),
            tools: Default::default(),
            label,
        });
        let mut all = write(&self.series.integrations);
        Some(all.entry(id).or_insert(made).clone())
    }

    /// The series of a tool of an integration with a label of its own: the tool's, or the
    /// integration's `other` tool.
    fn tool_series(
        &self,
        series: &IntegrationSeries,
        integration: IntegrationId,
        tool: &str,
        answered: bool,
    ) -> Arc<ToolSeries> {
        if let Some(found) = read(&series.tools).get(tool) {
            return found.clone();
        }
        let own = tool_label_allowed(tool) && self.labels.tools.admit(integration, tool, answered);
        let label = if own { tool } else { OTHER };
        if let Some(found) = read(&series.tools).get(label) {
            return found.clone();
        }
        let made = Arc::new(ToolSeries {
            latency: self.tool_latency.with_label_values(&[&series.label, label]),
            calls: Default::default(),
            label: label.to_owned(),
        });
        let mut tools = write(&series.tools);
        tools.entry(label.to_owned()).or_insert(made).clone()
    }

    /// Counts an exchange of an integration under `integration_label`, looking its series up
    /// by label values (the integrations past the cap).
    fn integration_by_labels(
        &self,
        integration_label: &str,
        integration: IntegrationId,
        s: &Sample<'_>,
    ) {
        self.integration_requests
            .with_label_values(&[integration_label, s.status])
            .inc();
        self.integration_latency
            .with_label_values(&[integration_label])
            .observe(s.seconds);
        if let Some(tool) = s.tool
            && matches!(s.mcp_method, Some("tools/call" | "prompts/get"))
        {
            let answered = s.status == "ok";
            let tool_label = if tool_label_allowed(tool)
                && self.labels.tools.admit(integration, tool, answered)
            {
                tool
            } else {
                OTHER
            };
            self.tool_calls
                .with_label_values(&[integration_label, tool_label, s.status])
                .inc();
            self.tool_latency
                .with_label_values(&[integration_label, tool_label])
                .observe(s.seconds);
        }
    }

    /// Records how long an upstream took to answer (`outcome`: `ok`, `error` or `timeout`).
    pub fn upstream(&self, route: &'static str, outcome: &'static str, seconds: f64) {
        let key = (route, outcome);
        let found = read(&self.series.upstream).get(&key).cloned();
        let histogram = match found {
            Some(h) => h,
            None => {
                let made = self.upstream.with_label_values(&[route, outcome]);
                let mut all = write(&self.series.upstream);
                if all.len() < MAX_EXCHANGE_SERIES {
                    all.insert(key, made.clone());
                }
                made
            }
        };
        histogram.observe(seconds);
    }

    /// A guard counting one open stream until dropped.
    pub fn stream_opened(&self) -> StreamGuard {
        self.open_streams.inc();
        StreamGuard(self.open_streams.clone())
    }

    /// The text exposition, with the trace and span pipelines' counts read now.
    pub fn render(&self, sink: &TraceSink, spans: Option<&Spans>) -> String {
        self.queue_depth.set(sink.depth() as i64);
        catch_up(&self.trace_drops, sink.stats().dropped());
        catch_up(&self.trace_written, sink.stats().written());
        if let Some(spans) = spans {
            catch_up(&self.span_drops, spans.dropped());
            catch_up(&self.span_failures, spans.failed());
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Raises `counter` to `now`, a count kept elsewhere.
fn catch_up(counter: &IntCounter, now: u64) {
    let seen = counter.get();
    if now > seen {
        counter.inc_by(now - seen);
    }
}

/// Decrements the open-streams gauge when dropped.
pub struct StreamGuard(IntGauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn listed(known: &[&'static str], value: &str) -> &'static str {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .unwrap_or(OTHER)
}

fn status_index(status: &str) -> Option<usize> {
    STATUSES.iter().position(|s| *s == status)
}

/// Most exchange (and upstream) label sets kept; more are looked up by label values. Their
/// labels come from fixed lists, so the cap is only a guard.
const MAX_EXCHANGE_SERIES: usize = 4096;

/// The series looked up so far.
#[derive(Default)]
struct Series {
    /// Per (route, HTTP method, MCP method, status) label values.
    exchanges: RwLock<ExchangeSeries>,
    /// Per admitted integration.
    integrations: RwLock<HashMap<IntegrationId, Arc<IntegrationSeries>, Fast>>,
    /// Per (route, outcome).
    upstream: RwLock<HashMap<(&'static str, &'static str), Histogram, Fast>>,
}

type ExchangeKey = (&'static str, &'static str, &'static str, &'static str);
type ExchangeSeries = HashMap<ExchangeKey, (IntCounter, Histogram), Fast>;

/// The series of one integration with a label of its own.
struct IntegrationSeries {
    label: String,
    latency: Histogram,
    /// Per trace status ([`STATUSES`]), made when first counted.
    requests: [OnceLock<IntCounter>; STATUSES.len()],
    /// Per tool label: the admitted tools and `other`.
    tools: RwLock<HashMap<String, Arc<ToolSeries>, Fast>>,
}

/// The series of one tool label of an integration.
struct ToolSeries {
    label: String,
    latency: Histogram,
    calls: [OnceLock<IntCounter>; STATUSES.len()],
}

fn tool_label_allowed(tool: &str) -> bool {
    tool.len() <= MAX_TOOL_LABEL_CHARS && tool != OTHER && !tool.chars().any(char::is_control)
}

/// The label values admitted so far, per capped label.
#[derive(Default)]
struct Labels {
    integrations: Integrations,
    tools: Tools,
}

/// The integrations with a label value of their own (at most [`MAX_INTEGRATION_LABELS`]).
#[derive(Default)]
struct Integrations(RwLock<HashSet<IntegrationId>>);

impl Integrations {
    /// Whether `id` has a label value of its own: it had one already, or there is room.
    fn admit(&self, id: IntegrationId) -> bool {
        if read(&self.0).contains(&id) {
            return true;
        }
        let mut seen = write(&self.0);
        if seen.len() < MAX_INTEGRATION_LABELS {
            seen.insert(id);
        }
        seen.contains(&id)
    }
}

/// The integration/tool pairs with a label value of their own (at most [`MAX_TOOL_LABELS`]),
/// looked up without copying the tool name.
#[derive(Default)]
struct Tools(RwLock<ToolSet>);

#[derive(Default)]
struct ToolSet {
    pairs: usize,
    by_integration: HashMap<IntegrationId, HashSet<String>>,
}

impl ToolSet {
    fn contains(&self, id: IntegrationId, tool: &str) -> bool {
        self.by_integration
            .get(&id)
            .is_some_and(|tools| tools.contains(tool))
    }
}

impl Tools {
    /// Whether the pair has a label value of its own: it had one already, or `may_add` and
    /// there is room.
    fn admit(&self, id: IntegrationId, tool: &str, may_add: bool) -> bool {
        {
            let seen = read(&self.0);
            if seen.contains(id, tool) {
                return true;
            }
            if !may_add || seen.pairs >= MAX_TOOL_LABELS {
                return false;
            }
        }
        let mut seen = write(&self.0);
        if seen.pairs < MAX_TOOL_LABELS && !seen.contains(id, tool) {
            seen.by_integration
                .entry(id)
                .or_default()
                .insert(tool.to_owned());
            seen.pairs += 1;
        }
        seen.contains(id, tool)
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "/apps/{id}/mcp/{integration}";

    fn call<'a>(integration: IntegrationId, tool: &'a str, status: &'static str) -> Sample<'a> {
        Sample {
            route: ROUTE,
            http_method: "POST",
            mcp_method: Some("tools/call"),
            status,
            integration: Some(integration),
            tool: Some(tool),
            seconds: 0.002,
        }
    }

    fn render(m: &Metrics) -> String {
        m.render(&TraceSink::disabled(), None)
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let m = Metrics::new();
        for method in ["tools/call", "x-attacker-chosen-1", "x-attacker-chosen-2"] {
            m.exchange(&Sample {
                mcp_method: Some(method),
                integration: None,
                ..call(IntegrationId::new(), "t", "ok")
            });
        }
        let text = render(&m);
        assert!(text.contains(
            r#"keygate_mcp_requests_total{http_method="POST",mcp_method="other",route="/apps/{id}/mcp/{integration}",status="ok"} 2"#
        ), "{text}");
        assert!(!text.contains("attacker"));
    }

    #[test]
    fn http_and_mcp_methods_are_separate_labels() {
        let m = Metrics::new();
        m.exchange(&Sample {
            http_method: "GET",
            mcp_method: None,
            tool: None,
            ..call(IntegrationId::new(), "t", "ok")
        });
        m.exchange(&Sample {
            http_method: "BREW",
            mcp_method: None,
            tool: None,
            ..call(IntegrationId::new(), "t", "ok")
        });
        let text = render(&m);
        assert!(
            text.contains(r#"http_method="GET",mcp_method="none""#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_method="other",mcp_method="none""#),
            "{text}"
        );
    }

    #[test]
    fn integrations_and_tools_get_their_own_series() {
        let m = Metrics::new();
        let github = IntegrationId::new();
        m.exchange(&call(github, "create_issue", "ok"));
        m.exchange(&call(github, "create_issue", "error_remote"));
        let text = render(&m);
        assert!(text.contains(&format!(
            r#"keygate_integration_requests_total{{integration="{github}",status="ok"}} 1"#
        )));
        assert!(text.contains(&format!(
            r#"keygate_tool_calls_total{{integration="{github}",status="error_remote",tool="create_issue"}} 1"#
        )), "{text}");
        assert!(text.contains(&format!(
            r#"keygate_tool_call_duration_seconds_count{{integration="{github}",tool="create_issue"}} 2"#
        )));
    }

    #[test]
    fn a_tool_never_answered_without_error_shares_other() {
        let m = Metrics::new();
        let i = IntegrationId::new();
        m.exchange(&call(i, "made-up-name", "error_remote"));
        m.exchange(&call(i, "bad\nname", "ok"));
        let text = render(&m);
        assert!(!text.contains("made-up-name"));
        assert!(!text.contains("bad\\nname"));
        assert!(text.contains(&format!(
            r#"keygate_tool_calls_total{{integration="{i}",status="error_remote",tool="other"}} 1"#
        )));
    }

    #[test]
    fn tool_labels_stop_growing_at_the_cap() {
        let m = Metrics::new();
        let i = IntegrationId::new();
        for n in 0..MAX_TOOL_LABELS + 10 {
            m.exchange(&call(i, &format!("tool-{n}"), "ok"));
        }
        let text = render(&m);
        let series = text
            .lines()
            .filter(|l| l.starts_with("keygate_tool_calls_total{"))
            .count();
        assert_eq!(
            series,
            MAX_TOOL_LABELS + 1,
            "the admitted tools and `other`"
        );
        assert!(text.contains(&format!(
            r#"keygate_tool_calls_total{{integration="{i}",status="ok",tool="other"}} 10"#
        )));
    }

    #[test]
    fn integration_labels_stop_growing_at_the_cap() {
        let m = Metrics::new();
        for _ in 0..MAX_INTEGRATION_LABELS + 3 {
            m.exchange(&Sample {
                tool: None,
                ..call(IntegrationId::new(), "t", "ok")
            });
        }
        let text = render(&m);
        assert!(
            text.contains(
                r#"keygate_integration_requests_total{integration="other",status="ok"} 3"#
            )
        );
    }

    #[test]
    fn open_streams_are_counted_while_open() {
        let m = Metrics::new();
        let guard = m.stream_opened();
        assert!(render(&m).contains("keygate_open_streams 1"));
        drop(guard);
        assert!(render(&m).contains("keygate_open_streams 0"));
    }
}
