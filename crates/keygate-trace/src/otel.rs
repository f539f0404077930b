//! OpenTelemetry: W3C trace context and the spans of proxied requests.
//!
//! Each MCP request gets a server span ([`ServerSpan`]): a child of the agent's `traceparent`
//! when it sent a valid one, else the root of a new trace. Each request the gateway sends
//! upstream gets a client span ([`UpstreamSpan`]), a child of the server span, whose
//! `traceparent` goes with it, so the upstream's own spans join the trace.
//!
//! With export on ([`Spans`], see [`export`]), the OpenTelemetry SDK's sampler decides at the
//! start (parent-based by default, so the agent's sampled flag is honoured). A sampled span
//! keeps only its ids and start on the request's path; when it ends, its facts (the
//! exchange's [`Finished`], or the upstream request and its outcome) go to the export queue
//! as they are, and the export task makes them into spans — name, attributes, status — and
//! writes them into OTLP export requests ([`encode`]). Building a dozen attributes costs more
//! than the rest of a span; done there, it costs the request nothing. With export off, no
//! span is recorded: the ids are made here (two random numbers, no allocation), only so that
//! the upstream and the trace event still carry the trace.

mod encode;
pub mod export;

use std::borrow::Cow;
use std::time::SystemTime;

use http::HeaderValue;
use keygate_core::hex;
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};

use crate::exchange::Finished;

pub use export::{ExportError, Spans, SpansHandle};

/// The W3C trace context header; a constant name costs no parsing on a lookup.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

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

/// `2 × N` lowercase hex digits (W3C trace context allows no other case) as their bytes.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    s.parse::<keygate_core::OtelId<N>>().ok().map(|id| id.0)
}

/// The `traceparent` header naming `span` as the parent.
pub fn traceparent(span: &SpanContext) -> HeaderValue {
    let mut value = [b'-'; 55];
    value[..2].copy_from_slice(b"00");
    hex::encode_into(&span.trace_id().to_bytes(), &mut value[3..35]);
    hex::encode_into(&span.span_id().to_bytes(), &mut value[36..52]);
    hex::encode_into(&[span.trace_flags().to_u8()], &mut value[53..55]);
    HeaderValue::from_bytes(&value).expect("hex digits and dashes")
}

/// A trace id as 32 lowercase hex digits (as its `Display`, without the formatting machinery).
pub fn trace_id_hex(id: TraceId) -> String {
    hex::encode(&id.to_bytes())
}

/// An HTTP method as a span name or attribute value: the standard ones without allocating.
pub(crate) fn method_name(method: &http::Method) -> Cow<'static, str> {
    use http::Method;
    Cow::Borrowed(match *method {
        Method::POST => "POST",
        Method::GET => "GET",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => return Cow::Owned(method.as_str().to_owned()),
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

/// Fresh ids for a span of this gateway's: in the agent's trace if it named one (its sampled
/// flag kept), else in a new sampled trace.
fn local_span(parent: Option<&SpanContext>) -> SpanContext {
    match parent {
        Some(p) => span_in(p, p.trace_flags()),
        None => new_span(new_trace_id(), TraceFlags::SAMPLED, TraceState::NONE),
    }
}

/// A span with a fresh id in `parent`'s trace (and trace state), flagged `flags`.
fn span_in(parent: &SpanContext, flags: TraceFlags) -> SpanContext {
    new_span(parent.trace_id(), flags, parent.trace_state().clone())
}

/// A span with a fresh id in trace `trace_id`.
fn new_span(trace_id: TraceId, flags: TraceFlags, state: TraceState) -> SpanContext {
    SpanContext::new(
        trace_id,
        SpanId::from_bytes(nonzero_random()),
        flags,
        false,
        state,
    )
}

fn new_trace_id() -> TraceId {
    TraceId::from_bytes(nonzero_random())
}

/// The span of one MCP request as the gateway serves it.
pub struct ServerSpan {
    context: SpanContext,
    /// Set when the span will be exported (export on, and the sampler took it).
    recording: Option<Recording>,
}

/// What an exported span keeps between its start and its end.
struct Recording {
    spans: Spans,
    /// The agent's span, when its `traceparent` named one (a remote parent).
    parent: SpanId,
    start: SystemTime,
}

impl ServerSpan {
    /// Starts the span of a request that carried `traceparent` (if any); with export on, the
    /// sampler decides here whether it is recorded.
    pub fn start(spans: Option<&Spans>, traceparent: Option<&str>) -> Self {
        let parent = traceparent.and_then(parse_traceparent);
        let Some(spans) = spans else {
            return Self {
                context: local_span(parent.as_ref()),
                recording: None,
            };
        };
        let trace_id = parent
            .as_ref()
            .map_or_else(new_trace_id, SpanContext::trace_id);
        let sampled = spans.sample(parent.as_ref(), trace_id);
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = match &parent {
            Some(p) => span_in(p, flags),
            None => new_span(trace_id, flags, TraceState::NONE),
        };
        let recording = sampled.then(|| Recording {
            spans: spans.clone(),
            parent: parent.map_or(SpanId::INVALID, |p| p.span_id()),
            start: SystemTime::now(),
        });
        Self { context, recording }
    }

    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether what [`ServerSpan::end`] is given will be exported.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Ends the span with what its request turned out to be; the export task makes the
    /// span's name, attributes and status of it (off the request's path).
    pub fn end(&mut self, finished: Finished) {
        let Some(r) = self.recording.take() else {
            return;
        };
        r.spans.queue(Ended {
            context: self.context.clone(),
            parent: r.parent,
            parent_is_remote: r.parent != SpanId::INVALID,
            start: r.start,
            end: SystemTime::now(),
            kind: EndedKind::Server(Box::new(finished)),
        });
    }
}

/// The parent of the upstream requests one MCP request causes; cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanParent {
    /// Set when the parent is recorded: its children are too (every sampler keygate offers
    /// decides alike for a span and its local child: by the trace id, or by the parent).
    spans: Option<Spans>,
    context: SpanContext,
}

impl SpanParent {
    pub(crate) fn new(server: &ServerSpan) -> Self {
        Self {
            spans: server.recording.as_ref().map(|r| r.spans.clone()),
            context: server.context.clone(),
        }
    }

    /// Starts the client span of one upstream request.
    pub fn upstream(&self, method: &http::Method, uri: &http::Uri) -> UpstreamSpan {
        let Some(spans) = &self.spans else {
            // Nothing is exported: the upstream's spans hang off the server span, whose id the
            // trace event keeps.
            return UpstreamSpan {
                context: self.context.clone(),
                recording: None,
            };
        };
        UpstreamSpan {
            context: span_in(&self.context, self.context.trace_flags()),
            recording: Some(Box::new(Request {
                spans: spans.clone(),
                parent: self.context.span_id(),
                start: SystemTime::now(),
                method: method.clone(),
                uri: uri.clone(),
            })),
        }
    }
}

/// The client span of one request sent upstream.
pub struct UpstreamSpan {
    context: SpanContext,
    recording: Option<Box<Request>>,
}

/// An exported client span between its start and its end.
struct Request {
    spans: Spans,
    parent: SpanId,
    start: SystemTime,
    method: http::Method,
    uri: http::Uri,
}

impl UpstreamSpan {
    /// The `traceparent` the upstream request carries: this span as its parent.
    pub fn traceparent(&self) -> HeaderValue {
        traceparent(&self.context)
    }

    /// Ends the span when the upstream answered with `status`.
    pub fn answered(self, status: u16) {
        self.end(Outcome::Answered(status));
    }

    /// Ends the span when no answer came: `error_type` is a short class (`timeout`, …).
    pub fn failed(self, error_type: &'static str, message: String) {
        self.end(Outcome::Failed {
            error_type,
            message,
        });
    }

    fn end(self, outcome: Outcome) {
        if let Some((spans, ended)) = self.into_ended(outcome) {
            spans.queue(ended);
        }
    }

    /// The finished span, and where it goes, when it is recorded.
    fn into_ended(self, outcome: Outcome) -> Option<(Spans, Ended)> {
        let Request {
            spans,
            parent,
            start,
            method,
            uri,
        } = *self.recording?;
        let ended = Ended {
            context: self.context,
            parent,
            parent_is_remote: false,
            start,
            end: SystemTime::now(),
            kind: EndedKind::Client {
                method,
                uri,
                outcome,
            },
        };
        Some((spans, ended))
    }
}

/// A finished span as the request's path leaves it: facts, which the export task turns into
/// a span to encode ([`Ended::into_span`]).
pub(crate) struct Ended {
    context: SpanContext,
    parent: SpanId,
    parent_is_remote: bool,
    start: SystemTime,
    end: SystemTime,
    kind: EndedKind,
}

enum EndedKind {
    Server(Box<Finished>),
    Client {
        method: http::Method,
        uri: http::Uri,
        outcome: Outcome,
    },
}

/// How an upstream request went.
enum Outcome {
    Answered(u16),
    Failed {
        error_type: &'static str,
        message: String,
    },
}

impl Ended {
    pub(crate) fn into_span(self) -> encode::Span {
        let (kind, name, attributes, status) = match self.kind {
            EndedKind::Server(finished) => {
                let (name, attributes, error) = finished.describe();
                let status = error.map_or(Status::Unset, Status::error);
                (SpanKind::Server, name, attributes, status)
            }
            EndedKind::Client {
                method,
                uri,
                outcome,
            } => {
                let (attributes, status) = client_attributes(&method, &uri, outcome);
                (SpanKind::Client, method_name(&method), attributes, status)
            }
        };
        encode::Span {
            span_context: self.context,
            parent_span_id: self.parent,
            parent_span_is_remote: self.parent_is_remote,
            span_kind: kind,
            name,
            start_time: self.start,
            end_time: self.end,
            attributes,
            status,
        }
    }
}

/// The HTTP client semantic conventions of an upstream request, and its span's status.
fn client_attributes(
    method: &http::Method,
    uri: &http::Uri,
    outcome: Outcome,
) -> (Vec<KeyValue>, Status) {
    let mut attributes = Vec::with_capacity(5);
    attributes.push(KeyValue::new("http.request.method", method_name(method)));
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
    let status = match outcome {
        Outcome::Answered(code) => {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
            if code >= 400 {
                attributes.push(KeyValue::new("error.type", code.to_string()));
                Status::error(format!("the upstream answered HTTP {code}"))
            } else {
                Status::Unset
            }
        }
        Outcome::Failed {
            error_type,
            message,
        } => {
            attributes.push(KeyValue::new("error.type", error_type));
            Status::error(message)
        }
    };
    (attributes, status)
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
        // What an event stores shows as the ids the collector receives.
        let event_span = keygate_core::OtelId(cx.span_id().to_bytes());
        assert_eq!(event_span.to_string(), cx.span_id().to_string());
        let event_trace = keygate_core::OtelId(cx.trace_id().to_bytes());
        assert_eq!(event_trace.to_string(), cx.trace_id().to_string());
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
        let parent = SpanParent::new(&server);
        let upstream = parent.upstream(&http::Method::POST, &"http://u/mcp".parse().unwrap());
        assert_eq!(upstream.traceparent(), traceparent(server.context()));
    }
}
