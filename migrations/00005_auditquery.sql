-- +goose Up

-- Audit queries (internal/audit/query.go). Filters on a run — its service,
-- its command, how it ended, who gave a verdict on it — are answered from
-- the log itself: each reads the one kind of event that says it, through a
-- small partial index of those events, and selects the run's events by
-- run_id. The functions say where in an event's data each fact is; the
-- indexes are on exactly these expressions, so a query must use them.

-- The service filter a run was submitted with: data.service_filter, or
-- data.service in events written before it had that name.
-- +goose StatementBegin
CREATE FUNCTION rexec_audit_service(data jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT nullif(coalesce(data ->> 'service_filter', data ->> 'service'), '') $$;
-- +goose StatementEnd

-- A JSON string, or the elements of a JSON array joined by spaces.
-- +goose StatementBegin
CREATE FUNCTION rexec_audit_words(v jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT CASE jsonb_typeof(v)
        WHEN 'string' THEN v #>> '{}'
        WHEN 'array' THEN (SELECT string_agg(w, ' ' ORDER BY n) FROM jsonb_array_elements_text(v) WITH ORDINALITY AS a (w, n))
    END $$;
-- +goose StatementEnd

-- The command line a run was submitted with: data.command (the argv
-- joined), or the argv of events written before there was one.
-- +goose StatementBegin
CREATE FUNCTION rexec_audit_command(data jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT coalesce(rexec_audit_words(data -> 'command'), rexec_audit_words(data -> 'argv'), '') $$;
-- +goose StatementEnd

-- The state a run ended in, from its final event.
-- +goose StatementBegin
CREATE FUNCTION rexec_audit_final_state(type text, data jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE type
        WHEN 'run.finished' THEN data ->> 'state'
        WHEN 'run.cancelled' THEN 'cancelled'
        WHEN 'run.denied' THEN 'denied'
        WHEN 'run.expired' THEN 'expired'
    END $$;
-- +goose StatementEnd

-- Substrings of commands, in any case: trigrams. pg_trgm is a trusted
-- extension (PostgreSQL 13+): the database's owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE INDEX audit_events_submitted_service ON audit_events (tenant_id, rexec_audit_service(data), run_id)
    WHERE type = 'run.submitted';
CREATE INDEX audit_events_submitted_command ON audit_events USING gin (rexec_audit_command(data) gin_trgm_ops)
    WHERE type = 'run.submitted';
CREATE INDEX audit_events_final_state ON audit_events (tenant_id, rexec_audit_final_state(type, data), run_id)
    WHERE type IN ('run.finished', 'run.cancelled', 'run.denied', 'run.expired');
CREATE INDEX audit_events_verdicts ON audit_events (tenant_id, actor, run_id)
    WHERE type IN ('approval.given', 'approval.refused');

-- +goose Down
DROP INDEX audit_events_verdicts;
DROP INDEX audit_events_final_state;
DROP INDEX audit_events_submitted_command;
DROP INDEX audit_events_submitted_service;
DROP FUNCTION rexec_audit_final_state;
DROP FUNCTION rexec_audit_command;
DROP FUNCTION rexec_audit_words;
DROP FUNCTION rexec_audit_service;
DROP EXTENSION IF EXISTS pg_trgm;
