//! The authorization server's state. Codes, refresh tokens and browser-session ids are stored
//! only as hashes (the caller hashes; this module never sees the plaintext).

use keygate_core::{AgentSessionId, ApplicationId, OrgId, Timestamp, UserId};

use super::{RowExt, to_json};
use crate::sql::Sql;
use crate::{Result, Store, StoreError};

/// A dynamically registered client.
#[derive(Clone, Debug)]
pub struct RegisteredClient {
    pub client_id: String,
    pub name: Option<String>,
    pub redirect_uris: Vec<String>,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    pub auth_method: String,
    pub secret_hash: Option<String>,
    pub metadata: serde_json::Value,
    pub created_at: Timestamp,
}

/// What `/oauth2/authorize` validated, waiting for the user to log in and consent.
#[derive(Clone, Debug)]
pub struct AuthorizationRequest {
    pub id: String,
    /// Known up front when the resource is an application's; else set by the login.
    pub org_id: Option<OrgId>,
    /// `None` for the first-party client's management API logins.
    pub application_id: Option<ApplicationId>,
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub resource: String,
    pub expires_at: Timestamp,
}

/// An issued authorization code (by hash).
#[derive(Clone, Debug)]
pub struct AuthorizationCode {
    pub org_id: OrgId,
    pub application_id: Option<ApplicationId>,
    pub client_id: String,
    pub user_id: UserId,
    pub redirect_uri: String,
    pub scope: String,
    pub code_challenge: Option<String>,
    pub resource: String,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
    /// The session created when the code was redeemed (revoked if the code is replayed).
    pub session_id: Option<AgentSessionId>,
}

/// A refresh token (by hash).
#[derive(Clone, Debug)]
pub struct RefreshToken {
    pub session_id: AgentSessionId,
    pub org_id: OrgId,
    pub client_id: String,
    pub user_id: UserId,
    pub scope: String,
    pub resource: String,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
}

impl Store {
    pub async fn insert_registered_client(&self, c: &RegisteredClient) -> Result<()> {
        let mut sql = Sql::new(
            "INSERT INTO oauth_clients (client_id, name, redirect_uris, auth_method, secret_hash, metadata, created_at) VALUES (",
        );
        sql.bind(c.client_id.clone())
            .push(", ")
            .bind(c.name.clone())
            .push(", ");
        sql.bind(to_json(&c.redirect_uris))
            .push(", ")
            .bind(c.auth_method.clone())
            .push(", ");
        sql.bind(c.secret_hash.clone())
            .push(", ")
            .bind(to_json(&c.metadata))
            .push(", ");
        sql.bind(c.created_at.millis()).push(")");
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    pub async fn registered_client(&self, client_id: &str) -> Result<RegisteredClient> {
        let mut sql = Sql::new(
            "SELECT client_id, name, redirect_uris, auth_method, secret_hash, metadata, created_at \
             FROM oauth_clients WHERE client_id = ",
        );
        sql.bind(client_id);
        let r = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(RegisteredClient {
            client_id: r.text("client_id")?,
            name: r.opt_text("name")?,
            redirect_uris: r.json("redirect_uris")?,
            auth_method: r.text("auth_method")?,
            secret_hash: r.opt_text("secret_hash")?,
            metadata: r.json("metadata")?,
            created_at: r.ts("created_at")?,
        })
    }

    pub async fn insert_authorization_request(&self, r: &AuthorizationRequest) -> Result<()> {
        let mut sql = Sql::new(
            "INSERT INTO authorization_requests (id, org_id, application_id, client_id, redirect_uri, \
             scope, state, code_challenge, resource, created_at, expires_at) VALUES (",
        );
        sql.bind(r.id.clone())
            .push(", ")
            .bind(r.org_id.map(|o| o.to_string()))
            .push(", ");
        sql.bind(r.application_id.map(|a| a.to_string())).push(", ");
        sql.bind(r.client_id.clone()).push(", ");
        sql.bind(r.redirect_uri.clone())
            .push(", ")
            .bind(r.scope.clone())
            .push(", ");
        sql.bind(r.state.clone())
            .push(", ")
            .bind(r.code_challenge.clone())
            .push(", ");
        sql.bind(r.resource.clone())
            .push(", ")
            .bind(Timestamp::now().millis())
            .push(", ");
        sql.bind(r.expires_at.millis()).push(")");
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// A pending request that has not expired.
    pub async fn authorization_request(&self, id: &str) -> Result<AuthorizationRequest> {
        let mut sql = Sql::new(
            "SELECT id, org_id, application_id, client_id, redirect_uri, scope, state, \
             code_challenge, resource, expires_at FROM authorization_requests WHERE id = ",
        );
        sql.bind(id)
            .push(" AND expires_at > ")
            .bind(Timestamp::now().millis());
        let r = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(AuthorizationRequest {
            id: r.text("id")?,
            org_id: r.opt_id("org_id")?,
            application_id: r.opt_id("application_id")?,
            client_id: r.text("client_id")?,
            redirect_uri: r.text("redirect_uri")?,
            scope: r.text("scope")?,
            state: r.opt_text("state")?,
            code_challenge: r.opt_text("code_challenge")?,
            resource: r.text("resource")?,
            expires_at: r.ts("expires_at")?,
        })
    }

    /// Turns a pending request into a code, once: the request row is deleted in the same
    /// transaction, so a double submit yields one code.
    pub async fn issue_authorization_code(
        &self,
        request_id: &str,
        org: OrgId,
        user: UserId,
        code_hash: &str,
        ttl_secs: i64,
    ) -> Result<AuthorizationRequest> {
        let request = self.authorization_request(request_id).await?;
        let mut tx = self.db.pool().begin().await?;
        let mut sql = Sql::new("DELETE FROM authorization_requests WHERE id = ");
        sql.bind(request_id);
        if sql.query().execute(&mut *tx).await?.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let mut sql = Sql::new(
            "INSERT INTO authorization_codes (code_hash, org_id, application_id, client_id, user_id, \
             redirect_uri, scope, code_challenge, resource, expires_at) VALUES (",
        );
        sql.bind(code_hash)
            .push(", ")
            .bind(org.to_string())
            .push(", ");
        sql.bind(request.application_id.map(|a| a.to_string()))
            .push(", ");
        sql.bind(request.client_id.clone());
        sql.push(", ")
            .bind(user.to_string())
            .push(", ")
            .bind(request.redirect_uri.clone());
        sql.push(", ").bind(request.scope.clone()).push(", ");
        sql.bind(request.code_challenge.clone())
            .push(", ")
            .bind(request.resource.clone());
        sql.push(", ")
            .bind(Timestamp::now().plus_seconds(ttl_secs).millis())
            .push(")");
        sql.query().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(request)
    }

    /// Marks a code used and returns it as it was before. A code that was already used comes
    /// back with `used_at` set: the caller must treat that as a replay.
    pub async fn redeem_authorization_code(&self, code_hash: &str) -> Result<AuthorizationCode> {
        let mut sql = Sql::new(
            "SELECT org_id, application_id, client_id, user_id, redirect_uri, scope, code_challenge, \
             resource, expires_at, used_at, session_id FROM authorization_codes WHERE code_hash = ",
        );
        sql.bind(code_hash);
        let r = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        let code = AuthorizationCode {
            org_id: r.id("org_id")?,
            application_id: r.opt_id("application_id")?,
            client_id: r.text("client_id")?,
            user_id: r.id("user_id")?,
            redirect_uri: r.text("redirect_uri")?,
            scope: r.text("scope")?,
            code_challenge: r.opt_text("code_challenge")?,
            resource: r.text("resource")?,
            expires_at: r.ts("expires_at")?,
            used_at: r.opt_ts("used_at")?,
            session_id: r.opt_id("session_id")?,
        };
        if code.used_at.is_none()
            && !self
                .use_once("authorization_codes", "code_hash", code_hash)
                .await?
        {
            // Lost a race with a concurrent redemption: that is a replay too.
            return Ok(AuthorizationCode {
                used_at: Some(Timestamp::now()),
                ..code
            });
        }
        Ok(code)
    }

    /// Marks a one-time credential used; `false` when it already was (another request won).
    async fn use_once(&self, table: &str, column: &str, hash: &str) -> Result<bool> {
        let mut sql = Sql::new("UPDATE ");
        sql.push(table)
            .push(" SET used_at = ")
            .bind(Timestamp::now().millis());
        sql.push(" WHERE ")
            .push(column)
            .push(" = ")
            .bind(hash)
            .push(" AND used_at IS NULL");
        Ok(sql.query().execute(self.db.pool()).await?.rows_affected() > 0)
    }

    /// Records which session a redeemed code produced.
    pub async fn set_code_session(&self, code_hash: &str, session: AgentSessionId) -> Result<()> {
        let mut sql = Sql::new("UPDATE authorization_codes SET session_id = ");
        sql.bind(session.to_string())
            .push(" WHERE code_hash = ")
            .bind(code_hash);
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    pub async fn insert_refresh_token(&self, hash: &str, t: &RefreshToken) -> Result<()> {
        let mut sql = Sql::new(
            "INSERT INTO refresh_tokens (token_hash, session_id, org_id, client_id, user_id, scope, \
             resource, created_at, expires_at) VALUES (",
        );
        sql.bind(hash)
            .push(", ")
            .bind(t.session_id.to_string())
            .push(", ");
        sql.bind(t.org_id.to_string())
            .push(", ")
            .bind(t.client_id.clone())
            .push(", ");
        sql.bind(t.user_id.to_string())
            .push(", ")
            .bind(t.scope.clone())
            .push(", ");
        sql.bind(t.resource.clone())
            .push(", ")
            .bind(Timestamp::now().millis())
            .push(", ");
        sql.bind(t.expires_at.millis()).push(")");
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// Marks a refresh token used, atomically. Returns the token as it was; `used_at` set means
    /// it had been used before (a replay).
    pub async fn use_refresh_token(&self, hash: &str) -> Result<RefreshToken> {
        let mut sql = Sql::new(
            "SELECT session_id, org_id, client_id, user_id, scope, resource, expires_at, used_at \
             FROM refresh_tokens WHERE token_hash = ",
        );
        sql.bind(hash);
        let r = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        let token = RefreshToken {
            session_id: r.id("session_id")?,
            org_id: r.id("org_id")?,
            client_id: r.text("client_id")?,
            user_id: r.id("user_id")?,
            scope: r.text("scope")?,
            resource: r.text("resource")?,
            expires_at: r.ts("expires_at")?,
            used_at: r.opt_ts("used_at")?,
        };
        if token.used_at.is_none() && !self.use_once("refresh_tokens", "token_hash", hash).await? {
            return Ok(RefreshToken {
                used_at: Some(Timestamp::now()),
                ..token
            });
        }
        Ok(token)
    }

    /// Revokes an agent session (the whole token family): it is disconnected and its refresh
    /// tokens stop working. Access tokens carrying its `sid` fail verification at once.
    pub async fn revoke_agent_session(&self, org: OrgId, session: AgentSessionId) -> Result<()> {
        let now = Timestamp::now().millis();
        let mut tx = self.db.pool().begin().await?;
        let mut sql = Sql::new("UPDATE agent_sessions SET status = 'disconnected', revoked_at = ");
        sql.bind(now)
            .push(", disconnected_at = COALESCE(disconnected_at, ")
            .bind(now);
        sql.push(") WHERE org_id = ")
            .bind(org.to_string())
            .push(" AND id = ");
        sql.bind(session.to_string());
        sql.query().execute(&mut *tx).await?;
        let mut sql = Sql::new("UPDATE refresh_tokens SET used_at = COALESCE(used_at, ");
        sql.bind(now)
            .push(") WHERE session_id = ")
            .bind(session.to_string());
        sql.query().execute(&mut *tx).await?;
        tx.commit().await?;
        self.changed().await;
        Ok(())
    }

    /// Whether tokens of this session may still be used.
    pub async fn agent_session_is_active(&self, session: AgentSessionId) -> Result<bool> {
        let mut sql = Sql::new("SELECT status FROM agent_sessions WHERE id = ");
        sql.bind(session.to_string());
        let row = sql.query().fetch_optional(self.db.pool()).await?;
        Ok(match row {
            Some(r) => r.text("status")? == "active",
            None => false,
        })
    }

    /// Records MCP activity: the session is live (connected) and active now.
    pub async fn mark_agent_session_active(
        &self,
        session: AgentSessionId,
        now: Timestamp,
    ) -> Result<()> {
        let mut sql = Sql::new("UPDATE agent_sessions SET last_active_at = ");
        sql.bind(now.millis())
            .push(", connected_at = COALESCE(connected_at, ")
            .bind(now.millis());
        sql.push(") WHERE id = ")
            .bind(session.to_string())
            .push(" AND status = 'active'");
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// Extends a session's token expiry after a refresh.
    pub async fn touch_agent_session_token(
        &self,
        session: AgentSessionId,
        token_expires_at: Timestamp,
    ) -> Result<()> {
        let mut sql = Sql::new("UPDATE agent_sessions SET token_expires_at = ");
        sql.bind(token_expires_at.millis())
            .push(" WHERE id = ")
            .bind(session.to_string());
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// Whether the user already approved `scope` (or more) for this client and resource.
    pub async fn has_consent(
        &self,
        user: UserId,
        client_id: &str,
        resource: &str,
        scope: &str,
    ) -> Result<bool> {
        let mut sql = Sql::new("SELECT scope FROM consents WHERE user_id = ");
        sql.bind(user.to_string())
            .push(" AND client_id = ")
            .bind(client_id);
        sql.push(" AND resource = ").bind(resource);
        let Some(row) = sql.query().fetch_optional(self.db.pool()).await? else {
            return Ok(false);
        };
        let granted = row.text("scope")?;
        Ok(scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .all(|s| granted.split(' ').any(|g| g == s)))
    }

    pub async fn save_consent(
        &self,
        org: OrgId,
        user: UserId,
        client_id: &str,
        resource: &str,
        scope: &str,
    ) -> Result<()> {
        let mut sql = Sql::new(
            "INSERT INTO consents (org_id, user_id, client_id, resource, scope, created_at) VALUES (",
        );
        sql.bind(org.to_string())
            .push(", ")
            .bind(user.to_string())
            .push(", ")
            .bind(client_id);
        sql.push(", ")
            .bind(resource)
            .push(", ")
            .bind(scope)
            .push(", ");
        sql.bind(Timestamp::now().millis());
        sql.push(
            ") ON CONFLICT (user_id, client_id, resource) DO UPDATE SET scope = excluded.scope",
        );
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    pub async fn insert_browser_session(
        &self,
        id_hash: &str,
        org: OrgId,
        user: UserId,
        expires_at: Timestamp,
    ) -> Result<()> {
        let mut sql = Sql::new(
            "INSERT INTO browser_sessions (id_hash, org_id, user_id, created_at, expires_at) VALUES (",
        );
        sql.bind(id_hash)
            .push(", ")
            .bind(org.to_string())
            .push(", ")
            .bind(user.to_string());
        sql.push(", ")
            .bind(Timestamp::now().millis())
            .push(", ")
            .bind(expires_at.millis())
            .push(")");
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// The user of a live browser session.
    pub async fn browser_session_user(&self, id_hash: &str) -> Result<(OrgId, UserId)> {
        let mut sql = Sql::new("SELECT org_id, user_id FROM browser_sessions WHERE id_hash = ");
        sql.bind(id_hash)
            .push(" AND expires_at > ")
            .bind(Timestamp::now().millis());
        let r = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok((r.id("org_id")?, r.id("user_id")?))
    }

    /// Users with this email and their argon2 hashes: within `org` when given, else in every
    /// organization (the caller decides what an ambiguous match means).
    pub async fn users_by_email(
        &self,
        org: Option<OrgId>,
        email: &str,
    ) -> Result<Vec<(keygate_core::model::User, Option<String>)>> {
        let mut sql = Sql::new(
            "SELECT id, org_id, email, role, created_at, password_hash FROM users WHERE email = ",
        );
        sql.bind(email.trim().to_ascii_lowercase())
            .push(" AND disabled_at IS NULL");
        if let Some(org) = org {
            sql.push(" AND org_id = ").bind(org.to_string());
        }
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|r| {
                let user = keygate_core::model::User {
                    id: r.id("id")?,
                    org_id: r.id("org_id")?,
                    email: r.text("email")?,
                    role: r.wire("role", keygate_core::model::Role::parse)?,
                    created_at: r.ts("created_at")?,
                };
                Ok((user, r.opt_text("password_hash")?))
            })
            .collect()
    }

    /// Stores a connect session (by hash) for a user of an application.
    pub async fn insert_connect_session(
        &self,
        id_hash: &str,
        org: OrgId,
        app: ApplicationId,
        user: UserId,
        expires_at: Timestamp,
    ) -> Result<()> {
        let mut sql = Sql::new(
            "INSERT INTO connect_sessions (id_hash, org_id, application_id, user_id, created_at, expires_at) VALUES (",
        );
        sql.bind(id_hash)
            .push(", ")
            .bind(org.to_string())
            .push(", ")
            .bind(app.to_string());
        sql.push(", ")
            .bind(user.to_string())
            .push(", ")
            .bind(Timestamp::now().millis());
        sql.push(", ").bind(expires_at.millis()).push(")");
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// The organization, application and user of a live connect session.
    pub async fn connect_session(&self, id_hash: &str) -> Result<(OrgId, ApplicationId, UserId)> {
        let mut sql = Sql::new(
            "SELECT org_id, application_id, user_id FROM connect_sessions WHERE id_hash = ",
        );
        sql.bind(id_hash)
            .push(" AND expires_at > ")
            .bind(Timestamp::now().millis());
        let r = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok((r.id("org_id")?, r.id("application_id")?, r.id("user_id")?))
    }

    /// Uses a live connect session up: deletes it and returns its organization, application
    /// and user. Of two concurrent calls only one gets it.
    pub async fn take_connect_session(
        &self,
        id_hash: &str,
    ) -> Result<(OrgId, ApplicationId, UserId)> {
        let mut sql = Sql::new("DELETE FROM connect_sessions WHERE id_hash = ");
        sql.bind(id_hash)
            .push(" AND expires_at > ")
            .bind(Timestamp::now().millis())
            .push(" RETURNING org_id, application_id, user_id");
        let r = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok((r.id("org_id")?, r.id("application_id")?, r.id("user_id")?))
    }

    pub async fn revoke_jti(&self, jti: &str, expires_at: Timestamp) -> Result<()> {
        let mut sql = Sql::new("INSERT INTO revoked_tokens (jti, expires_at) VALUES (");
        sql.bind(jti)
            .push(", ")
            .bind(expires_at.millis())
            .push(") ON CONFLICT (jti) DO NOTHING");
        sql.query().execute(self.db.pool()).await?;
        self.changed().await;
        Ok(())
    }

    /// Whether an access token may still be used: its `jti` is not revoked and its session (if
    /// any) is active. One round trip.
    pub async fn access_token_is_live(
        &self,
        jti: &str,
        session: Option<AgentSessionId>,
    ) -> Result<bool> {
        let mut sql = Sql::new("SELECT (SELECT COUNT(*) FROM revoked_tokens WHERE jti = ");
        sql.bind(jti).push(") AS revoked, ");
        match session {
            Some(s) => {
                sql.push("(SELECT COUNT(*) FROM agent_sessions WHERE status = 'active' AND id = ");
                sql.bind(s.to_string()).push(") AS active");
            }
            None => {
                sql.push("CAST(1 AS BIGINT) AS active");
            }
        }
        let r = sql.query().fetch_one(self.db.pool()).await?;
        Ok(r.int("revoked")? == 0 && r.int("active")? > 0)
    }

    /// Deletes expired codes, requests, browser sessions and revocation entries (of tokens and
    /// of ended MCP sessions).
    pub async fn purge_expired_oauth_state(&self) -> Result<()> {
        let now = Timestamp::now().millis();
        for table in [
            "authorization_requests",
            "authorization_codes",
            "browser_sessions",
            "revoked_tokens",
            "mcp_session_revocations",
            "service_account_tokens",
            "connect_sessions",
            "upstream_oauth_states",
        ] {
            let mut sql = Sql::new("DELETE FROM ");
            // Codes are kept a while after expiry so a late replay is still recognised.
            let cutoff = if table == "authorization_codes" {
                now - 86_400_000
            } else {
                now
            };
            sql.push(table).push(" WHERE expires_at < ").bind(cutoff);
            sql.query().execute(self.db.pool()).await?;
        }
        Ok(())
    }
}
