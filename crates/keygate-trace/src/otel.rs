//! OpenTelemetry: W3C trace context and an OTLP/HTTP span exporter.
//!
//! Each proxied request gets a span ([`SpanContext`]): a child of the agent's `traceparent`
//! when it sent one, else the root of a new trace. Its `traceparent` goes to the upstream, so
//! the upstream's spans join the same trace.
//!
//! Finished spans go through a bounded queue (full → dropped and counted, never waited on) to
//! an exporter task that POSTs batches to `{endpoint}/v1/traces` in the OTLP/HTTP **JSON**
//! encoding (OTLP 1.0, accepted by the OpenTelemetry Collector and the backends built on it).
//! JSON rather than protobuf keeps the exporter to reqwest and serde_json, which keygate
//! already builds; the OpenTelemetry SDK, prost and the generated protocol types would add
//! several dozen crates to the build for one message type.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Spans per export request.
const MAX_EXPORT_BATCH: usize = 512;
/// How long the exporter gathers spans before sending a partial batch.
const EXPORT_DELAY: Duration = Duration::from_millis(500);

/// The identity of one span and its place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
}

impl SpanContext {
    /// A new span: the child of `traceparent` if it is a valid W3C header, else a new root.
    pub fn start(traceparent: Option<&str>) -> Self {
        let span_id = nonzero_random::<8>();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                sampled: flags & 1 == 1,
            },
            None => Self {
                trace_id: nonzero_random::<16>(),
                span_id,
                parent_span_id: None,
                sampled: true,
            },
        }
    }

    /// The `traceparent` header naming this span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>` → (trace id, parent id, flags); all-zero ids are invalid.
pub fn parse_traceparent(h: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = h.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?;
    let parent: [u8; 8] = unhex(parent)?;
    let [flags]: [u8; 1] = unhex(flags)?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let mut bytes = [0u8; N];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
        if bytes != [0; N] {
            return bytes;
        }
    }
}

/// A span attribute value.
#[derive(Clone, Debug)]
pub enum Attr {
    Str(String),
    Int(i64),
}

/// A finished span, ready to export.
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    pub context: SpanContext,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    /// `Some(message)` marks the span as failed.
    pub error: Option<String>,
}

/// The exporting end; cheap to clone.
#[derive(Clone, Debug)]
pub struct Exporter {
    tx: mpsc::Sender<FinishedSpan>,
    dropped: Arc<AtomicU64>,
}

/// Owns the export task; [`ExporterHandle::close`] sends what is queued and stops.
#[derive(Debug)]
pub struct ExporterHandle {
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Starts exporting to `endpoint` (the OTLP/HTTP base URL, e.g. `http://collector:4318`).
    pub fn spawn(endpoint: &str, service_name: &str, capacity: usize) -> (Self, ExporterHandle) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (close, close_rx) = oneshot::channel();
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let resource = json!({"attributes": [
            {"key": "service.name", "value": {"stringValue": service_name}},
            {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
        ]});
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client with default TLS settings");
        let task = tokio::spawn(export_loop(client, url, resource, rx, close_rx));
        (
            Self {
                tx,
                dropped: Arc::default(),
            },
            ExporterHandle { close, task },
        )
    }

    /// Queues a span; drops (and counts) it when the queue is full. Never waits.
    pub fn export(&self, span: FinishedSpan) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl ExporterHandle {
    pub async fn close(self) {
        let _ = self.close.send(());
        let _ = self.task.await;
    }
}

async fn export_loop(
    client: reqwest::Client,
    url: String,
    resource: Value,
    mut rx: mpsc::Receiver<FinishedSpan>,
    mut close: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(MAX_EXPORT_BATCH);
    let mut closing = false;
    loop {
        if closing {
            if rx.recv_many(&mut batch, MAX_EXPORT_BATCH).await == 0 {
                break;
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_EXPORT_BATCH) => if n == 0 { break },
                _ = &mut close => { rx.close(); closing = true; continue; }
            }
            // Gather a fuller batch for a moment, unless shutting down.
            let deadline = tokio::time::Instant::now() + EXPORT_DELAY;
            while batch.len() < MAX_EXPORT_BATCH && !closing {
                let room = MAX_EXPORT_BATCH - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = &mut close => { rx.close(); closing = true; }
                }
            }
        }
        let body = encode(&resource, &batch);
        batch.clear();
        match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = %r.status(), "the OTLP collector refused spans"),
            Err(e) => tracing::warn!(error = %e, "exporting spans failed"),
        }
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

/// An OTLP `ExportTraceServiceRequest` in the JSON encoding (ids as hex, 64-bit ints as
/// strings, enums as numbers).
pub fn encode(resource: &Value, spans: &[FinishedSpan]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<Value> = s
                .attributes
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Attr::Str(s) => json!({"stringValue": s}),
                        Attr::Int(i) => json!({"intValue": i.to_string()}),
                    };
                    json!({"key": k, "value": value})
                })
                .collect();
            let mut span = json!({
                "traceId": hex(&s.context.trace_id),
                "spanId": hex(&s.context.span_id),
                "name": s.name,
                "kind": 2, // SPAN_KIND_SERVER
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes,
                "status": match &s.error {
                    Some(m) => json!({"code": 2, "message": m}),
                    None => json!({"code": 1}),
                },
            });
            if let Some(p) = s.context.parent_span_id {
                span["parentSpanId"] = Value::from(hex(&p));
            }
            span
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": resource,
        "scopeSpans": [{"scope": {"name": "keygate", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_spans_keep_the_incoming_trace() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = SpanContext::start(Some(incoming));
        assert_eq!(span.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            span.parent_span_id,
            Some(unhex("00f067aa0ba902b7").unwrap())
        );
        let out = span.traceparent();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        assert_eq!(parse_traceparent(&out).unwrap().0, span.trace_id);
    }

    #[test]
    fn bad_headers_start_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
            let span = SpanContext::start(Some(bad));
            assert!(span.parent_span_id.is_none());
        }
    }

    #[test]
    fn encodes_otlp_json() {
        let ctx = SpanContext::start(None);
        let span = FinishedSpan {
            context: ctx,
            name: "tools/call echo".into(),
            start: UNIX_EPOCH + Duration::from_millis(1),
            end: UNIX_EPOCH + Duration::from_millis(3),
            attributes: vec![
                ("mcp.method", Attr::Str("tools/call".into())),
                ("http.response.status_code", Attr::Int(200)),
            ],
            error: None,
        };
        let v = encode(&json!({}), &[span]);
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], ctx.trace_id_hex());
        assert_eq!(s["startTimeUnixNano"], "1000000");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "200");
        assert_eq!(s["status"]["code"], 1);
        assert!(s.get("parentSpanId").is_none());
    }
}
