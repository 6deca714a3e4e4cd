-- +goose NO TRANSACTION
-- +goose Up

-- Audit queries (internal/audit/query.go, where the plans they serve are
-- described).
--
-- The indexes are built CONCURRENTLY, so that a large log keeps taking
-- events meanwhile (on 10M events they take minutes); without a
-- transaction, each statement stands alone, and a migration that stopped
-- half-way runs again from the start: every statement can be repeated.

-- Filters on a run — its service, its command, how it ended, who gave a
-- verdict on it — are answered from the log itself: each reads the one
-- kind of event that says it. The functions say where in an event's data
-- each fact is; the indexes are on exactly these expressions, so a query
-- must use them.

-- The service filter a run was submitted with: data.service_filter, or
-- data.service in events written before it had that name.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION rexec_audit_service(data jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT nullif(coalesce(data ->> 'service_filter', data ->> 'service'), '') $$;
-- +goose StatementEnd

-- A JSON string, or the elements of a JSON array joined by spaces.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION rexec_audit_words(v jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT CASE jsonb_typeof(v)
        WHEN 'string' THEN v #>> '{}'
        WHEN 'array' THEN (SELECT string_agg(w, ' ' ORDER BY n) FROM jsonb_array_elements_text(v) WITH ORDINALITY AS a (w, n))
    END $$;
-- +goose StatementEnd

-- The command line a run was submitted with: data.command (the argv
-- joined), or the argv of events written before there was one.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION rexec_audit_command(data jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT coalesce(rexec_audit_words(data -> 'command'), rexec_audit_words(data -> 'argv'), '') $$;
-- +goose StatementEnd

-- The state a run ended in, from its final event.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION rexec_audit_final_state(type text, data jsonb) RETURNS text
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

-- A run's submitted event, for a probe of a condition on it by run.
DROP INDEX CONCURRENTLY IF EXISTS audit_events_submitted;
CREATE INDEX CONCURRENTLY audit_events_submitted ON audit_events (run_id) WHERE type = 'run.submitted';
-- The runs of a service, of a command, of a final state, of an approver.
DROP INDEX CONCURRENTLY IF EXISTS audit_events_submitted_service;
CREATE INDEX CONCURRENTLY audit_events_submitted_service ON audit_events (tenant_id, rexec_audit_service(data), run_id)
    WHERE type = 'run.submitted';
DROP INDEX CONCURRENTLY IF EXISTS audit_events_submitted_command;
CREATE INDEX CONCURRENTLY audit_events_submitted_command ON audit_events USING gin (rexec_audit_command(data) gin_trgm_ops)
    WHERE type = 'run.submitted';
DROP INDEX CONCURRENTLY IF EXISTS audit_events_final_state;
CREATE INDEX CONCURRENTLY audit_events_final_state ON audit_events (tenant_id, rexec_audit_final_state(type, data), run_id)
    WHERE type IN ('run.finished', 'run.cancelled', 'run.denied', 'run.expired');
DROP INDEX CONCURRENTLY IF EXISTS audit_events_verdicts;
CREATE INDEX CONCURRENTLY audit_events_verdicts ON audit_events (tenant_id, actor, run_id)
    WHERE type IN ('approval.given', 'approval.refused');

-- A node's and a principal's events in a time range, for a range in the
-- past: (tenant_id, node, id) and (tenant_id, actor, id) would walk every
-- newer event of theirs first.
DROP INDEX CONCURRENTLY IF EXISTS audit_events_node_time;
CREATE INDEX CONCURRENTLY audit_events_node_time ON audit_events (tenant_id, node, created_at) WHERE node IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS audit_events_actor_time;
CREATE INDEX CONCURRENTLY audit_events_actor_time ON audit_events (tenant_id, actor, created_at);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS audit_events_actor_time;
DROP INDEX CONCURRENTLY IF EXISTS audit_events_node_time;
DROP INDEX CONCURRENTLY IF EXISTS audit_events_verdicts;
DROP INDEX CONCURRENTLY IF EXISTS audit_events_final_state;
DROP INDEX CONCURRENTLY IF EXISTS audit_events_submitted_command;
DROP INDEX CONCURRENTLY IF EXISTS audit_events_submitted_service;
DROP INDEX CONCURRENTLY IF EXISTS audit_events_submitted;
DROP FUNCTION IF EXISTS rexec_audit_final_state;
DROP FUNCTION IF EXISTS rexec_audit_command;
DROP FUNCTION IF EXISTS rexec_audit_words;
DROP FUNCTION IF EXISTS rexec_audit_service;
-- pg_trgm stays: it may have been installed before, and may serve others.
