//! Span export through the OpenTelemetry SDK to an OTLP/HTTP collector.
//!
//! The SDK's sampler decides which spans are recorded, its span data is what is exported, and
//! the OTLP exporter encodes it (`http/protobuf` or `http/json`) and sends it with the
//! configured headers and timeout. What sits between is keygate's: a finished span's facts
//! ([`Ended`]) enter a bounded queue with `try_send` — full, the span is dropped and counted,
//! the request never waits — and one tokio task makes span data of them and sends batches
//! (≤ 512 spans, gathered for ≤ 500 ms, the queue looked at every 20 ms: a span arriving wakes
//! nobody while a batch gathers). The SDK's own tracer and batch processor are not used: they
//! would build every attribute on the request's path, count drops only in a log line at
//! shutdown, and run exports on a thread of their own.
//!
//! The exporter's HTTP client is keygate's reqwest (no second major of it in the build), with
//! redirects off: the headers often carry a collector's API key, which must not follow a
//! redirect elsewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keygate_core::otlp::{OtlpProtocol, OtlpSettings, ParentlessSampler, SamplerSetting};
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample, SpanExporter as _};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Ended;

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
    #[error("building the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

impl Spans {
    /// Starts exporting per `settings` (in the current tokio runtime).
    pub fn start(settings: &OtlpSettings) -> Result<(Self, SpansHandle), ExportError> {
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let mut exporter = otlp_exporter(settings)?;
        exporter.set_resource(&resource);
        let (queue, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let spans = Self(Arc::new(Shared {
            sampler: sampler(settings.sampler),
            queue,
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }));
        let (close, close_rx) = oneshot::channel();
        let task = tokio::spawn(export_loop(exporter, rx, close_rx, spans.clone()));
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

fn otlp_exporter(settings: &OtlpSettings) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let headers: HashMap<String, String> = settings
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.expose().to_owned()))
        .collect();
    let protocol = match settings.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
        OtlpProtocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
    };
    Ok(opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient(client))
        .with_endpoint(settings.traces_url.as_str())
        .with_protocol(protocol)
        .with_timeout(settings.timeout)
        .with_headers(headers)
        .build()?)
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
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Ended>,
    mut close: oneshot::Receiver<()>,
    spans: Spans,
) {
    let scope = InstrumentationScope::builder("keygate")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
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
        let data: Vec<_> = batch
            .drain(..)
            .map(|span| span.into_span_data(&scope))
            .collect();
        let n = data.len() as u64;
        if let Err(e) = exporter.export(data).await {
            spans.0.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(error = %e, spans = n, "exporting spans failed");
        }
    }
    let _ = exporter.shutdown();
}

/// The exporter's HTTP client: keygate's reqwest, the answer read up to a bound.
#[derive(Debug)]
struct ExportClient(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let mut answer = self.0.execute(request.try_into()?).await?;
        let mut body = BytesMut::new();
        while let Some(chunk) = answer.chunk().await? {
            let room = MAX_RESPONSE_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == MAX_RESPONSE_BYTES {
                break;
            }
        }
        let mut response = http::Response::new(body.freeze());
        *response.status_mut() = answer.status();
        *response.headers_mut() = std::mem::take(answer.headers_mut());
        Ok(response)
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
        let data = ended.into_span_data(&InstrumentationScope::builder("keygate").build());
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
