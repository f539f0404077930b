//! Prometheus metrics, rendered as text at `/metrics`.
//!
//! Labels carry only bounded, non-identifying values: the route template, an MCP method from
//! a fixed list (anything else is `other`) and the trace status. No tenant, user, tool or
//! integration ids, so the label set cannot grow with the data and reveals no tenant's traffic.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::sink::TraceSink;

/// Latency buckets in seconds: 0.5 ms … 60 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

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
    "response",
    "GET",
    "DELETE",
];

/// The gateway's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    upstream: HistogramVec,
    open_streams: IntGauge,
    queue_depth: IntGauge,
    trace_drops: IntCounter,
    trace_written: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let labels = &["route", "method", "status"];
        let requests = IntCounterVec::new(
            Opts::new(
                "keygate_mcp_requests_total",
                "Proxied MCP exchanges by route, method and trace status.",
            ),
            labels,
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "keygate_mcp_request_duration_seconds",
                "Duration of proxied MCP exchanges, until the response was relayed.",
            )
            .buckets(BUCKETS.to_vec()),
            labels,
        )
        .expect("valid metric");
        let upstream = HistogramVec::new(
            HistogramOpts::new(
                "keygate_upstream_response_seconds",
                "Time until an upstream MCP server sent its response headers.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "outcome"],
        )
        .expect("valid metric");
        let open_streams = IntGauge::new(
            "keygate_open_streams",
            "Server-sent event streams being relayed to clients now.",
        )
        .expect("valid metric");
        let queue_depth = IntGauge::new(
            "keygate_trace_queue_depth",
            "Trace events waiting to be written.",
        )
        .expect("valid metric");
        let trace_drops = IntCounter::new(
            "keygate_trace_events_dropped_total",
            "Trace events lost because the queue was full or the database refused them.",
        )
        .expect("valid metric");
        let trace_written = IntCounter::new(
            "keygate_trace_events_written_total",
            "Trace events written to the store.",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(upstream.clone()),
            Box::new(open_streams.clone()),
            Box::new(queue_depth.clone()),
            Box::new(trace_drops.clone()),
            Box::new(trace_written.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            requests,
            latency,
            upstream,
            open_streams,
            queue_depth,
            trace_drops,
            trace_written,
        }
    }

    /// Counts one finished exchange.
    pub fn exchange(&self, route: &str, method: &str, status: &str, seconds: f64) {
        let method = method_label(method);
        let labels = [route, method, status];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(seconds);
    }

    /// Records how long an upstream took to answer (`outcome`: `ok`, `error` or `timeout`).
    pub fn upstream(&self, route: &str, outcome: &str, seconds: f64) {
        self.upstream
            .with_label_values(&[route, outcome])
            .observe(seconds);
    }

    /// A guard counting one open stream until dropped.
    pub fn stream_opened(&self) -> StreamGuard {
        self.open_streams.inc();
        StreamGuard(self.open_streams.clone())
    }

    /// The text exposition, with the trace pipeline's gauges read now.
    pub fn render(&self, sink: &TraceSink) -> String {
        self.queue_depth.set(sink.depth() as i64);
        let sync = |counter: &IntCounter, now: u64| {
            let seen = counter.get();
            if now > seen {
                counter.inc_by(now - seen);
            }
        };
        sync(&self.trace_drops, sink.stats().dropped());
        sync(&self.trace_written, sink.stats().written());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Decrements the open-streams gauge when dropped.
pub struct StreamGuard(IntGauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn method_label(method: &str) -> &str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        let m = Metrics::new();
        m.exchange("/apps/{id}/mcp", "tools/call", "ok", 0.002);
        m.exchange("/apps/{id}/mcp", "x-attacker-chosen-1", "ok", 0.002);
        m.exchange("/apps/{id}/mcp", "x-attacker-chosen-2", "ok", 0.002);
        let text = m.render(&TraceSink::disabled());
        assert!(text.contains(
            r#"keygate_mcp_requests_total{method="other",route="/apps/{id}/mcp",status="ok"} 2"#
        ));
        assert!(!text.contains("attacker"));
        let _guard = m.stream_opened();
        assert!(
            m.render(&TraceSink::disabled())
                .contains("keygate_open_streams 1")
        );
    }
}
