-- Databases, instances, tasks with steps and logs, API tokens.

CREATE TABLE databases (
    id          text PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('creating', 'available', 'modifying', 'backing_up',
                                               'restoring', 'deleting', 'degraded', 'failed')),
    spec        jsonb NOT NULL,          -- as submitted, write-only secrets removed
    secrets     text,                    -- the secrets, encrypted at rest
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instances (
    id           text PRIMARY KEY,
    database_id  text NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    node_name    text NOT NULL,
    host_id      text NOT NULL,
    port         integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    state        text NOT NULL CHECK (state IN ('creating', 'available', 'backing_up', 'restoring',
                                                'stopped', 'failed')),
    role         text NOT NULL DEFAULT 'primary',
    desired      text NOT NULL DEFAULT 'running' CHECK (desired IN ('running', 'stopped')),
    error        text,
    generations  jsonb NOT NULL DEFAULT '{}',  -- repository id -> backup repository generation
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (database_id, node_name)
);
-- Two instances on one host can never share a port.
CREATE UNIQUE INDEX instances_host_port ON instances (host_id, port);

CREATE TABLE tasks (
    task_id             uuid PRIMARY KEY,
    parent_id           uuid REFERENCES tasks (task_id) ON DELETE CASCADE,
    database_id         text NOT NULL,
    node_name           text,
    type                text NOT NULL CHECK (type IN ('create', 'update', 'delete', 'node_backup',
                                                      'restore', 'node_restore', 'verify', 'expire')),
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'running', 'canceling', 'completed', 'failed',
                                          'canceled', 'skipped')),
    trigger             text NOT NULL DEFAULT 'manual'
                        CHECK (trigger IN ('manual', 'scheduled', 'pre_restore', 'system')),
    actor               text,
    input               jsonb NOT NULL DEFAULT '{}',
    result              jsonb,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    completed_at        timestamptz,
    lease_owner         text,
    lease_expires_at    timestamptz,
    attempts            integer NOT NULL DEFAULT 0,
    cancel_requested_at timestamptz,
    CHECK ((status IN ('completed', 'failed', 'canceled', 'skipped')) = (completed_at IS NOT NULL))
);
CREATE INDEX tasks_active ON tasks (created_at) WHERE status IN ('pending', 'running', 'canceling');
CREATE INDEX tasks_by_database ON tasks (database_id, task_id);
CREATE INDEX tasks_by_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_finished ON tasks (completed_at) WHERE completed_at IS NOT NULL;

-- At most one mutating operation per database, and one backup/verify/expire per node.
CREATE UNIQUE INDEX tasks_one_operation_per_database ON tasks (database_id)
    WHERE type IN ('create', 'update', 'delete', 'restore')
      AND status IN ('pending', 'running', 'canceling');
CREATE UNIQUE INDEX tasks_one_backup_per_node ON tasks (database_id, node_name)
    WHERE type IN ('node_backup', 'verify', 'expire')
      AND status IN ('pending', 'running', 'canceling');

-- Status transitions are enforced here, so no code path can resurrect a finished task.
CREATE FUNCTION tasks_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
        IF OLD.status IN ('completed', 'failed', 'canceled', 'skipped')
           AND (NEW.completed_at, NEW.error) IS DISTINCT FROM (OLD.completed_at, OLD.error) THEN
            RAISE EXCEPTION 'task % is %: terminal states are final', OLD.task_id, OLD.status;
        END IF;
        RETURN NEW;
    END IF;
    IF NOT (
        (OLD.status = 'pending' AND NEW.status IN ('running', 'canceled', 'skipped'))
        OR (OLD.status = 'running' AND NEW.status IN ('completed', 'failed', 'canceling'))
        OR (OLD.status = 'canceling' AND NEW.status IN ('canceled', 'failed', 'completed'))
    ) THEN
        RAISE EXCEPTION 'task %: illegal status transition % -> %', OLD.task_id, OLD.status,
            NEW.status;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_check_transition BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_check_transition();

-- LISTEN/NOTIFY only wakes workers; claiming always goes through SKIP LOCKED.
CREATE FUNCTION tasks_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('controlplane_tasks', NEW.task_id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_notify AFTER INSERT OR UPDATE OF status, cancel_requested_at ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_notify();

CREATE TABLE task_steps (
    task_id       uuid NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    position      integer NOT NULL,
    name          text NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'completed', 'failed', 'canceled')),
    started_at    timestamptz,
    completed_at  timestamptz,
    state         jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (task_id, position),
    UNIQUE (task_id, name)
);

CREATE TABLE task_log (
    task_id   uuid NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    entry_id  bigint NOT NULL CHECK (entry_id > 0),
    ts        timestamptz NOT NULL DEFAULT clock_timestamp(),
    level     text NOT NULL CHECK (level IN ('debug', 'info', 'warning', 'error')),
    message   text NOT NULL,
    fields    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (task_id, entry_id)
);

CREATE TABLE tokens (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    scope       text NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
