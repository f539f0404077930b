-- Connect sessions: a short-lived capability, given to an agent's user, to open the connect page
-- (/oauth/connect?session=…) and store their credentials for an application's integrations.
-- Stored as a hash.
CREATE TABLE connect_sessions (
    id_hash         TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    application_id  TEXT NOT NULL REFERENCES applications (id),
    user_id         TEXT NOT NULL REFERENCES users (id),
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);
