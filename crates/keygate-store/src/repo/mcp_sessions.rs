//! Aggregated MCP sessions their client ended before they expired. The session id itself is
//! sealed and self-contained; these rows are what makes an ended one unusable on every replica.

use keygate_core::{OrgId, Timestamp};

use super::RowExt;
use crate::Result;
use crate::Store;
use crate::sql::Sql;

impl Store {
    /// Records that the session `id` of `org` ended; kept until `expires_at`, when the session
    /// could no longer be used anyway. Every replica hears of it.
    pub async fn end_mcp_session(&self, org: OrgId, id: &str, expires_at: Timestamp) -> Result<()> {
        let mut sql =
            Sql::new("INSERT INTO mcp_session_revocations (id, org_id, expires_at) VALUES (");
        sql.bind(id)
            .push(", ")
            .bind(org.to_string())
            .push(", ")
            .bind(expires_at.millis())
            .push(") ON CONFLICT (id) DO NOTHING");
        sql.query().execute(self.db.pool()).await?;
        self.session_ended().await;
        Ok(())
    }

    /// Whether the session `id` of `org` was ended.
    pub async fn mcp_session_ended(&self, org: OrgId, id: &str) -> Result<bool> {
        let mut sql = Sql::new("SELECT COUNT(*) AS n FROM mcp_session_revocations WHERE id = ");
        sql.bind(id).push(" AND org_id = ").bind(org.to_string());
        let row = sql.query().fetch_one(self.db.pool()).await?;
        Ok(row.int("n")? > 0)
    }
}
