//! OTLP export requests (`ExportTraceServiceRequest`, protobuf), written span by span straight
//! from what the request's path left, with prost's wire-format helpers.
//!
//! The SDK's exporter would first make span data of each span, then convert it into
//! opentelemetry-proto's messages (a `String` for every attribute's key and value), encode
//! those and drop both forms: about three quarters of what exporting a span cost. Here an
//! attribute costs its bytes. The message layout is opentelemetry-proto's (`trace.proto`,
//! `common.proto`, `resource.proto`); the tests decode what is written with its types.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// A finished span as the export request carries it.
#[derive(Debug)]
pub(crate) struct Span {
    pub(crate) span_context: SpanContext,
    /// `SpanId::INVALID` for a root span.
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_span_is_remote: bool,
    pub(crate) span_kind: SpanKind,
    pub(crate) name: Cow<'static, str>,
    pub(crate) start_time: SystemTime,
    pub(crate) end_time: SystemTime,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) status: Status,
}

/// One export request in the making: every span shares one resource and one scope.
pub(crate) struct Request {
    /// `ResourceSpans.resource`, encoded once (field key included).
    resource: Vec<u8>,
    /// `ScopeSpans.scope`, encoded once (field key included).
    scope: Vec<u8>,
    /// `ScopeSpans.spans`, one field per span pushed.
    spans: Vec<u8>,
    /// One span's fields, while they are written.
    span: Vec<u8>,
}

// Field numbers of the messages written.
const REQUEST_RESOURCE_SPANS: u32 = 1;
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const RESOURCE_ATTRIBUTES: u32 = 1;
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
const SCOPE_NAME: u32 = 1;
const SCOPE_VERSION: u32 = 2;
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_TRACE_STATE: u32 = 3;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;

/// `SpanFlags`: the span says whether its parent is remote, and whether it is.
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

impl Request {
    /// A request whose spans come from `service` (with its `version`), instrumented by
    /// `scope` (with its `version`).
    pub(crate) fn new(service: &str, version: &str, scope: &str) -> Self {
        let mut attributes = Vec::new();
        for kv in [
            KeyValue::new("service.name", service.to_owned()),
            KeyValue::new("service.version", version.to_owned()),
        ] {
            key_value(&mut attributes, RESOURCE_ATTRIBUTES, &kv);
        }
        let mut resource = Vec::new();
        bytes_field(&mut resource, RESOURCE_SPANS_RESOURCE, &attributes);
        let mut fields = Vec::new();
        str_field(&mut fields, SCOPE_NAME, scope);
        str_field(&mut fields, SCOPE_VERSION, version);
        let mut scope = Vec::new();
        bytes_field(&mut scope, SCOPE_SPANS_SCOPE, &fields);
        Self {
            resource,
            scope,
            spans: Vec::new(),
            span: Vec::new(),
        }
    }

    /// Adds `s` to the request.
    pub(crate) fn push(&mut self, s: &Span) {
        let out = &mut self.span;
        out.clear();
        let context = &s.span_context;
        bytes_field(out, SPAN_TRACE_ID, &context.trace_id().to_bytes());
        bytes_field(out, SPAN_SPAN_ID, &context.span_id().to_bytes());
        str_field(out, SPAN_TRACE_STATE, &context.trace_state().header());
        if s.parent_span_id != SpanId::INVALID {
            bytes_field(out, SPAN_PARENT_SPAN_ID, &s.parent_span_id.to_bytes());
        }
        str_field(out, SPAN_NAME, &s.name);
        varint_field(out, SPAN_KIND, kind_code(&s.span_kind));
        fixed64_field(out, SPAN_START, unix_nanos(s.start_time));
        fixed64_field(out, SPAN_END, unix_nanos(s.end_time));
        for kv in &s.attributes {
            key_value(out, SPAN_ATTRIBUTES, kv);
        }
        let (code, message) = match &s.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        // Always present, as the SDK's exporter sends it: empty when unset.
        let status_len =
            str_field_len(STATUS_MESSAGE, message) + varint_field_len(STATUS_CODE, code);
        len_prefix(out, SPAN_STATUS, status_len);
        str_field(out, STATUS_MESSAGE, message);
        varint_field(out, STATUS_CODE, code);
        let mut flags = u32::from(context.trace_flags().to_u8()) | FLAGS_HAS_IS_REMOTE;
        if s.parent_span_is_remote {
            flags |= FLAGS_IS_REMOTE;
        }
        encode_key(SPAN_FLAGS, WireType::ThirtyTwoBit, out);
        out.put_u32_le(flags);
        bytes_field(&mut self.spans, SCOPE_SPANS_SPANS, &self.span);
    }

    /// The encoded `ExportTraceServiceRequest` of the spans pushed; the request is empty again.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        let scope_spans = self.scope.len() + self.spans.len();
        let resource_spans =
            self.resource.len() + field_len(RESOURCE_SPANS_SCOPE_SPANS, scope_spans);
        let mut out = Vec::with_capacity(field_len(REQUEST_RESOURCE_SPANS, resource_spans));
        len_prefix(&mut out, REQUEST_RESOURCE_SPANS, resource_spans);
        out.put_slice(&self.resource);
        len_prefix(&mut out, RESOURCE_SPANS_SCOPE_SPANS, scope_spans);
        out.put_slice(&self.scope);
        out.put_slice(&self.spans);
        self.spans.clear();
        out
    }
}

fn kind_code(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    let nanos = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// A `KeyValue` as field `tag`.
fn key_value(out: &mut Vec<u8>, tag: u32, kv: &KeyValue) {
    let text;
    let value: (u32, Scalar) = match &kv.value {
        Value::Bool(b) => (ANY_BOOL, Scalar::Varint(u64::from(*b))),
        // int64 goes on the wire as its two's complement.
        Value::I64(i) => (ANY_INT, Scalar::Varint(*i as u64)),
        Value::F64(f) => (ANY_DOUBLE, Scalar::Fixed64(f.to_bits())),
        Value::String(s) => (ANY_STRING, Scalar::Str(s.as_str())),
        // Not among keygate's attributes; sent as the text the API shows for it.
        other => {
            text = other.as_str();
            (ANY_STRING, Scalar::Str(text.as_ref()))
        }
    };
    let (any_tag, scalar) = value;
    // A oneof member is written even when it holds its type's default.
    let any_len = match scalar {
        Scalar::Varint(v) => key_len(any_tag) + encoded_len_varint(v),
        Scalar::Fixed64(_) => key_len(any_tag) + 8,
        Scalar::Str(s) => field_len(any_tag, s.len()),
    };
    let key = kv.key.as_str();
    len_prefix(
        out,
        tag,
        str_field_len(KEY_VALUE_KEY, key) + field_len(KEY_VALUE_VALUE, any_len),
    );
    str_field(out, KEY_VALUE_KEY, key);
    len_prefix(out, KEY_VALUE_VALUE, any_len);
    match scalar {
        Scalar::Varint(v) => {
            encode_key(any_tag, WireType::Varint, out);
            encode_varint(v, out);
        }
        Scalar::Fixed64(v) => {
            encode_key(any_tag, WireType::SixtyFourBit, out);
            out.put_u64_le(v);
        }
        Scalar::Str(s) => bytes_field(out, any_tag, s.as_bytes()),
    }
}

/// An `AnyValue`'s member, as the wire carries it.
enum Scalar<'a> {
    Varint(u64),
    Fixed64(u64),
    Str(&'a str),
}

/// The bytes of a length-delimited field whose content is `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A proto3 string field's bytes: none when empty.
fn str_field_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(tag, s.len())
    }
}

/// A proto3 varint field's bytes: none when zero.
fn varint_field_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn len_prefix(out: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

fn bytes_field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    len_prefix(out, tag, bytes.len());
    out.put_slice(bytes);
}

fn str_field(out: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        bytes_field(out, tag, s.as_bytes());
    }
}

fn varint_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

fn fixed64_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.put_u64_le(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message;
    use std::time::Duration;

    fn span(name: &'static str, parent: SpanId, remote: bool, status: Status) -> Span {
        let context = SpanContext::new(
            TraceId::from_bytes([7; 16]),
            SpanId::from_bytes([9; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "v1")]).unwrap(),
        );
        Span {
            span_context: context,
            parent_span_id: parent,
            parent_span_is_remote: remote,
            span_kind: SpanKind::Server,
            name: name.into(),
            start_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001),
            end_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_250_000_000),
            attributes: vec![
                KeyValue::new("mcp.method.name", "tools/call"),
                KeyValue::new("server.port", 443_i64),
                KeyValue::new("negative", -2_i64),
                KeyValue::new("flag", true),
                KeyValue::new("ratio", 0.5),
                KeyValue::new("empty", ""),
            ],
            status,
        }
    }

    fn decode(bytes: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(bytes).expect("a valid ExportTraceServiceRequest")
    }

    #[test]
    fn a_request_decodes_as_opentelemetry_protos_message() {
        let mut request = Request::new("gateway", "1.2.3", "keygate");
        let parent = SpanId::from_bytes([3; 8]);
        request.push(&span("tools/call echo", parent, true, Status::Unset));
        request.push(&span(
            "GET",
            SpanId::INVALID,
            false,
            Status::error("no answer"),
        ));
        let decoded = decode(&request.take());

        let [resource_spans] = &decoded.resource_spans[..] else {
            panic!("one resource")
        };
        let resource = resource_spans.resource.as_ref().unwrap();
        let attribute = |i: usize| {
            let kv = &resource.attributes[i];
            match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(any_value::Value::StringValue(s)) => (kv.key.clone(), s),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(attribute(0), ("service.name".into(), "gateway".into()));
        assert_eq!(attribute(1), ("service.version".into(), "1.2.3".into()));
        let [scope_spans] = &resource_spans.scope_spans[..] else {
            panic!("one scope")
        };
        let scope = scope_spans.scope.as_ref().unwrap();
        assert_eq!((&*scope.name, &*scope.version), ("keygate", "1.2.3"));

        let [first, second] = &scope_spans.spans[..] else {
            panic!("two spans")
        };
        assert_eq!(first.trace_id, [7; 16]);
        assert_eq!(first.span_id, [9; 8]);
        assert_eq!(first.trace_state, "vendor=v1");
        assert_eq!(first.parent_span_id, [3; 8]);
        assert_eq!(first.name, "tools/call echo");
        assert_eq!(first.kind, 2);
        assert_eq!(first.start_time_unix_nano, 1_700_000_000_000_000_001);
        assert_eq!(first.end_time_unix_nano, 1_700_000_000_250_000_000);
        assert_eq!(first.flags, 0x301, "sampled, remote parent");
        let status = first.status.as_ref().expect("a status, even unset");
        assert_eq!((status.code, &*status.message), (0, ""));

        let values: Vec<_> = first
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().and_then(|v| v.value.clone()),
                )
            })
            .collect();
        assert_eq!(
            values,
            [
                (
                    "mcp.method.name",
                    Some(any_value::Value::StringValue("tools/call".into()))
                ),
                ("server.port", Some(any_value::Value::IntValue(443))),
                ("negative", Some(any_value::Value::IntValue(-2))),
                ("flag", Some(any_value::Value::BoolValue(true))),
                ("ratio", Some(any_value::Value::DoubleValue(0.5))),
                ("empty", Some(any_value::Value::StringValue(String::new()))),
            ]
        );

        assert!(
            second.parent_span_id.is_empty(),
            "a root span names no parent"
        );
        assert_eq!(second.flags, 0x101, "sampled, local");
        let status = second.status.as_ref().unwrap();
        assert_eq!((status.code, &*status.message), (2, "no answer"));
    }

    #[test]
    fn taking_a_request_empties_it() {
        let mut request = Request::new("gateway", "1", "keygate");
        request.push(&span("a", SpanId::INVALID, false, Status::Ok));
        let first = decode(&request.take());
        request.push(&span("b", SpanId::INVALID, false, Status::Ok));
        let second = decode(&request.take());
        let names = |r: &ExportTraceServiceRequest| -> Vec<String> {
            r.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(
            (names(&first), names(&second)),
            (vec!["a".into()], vec!["b".into()])
        );
        let status = second.resource_spans[0].scope_spans[0].spans[0]
            .status
            .clone();
        assert_eq!(status.map(|s| s.code), Some(1));
    }
}
