-- +goose Up

-- An event's txid orders it in the log, and the integrator trusts it:
-- a row written with a txid of the writer's choosing could move the
-- log's position past honest events, which would then never be logged.
-- So the database sets it, whatever the INSERT says.
-- +goose StatementBegin
CREATE FUNCTION audit_events_txid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.txid := pg_current_xact_id();
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_events_txid BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_txid();

-- +goose Down
DROP TRIGGER audit_events_txid ON audit_events;
DROP FUNCTION audit_events_txid;
