-- Named restore points created through the API: a `name` restore target must be one of these,
-- so it can be checked against the repository before anything is touched. A row is written only
-- once the WAL segment holding the restore point has reached the node's repository.
CREATE TABLE restore_points (
    database_id        text NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    node_name          text NOT NULL,
    -- pg_create_restore_point's limit is 63 bytes; the pattern keeps it safe in
    -- postgresql.auto.conf (recovery_target_name) and in logs.
    name               text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    -- Where the restore point record ends (what pg_create_restore_point returned).
    lsn                text NOT NULL CHECK (lsn ~ '^[0-9A-F]{1,8}/[0-9A-F]{1,8}$'),
    -- The timeline it was written on, and that timeline's history ([[parent timeline,
    -- switch LSN], ...], oldest first): a backup set leads to the restore point only along it.
    timeline           integer NOT NULL CHECK (timeline >= 1),
    timeline_history   jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(timeline_history) = 'array'),
    -- The database system it belongs to (a node restored from another node's backup is a
    -- different system, whose backups live in a new repository generation).
    system_identifier  bigint NOT NULL,
    time               timestamptz NOT NULL,
    created_by         text NOT NULL,
    PRIMARY KEY (database_id, node_name, name)
);
