//! Domain types shared by every keygate crate: typed ids, the enums that appear on the wire,
//! timestamps, the configuration file's types, and what MCP messages look like on the wire
//! (SSE framing, JSON-RPC ids and errors: [`wire`]).
//!
//! This crate knows nothing about HTTP or SQL; it is the vocabulary the other crates speak.
#![forbid(unsafe_code)]

pub mod config;
pub mod hex;
pub mod ids;
pub mod model;
pub mod net;
pub mod otlp;
pub mod secret;
pub mod time;
pub mod wire;

pub use ids::{
    AgentSessionId, ApplicationId, ConnectionId, IntegrationId, OrgId, OtelId, OtelSpanId,
    OtelTraceId, PolicyId, ServiceAccountId, UserId,
};
pub use secret::Secret;
pub use time::Timestamp;
