//! Store errors. `NotFound` and `Conflict` are the caller's to map; the rest are faults.

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database could not be reached when it was opened; `target` is where it was looked
    /// for (`host:port/name` or the SQLite file, never credentials).
    #[error("cannot connect to the database at {target}: {cause}")]
    Connect { target: String, cause: String },
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Maps a unique-constraint violation to `Conflict`, anything else to `Database`.
    pub(crate) fn from_insert(err: sqlx::Error, what: &str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(what.to_owned())
            }
            _ => StoreError::Database(err),
        }
    }
}
