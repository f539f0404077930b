//! keygate's persistence. Only this crate speaks SQL.
//!
//! [`Db`] is a pool on SQLite or PostgreSQL (sqlx's `Any` driver, one set of queries written
//! with `$n` placeholders, which both dialects accept). [`Vault`] seals every stored credential
//! with AES-256-GCM. [`Store`] joins the two and exposes one repository method per use case;
//! each method takes the caller's [`OrgId`](keygate_core::OrgId) so no query can cross tenants.
#![forbid(unsafe_code)]

mod cache;
mod changes;
mod db;
mod error;
mod page;
mod repo;
mod sql;
pub mod vault;

pub use cache::GenCache;
pub use db::{Backend, Db};
pub use error::StoreError;
pub use page::{Cursor, Page, PageRequest};
pub use repo::access_graph::{AccessGraph, GraphEdge, GraphNode};
pub use repo::applications::{
    ApplicationFilter, ApplicationPatch, NewApplication, OAuthClientPatch,
};
pub use repo::integrations::{IntegrationPatch, NewIntegration};
pub use repo::keys::StoredSigningKey;
pub use repo::oauth::{AuthorizationCode, AuthorizationRequest, RefreshToken, RegisteredClient};
pub use repo::policies::{NewPolicy, PolicyPatch};
pub use repo::sessions::{NewAgentSession, SessionFilter};
pub use repo::traces::{EventFilter, PurgeBatch, ToolStat, TraceStats, TraceSummary};
pub use repo::upstream_oauth::{FlowState, OAuthConnection, OAuthTokens};
pub use repo::users::ServiceAccountCredentials;
pub use vault::{Kek, Purpose, SealContext, Vault, VaultError};

use std::sync::Arc;

/// The database and the vault, shared by every component that persists anything.
#[derive(Clone)]
pub struct Store {
    db: Db,
    vault: Arc<Vault>,
    generation: changes::Generation,
    /// Moves when an MCP session ends (`changes`).
    ended_sessions: changes::Generation,
    /// The trace contexts this process wrote events of lately (`repo::trace_rows`).
    trace_contexts: Arc<repo::trace_rows::ContextCache>,
}

impl Store {
    pub fn new(db: Db, vault: Vault) -> Self {
        Self {
            db,
            vault: Arc::new(vault),
            generation: changes::Generation::default(),
            ended_sessions: changes::Generation::default(),
            trace_contexts: Arc::default(),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        self.db.ping().await
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
