-- Upstream OAuth: users connect their own accounts at an integration's provider.

-- An authorization request in flight toward a provider. `state` is the capability the browser
-- carries back; it is stored as a hash, bound to the user and integration, and used once. The
-- PKCE verifier (and the connect page to return to) are sealed.
CREATE TABLE upstream_oauth_states (
    state_hash      TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    integration_id  TEXT NOT NULL REFERENCES integrations (id),
    user_id         TEXT NOT NULL REFERENCES users (id),
    sealed          BLOB NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);

-- What discovery found for an integration without configured endpoints: the authorization
-- server's endpoints and the client keygate registered there (its secret sealed).
CREATE TABLE upstream_oauth_clients (
    integration_id  TEXT PRIMARY KEY REFERENCES integrations (id),
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    config          TEXT NOT NULL,
    client_secret   BLOB,
    created_at      BIGINT NOT NULL
);

-- A refresh in progress holds a lease on its connection, so replicas never race on a rotating
-- refresh token.
ALTER TABLE connections ADD COLUMN refresh_lease_until BIGINT;
ALTER TABLE connections ADD COLUMN refresh_lease_owner TEXT;
