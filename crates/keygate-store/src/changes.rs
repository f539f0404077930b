//! Change notification for caches: a generation number that moves whenever something a cache
//! may hold changes (applications, integrations, attachments, connections, sessions, revoked
//! tokens). On PostgreSQL every write also `NOTIFY`s, and every replica's listener moves its
//! own generation, so caches everywhere drop stale entries within milliseconds. On SQLite the
//! process is the only writer.
//!
//! Ended MCP sessions move a generation of their own ([`Store::ended_sessions_generation`],
//! notified with the payload [`ENDED_SESSIONS`]): a client closes its session far more often
//! than anything above changes, and that must not retire every other cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::{Backend, Store};

pub(crate) const CHANNEL: &str = "keygate_changes";
/// The notification payload of an ended MCP session (every other change sends none).
const ENDED_SESSIONS: &str = "ended_mcp_sessions";

/// The current generation; shared by clones of a `Store`.
#[derive(Clone, Debug, Default)]
pub struct Generation(Arc<AtomicU64>);

impl Generation {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl Store {
    /// The change generation caches compare against.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// The generation the cache of ended MCP sessions compares against.
    pub fn ended_sessions_generation(&self) -> u64 {
        self.ended_sessions.get()
    }

    /// Records a change: here at once, and on PostgreSQL on every replica.
    pub(crate) async fn changed(&self) {
        self.generation.bump();
        self.notify("").await;
    }

    /// Records that an MCP session ended: here at once, and on PostgreSQL on every replica.
    pub(crate) async fn session_ended(&self) {
        self.ended_sessions.bump();
        self.notify(ENDED_SESSIONS).await;
    }

    async fn notify(&self, payload: &str) {
        if self.db.backend() == Backend::Postgres {
            let notify = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload);
            if let Err(e) = notify.execute(self.db.pool()).await {
                tracing::warn!(error = %e, "could not notify other replicas of a change");
            }
        }
    }

    /// On PostgreSQL, follows other replicas' changes until the process ends. A lost listener
    /// connection moves the generation (anything may have changed meanwhile) and reconnects.
    pub fn spawn_change_listener(&self, url: String) {
        if self.db.backend() != Backend::Postgres {
            return;
        }
        let (generation, ended) = (self.generation.clone(), self.ended_sessions.clone());
        // Anything may have changed while the listener was away.
        let everything = {
            let (generation, ended) = (generation.clone(), ended.clone());
            move || {
                generation.bump();
                ended.bump();
            }
        };
        tokio::spawn(async move {
            loop {
                match PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if listener.listen(CHANNEL).await.is_ok() {
                            everything();
                            while let Ok(n) = listener.recv().await {
                                if n.payload() == ENDED_SESSIONS {
                                    ended.bump();
                                } else {
                                    generation.bump();
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "change listener cannot connect"),
                }
                everything();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
