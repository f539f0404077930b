-- Cedar tool policies, per organization. The gateway decides with the enabled ones; an
-- organization without any enabled policy keeps the default of allowing every call.
CREATE TABLE policies (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations (id),
    name         TEXT NOT NULL,
    description  TEXT NOT NULL,
    enabled      BIGINT NOT NULL,
    text         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE INDEX policies_org ON policies (org_id, id);
