//! OpenTelemetry: W3C trace context and the spans of proxied requests.
//!
//! Each MCP request gets a server span ([`ServerSpan`]): a child of the agent's `traceparent`
//! when it sent a valid one, else the root of a new trace. Each request the gateway sends
//! upstream gets a client span ([`UpstreamSpan`]), a child of the server span, whose
//! `traceparent` goes with it, so the upstream's own spans join the trace.
//!
//! With export on ([`Spans`], see [`export`]), spans are the OpenTelemetry SDK's: its sampler
//! decides at the start (parent-based by default, so the agent's sampled flag is honoured),
//! and finished sampled spans are exported. With export off no SDK span exists: the ids are
//! made here (two random numbers, no allocation), only so that the upstream and the trace
//! event still carry the trace.

pub mod export;

use std::borrow::Cow;

use http::HeaderValue;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};

pub use export::{ExportError, Spans, SpansHandle};

/// `00-<32 hex>-<16 hex>-<2 hex>` → the remote parent it names; all-zero ids are invalid.
pub fn parse_traceparent(h: &str) -> Option<SpanContext> {
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
    Some(SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(parent),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    ))
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

/// The `traceparent` header naming `span` as the parent.
pub fn traceparent(span: &SpanContext) -> HeaderValue {
    let mut value = [b'-'; 55];
    value[..2].copy_from_slice(b"00");
    write_hex(&span.trace_id().to_bytes(), &mut value[3..35]);
    write_hex(&span.span_id().to_bytes(), &mut value[36..52]);
    write_hex(&[span.trace_flags().to_u8()], &mut value[53..55]);
    HeaderValue::from_bytes(&value).expect("hex digits and dashes")
}

/// A trace id as 32 lowercase hex digits (as its `Display`, without the formatting machinery).
pub fn trace_id_hex(id: TraceId) -> String {
    hex(&id.to_bytes())
}

/// A span id as 16 lowercase hex digits.
pub fn span_id_hex(id: SpanId) -> String {
    hex(&id.to_bytes())
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; 2 * bytes.len()];
    write_hex(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Writes `bytes` as lowercase hex into `out` (twice as long).
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
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

/// A span of this gateway's that nothing exports: fresh ids, in the agent's trace if it named
/// one (its sampled flag kept), else in a new sampled trace.
fn local_span(parent: Option<&SpanContext>) -> SpanContext {
    let (trace_id, flags) = match parent {
        Some(p) => (p.trace_id(), p.trace_flags()),
        None => (TraceId::from_bytes(nonzero_random()), TraceFlags::SAMPLED),
    };
    SpanContext::new(
        trace_id,
        SpanId::from_bytes(nonzero_random()),
        flags,
        false,
        TraceState::NONE,
    )
}

/// The span of one MCP request as the gateway serves it.
pub enum ServerSpan {
    /// Export is on: the SDK's span (recording only when sampled), boxed so that an exchange
    /// without export stays small.
    Exported(Box<opentelemetry_sdk::trace::Span>),
    /// Export is off: ids only.
    Local(SpanContext),
}

impl ServerSpan {
    /// Starts the span of a request that carried `traceparent` (if any).
    pub fn start(spans: Option<&Spans>, traceparent: Option<&str>) -> Self {
        let parent = traceparent.and_then(parse_traceparent);
        match spans {
            Some(spans) => {
                let cx = match parent {
                    Some(p) => Context::new().with_remote_span_context(p),
                    None => Context::new(),
                };
                let span = spans
                    .tracer()
                    .span_builder("mcp")
                    .with_kind(SpanKind::Server)
                    .start_with_context(spans.tracer(), &cx);
                Self::Exported(Box::new(span))
            }
            None => Self::Local(local_span(parent.as_ref())),
        }
    }

    pub fn context(&self) -> &SpanContext {
        match self {
            Self::Exported(span) => span.span_context(),
            Self::Local(context) => context,
        }
    }

    /// Whether what [`ServerSpan::end`] is given will be exported.
    pub fn is_recording(&self) -> bool {
        matches!(self, Self::Exported(span) if span.is_recording())
    }

    /// Ends the span with its name, attributes and outcome (exported if sampled).
    pub fn end(&mut self, finished: Finished) {
        let Self::Exported(span) = self else { return };
        span.update_name(finished.name);
        span.set_attributes(finished.attributes);
        if let Some(message) = finished.error {
            span.set_status(Status::error(message));
        }
        span.end();
    }
}

/// What a server span learned by the time its request completed.
pub struct Finished {
    pub name: String,
    pub attributes: Vec<KeyValue>,
    /// `Some(description)` marks the span as failed.
    pub error: Option<String>,
}

/// The parent of the upstream requests one MCP request causes; cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanParent {
    spans: Option<Spans>,
    context: SpanContext,
}

impl SpanParent {
    pub fn new(spans: Option<&Spans>, context: &SpanContext) -> Self {
        Self {
            spans: spans.cloned(),
            context: context.clone(),
        }
    }

    /// Starts the client span of one upstream request.
    pub fn upstream(&self, method: &http::Method, uri: &http::Uri) -> UpstreamSpan {
        let Some(spans) = &self.spans else {
            // Nothing is exported: the upstream's spans hang off the server span, whose id the
            // trace event keeps.
            return UpstreamSpan::Local(self.context.clone());
        };
        let mut attributes = vec![KeyValue::new(
            "http.request.method",
            method.as_str().to_owned(),
        )];
        if let Some(host) = uri.host() {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
            let default_port = if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            let port = uri.port_u16().unwrap_or(default_port);
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        let cx = Context::new().with_remote_span_context(self.context.clone());
        let span = spans
            .tracer()
            .span_builder(Cow::Owned(method.as_str().to_owned()))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(spans.tracer(), &cx);
        UpstreamSpan::Exported(Box::new(span))
    }
}

/// The client span of one request sent upstream.
pub enum UpstreamSpan {
    Exported(Box<opentelemetry_sdk::trace::Span>),
    Local(SpanContext),
}

impl UpstreamSpan {
    /// The `traceparent` the upstream request carries: this span as its parent.
    pub fn traceparent(&self) -> HeaderValue {
        match self {
            Self::Exported(span) => traceparent(span.span_context()),
            Self::Local(context) => traceparent(context),
        }
    }

    /// Ends the span when the upstream answered with `status`.
    pub fn answered(self, status: u16) {
        let Self::Exported(mut span) = self else {
            return;
        };
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(format!(
                "the upstream answered HTTP {status}"
            )));
        }
        span.end();
    }

    /// Ends the span when no answer came: `error_type` is a short class (`timeout`, …).
    pub fn failed(self, error_type: &'static str, message: String) {
        let Self::Exported(mut span) = self else {
            return;
        };
        span.set_attribute(KeyValue::new("error.type", error_type));
        span.set_status(Status::error(message));
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_span_keeps_the_incoming_trace_and_sampled_flag() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let span = ServerSpan::start(None, Some(incoming));
        let cx = span.context();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(!cx.is_sampled());
        let out = traceparent(cx);
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-00"));
        assert_eq!(parse_traceparent(out).unwrap().trace_id(), cx.trace_id());
    }

    #[test]
    fn hex_ids_read_as_their_display() {
        let cx = local_span(None);
        assert_eq!(trace_id_hex(cx.trace_id()), cx.trace_id().to_string());
        assert_eq!(span_id_hex(cx.span_id()), cx.span_id().to_string());
        let tp = SpanContext::new(
            TraceId::from_bytes([0x0a; 16]),
            SpanId::from_bytes([0xf1; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        assert_eq!(
            traceparent(&tp),
            "00-0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-f1f1f1f1f1f1f1f1-01"
        );
    }

    #[test]
    fn without_a_parent_a_local_span_starts_a_sampled_trace() {
        let cx = ServerSpan::start(None, None).context().clone();
        assert!(cx.is_valid() && cx.is_sampled());
        assert!(!ServerSpan::start(None, None).is_recording());
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
            let span = ServerSpan::start(None, Some(bad));
            assert_ne!(
                span.context().trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
        }
    }

    #[test]
    fn without_export_the_upstream_gets_the_server_span_as_parent() {
        let server = ServerSpan::start(None, None);
        let parent = SpanParent::new(None, server.context());
        let upstream = parent.upstream(&http::Method::POST, &"http://u/mcp".parse().unwrap());
        assert_eq!(upstream.traceparent(), traceparent(server.context()));
    }
}
