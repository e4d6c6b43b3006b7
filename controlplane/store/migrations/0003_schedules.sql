-- Scheduled backups: the state of every (database, node, schedule), and one row per claimed
-- tick, so that several servers sharing this store fire each tick exactly once.

CREATE TABLE schedules (
    database_id      text NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    node_name        text NOT NULL,
    schedule_id      text NOT NULL,
    cron_expression  text NOT NULL,
    -- When a scheduler first saw the schedule with this cron expression: earlier ticks never run
    -- (a new schedule does not fire for a tick that predates it; a changed one starts afresh).
    since            timestamptz NOT NULL,
    -- The newest tick handled (run or skipped). No tick at or before it runs again, even after
    -- the tick's row went with its pruned task.
    last_tick_at     timestamptz,
    PRIMARY KEY (database_id, node_name, schedule_id)
);

CREATE TABLE schedule_ticks (
    database_id  text NOT NULL,
    node_name    text NOT NULL,
    schedule_id  text NOT NULL,
    tick_at      timestamptz NOT NULL,
    -- The tick row is inserted first (ON CONFLICT DO NOTHING: whoever inserts it inserts the
    -- task, later in the same transaction, hence the deferred check). Tick rows are pruned
    -- together with their task.
    task_id      uuid NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE
                 DEFERRABLE INITIALLY DEFERRED,
    claimed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (database_id, node_name, schedule_id, tick_at)
);
CREATE INDEX schedule_ticks_by_task ON schedule_ticks (task_id);
