-- Actions on a node's Patroni cluster and on single instances are tasks too: switchover,
-- failover, and an instance's restart, stop and start. Each counts as the database's one
-- mutating operation (a switchover during an update or a restore would pull the primary from
-- under it), and `instance_id` says which instance an instance task acts on.
ALTER TABLE tasks DROP CONSTRAINT tasks_type_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_type_check CHECK (type IN (
    'create', 'update', 'delete', 'node_backup', 'restore', 'node_restore', 'verify', 'expire',
    'switchover', 'failover', 'restart_instance', 'stop_instance', 'start_instance'));
DROP INDEX tasks_one_operation_per_database;
CREATE UNIQUE INDEX tasks_one_operation_per_database ON tasks (database_id)
    WHERE type IN ('create', 'update', 'delete', 'restore', 'switchover', 'failover',
                   'restart_instance', 'stop_instance', 'start_instance')
      AND status IN ('pending', 'running', 'canceling');
