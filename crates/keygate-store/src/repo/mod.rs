//! Repositories: one file per aggregate, each an `impl Store` block. Every query is scoped by
//! organization.

pub mod access_graph;
pub mod applications;
pub mod connections;
pub mod integrations;
pub mod keys;
pub mod mcp_sessions;
pub mod oauth;
pub mod policies;
pub mod sessions;
pub(crate) mod trace_rows;
pub mod traces;
pub mod upstream_oauth;
pub mod users;

use std::str::FromStr;

use keygate_core::Timestamp;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, StoreError};

/// Typed column readers: a bad value is a corrupt row, never a panic.
pub(crate) trait RowExt {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn blob(&self, col: &str) -> Result<Option<Vec<u8>>>;

    fn id<T: FromStr>(&self, col: &str) -> Result<T> {
        self.text(col)?
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("{col} is not an id")))
    }
    fn opt_id<T: FromStr>(&self, col: &str) -> Result<Option<T>> {
        self.opt_text(col)?
            .map(|s| {
                s.parse()
                    .map_err(|_| StoreError::Corrupt(format!("{col} is not an id")))
            })
            .transpose()
    }
    fn ts(&self, col: &str) -> Result<Timestamp> {
        Ok(Timestamp::from_millis(self.int(col)?))
    }
    fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>> {
        Ok(self.opt_int(col)?.map(Timestamp::from_millis))
    }
    fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.int(col)? != 0)
    }
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        serde_json::from_str(&self.text(col)?)
            .map_err(|_| StoreError::Corrupt(format!("{col} is not valid JSON")))
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>> {
        self.opt_text(col)?
            .map(|s| {
                serde_json::from_str(&s)
                    .map_err(|_| StoreError::Corrupt(format!("{col} is not valid JSON")))
            })
            .transpose()
    }
    fn wire<T>(&self, col: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
        let v = self.text(col)?;
        parse(&v).ok_or_else(|| StoreError::Corrupt(format!("{col} has unknown value {v:?}")))
    }
}

impl RowExt for AnyRow {
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn blob(&self, col: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get(col)?)
    }
}

/// Serializes a value for a JSON column.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializing plain data cannot fail")
}
