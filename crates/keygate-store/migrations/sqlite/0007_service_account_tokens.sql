-- The access tokens issued to each service account (client_credentials) until they expire, so
-- rotating its secret can revoke them (into revoked_tokens) at once, on every replica.
CREATE TABLE service_account_tokens (
    jti                 TEXT PRIMARY KEY,
    service_account_id  TEXT NOT NULL REFERENCES service_accounts (id),
    expires_at          BIGINT NOT NULL
);
CREATE INDEX service_account_tokens_account ON service_account_tokens (service_account_id);
