//! Span export to an OTLP/HTTP collector.
//!
//! The SDK's sampler decides which spans are recorded. What follows is keygate's: a finished
//! span's facts ([`Ended`]) enter a bounded queue with `try_send` — full, the span is dropped
//! and counted, the request never waits — and one tokio task writes them into export requests
//! ([`super::encode`]) and sends batches (≤ 512 spans, gathered for ≤ 500 ms, the queue looked
//! at every 20 ms: a span arriving wakes nobody while a batch gathers) with the configured
//! headers and timeout, as `http/protobuf` or, decoded into opentelemetry-proto's messages and
//! serialized by their serde mapping, `http/json`. The SDK's tracer, batch processor and
//! exporter are not used: they would build every attribute on the request's path, count drops
//! only in a log line at shutdown, run exports on a thread of their own, and make two
//! intermediate copies of every span before encoding it.
//!
//! The HTTP client is keygate's reqwest with redirects off: the headers often carry a
//! collector's API key, which must not follow a redirect elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use keygate_core::otlp::{OtlpProtocol, OtlpSettings, ParentlessSampler, SamplerSetting};
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceId};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Ended;
use super::encode;

/// Spans per export request.
const MAX_EXPORT_BATCH: usize = 512;
/// How long the exporter gathers spans before sending a partial batch.
const EXPORT_DELAY: Duration = Duration::from_millis(500);
/// How often a gathering exporter looks at its queue.
const GATHER_TICK: Duration = Duration::from_millis(20);
/// Most of a collector's answer that is read (it is only looked at for errors).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The exporting end, shared by every request; cheap to clone.
#[derive(Clone, Debug)]
pub struct Spans(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    sampler: Sampler,
    queue: mpsc::Sender<Ended>,
    /// Spans dropped because the queue was full (or export had stopped).
    dropped: AtomicU64,
    /// Spans in batches the collector did not take.
    failed: AtomicU64,
}

/// Owns the export task; [`SpansHandle::close`] sends what is queued and stops.
#[derive(Debug)]
pub struct SpansHandle {
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("building the span exporter's HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("OTLP export header {0:?} is not a valid HTTP header")]
    Header(String),
}

impl Spans {
    /// Starts exporting per `settings` (in the current tokio runtime).
    pub fn start(settings: &OtlpSettings) -> Result<(Self, SpansHandle), ExportError> {
        let collector = Collector::new(settings)?;
        let request =
            encode::Request::new(&settings.service_name, env!("CARGO_PKG_VERSION"), "keygate");
        let (queue, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let spans = Self(Arc::new(Shared {
            sampler: sampler(settings.sampler),
            queue,
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }));
        let (close, close_rx) = oneshot::channel();
        let task = tokio::spawn(export_loop(collector, request, rx, close_rx, spans.clone()));
        Ok((spans, SpansHandle { close, task }))
    }

    /// Whether a server span in `trace_id` is recorded: the sampler's decision, given the
    /// agent's span (`parent`) if it named one.
    pub(crate) fn sample(&self, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
        let parent = parent.map(|p| Context::new().with_remote_span_context(p.clone()));
        let result = self.0.sampler.should_sample(
            parent.as_ref(),
            trace_id,
            "mcp",
            &SpanKind::Server,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }

    /// Queues a finished span for export, never waiting.
    pub(crate) fn queue(&self, span: Ended) {
        if self.0.queue.try_send(span).is_err() {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans lost because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// Spans lost because the collector refused or did not answer their batch.
    pub fn failed(&self) -> u64 {
        self.0.failed.load(Ordering::Relaxed)
    }
}

impl SpansHandle {
    /// Exports what is queued, and stops.
    pub async fn close(self) {
        let _ = self.close.send(());
        let _ = self.task.await;
    }
}

/// Where export requests go, and how.
struct Collector {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    protocol: OtlpProtocol,
}

/// An export request the collector did not take.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("encoding the request as JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("the collector answered HTTP {status}: {body}")]
    Refused { status: u16, body: String },
}

impl Collector {
    fn new(settings: &OtlpSettings) -> Result<Self, ExportError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let bad = || ExportError::Header(name.clone());
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let mut value =
                HeaderValue::from_bytes(value.expose().as_bytes()).map_err(|_| bad())?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        let content_type = match settings.protocol {
            OtlpProtocol::HttpProtobuf => "application/x-protobuf",
            OtlpProtocol::HttpJson => "application/json",
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        Ok(Self {
            client,
            url: settings.traces_url.to_string(),
            headers,
            protocol: settings.protocol,
        })
    }

    /// Sends one encoded `ExportTraceServiceRequest`; a 2xx answer is success.
    async fn send(&self, request: Vec<u8>) -> Result<(), SendError> {
        let body = match self.protocol {
            OtlpProtocol::HttpProtobuf => request,
            OtlpProtocol::HttpJson => to_json(&request)?,
        };
        let mut answer = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await?;
        // Read (bounded) so that the connection can carry the next export.
        let mut read = Vec::new();
        while let Some(chunk) = answer.chunk().await? {
            let room = MAX_RESPONSE_BYTES - read.len();
            read.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if read.len() == MAX_RESPONSE_BYTES {
                break;
            }
        }
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        // The collector's words go to the log: never an export header's value (an API key)
        // that it might have echoed.
        let mut body = String::from_utf8_lossy(&read).into_owned();
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            if name != CONTENT_TYPE && !value.is_empty() {
                body = body.replace(&*value, "[redacted]");
            }
        }
        if body.len() > 200 {
            let cut = (0..=200)
                .rev()
                .find(|&i| body.is_char_boundary(i))
                .unwrap_or(0);
            body.truncate(cut);
        }
        Err(SendError::Refused {
            status: status.as_u16(),
            body,
        })
    }
}

/// OTLP/JSON of an encoded request: opentelemetry-proto's messages and their serde mapping
/// (hex ids, enums as numbers, 64-bit integers as strings).
fn to_json(request: &[u8]) -> Result<Vec<u8>, SendError> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let message =
        ExportTraceServiceRequest::decode(request).map_err(|e| SendError::Json(e.to_string()))?;
    serde_json::to_vec(&message).map_err(|e| SendError::Json(e.to_string()))
}

fn sampler(setting: SamplerSetting) -> Sampler {
    let parentless = |p: ParentlessSampler| match p {
        ParentlessSampler::AlwaysOn => Sampler::AlwaysOn,
        ParentlessSampler::AlwaysOff => Sampler::AlwaysOff,
        ParentlessSampler::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
    };
    match setting {
        SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
        SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
        SamplerSetting::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerSetting::ParentBased(p) => Sampler::ParentBased(Box::new(parentless(p))),
    }
}

async fn export_loop(
    collector: Collector,
    mut request: encode::Request,
    mut rx: mpsc::Receiver<Ended>,
    mut close: oneshot::Receiver<()>,
    spans: Spans,
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
            // Gather a fuller batch for a moment, unless shutting down: looking at the queue
            // every tick rather than waking for each span that arrives.
            let deadline = tokio::time::Instant::now() + EXPORT_DELAY;
            while batch.len() + rx.len() < MAX_EXPORT_BATCH && !closing {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.min(now + GATHER_TICK)) => {}
                    _ = &mut close => { rx.close(); closing = true; }
                }
            }
            while batch.len() < MAX_EXPORT_BATCH {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
        }
        let n = batch.len() as u64;
        for span in batch.drain(..) {
            request.push(&span.into_span());
        }
        if let Err(e) = collector.send(request.take()).await {
            spans.0.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(error = %e, spans = n, "exporting spans failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::Finished;
    use crate::otel::{Outcome, ServerSpan, SpanParent};
    use opentelemetry::trace::Status;

    /// Export to a port nothing listens on, so that every export fails at once.
    fn settings(queue_capacity: usize, sampler: SamplerSetting) -> OtlpSettings {
        OtlpSettings {
            traces_url: "http://127.0.0.1:9/v1/traces".parse().unwrap(),
            protocol: OtlpProtocol::HttpProtobuf,
            headers: Vec::new(),
            timeout: Duration::from_millis(500),
            queue_capacity,
            sampler,
            service_name: "test".to_owned(),
        }
    }

    fn finish(span: &mut ServerSpan) {
        span.end(Finished::ok_call());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_spans_and_counts_them() {
        let (spans, handle) = Spans::start(&settings(2, SamplerSetting::AlwaysOn)).unwrap();
        // The export task cannot run before this test yields: the queue holds two.
        for _ in 0..10 {
            finish(&mut ServerSpan::start(Some(&spans), None));
        }
        assert_eq!(spans.dropped(), 8);
        handle.close().await;
        assert_eq!(spans.failed(), 2, "the queued two were sent, and refused");
    }

    /// A collector that answers its first request with `status` (and any header lines after
    /// it), and hands over what it read.
    async fn collector(status: impl Into<String>) -> (String, oneshot::Receiver<String>) {
        let status = status.into();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let (seen, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut read = Vec::new();
            let mut buf = [0u8; 4096];
            // The head and a body of Content-Length bytes.
            loop {
                let n = conn.read(&mut buf).await.unwrap();
                read.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&read).to_lowercase();
                let Some(end) = text.find("\r\n\r\n") else {
                    assert!(n > 0, "the exporter closed before its request's head");
                    continue;
                };
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if n == 0 || read.len() >= end + 4 + length {
                    break;
                }
            }
            let body = "bad key k-123";
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await.unwrap();
            let _ = seen.send(String::from_utf8_lossy(&read).into_owned());
        });
        (url, rx)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_export_counts_its_spans_as_failed() {
        let (url, seen) = collector("503 Service Unavailable").await;
        let mut settings = settings(8, SamplerSetting::AlwaysOn);
        settings.traces_url = url.parse().unwrap();
        settings.headers = vec![("x-api-key".into(), keygate_core::Secret::new("k-123"))];
        let (spans, handle) = Spans::start(&settings).unwrap();
        finish(&mut ServerSpan::start(Some(&spans), None));
        handle.close().await;
        assert_eq!(spans.failed(), 1);
        let request = seen.await.unwrap().to_lowercase();
        assert!(request.starts_with("post /v1/traces "), "{request}");
        assert!(
            request.contains("content-type: application/x-protobuf"),
            "{request}"
        );
        assert!(request.contains("x-api-key: k-123"), "{request}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refusal_is_reported_without_the_export_headers_values() {
        let (url, _seen) = collector("401 Unauthorized").await;
        let mut settings = settings(8, SamplerSetting::AlwaysOn);
        settings.traces_url = url.parse().unwrap();
        settings.headers = vec![("x-api-key".into(), keygate_core::Secret::new("k-123"))];
        let collector = Collector::new(&settings).unwrap();
        let error = collector.send(Vec::new()).await.unwrap_err().to_string();
        assert_eq!(error, "the collector answered HTTP 401: bad key [redacted]");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_redirecting_collector_is_not_followed() {
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let location = format!("http://{}/v1/traces", elsewhere.local_addr().unwrap());
        let (url, seen) =
            collector(format!("307 Temporary Redirect\r\nlocation: {location}")).await;
        let mut settings = settings(8, SamplerSetting::AlwaysOn);
        settings.traces_url = url.parse().unwrap();
        settings.headers = vec![("x-api-key".into(), keygate_core::Secret::new("k-123"))];
        let (spans, handle) = Spans::start(&settings).unwrap();
        finish(&mut ServerSpan::start(Some(&spans), None));
        handle.close().await;
        seen.await.unwrap();
        assert_eq!(spans.failed(), 1, "a redirect is no success");
        let followed = tokio::time::timeout(Duration::from_millis(200), elsewhere.accept()).await;
        assert!(
            followed.is_err(),
            "the API key went where the redirect pointed"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_collector_that_never_answers_fails_its_batch_at_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut settings = settings(8, SamplerSetting::AlwaysOn);
        settings.traces_url = format!("http://{}/v1/traces", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let held = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(conn);
        });
        let (spans, handle) = Spans::start(&settings).unwrap();
        finish(&mut ServerSpan::start(Some(&spans), None));
        let closed = tokio::time::timeout(Duration::from_secs(5), handle.close()).await;
        assert!(
            closed.is_ok(),
            "closing waited past the 500 ms export timeout"
        );
        assert_eq!(spans.failed(), 1);
        held.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_accepted_export_counts_nothing_failed() {
        let (url, seen) = collector("200 OK").await;
        let mut settings = settings(8, SamplerSetting::AlwaysOn);
        settings.traces_url = url.parse().unwrap();
        let (spans, handle) = Spans::start(&settings).unwrap();
        finish(&mut ServerSpan::start(Some(&spans), None));
        handle.close().await;
        seen.await.unwrap();
        assert_eq!((spans.failed(), spans.dropped()), (0, 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_upstream_request_is_a_local_child_client_span_in_error() {
        let (spans, handle) = Spans::start(&settings(8, SamplerSetting::AlwaysOn)).unwrap();
        let server = ServerSpan::start(Some(&spans), None);
        let uri = "https://up.example/mcp".parse().unwrap();
        let upstream = SpanParent::new(&server).upstream(&http::Method::POST, &uri);
        let failed = Outcome::Failed {
            error_type: "timeout",
            message: "no answer in 30 s".to_owned(),
        };
        let (_, ended) = upstream.into_ended(failed).expect("recorded");
        let data = ended.into_span();
        let parent = server.context();
        assert_eq!(
            (data.span_kind.clone(), &*data.name),
            (SpanKind::Client, "POST")
        );
        assert_eq!(data.span_context.trace_id(), parent.trace_id());
        assert_eq!(
            (data.parent_span_id, data.parent_span_is_remote),
            (parent.span_id(), false)
        );
        assert_eq!(data.status, Status::error("no answer in 30 s"));
        let attribute = |key: &str| {
            let found = data.attributes.iter().find(|kv| kv.key.as_str() == key);
            found.map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute("server.address").as_deref(), Some("up.example"));
        assert_eq!(attribute("server.port").as_deref(), Some("443"));
        assert_eq!(attribute("error.type").as_deref(), Some("timeout"));
        handle.close().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_default_sampler_follows_the_agents_sampled_flag() {
        let parent = ParentlessSampler::AlwaysOn;
        let (spans, handle) =
            Spans::start(&settings(8, SamplerSetting::ParentBased(parent))).unwrap();
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(ServerSpan::start(Some(&spans), Some(sampled)).is_recording());
        assert!(!ServerSpan::start(Some(&spans), Some(unsampled)).is_recording());
        assert!(ServerSpan::start(Some(&spans), None).is_recording());
        handle.close().await;
    }
}
