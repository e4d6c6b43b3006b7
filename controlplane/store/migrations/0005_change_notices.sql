-- Every committed change to what the read routes show is announced on one channel, naming the
-- table: servers keep encoded answers until their table changes (api/read_cache.py). A NOTIFY
-- is delivered at commit, and Postgres folds repeats within one transaction into one.
CREATE FUNCTION announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('controlplane_changes', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER databases_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON databases
    FOR EACH STATEMENT EXECUTE FUNCTION announce_change();
CREATE TRIGGER instances_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON instances
    FOR EACH STATEMENT EXECUTE FUNCTION announce_change();
CREATE TRIGGER tasks_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION announce_change();
CREATE TRIGGER task_steps_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON task_steps
    FOR EACH STATEMENT EXECUTE FUNCTION announce_change();
