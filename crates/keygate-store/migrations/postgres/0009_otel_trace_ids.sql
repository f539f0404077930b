-- The W3C trace and span ids of each event's OpenTelemetry server span, so events join the
-- spans a collector received (trace_id stays keygate's per-session grouping). Older events
-- have none.
ALTER TABLE trace_events ADD COLUMN otel_trace_id TEXT;
ALTER TABLE trace_events ADD COLUMN otel_span_id TEXT;
CREATE INDEX trace_events_otel_trace ON trace_events (otel_trace_id);
