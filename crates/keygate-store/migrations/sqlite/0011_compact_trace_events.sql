-- Compact trace storage. An event was 531 bytes on SQLite (ids as 36-character text, the
-- session's ids repeated on every row, three indexes); now:
-- - what stays the same for every event of one session (organization, trace, session, agent
--   session, application, user) is one row of trace_contexts, which events point to by a small
--   integer; absent agent session or user is '' there, so the UNIQUE constraint holds;
-- - event ids (UUID v7) are 16 bytes, as are integration ids and OpenTelemetry trace ids (span
--   ids 8); a malformed OpenTelemetry id is not kept;
-- - the method and status are small integer codes (repo/traces.rs lists them); one outside the
--   lists is code 0 with its text in event_type_text / status_text;
-- - the primary key (time-ordered ids) is the only per-event index besides context_id: paging,
--   the live tail, time windows and retention all walk it (ids follow write time).
-- Existing events are migrated.

CREATE TABLE trace_contexts (
    id                INTEGER PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES organizations (id),
    trace_id          TEXT NOT NULL,
    session_id        TEXT NOT NULL,
    agent_session_id  TEXT NOT NULL,
    application_id    TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    UNIQUE (org_id, trace_id, session_id, agent_session_id, application_id, user_id)
);

INSERT INTO trace_contexts (org_id, trace_id, session_id, agent_session_id, application_id,
                            user_id, created_at)
SELECT org_id, trace_id, session_id, COALESCE(agent_session_id, ''), application_id,
       COALESCE(user_id, ''), MIN(created_at)
FROM trace_events
GROUP BY org_id, trace_id, session_id, COALESCE(agent_session_id, ''), application_id,
         COALESCE(user_id, '');

CREATE TABLE trace_events_compact (
    id               BLOB PRIMARY KEY,
    context_id       INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    bytes_in         INTEGER NOT NULL,
    bytes_out        INTEGER NOT NULL,
    event_type       INTEGER NOT NULL,
    status           INTEGER NOT NULL,
    integration_id   BLOB,
    tool_name        TEXT,
    otel_trace_id    BLOB,
    otel_span_id     BLOB,
    error_message    TEXT,
    event_type_text  TEXT,
    status_text      TEXT,
    request_json     TEXT,
    response_json    TEXT
) WITHOUT ROWID;

INSERT INTO trace_events_compact
SELECT unhex(replace(e.id, '-', '')), c.id, e.created_at, e.duration_ms, e.bytes_in, e.bytes_out,
       CASE e.event_type WHEN 'initialize' THEN 1 WHEN 'ping' THEN 2 WHEN 'tools/list' THEN 3 WHEN 'tools/call' THEN 4 WHEN 'resources/list' THEN 5 WHEN 'resources/read' THEN 6 WHEN 'resources/templates/list' THEN 7 WHEN 'resources/subscribe' THEN 8 WHEN 'resources/unsubscribe' THEN 9 WHEN 'prompts/list' THEN 10 WHEN 'prompts/get' THEN 11 WHEN 'completion/complete' THEN 12 WHEN 'logging/setLevel' THEN 13 WHEN 'notifications/initialized' THEN 14 WHEN 'notifications/cancelled' THEN 15 WHEN 'notifications/progress' THEN 16 WHEN 'notifications/roots/list_changed' THEN 17 WHEN 'roots/list' THEN 18 WHEN 'sampling/createMessage' THEN 19 WHEN 'elicitation/create' THEN 20 ELSE 0 END,
       CASE e.status WHEN 'ok' THEN 1 WHEN 'warn' THEN 2 WHEN 'error_remote' THEN 3 WHEN 'error_proxy' THEN 4 WHEN 'error_auth' THEN 5 WHEN 'denied' THEN 6 ELSE 0 END,
       unhex(replace(e.integration_id, '-', '')), e.tool_name,
       CASE WHEN length(e.otel_trace_id) = 32 THEN unhex(e.otel_trace_id) END,
       CASE WHEN length(e.otel_span_id) = 16 THEN unhex(e.otel_span_id) END,
       e.error_message,
       CASE WHEN e.event_type IN ('initialize', 'ping', 'tools/list', 'tools/call', 'resources/list', 'resources/read', 'resources/templates/list', 'resources/subscribe', 'resources/unsubscribe', 'prompts/list', 'prompts/get', 'completion/complete', 'logging/setLevel', 'notifications/initialized', 'notifications/cancelled', 'notifications/progress', 'notifications/roots/list_changed', 'roots/list', 'sampling/createMessage', 'elicitation/create') THEN NULL ELSE e.event_type END,
       CASE WHEN e.status IN ('ok', 'warn', 'error_remote', 'error_proxy', 'error_auth', 'denied') THEN NULL ELSE e.status END,
       e.request_json, e.response_json
FROM trace_events e
JOIN trace_contexts c ON c.org_id = e.org_id AND c.trace_id = e.trace_id
    AND c.session_id = e.session_id AND c.agent_session_id = COALESCE(e.agent_session_id, '')
    AND c.application_id = e.application_id AND c.user_id = COALESCE(e.user_id, '');

DROP TABLE trace_events;
ALTER TABLE trace_events_compact RENAME TO trace_events;
CREATE INDEX trace_events_context ON trace_events (context_id);
