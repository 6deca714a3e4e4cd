-- +goose Up

-- The audit log becomes a transparency log (docs/audit.md).
--
-- An event is its body: the canonical JSON encoding that is the leaf of
-- the tenant's Merkle tree. Every column an auditor filters on is
-- generated from the body, so no column can say something the body (and
-- so the signed tree) does not.

-- The time in a body is RFC 3339 in UTC with its offset written out, so
-- its meaning does not depend on the session's TimeZone: immutable in
-- fact, which a generated column needs.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE FUNCTION rexec_audit_time(body text) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT ((body::jsonb) ->> 'time')::timestamptz $$;
-- +goose StatementEnd

ALTER TABLE audit_events RENAME TO audit_events_v1;
ALTER INDEX audit_events_tenant RENAME TO audit_events_v1_tenant;
ALTER TABLE audit_events_v1 RENAME CONSTRAINT audit_events_pkey TO audit_events_v1_pkey;

CREATE TABLE audit_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body        text NOT NULL,
    -- The writing transaction: the integrator appends events to the tree
    -- only once every transaction that could still commit an earlier one
    -- has ended (auditlog).
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tenant_id   bigint GENERATED ALWAYS AS (((body::jsonb) ->> 'tenant')::bigint) STORED REFERENCES tenants (id),
    type        text GENERATED ALWAYS AS ((body::jsonb) ->> 'type') STORED,
    actor       text GENERATED ALWAYS AS ((body::jsonb) ->> 'actor') STORED,
    run_id      uuid GENERATED ALWAYS AS (((body::jsonb) ->> 'run')::uuid) STORED,
    node        text GENERATED ALWAYS AS ((body::jsonb) ->> 'node') STORED,
    data        jsonb GENERATED ALWAYS AS (coalesce((body::jsonb) -> 'data', '{}')) STORED,
    created_at  timestamptz GENERATED ALWAYS AS (rexec_audit_time(body)) STORED,
    CHECK (type IS NOT NULL AND actor IS NOT NULL AND created_at IS NOT NULL)
);

-- Events written before the log keep their ids and their facts, in a body
-- built here. jsonb's text is not the canonical encoding, which does not
-- matter: a leaf is the body's bytes, whatever they are.
INSERT INTO audit_events (id, body) OVERRIDING SYSTEM VALUE
SELECT id, jsonb_strip_nulls(jsonb_build_object(
        'tenant', tenant_id, 'run', run_id, 'actor', actor, 'type', type, 'data', data,
        'time', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))::text
FROM audit_events_v1 ORDER BY id;
SELECT setval(pg_get_serial_sequence('audit_events', 'id'), coalesce((SELECT max(id) FROM audit_events), 0) + 1, false);
DROP TABLE audit_events_v1;

-- Integration reads a tenant's events by transaction; queries page by id.
CREATE INDEX audit_events_txid ON audit_events (tenant_id, txid, id);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, id);
CREATE INDEX audit_events_time ON audit_events (tenant_id, created_at, id);
CREATE INDEX audit_events_actor ON audit_events (tenant_id, actor, id);
CREATE INDEX audit_events_node ON audit_events (tenant_id, node, id) WHERE node IS NOT NULL;
CREATE INDEX audit_events_run ON audit_events (run_id, id) WHERE run_id IS NOT NULL;
CREATE INDEX audit_events_exit ON audit_events (tenant_id, ((data ->> 'exit_code')::int), id) WHERE type = 'node.exited';

CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- The tree. A log is a tenant's (log_id = tenant id) or, for events
-- outside any tenant, the system log (log_id = 0).
--
-- A leaf: which event is at which index of which log.
CREATE TABLE audit_leaves (
    log_id   bigint NOT NULL,
    idx      bigint NOT NULL CHECK (idx >= 0),
    event_id bigint NOT NULL UNIQUE,
    PRIMARY KEY (log_id, idx)
);
-- The tree's stored hashes, as golang.org/x/mod/sumdb/tlog numbers them.
CREATE TABLE audit_hashes (
    log_id bigint NOT NULL,
    idx    bigint NOT NULL CHECK (idx >= 0),
    hash   bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (log_id, idx)
);
-- Every signed checkpoint, one per integration that grew the tree.
-- (last_txid, last_event) is the last event integrated: the tree holds
-- exactly the log's events ordered at or before it by (txid, id).
CREATE TABLE audit_checkpoints (
    log_id     bigint NOT NULL,
    size       bigint NOT NULL CHECK (size > 0),
    root       bytea NOT NULL CHECK (length(root) = 32),
    last_txid  xid8 NOT NULL,
    last_event bigint NOT NULL,
    note       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (log_id, size)
);
CREATE TRIGGER audit_leaves_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_hashes_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_hashes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- +goose Down
DROP TABLE audit_checkpoints;
DROP TABLE audit_hashes;
DROP TABLE audit_leaves;
CREATE TABLE audit_events_v1 (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint REFERENCES tenants (id),
    run_id     uuid,
    actor      text NOT NULL,
    type       text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit_events_v1 (id, tenant_id, run_id, actor, type, data, created_at) OVERRIDING SYSTEM VALUE
SELECT id, tenant_id, run_id, actor, type, data, created_at FROM audit_events ORDER BY id;
DROP TABLE audit_events;
ALTER TABLE audit_events_v1 RENAME TO audit_events;
ALTER TABLE audit_events RENAME CONSTRAINT audit_events_v1_pkey TO audit_events_pkey;
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, id);
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
DROP FUNCTION rexec_audit_time;
