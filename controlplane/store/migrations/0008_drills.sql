-- Restore drills: a `drill` task restores a backup set into a scratch instance, checks it
-- (pg_amcheck, row counts) and removes it. It holds the node's backup lock like a backup, a
-- verify or an expire (a drill must not race the expiry of the set it restores).
ALTER TABLE tasks DROP CONSTRAINT tasks_type_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_type_check CHECK (type IN (
    'create', 'update', 'delete', 'node_backup', 'restore', 'node_restore', 'verify', 'expire',
    'switchover', 'failover', 'restart_instance', 'stop_instance', 'start_instance', 'drill'));
DROP INDEX tasks_one_backup_per_node;
CREATE UNIQUE INDEX tasks_one_backup_per_node ON tasks (database_id, node_name)
    WHERE type IN ('node_backup', 'verify', 'expire', 'drill')
      AND status IN ('pending', 'running', 'canceling');

-- The newest drill of each backup set of a node, kept next to the catalog (the sets themselves
-- live in the repository). A set drilled again replaces its row, but keeps when it last passed.
CREATE TABLE drills (
    database_id      text NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    node_name        text NOT NULL,
    set_label        text NOT NULL CHECK (set_label ~ '^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$'),
    task_id          uuid NOT NULL,
    status           text NOT NULL CHECK (status IN ('completed', 'failed')),
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL CHECK (finished_at >= started_at),
    -- NULL when the drill failed before pg_amcheck ran.
    amcheck_ok       boolean,
    -- Rows per user table of the restored database: {"schema.table": count}.
    row_counts       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(row_counts) = 'object'),
    error            text,
    -- The newest drill of this set that passed (kept when a later one fails).
    last_success_at  timestamptz,
    CHECK ((status = 'completed') = (error IS NULL)),
    PRIMARY KEY (database_id, node_name, set_label)
);
