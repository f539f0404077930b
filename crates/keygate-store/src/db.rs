//! The connection pool, on either backend.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

use crate::{Result, StoreError};

/// Which database the pool talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How long opening the database waits for its first connection. The pool, once open, waits
/// longer for a connection under load; at startup an unreachable server should fail fast.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One connection, bounded by [`CONNECT_TIMEOUT`], before the pool opens: its error names
/// where and why (refused, unknown host, bad password, no answer), where the pool would retry
/// until its acquire timeout and then say only that it timed out.
async fn first_connection(url: &str) -> Result<()> {
    let fail = |cause: String| StoreError::Connect {
        target: target_of(url),
        cause,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(fail(error_chain(&e))),
        Err(_) => Err(fail(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Where a database URL points, without its credentials: `host:port/name`, or the SQLite
/// file.
fn target_of(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        return path.split('?').next().unwrap_or(path).to_owned();
    }
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}{}",
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path()
        ),
        Err(_) => "the configured database.url (not a URL)".to_owned(),
    }
}

/// An error and its causes, `outer: inner: root`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
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
        first_connection(&url).await?;
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
    use super::*;

    #[test]
    fn a_connection_target_names_host_port_and_database_but_no_credentials() {
        assert_eq!(
            target_of("postgres://kg:hunter2@db.internal/keygate?sslmode=require"),
            "db.internal:5432/keygate"
        );
        assert_eq!(target_of("postgresql://[::1]:6543/x"), "[::1]:6543/x");
        assert_eq!(
            target_of("sqlite:///var/lib/keygate/keygate.db?mode=rwc"),
            "/var/lib/keygate/keygate.db"
        );
    }

    #[tokio::test]
    async fn a_refused_database_fails_at_once_naming_host_and_cause() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let started = std::time::Instant::now();
        let err = Db::connect(&format!("postgres://u:secret@127.0.0.1:{port}/kg"), 2)
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < CONNECT_TIMEOUT, "{err}");
        assert!(
            err.contains(&format!("at 127.0.0.1:{port}/kg: ")) && err.contains("refused"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_database_fails_after_the_connect_timeout() {
        // Accepts the connection and never answers the startup message.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                open.push(sock);
            }
        });
        let started = std::time::Instant::now();
        let err = Db::connect(&format!("postgres://u@127.0.0.1:{port}/kg"), 2)
            .await
            .unwrap_err()
            .to_string();
        let took = started.elapsed();
        held.abort();
        assert!(
            took < CONNECT_TIMEOUT + std::time::Duration::from_secs(1),
            "{took:?}"
        );
        assert!(
            err.contains(&format!("127.0.0.1:{port}/kg")) && err.contains("no answer within 3 s"),
            "{err}"
        );
    }
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
            (
                include_str!("../migrations/sqlite/0008_mcp_session_revocations.sql"),
                include_str!("../migrations/postgres/0008_mcp_session_revocations.sql"),
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
