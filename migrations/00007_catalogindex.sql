-- +goose Up

-- Where a run's frozen target set came from: the Raft index of the Consul
-- catalog it was resolved at, and whether that catalog was the tenant's
-- catalog view ('view') or a direct read because the view could not vouch
-- for itself ('direct'). NULL for runs stored before this migration.
ALTER TABLE runs
    ADD COLUMN catalog_index bigint CHECK (catalog_index >= 0),
    ADD COLUMN catalog_source text CHECK (catalog_source IN ('view', 'direct'));

-- +goose Down
ALTER TABLE runs DROP COLUMN catalog_index, DROP COLUMN catalog_source;
