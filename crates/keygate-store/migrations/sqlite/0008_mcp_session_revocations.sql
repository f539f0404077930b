-- Aggregated MCP sessions their client ended (DELETE) before they expired. The session id is
-- sealed and self-contained, so without this row any replica would still open it; each row
-- lives as long as the session could (its expires_at), so the table stays bounded.
CREATE TABLE mcp_session_revocations (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    expires_at  BIGINT NOT NULL
);
