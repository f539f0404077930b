-- The authorization server's state: registered clients, pending authorization requests,
-- one-time codes, refresh-token families, consents, browser login sessions and revoked
-- access tokens. Every secret-like value (code, refresh token, cookie) is stored as a hash.

-- Clients registered dynamically (RFC 7591). Application clients live in `applications`.
CREATE TABLE oauth_clients (
    client_id       TEXT PRIMARY KEY,
    name            TEXT,
    redirect_uris   TEXT NOT NULL,
    auth_method     TEXT NOT NULL,
    secret_hash     TEXT,
    metadata        TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);

-- An authorization request between /oauth2/authorize and the code being issued.
-- No application (and no organization until login) for the first-party client's management
-- API logins.
CREATE TABLE authorization_requests (
    id              TEXT PRIMARY KEY,
    org_id          TEXT REFERENCES organizations (id),
    application_id  TEXT REFERENCES applications (id),
    client_id       TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL,
    scope           TEXT NOT NULL,
    state           TEXT,
    code_challenge  TEXT,
    resource        TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);

CREATE TABLE authorization_codes (
    code_hash       TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    application_id  TEXT REFERENCES applications (id),
    client_id       TEXT NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (id),
    redirect_uri    TEXT NOT NULL,
    scope           TEXT NOT NULL,
    code_challenge  TEXT,
    resource        TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT,
    session_id      TEXT
);

-- Refresh tokens; a family is one agent session. Reusing a used token revokes the family.
CREATE TABLE refresh_tokens (
    token_hash      TEXT PRIMARY KEY,
    session_id      TEXT NOT NULL REFERENCES agent_sessions (id),
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    client_id       TEXT NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (id),
    scope           TEXT NOT NULL,
    resource        TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- What a user approved, per client and resource.
CREATE TABLE consents (
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    client_id   TEXT NOT NULL,
    resource    TEXT NOT NULL,
    scope       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id, resource)
);

CREATE TABLE browser_sessions (
    id_hash     TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

ALTER TABLE agent_sessions ADD COLUMN revoked_at BIGINT;
