-- +goose Up

CREATE TABLE tenants (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    consul_addr       text NOT NULL,
    consul_datacenter text NOT NULL DEFAULT '',
    -- A secret: read only by workers and the API's resolution step, never returned.
    consul_token      text NOT NULL DEFAULT '',
    consul_tls        jsonb NOT NULL DEFAULT '{}',
    prefix            text NOT NULL DEFAULT '_rexec',
    output_cap        bigint NOT NULL DEFAULT 1048576 CHECK (output_cap > 0),
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE principals (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES tenants (id),
    name       text NOT NULL CHECK (name <> ''),
    roles      text[] NOT NULL CHECK (roles <@ ARRAY['submitter', 'approver', 'auditor', 'admin']),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    principal_id bigint NOT NULL REFERENCES principals (id),
    -- sha256 of the token; the token itself is shown once and never stored.
    token_hash   bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE TABLE runs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       bigint NOT NULL REFERENCES tenants (id),
    submitted_by    bigint NOT NULL REFERENCES principals (id),
    state           text NOT NULL CHECK (state IN ('pending_approval', 'queued', 'running', 'completed', 'failed', 'cancelled', 'denied', 'expired')),
    argv            text[] NOT NULL DEFAULT '{}',
    script          bytea,
    shell           boolean NOT NULL DEFAULT true,
    node_filter     text NOT NULL DEFAULT '',
    service_filter  text NOT NULL DEFAULT '',
    tag_filter      text NOT NULL DEFAULT '',
    prefix          text NOT NULL,
    wait_ms         bigint NOT NULL,
    wait_repl_ms    bigint NOT NULL,
    timeout_ms      bigint NOT NULL DEFAULT 0,
    reason          text NOT NULL DEFAULT '',
    output_cap      bigint NOT NULL,
    -- The frozen target set: [{node, address, services: [{id, name, tags}]}].
    targets         jsonb NOT NULL,
    -- The session is recorded before anything is fired, firing_at at the last
    -- moment before the first event goes out: a run with firing_at set is
    -- never fired again (it may have been), one without may be prepared anew.
    session         text,
    firing_at       timestamptz,
    -- The worker carrying the run out, and until when its claim holds.
    lease_owner     text,
    lease_expires_at timestamptz,
    recoveries      int NOT NULL DEFAULT 0,
    cancel_requested_at timestamptz,
    outcome         text,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    fired_at        timestamptz,
    finished_at     timestamptz
);
CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at DESC, id);
CREATE INDEX runs_running_lease ON runs (lease_expires_at) WHERE state = 'running';

-- One sequence orders every chunk and exit of every run, so that a follower
-- reads a run's stream with one cursor. A run has one writer at a time, so
-- its values commit in order.
CREATE SEQUENCE run_stream_seq;

CREATE TABLE run_nodes (
    run_id       uuid NOT NULL REFERENCES runs (id),
    node         text NOT NULL,
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'acked', 'exited', 'lost', 'no_ack', 'cancelled')),
    exit_code    int,
    acked_at     timestamptz,
    exited_at    timestamptz,
    exit_stream_id bigint,
    -- Every byte the node sent, and how many of them are stored (the cap).
    bytes        bigint NOT NULL DEFAULT 0,
    stored_bytes bigint NOT NULL DEFAULT 0,
    truncated    boolean NOT NULL DEFAULT false,
    -- The running sha256 (its marshalled state) and, once final, its sum.
    hash_state   bytea,
    sha256       text,
    PRIMARY KEY (run_id, node)
);

CREATE TABLE output_chunks (
    run_id    uuid NOT NULL,
    node      text NOT NULL,
    seq       int NOT NULL,
    stream_id bigint NOT NULL DEFAULT nextval('run_stream_seq'),
    data      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, node, seq),
    FOREIGN KEY (run_id, node) REFERENCES run_nodes (run_id, node)
);
CREATE INDEX output_chunks_stream ON output_chunks (run_id, stream_id);

-- Every state change, from the start. The hash chain and queries come later.
CREATE TABLE audit_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint REFERENCES tenants (id),
    run_id     uuid,
    actor      text NOT NULL,
    type       text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, id);

-- The log is append-only: the database itself refuses changes.
-- +goose StatementBegin
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- +goose Down
DROP TABLE audit_events;
DROP FUNCTION audit_events_append_only;
DROP TABLE output_chunks;
DROP TABLE run_nodes;
DROP SEQUENCE run_stream_seq;
DROP TABLE runs;
DROP TABLE api_tokens;
DROP TABLE principals;
DROP TABLE tenants;
