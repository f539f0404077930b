//! keygate's trace events and telemetry.
//!
//! - [`sink`]: the bounded, never-blocking event queue and its batching writer; a drop counter.
//! - [`exchange`] + [`observe`]: one JSON-RPC exchange as the proxy sees it, completed when its
//!   response has been relayed — event, span and metrics from one place.
//! - [`capture`]: payload capture `off` / `redacted` / `full`, and the masking of the
//!   credentials the gateway injected upstream, in every mode.
//! - [`live`]: the live tail behind `GET /api/v1/events/stream`.
//! - [`retention`]: deletes old events.
//! - [`metrics`]: Prometheus metrics; [`otel`]: W3C trace context and OTLP span export.
//!
//! This crate knows the store and HTTP bodies, not the proxy's internals: the proxy opens an
//! [`Exchange`] per request and tells it what it learns.
#![forbid(unsafe_code)]

pub mod capture;
pub mod exchange;
pub mod live;
pub mod metrics;
pub mod observe;
pub mod otel;
pub mod retention;
pub mod sink;

pub use capture::{Capture, CaptureMode, Injected};
pub use exchange::{Exchange, LocalAnswer, Status, Telemetry, Who};
pub use metrics::Metrics;
pub use observe::{Observed, Peek};
pub use sink::{SinkHandle, TraceSink};

/// A store on a fresh SQLite file, for this crate's tests.
#[cfg(test)]
pub(crate) async fn temp_store() -> (keygate_store::Store, keygate_core::OrgId, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let db = keygate_store::Db::connect(&url, 4).await.expect("connect");
    db.migrate().await.expect("migrate");
    let kek = keygate_store::Kek::from_base64(&keygate_store::Kek::generate_base64()).unwrap();
    let vault = keygate_store::Vault::unlock(&db, &kek)
        .await
        .expect("vault");
    let store = keygate_store::Store::new(db, vault);
    let org = store.default_organization().await.expect("org").id;
    (store, org, dir)
}
