-- A node is a primary plus streaming replicas, one instance per host: (database, node, host)
-- names an instance, and a node has exactly one primary row at a time (the role moves with a
-- switchover or failover). `supervisor` says who starts and stops the instance's Postgres: the
-- control plane itself (pg_ctl), or Patroni for the instances of a node with replicas.
ALTER TABLE instances DROP CONSTRAINT instances_database_id_node_name_key;
ALTER TABLE instances ADD CONSTRAINT instances_node_host UNIQUE (database_id, node_name, host_id);
ALTER TABLE instances ADD CONSTRAINT instances_role CHECK (role IN ('primary', 'replica'));
CREATE UNIQUE INDEX instances_one_primary ON instances (database_id, node_name)
    WHERE role = 'primary';
ALTER TABLE instances ADD COLUMN supervisor text NOT NULL DEFAULT 'pg_ctl'
    CHECK (supervisor IN ('pg_ctl', 'patroni'));
