//! The connection pool, on either backend.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::Result;

/// Which database the pool talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A pool of connections to SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Db {
    /// Connects to `sqlite://PATH` (created if missing, WAL mode) or `postgres://…`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        let url = match backend {
            Backend::Sqlite => {
                options = options.after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(sqlx::raw_sql(
                            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                             PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                        ))
                        .await?;
                        Ok(())
                    })
                });
                if url.contains('?') {
                    url.to_owned()
                } else {
                    format!("{url}?mode=rwc")
                }
            }
            Backend::Postgres => url.to_owned(),
        };
        let pool = options.connect(&url).await?;
        Ok(Self { pool, backend })
    }

    /// Applies pending migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    /// The two dialects' schemas are one schema: only the binary column type is spelled
    /// differently.
    #[test]
    fn migrations_stay_in_step() {
        let pairs = [
            (
                include_str!("../migrations/sqlite/0001_init.sql"),
                include_str!("../migrations/postgres/0001_init.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0002_oauth.sql"),
                include_str!("../migrations/postgres/0002_oauth.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0003_connect_sessions.sql"),
                include_str!("../migrations/postgres/0003_connect_sessions.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0004_upstream_oauth.sql"),
                include_str!("../migrations/postgres/0004_upstream_oauth.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0005_forward_headers.sql"),
                include_str!("../migrations/postgres/0005_forward_headers.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0006_token_version.sql"),
                include_str!("../migrations/postgres/0006_token_version.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0007_service_account_tokens.sql"),
                include_str!("../migrations/postgres/0007_service_account_tokens.sql"),
            ),
        ];
        let body = |s: &str| -> String {
            s.lines()
                .filter(|l| !l.starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        for (sqlite, postgres) in pairs {
            assert_eq!(body(sqlite).replace("BLOB", "BYTEA"), body(postgres));
        }
    }
}
