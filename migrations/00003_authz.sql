-- +goose Up

-- Authorization: what the policy decided for each run, and approvals.
ALTER TABLE tenants
    -- How long a run may wait for its approvals before it expires.
    ADD COLUMN approval_ttl_ms bigint NOT NULL DEFAULT 86400000 CHECK (approval_ttl_ms > 0),
    -- The tenant's IANA time zone, for policies about working hours.
    ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC',
    -- Where approvers are told of runs that need them; the URL and the
    -- HMAC secret are secrets (a Slack webhook URL is a credential).
    ADD COLUMN webhook_url text NOT NULL DEFAULT '',
    ADD COLUMN webhook_secret text NOT NULL DEFAULT '';

ALTER TABLE runs
    -- The start bound restarts when an approval releases the run.
    ADD COLUMN start_timeout_ms bigint NOT NULL DEFAULT 900000,
    -- sha256 of the canonical request (store.RequestHash): approvals bind
    -- to it, and a run whose stored request no longer hashes to it never
    -- starts.
    ADD COLUMN request_hash text NOT NULL DEFAULT '',
    ADD COLUMN policy_outcome text NOT NULL DEFAULT 'allow' CHECK (policy_outcome IN ('allow', 'require_approval')),
    ADD COLUMN policy_reasons text[] NOT NULL DEFAULT '{}',
    ADD COLUMN policy_revision text NOT NULL DEFAULT '',
    ADD COLUMN approvals_required int NOT NULL DEFAULT 0 CHECK (approvals_required >= 0),
    ADD COLUMN approver_roles text[] NOT NULL DEFAULT '{}',
    ADD COLUMN approval_expires_at timestamptz,
    -- The Consul ACL preflight at submission.
    ADD COLUMN preflight jsonb NOT NULL DEFAULT '{}';
CREATE INDEX runs_pending_expiry ON runs (approval_expires_at) WHERE state = 'pending_approval';

-- One verdict per principal per run: an approval or a denial, bound to the
-- request hash the principal saw.
CREATE TABLE approvals (
    run_id         uuid NOT NULL REFERENCES runs (id),
    principal_id   bigint NOT NULL REFERENCES principals (id),
    principal_name text NOT NULL,
    roles          text[] NOT NULL,
    verdict        text NOT NULL CHECK (verdict IN ('approve', 'deny')),
    comment        text NOT NULL DEFAULT '',
    request_hash   text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, principal_id)
);

-- +goose Down
DROP TABLE approvals;
DROP INDEX runs_pending_expiry;
ALTER TABLE runs DROP COLUMN start_timeout_ms, DROP COLUMN request_hash, DROP COLUMN policy_outcome,
    DROP COLUMN policy_reasons, DROP COLUMN policy_revision, DROP COLUMN approvals_required,
    DROP COLUMN approver_roles, DROP COLUMN approval_expires_at, DROP COLUMN preflight;
ALTER TABLE tenants DROP COLUMN approval_ttl_ms, DROP COLUMN time_zone, DROP COLUMN webhook_url, DROP COLUMN webhook_secret;
