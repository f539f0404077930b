//! Wiring: from a validated [`Config`] to a running gateway.
//!
//! [`Gateway::open`] connects and migrates the store, unlocks the vault, loads the signing
//! keys and the TLS certificate; [`Gateway::serve`] runs the HTTP server ([`crate::listener`]:
//! TLS, header, idle and connection limits) on the public listener and, when one is given, the
//! operations routes (`/healthz`, `/readyz`, `/metrics`) on the admin listener, until the
//! shutdown future resolves; then it lets in-flight requests finish up to a deadline and
//! flushes the trace queue before the database closes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use keygate_api::probe::{Probe, Prober};
use keygate_api::{ApiOptions, ApiState, Limiter};
use keygate_auth::broker::Broker;
use keygate_auth::clients::ClientDocuments;
use keygate_auth::limits::{LimitSettings, Limits};
use keygate_auth::outbound::Outbound;
use keygate_auth::{AuthState, KeyRing};
use keygate_core::Secret;
use keygate_core::config::Config;
use keygate_proxy::probe::ProbeOutcome;
use keygate_proxy::upstream::Timeouts;
use keygate_proxy::{ProxyState, Upstream};
use keygate_store::{Db, Kek, Store, Vault};
use keygate_trace::otel::{Spans, SpansHandle};
use keygate_trace::{Capture, CaptureMode, Metrics, SinkHandle, Telemetry, TraceSink, retention};
use serde_json::json;
use std::pin::Pin;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::tls::Tls;

/// How long in-flight requests may run after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// An opened gateway: store, keys and the HTTP router, ready to serve.
pub struct Gateway {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub public_url: String,
    /// Trace events, spans and metrics.
    pub telemetry: Arc<Telemetry>,
    /// Everything but the operations routes.
    router: Router,
    /// `/healthz`, `/readyz` and (when enabled) `/metrics`.
    ops: Router,
    limiter: Limiter,
    auth_limits: Arc<Limits>,
    pipeline: Pipeline,
    limits: crate::listener::Limits,
    tls: Option<Arc<Tls>>,
    /// Cancelled when shutdown begins (`/readyz` then says so).
    stopping: CancellationToken,
}

/// Where a gateway serves: the public listener and, optionally, the admin listener that takes
/// the operations routes off it.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(public: TcpListener) -> Self {
        Self {
            public,
            admin: None,
        }
    }
}

/// The background halves of telemetry, drained at shutdown.
struct Pipeline {
    sink: Option<SinkHandle>,
    spans: Option<SpansHandle>,
    retention_days: u32,
}

/// Opens the database and applies migrations.
pub async fn open_db(config: &Config) -> anyhow::Result<Db> {
    if config.database_url().starts_with("sqlite:") {
        std::fs::create_dir_all(config.data_dir())?;
    }
    let db = Db::connect(&config.database_url(), config.max_connections()).await?;
    db.migrate().await?;
    Ok(db)
}

impl Gateway {
    pub async fn open(config: &Config, kek: &Kek) -> anyhow::Result<Self> {
        let db = open_db(config).await?;
        let vault = Vault::unlock(&db, kek).await?;
        let store = Store::new(db, vault);
        store.spawn_change_listener(config.database_url());
        store.default_organization().await?;
        let public_url = config.public_url();
        let keys = Arc::new(KeyRing::load(store.clone(), public_url.clone()).await?);
        let outbound = Outbound::new(&config.outbound.allowed_private_hosts);
        let broker = Broker::new(
            store.clone(),
            outbound.clone(),
            public_url.as_str().into(),
            &config.upstream_oauth.providers,
            config.refresh_skew_secs(),
        )
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let auth = AuthState {
            store: store.clone(),
            keys: keys.clone(),
            public_url: public_url.as_str().into(),
            access_token_ttl: config.access_token_ttl_secs(),
            client_documents: Arc::new(ClientDocuments::new(outbound)),
            tokens: Arc::default(),
            broker: Arc::new(broker),
            connect_link_ttl_secs: config.connect_link_ttl_secs(),
            limits: Arc::new(Limits::new(LimitSettings {
                login_failures_per_account: config.login_failures_per_account(),
                login_failures_per_ip: config.login_failures_per_ip(),
                client_auth_failures_per_client: config.client_auth_failures_per_client(),
                client_auth_failures_per_ip: config.client_auth_failures_per_ip(),
                failure_delay_max: Duration::from_secs(config.failure_delay_max_secs()),
                registrations_per_ip_per_minute: config.registrations_per_ip_per_minute(),
                registrations_per_minute: config.registrations_per_minute(),
            })),
        };
        let limiter = Limiter::per_minute(config.rate_limit_per_minute());
        let upstream = Arc::new(Upstream::new(
            &config.outbound.allowed_private_hosts,
            Timeouts {
                header: Duration::from_secs(config.upstream_header_timeout_secs()),
                pool_idle: Duration::from_secs(config.upstream_idle_timeout_secs()),
                stream_idle: Duration::from_secs(config.stream_idle_timeout_secs()),
            },
        ));
        let (telemetry, pipeline) = telemetry(config, &store)?;
        let tools = Arc::new(keygate_policy::ToolCatalog::default());
        let api = keygate_api::router(
            ApiState {
                auth: auth.clone(),
                prober: Arc::new(UpstreamProber(upstream.clone())),
                traces: telemetry.sink.clone(),
                tools: tools.clone(),
            },
            ApiOptions {
                max_body_bytes: config.max_body_bytes(),
                limiter: limiter.clone(),
            },
        );
        let stopping = CancellationToken::new();
        let router = Router::new()
            .merge(keygate_proxy::router(
                ProxyState::new(auth.clone(), upstream)
                    .with_telemetry(telemetry.clone())
                    .with_allowed_origins(&config.mcp.allowed_origins)
                    .with_fanout_timeout(Duration::from_secs(config.fanout_timeout_secs()))
                    .with_tool_catalog(tools),
            ))
            .merge(keygate_auth::router(auth.clone()))
            .merge(api);
        let mut ops = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(Readiness {
                store: store.clone(),
                stopping: stopping.clone(),
            });
        if config.metrics_enabled() {
            ops = ops.merge(crate::metrics::router(
                telemetry.clone(),
                config.telemetry.metrics_token.clone(),
            ));
        }
        let tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(
                Tls::load(
                    cert,
                    key,
                    Duration::from_secs(config.tls_handshake_timeout_secs()),
                )
                .map_err(|e| anyhow::anyhow!("TLS: {e}"))?,
            )),
            _ => None,
        };
        Ok(Self {
            store,
            keys,
            public_url,
            telemetry,
            router,
            ops,
            limiter,
            auth_limits: auth.limits,
            pipeline,
            limits: crate::listener::Limits::from_config(config),
            tls,
            stopping,
        })
    }

    /// The HTTP router with the operations routes (for tests that drive it without a socket).
    pub fn router(&self) -> Router {
        self.router.clone().merge(self.ops.clone())
    }

    /// Serves until `shutdown` resolves, then drains for at most [`SHUTDOWN_GRACE`]. With an
    /// admin listener, the operations routes are served there and not on the public one.
    pub async fn serve(
        self,
        listeners: impl Into<Listeners>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listeners = listeners.into();
        let limiter = self.limiter.clone();
        let auth_limits = self.auth_limits.clone();
        let store = self.store.clone();
        let keys = self.keys.clone();
        let pruner = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limiter.prune();
                auth_limits.prune();
                // Pick up signing keys rotated by another replica or the CLI.
                if let Err(e) = keys.reload().await {
                    tracing::warn!(error = %e, "reloading signing keys failed");
                }
                if let Err(e) = store.purge_expired_oauth_state().await {
                    tracing::warn!(error = %e, "purging expired OAuth state failed");
                }
            }
        });
        let retention = (self.pipeline.retention_days > 0)
            .then(|| retention::spawn(self.store.clone(), self.pipeline.retention_days));
        let stopping = self.stopping.clone();
        let signal = tokio::spawn(async move {
            shutdown.await;
            stopping.cancel();
        });
        let reload = self.tls.as_ref().map(|tls| tls.watch());
        let (public_router, admin) = match listeners.admin {
            Some(admin) => (
                self.router,
                Some(serve_admin(admin, self.ops, self.limits, &self.stopping)),
            ),
            None => (self.router.merge(self.ops), None),
        };
        let server = crate::listener::serve(
            listeners.public,
            public_router,
            self.limits,
            self.tls.clone(),
            self.stopping.clone(),
        );
        tokio::pin!(server);
        let result = tokio::select! {
            _ = &mut server => Ok(()),
            _ = async {
                self.stopping.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("shutdown deadline reached; dropping remaining connections");
                Ok(())
            }
        };
        signal.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        if let Some(reload) = reload {
            reload.abort();
        }
        pruner.abort();
        if let Some(r) = retention {
            r.abort();
        }
        // Every queued trace event is written before the database closes.
        if let Some(sink) = self.pipeline.sink {
            sink.close().await;
            let stats = self.telemetry.sink.stats();
            tracing::info!(
                written = stats.written(),
                dropped = stats.dropped(),
                "trace events flushed"
            );
        }
        if let Some(spans) = self.pipeline.spans {
            spans.close().await;
        }
        self.store.db().close().await;
        result
    }
}

/// Connections the admin listener holds at most: probes and scrapers, not clients.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Serves the operations routes on the admin listener (plain HTTP: the port stays inside the
/// host or cluster) until `stopping` is cancelled.
fn serve_admin(
    listener: TcpListener,
    ops: Router,
    limits: crate::listener::Limits,
    stopping: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let limits = crate::listener::Limits {
        max_connections: ADMIN_MAX_CONNECTIONS,
        ..limits
    };
    tokio::spawn(crate::listener::serve(
        listener,
        ops,
        limits,
        None,
        stopping.clone(),
    ))
}

/// What `/readyz` checks.
#[derive(Clone)]
struct Readiness {
    store: Store,
    stopping: CancellationToken,
}

/// `GET /readyz`: 200 when every check passes, else 503; both with a JSON body naming each
/// check and, for a failing one, why (`{"ready": false, "failing": ["database"], "checks":
/// {"database": "…", "shutdown": "ok"}}`).
async fn readyz(State(r): State<Readiness>) -> axum::response::Response {
    let database = (!r.store.ping().await).then_some("the database does not answer");
    let shutdown = r
        .stopping
        .is_cancelled()
        .then_some("shutting down: finishing the requests in flight");
    let results = [("database", database), ("shutdown", shutdown)];
    let failing: Vec<&str> = results
        .iter()
        .filter(|(_, problem)| problem.is_some())
        .map(|(name, _)| *name)
        .collect();
    let checks: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(name, problem)| ((*name).to_owned(), json!(problem.unwrap_or("ok"))))
        .collect();
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"ready": failing.is_empty(), "failing": failing, "checks": checks});
    (status, Json(body)).into_response()
}

/// Starts the trace pipeline, the span exporter and the metrics registry per `config`.
fn telemetry(config: &Config, store: &Store) -> anyhow::Result<(Arc<Telemetry>, Pipeline)> {
    let (spans, spans_handle) = match config.telemetry.otlp()? {
        Some(settings) => {
            let (spans, handle) = Spans::start(&settings)?;
            (Some(spans), Some(handle))
        }
        None => (None, None),
    };
    let (sink, sink_handle) = if config.traces_enabled() {
        let (sink, handle) = TraceSink::spawn(store.clone(), config.trace_queue_capacity());
        (sink, Some(handle))
    } else {
        (TraceSink::disabled(), None)
    };
    let mode = CaptureMode::parse(config.trace_capture()).unwrap_or_default();
    let metrics = Metrics::new();
    crate::metrics::register_process_metrics(&metrics)?;
    let telemetry = Arc::new(Telemetry {
        sink,
        capture: Capture::new(
            mode,
            &config.traces.redact_fields,
            config.trace_max_payload_bytes(),
        ),
        metrics,
        spans,
    });
    let pipeline = Pipeline {
        sink: sink_handle,
        spans: spans_handle,
        retention_days: if config.traces_enabled() {
            config.trace_retention_days()
        } else {
            0
        },
    };
    Ok((telemetry, pipeline))
}

/// The API's connectivity checks, done by the proxy's upstream client.
struct UpstreamProber(Arc<Upstream>);

impl Prober for UpstreamProber {
    fn probe<'a>(
        &'a self,
        url: &'a str,
        credential: Option<&'a Secret>,
    ) -> Pin<Box<dyn Future<Output = Probe> + Send + 'a>> {
        Box::pin(async move {
            match self.0.probe(url, credential).await {
                ProbeOutcome::Valid(m) => Probe::Valid(m),
                ProbeOutcome::NeedsAuthorization(m) => Probe::NeedsAuthorization(m),
                ProbeOutcome::Invalid(m) => Probe::Invalid(m),
            }
        })
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: no new connections, draining in-flight requests");
}
