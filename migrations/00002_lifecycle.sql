-- +goose Up

-- How long a run may wait to start: a run not fired by start_by fails
-- instead of firing late. The tenant sets the default; a run may shorten or
-- lengthen it within the service's bounds.
ALTER TABLE tenants ADD COLUMN start_timeout_ms bigint NOT NULL DEFAULT 900000 CHECK (start_timeout_ms > 0);
ALTER TABLE runs ADD COLUMN start_by timestamptz;
-- Runs already waiting get the bound from now, not from their submission:
-- an upgrade must not fail a backlog.
UPDATE runs SET start_by = greatest(created_at, now()) + interval '15 minutes';
ALTER TABLE runs ALTER COLUMN start_by SET NOT NULL;

-- The sweeper looks for queued runs that have nobody to carry them out.
CREATE INDEX runs_queued_created ON runs (created_at) WHERE state = 'queued';

-- +goose Down
DROP INDEX runs_queued_created;
ALTER TABLE runs DROP COLUMN start_by;
ALTER TABLE tenants DROP COLUMN start_timeout_ms;
