//! Change notification for caches: a generation number that moves whenever something a cache
//! may hold changes (applications, integrations, attachments, connections, sessions, revoked
//! tokens). On PostgreSQL every write also `NOTIFY`s, and every replica's listener moves its
//! own generation, so caches everywhere drop stale entries within milliseconds. On SQLite the
//! process is the only writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::{Backend, Store};

pub(crate) const CHANNEL: &str = "keygate_changes";

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

    /// Records a change: here at once, and on PostgreSQL on every replica.
    pub(crate) async fn changed(&self) {
        self.generation.bump();
        if self.db.backend() == Backend::Postgres {
            let notify = sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL);
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
        let generation = self.generation.clone();
        tokio::spawn(async move {
            loop {
                match PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if listener.listen(CHANNEL).await.is_ok() {
                            generation.bump();
                            while listener.recv().await.is_ok() {
                                generation.bump();
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "change listener cannot connect"),
                }
                generation.bump();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
