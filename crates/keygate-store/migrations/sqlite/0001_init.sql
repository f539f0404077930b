-- keygate schema. Ids are UUID text, timestamps epoch milliseconds (BIGINT), booleans 0/1,
-- JSON documents TEXT, sealed secrets BLOB (see keygate-store/src/vault.rs).
-- Keep in step with ../postgres/0001_init.sql: only the BLOB/BYTEA spelling differs.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES organizations (id),
    email          TEXT NOT NULL,
    password_hash  TEXT,
    role           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    disabled_at    BIGINT,
    UNIQUE (org_id, email)
);

CREATE TABLE service_accounts (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    name            TEXT NOT NULL,
    description     TEXT,
    acting_user_id  TEXT REFERENCES users (id),
    secret_hash     TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    archived_at     BIGINT
);
CREATE INDEX service_accounts_org ON service_accounts (org_id, id);

CREATE TABLE applications (
    id                  TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL REFERENCES organizations (id),
    name                TEXT NOT NULL,
    owner_user_id       TEXT REFERENCES users (id),
    client_type         TEXT NOT NULL,
    client_secret_hash  TEXT,
    redirect_uris       TEXT NOT NULL,
    pkce_required       BIGINT NOT NULL,
    scopes              TEXT NOT NULL,
    allowed_resources   TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    archived_at         BIGINT
);
CREATE INDEX applications_org ON applications (org_id, id);

CREATE TABLE integrations (
    id                   TEXT PRIMARY KEY,
    org_id               TEXT NOT NULL REFERENCES organizations (id),
    name                 TEXT NOT NULL,
    slug                 TEXT NOT NULL,
    url                  TEXT NOT NULL,
    category             TEXT NOT NULL,
    auth_mode            TEXT NOT NULL,
    oauth                TEXT,
    oauth_client_secret  BLOB,
    capabilities         TEXT,
    credential_schema    TEXT,
    server_token         BLOB,
    validation_status    TEXT NOT NULL,
    validation_message   TEXT,
    last_validated_at    BIGINT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    archived_at          BIGINT,
    UNIQUE (org_id, slug)
);
CREATE INDEX integrations_org ON integrations (org_id, id);

CREATE TABLE application_integrations (
    application_id  TEXT NOT NULL REFERENCES applications (id),
    integration_id  TEXT NOT NULL REFERENCES integrations (id),
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (application_id, integration_id)
);
CREATE INDEX application_integrations_integration ON application_integrations (integration_id);

CREATE TABLE connections (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    integration_id  TEXT NOT NULL REFERENCES integrations (id),
    user_id         TEXT NOT NULL REFERENCES users (id),
    kind            TEXT NOT NULL,
    credential      BLOB NOT NULL,
    refresh_token   BLOB,
    expires_at      BIGINT,
    display_name    TEXT,
    status          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (integration_id, user_id)
);

CREATE TABLE agent_sessions (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES organizations (id),
    application_id    TEXT NOT NULL REFERENCES applications (id),
    user_id           TEXT REFERENCES users (id),
    agent_id          TEXT,
    name              TEXT,
    status            TEXT NOT NULL,
    hostname          TEXT,
    user_agent        TEXT,
    client_info       TEXT,
    token_expires_at  BIGINT,
    last_active_at    BIGINT,
    connected_at      BIGINT,
    disconnected_at   BIGINT,
    created_at        BIGINT NOT NULL
);
CREATE INDEX agent_sessions_app ON agent_sessions (application_id, id);

CREATE TABLE trace_events (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES organizations (id),
    created_at        BIGINT NOT NULL,
    trace_id          TEXT NOT NULL,
    session_id        TEXT NOT NULL,
    agent_session_id  TEXT,
    application_id    TEXT NOT NULL,
    user_id           TEXT,
    event_type        TEXT NOT NULL,
    status            TEXT NOT NULL,
    duration_ms       BIGINT NOT NULL,
    integration_id    TEXT,
    tool_name         TEXT,
    error_message     TEXT,
    bytes_in          BIGINT NOT NULL,
    bytes_out         BIGINT NOT NULL,
    request_json      TEXT,
    response_json     TEXT
);
CREATE INDEX trace_events_org_time ON trace_events (org_id, created_at);
CREATE INDEX trace_events_trace ON trace_events (trace_id, created_at);

-- Vault data keys, each wrapped (AES-256-GCM) by the key-encryption key named by kek_id.
CREATE TABLE data_keys (
    id          TEXT PRIMARY KEY,
    kek_id      TEXT NOT NULL,
    wrapped     BLOB NOT NULL,
    created_at  BIGINT NOT NULL
);

-- JWT signing keys; the private half is sealed by the vault.
CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    private_key  BLOB NOT NULL,
    public_jwk   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT
);
