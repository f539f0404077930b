//! Agent sessions: one per authorization grant an agent holds.

use keygate_core::model::{AgentSession, DerivedSessionStatus, SessionStatus};
use keygate_core::{AgentSessionId, ApplicationId, OrgId, Timestamp, UserId};
use sqlx::{Any, Transaction};

use super::{RowExt, to_json};
use crate::sql::Sql;
use crate::{Result, Store, StoreError};

/// What the authorization server knows when it creates a session.
pub struct NewAgentSession {
    pub application_id: ApplicationId,
    pub user_id: Option<UserId>,
    pub agent_id: Option<String>,
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub user_agent: Option<String>,
    pub client_info: Option<serde_json::Value>,
    pub token_expires_at: Option<Timestamp>,
}

/// Which sessions to list.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionFilter {
    pub limit: u32,
    pub status: Option<DerivedSessionStatus>,
    /// Include expired and disconnected sessions.
    pub include_inactive: bool,
    /// Only this user's sessions.
    pub user: Option<UserId>,
}

const COLUMNS: &str = "id, org_id, application_id, user_id, agent_id, name, status, hostname, \
    user_agent, client_info, token_expires_at, last_active_at, connected_at, disconnected_at, \
    created_at";

fn session(row: &sqlx::any::AnyRow) -> Result<AgentSession> {
    Ok(AgentSession {
        id: row.id("id")?,
        org_id: row.id("org_id")?,
        application_id: row.id("application_id")?,
        user_id: row.opt_id("user_id")?,
        agent_id: row.opt_text("agent_id")?,
        name: row.opt_text("name")?,
        status: row.wire("status", SessionStatus::parse)?,
        hostname: row.opt_text("hostname")?,
        user_agent: row.opt_text("user_agent")?,
        client_info: row.opt_json("client_info")?,
        token_expires_at: row.opt_ts("token_expires_at")?,
        last_active_at: row.opt_ts("last_active_at")?,
        connected_at: row.opt_ts("connected_at")?,
        disconnected_at: row.opt_ts("disconnected_at")?,
        created_at: row.ts("created_at")?,
    })
}

impl Store {
    pub async fn create_agent_session(
        &self,
        org: OrgId,
        new: NewAgentSession,
    ) -> Result<AgentSession> {
        let id = AgentSessionId::new();
        let now = Timestamp::now().millis();
        let mut sql = Sql::new("INSERT INTO agent_sessions (");
        sql.push(COLUMNS)
            .push(") VALUES (")
            .bind(id.to_string())
            .push(", ");
        sql.bind(org.to_string())
            .push(", ")
            .bind(new.application_id.to_string())
            .push(", ");
        sql.bind(new.user_id.map(|u| u.to_string()))
            .push(", ")
            .bind(new.agent_id)
            .push(", ");
        sql.bind(new.name)
            .push(", 'active', ")
            .bind(new.hostname)
            .push(", ");
        sql.bind(new.user_agent)
            .push(", ")
            .bind(new.client_info.as_ref().map(to_json));
        sql.push(", ")
            .bind(new.token_expires_at.map(|t| t.millis()))
            .push(", ")
            .bind(now);
        sql.push(", NULL, NULL, ").bind(now).push(")");
        sql.query().execute(self.db.pool()).await?;
        self.get_agent_session(org, new.application_id, id).await
    }

    pub async fn get_agent_session(
        &self,
        org: OrgId,
        app: ApplicationId,
        id: AgentSessionId,
    ) -> Result<AgentSession> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM agent_sessions WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND application_id = ")
            .bind(app.to_string())
            .push(" AND id = ");
        sql.bind(id.to_string());
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        session(&row)
    }

    /// Every session of an application, newest first.
    pub async fn all_agent_sessions(
        &self,
        org: OrgId,
        app: ApplicationId,
    ) -> Result<Vec<AgentSession>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM agent_sessions WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND application_id = ")
            .bind(app.to_string())
            .push(" ORDER BY id DESC");
        sql.query()
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(session)
            .collect()
    }

    /// Sessions of an application filtered by derived status, newest first.
    pub async fn list_agent_sessions(
        &self,
        org: OrgId,
        app: ApplicationId,
        filter: SessionFilter,
        now: Timestamp,
    ) -> Result<Vec<AgentSession>> {
        let sessions = self.all_agent_sessions(org, app).await?;
        Ok(sessions
            .into_iter()
            .filter(|s| filter.user.is_none_or(|u| s.user_id == Some(u)))
            .filter(|s| {
                let derived = s.derived_status(now);
                match filter.status {
                    Some(wanted) => derived == wanted,
                    None => {
                        filter.include_inactive
                            || matches!(
                                derived,
                                DerivedSessionStatus::Active | DerivedSessionStatus::Idle
                            )
                    }
                }
            })
            .take(filter.limit as usize)
            .collect())
    }

    /// Disconnects every session of an application (only `user`'s, when given); returns how
    /// many were still connected.
    pub async fn revoke_agent_sessions(
        &self,
        org: OrgId,
        app: ApplicationId,
        user: Option<UserId>,
    ) -> Result<u64> {
        let mut tx = self.db.pool().begin().await?;
        let n = disconnect(&mut tx, org, app, user, Timestamp::now().millis()).await?;
        tx.commit().await?;
        self.changed().await;
        Ok(n)
    }
}

pub(crate) async fn disconnect_all(
    tx: &mut Transaction<'_, Any>,
    org: OrgId,
    app: ApplicationId,
    now: i64,
) -> Result<u64> {
    disconnect(tx, org, app, None, now).await
}

async fn disconnect(
    tx: &mut Transaction<'_, Any>,
    org: OrgId,
    app: ApplicationId,
    user: Option<UserId>,
    now: i64,
) -> Result<u64> {
    let mut sql = Sql::new("UPDATE agent_sessions SET status = 'disconnected', disconnected_at = ");
    sql.bind(now).push(" WHERE org_id = ").bind(org.to_string());
    sql.push(" AND application_id = ")
        .bind(app.to_string())
        .push(" AND status = 'active'");
    if let Some(user) = user {
        sql.push(" AND user_id = ").bind(user.to_string());
    }
    Ok(sql.query().execute(&mut **tx).await?.rows_affected())
}
