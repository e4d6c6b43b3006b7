"""Task records: insertion under the one-operation locks, claiming with leases, steps, cancel."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import asyncpg
import msgspec
from msgspec import Struct

from controlplane.errors import NotFoundError, OperationInProgressError, TaskNotCancelableError
from controlplane.models import (
    ACTIVE_STATUSES,
    Task,
    TaskStatus,
    TaskStep,
    TaskTrigger,
    TaskType,
)
from controlplane.store.pool import Connection, Executor
from controlplane.tasks.inputs import TaskInput

_COLUMNS = (
    "task_id, parent_id, database_id, node_name, type, status, trigger, actor, input, result,"
    " error, created_at, started_at, completed_at, lease_owner, lease_expires_at, attempts,"
    " cancel_requested_at"
)
_LOCKING_INDEXES = {"tasks_one_operation_per_database", "tasks_one_backup_per_node"}
# The predicates of the partial unique indexes (0007_node_actions.sql, 0008_drills.sql), word
# for word: the batch insert below names tasks_one_backup_per_node as its ON CONFLICT arbiter,
# which Postgres accepts only with the index's exact predicate, and the blocking-task look-up
# uses the same words.
_ACTIVE = "status IN ('pending', 'running', 'canceling')"
_NODE_LOCK_TYPES = "type IN ('node_backup', 'verify', 'expire', 'drill')"
NODE_LOCK_TYPES = frozenset({"node_backup", "verify", "expire", "drill"})
_DATABASE_LOCK_TYPES = (
    "type IN ('create', 'update', 'delete', 'restore', 'switchover', 'failover',"
    " 'restart_instance', 'stop_instance', 'start_instance')"
)


class TaskRow(Struct, kw_only=True):
    """The full stored task, including lease and input (the API shows `Task`)."""

    task_id: uuid.UUID
    parent_id: uuid.UUID | None
    database_id: str
    node_name: str | None
    type: TaskType
    status: TaskStatus
    trigger: TaskTrigger
    actor: str | None
    input: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: Any
    started_at: Any
    completed_at: Any
    lease_owner: str | None
    lease_expires_at: Any
    attempts: int
    cancel_requested_at: Any


class StepRow(Struct, kw_only=True):
    position: int
    name: str
    status: str
    started_at: Any
    completed_at: Any
    state: dict[str, Any]


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 v7), so task ids sort by creation."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def _row(record: asyncpg.Record) -> TaskRow:
    return TaskRow(**dict(record.items()))


async def insert_task(
    conn: Connection,
    *,
    database_id: str,
    type: str,
    steps: list[str],
    node_name: str | None = None,
    parent_id: uuid.UUID | None = None,
    trigger: str = "manual",
    actor: str | None = None,
    input: TaskInput | dict[str, Any] | None = None,
) -> TaskRow:
    """Insert a pending task with its planned steps; a held lock raises OperationInProgressError.

    Runs in a (sub)transaction of its own, so a caller's surrounding transaction stays usable.
    """
    task_id = uuid7()
    try:
        async with conn.transaction():
            record = await conn.fetchrow(
                "INSERT INTO tasks (task_id, parent_id, database_id, node_name, type, trigger,"
                f" actor, input) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}",
                task_id,
                parent_id,
                database_id,
                node_name,
                type,
                trigger,
                actor,
                msgspec.to_builtins(input) if isinstance(input, TaskInput) else input or {},
            )
            await conn.executemany(
                "INSERT INTO task_steps (task_id, position, name) VALUES ($1, $2, $3)",
                [(task_id, i, name) for i, name in enumerate(steps)],
            )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name not in _LOCKING_INDEXES:
            raise
        raise await _in_progress(conn, database_id, node_name, type) from None
    assert record is not None
    return _row(record)


async def _in_progress(
    db: Executor, database_id: str, node_name: str | None, type: str
) -> OperationInProgressError:
    blocking = await find_blocking_task(db, database_id, node_name, type)
    what = f"node {node_name} of database {database_id}" if node_name else f"database {database_id}"
    if blocking is None:  # it finished between our insert and this look-up
        return OperationInProgressError(f"{what} is busy; retry", task_id="")
    return OperationInProgressError(
        f"{what} has an operation in progress: {blocking.type} task {blocking.task_id}"
        f" is {blocking.status}",
        task_id=str(blocking.task_id),
    )


async def find_blocking_task(
    db: Executor, database_id: str, node_name: str | None, type: str
) -> TaskRow | None:
    """The active task holding the lock that a new task of `type` would need."""
    if type in NODE_LOCK_TYPES:
        where = f"node_name = $2 AND {_NODE_LOCK_TYPES}"
        args: list[Any] = [database_id, node_name]
    else:
        where = f"{_DATABASE_LOCK_TYPES} AND $2::text IS NULL"
        args = [database_id, None]
    record = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM tasks WHERE database_id = $1 AND {where}"
        f" AND {_ACTIVE} ORDER BY created_at LIMIT 1",
        *args,
    )
    return None if record is None else _row(record)


async def failed_recently(
    db: Executor,
    database_id: str,
    node_name: str,
    type: str,
    *,
    trigger: str,
    seconds: float,
) -> TaskRow | None:
    """The newest task of `type` and `trigger` on a node that failed in the last `seconds`."""
    record = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM tasks WHERE database_id = $1 AND node_name = $2"
        " AND type = $3 AND trigger = $4 AND status = 'failed'"
        " AND completed_at > now() - make_interval(secs => $5)"
        " ORDER BY completed_at DESC LIMIT 1",
        database_id,
        node_name,
        type,
        trigger,
        seconds,
    )
    return None if record is None else _row(record)


async def insert_skipped_task(
    db: Executor,
    *,
    database_id: str,
    type: str,
    reason: str,
    node_name: str | None = None,
    trigger: str = "scheduled",
    input: dict[str, Any] | None = None,
    blocking_task_id: str | None = None,
) -> TaskRow:
    """Record work that could not run (e.g. a scheduled tick on a busy node), with the reason."""
    result = {"blocking_task_id": blocking_task_id} if blocking_task_id else None
    record = await db.fetchrow(
        "INSERT INTO tasks (task_id, database_id, node_name, type, status, trigger, input, error,"
        " result, completed_at) VALUES ($1, $2, $3, $4, 'skipped', $5, $6, $7, $8, now())"
        f" RETURNING {_COLUMNS}",
        uuid7(),
        database_id,
        node_name,
        type,
        trigger,
        input or {},
        reason,
        result,
    )
    assert record is not None
    return _row(record)


# -- batches of scheduled backups (the scheduler inserts a database's ticks at once) ---------


class ScheduledTask(NamedTuple):
    """A task for a claimed tick: a backup or a drill (`type`; `error` None) or a skipped one
    with the reason."""

    task_id: uuid.UUID
    node_name: str
    input: dict[str, Any]
    error: str | None = None
    blocking_task_id: str | None = None
    type: str = "node_backup"


async def insert_backup_tasks(
    conn: Connection,
    database_id: str,
    backups: list[ScheduledTask],
    steps: Mapping[str, Sequence[str]],
) -> set[uuid.UUID]:
    """Insert pending scheduled node_backup and drill tasks (at most one per node) with their
    steps (`steps` by task type); a node whose backup/verify/expire/drill lock is held gets
    none. Returns the ids inserted."""
    if not backups:
        return set()
    records = await conn.fetch(
        "WITH task AS (INSERT INTO tasks (task_id, database_id, node_name, type, trigger, input)"
        "   SELECT u.task_id, $1, u.node_name, u.type, 'scheduled', u.input::jsonb"
        "   FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[])"
        "     AS u (task_id, node_name, input, type)"
        f"   ON CONFLICT (database_id, node_name) WHERE {_NODE_LOCK_TYPES} AND {_ACTIVE}"
        "   DO NOTHING RETURNING task_id, type),"
        " step AS (INSERT INTO task_steps (task_id, position, name)"
        "   SELECT t.task_id, s.position - 1, s.name FROM task t"
        "   CROSS JOIN LATERAL jsonb_array_elements_text($6::jsonb -> t.type)"
        "     WITH ORDINALITY AS s (name, position))"
        " SELECT task_id FROM task",
        database_id,
        [b.task_id for b in backups],
        [b.node_name for b in backups],
        [json.dumps(b.input) for b in backups],
        [b.type for b in backups],
        {kind: list(names) for kind, names in steps.items()},
    )
    return {r["task_id"] for r in records}


async def active_backup_tasks(
    conn: Connection, database_id: str, nodes: list[str]
) -> dict[str, tuple[str, str, str]]:
    """node -> (task id, type, status) of the active task holding its backup lock."""
    records = await conn.fetch(
        "SELECT DISTINCT ON (node_name) node_name, task_id, type, status FROM tasks"
        " WHERE database_id = $1 AND node_name = ANY($2::text[])"
        f" AND {_NODE_LOCK_TYPES} AND {_ACTIVE} ORDER BY node_name, created_at",
        database_id,
        nodes,
    )
    return {r["node_name"]: (str(r["task_id"]), r["type"], r["status"]) for r in records}


async def insert_skipped_tasks(
    conn: Connection, database_id: str, skipped: list[ScheduledTask]
) -> None:
    """Record ticks that could not run as `skipped` tasks of their type: the reason in `error`,
    the blocking task in `result` (as insert_skipped_task does for one)."""
    if not skipped:
        return
    await conn.execute(
        "INSERT INTO tasks (task_id, database_id, node_name, type, status, trigger, input, error,"
        " result, completed_at)"
        " SELECT u.task_id, $1, u.node_name, u.type, 'skipped', 'scheduled', u.input::jsonb,"
        " u.error, CASE WHEN u.blocking IS NULL THEN NULL"
        "   ELSE jsonb_build_object('blocking_task_id', u.blocking) END, now()"
        " FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])"
        " AS u (task_id, node_name, input, error, blocking, type)",
        database_id,
        [t.task_id for t in skipped],
        [t.node_name for t in skipped],
        [json.dumps(t.input) for t in skipped],
        [t.error for t in skipped],
        [t.blocking_task_id for t in skipped],
        [t.type for t in skipped],
    )


async def get_task_row(db: Executor, task_id: uuid.UUID) -> TaskRow | None:
    record = await db.fetchrow(f"SELECT {_COLUMNS} FROM tasks WHERE task_id = $1", task_id)
    return None if record is None else _row(record)


async def get_steps(db: Executor, task_id: uuid.UUID) -> list[StepRow]:
    records = await db.fetch(
        "SELECT position, name, status, started_at, completed_at, state FROM task_steps"
        " WHERE task_id = $1 ORDER BY position",
        task_id,
    )
    return [StepRow(**dict(r.items())) for r in records]


async def get_task(db: Executor, task_id: str, *, database_id: str | None = None) -> Task:
    """A task with its steps; NotFoundError if absent (or of another database)."""
    parsed = parse_task_id(task_id)
    record = (
        await db.fetchrow(f"SELECT {_VIEW_COLUMNS} FROM {_VIEW_FROM} WHERE t.task_id = $1", parsed)
        if parsed
        else None
    )
    if record is None or (database_id is not None and record["database_id"] != database_id):
        raise NotFoundError(f"task {task_id} not found", details={"task_id": task_id})
    steps = await _step_views(db, [record["task_id"]])
    return _task_view(record, steps.get(record["task_id"], []))


def parse_task_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


async def list_tasks(
    db: Executor,
    *,
    database_id: str | None = None,
    parent_id: uuid.UUID | None = None,
    status: str | None = None,
    type: str | None = None,
    after_task_id: uuid.UUID | None = None,
    limit: int = 100,
    descending: bool = True,
) -> list[Task]:
    """Tasks filtered and paged by id (uuid7 ids sort by creation time): two queries, and only
    the columns the API shows (no input, no lease, no step state)."""
    compare = "<" if descending else ">"
    records = await db.fetch(
        f"SELECT {_VIEW_COLUMNS} FROM {_VIEW_FROM} WHERE ($1::text IS NULL OR t.database_id = $1)"
        " AND ($2::uuid IS NULL OR t.parent_id = $2) AND ($3::text IS NULL OR t.status = $3)"
        f" AND ($4::text IS NULL OR t.type = $4) AND ($5::uuid IS NULL OR t.task_id {compare} $5)"
        f" ORDER BY t.task_id {'DESC' if descending else 'ASC'} LIMIT $6",
        database_id,
        parent_id,
        status,
        type,
        after_task_id,
        limit,
    )
    steps = await _step_views(db, [r["task_id"] for r in records])
    return [_task_view(r, steps.get(r["task_id"], [])) for r in records]


# What the API shows of a task, read straight from the row, with where a node's task acts: the
# instance its input names (instance actions), else the node's primary.
_VIEW_COLUMNS = (
    "t.task_id, t.parent_id, t.database_id, t.node_name, t.type, t.status, t.trigger, t.actor,"
    " t.result, t.error, t.created_at, t.started_at, t.completed_at,"
    " placed.id AS instance_id, placed.host_id"
)
_VIEW_FROM = (
    "tasks t LEFT JOIN LATERAL (SELECT i.id, i.host_id FROM instances i"
    "   WHERE t.node_name IS NOT NULL AND i.database_id = t.database_id"
    "   AND i.node_name = t.node_name"
    "   AND (t.input->>'instance_id' IS NULL OR i.id = t.input->>'instance_id')"
    "   ORDER BY i.role = 'replica', i.host_id LIMIT 1) placed ON true"
)


def _task_view(record: asyncpg.Record, steps: list[TaskStep]) -> Task:
    return Task(
        task_id=str(record["task_id"]),
        parent_id=str(record["parent_id"]) if record["parent_id"] else None,
        scope="database",
        entity_id=record["database_id"],
        database_id=record["database_id"],
        node_name=record["node_name"],
        host_id=record["host_id"],
        instance_id=record["instance_id"],
        type=record["type"],
        status=record["status"],
        trigger=record["trigger"],
        actor=record["actor"],
        created_at=record["created_at"],
        started_at=record["started_at"],
        completed_at=record["completed_at"],
        error=record["error"],
        result=record["result"],
        steps=steps,
    )


async def _step_views(db: Executor, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[TaskStep]]:
    if not task_ids:
        return {}
    records = await db.fetch(
        "SELECT task_id, name, status, started_at, completed_at FROM task_steps"
        " WHERE task_id = ANY($1) ORDER BY task_id, position",
        task_ids,
    )
    found: dict[uuid.UUID, list[TaskStep]] = {}
    for r in records:
        found.setdefault(r["task_id"], []).append(
            TaskStep(
                name=r["name"],
                status=r["status"],
                started_at=r["started_at"],
                completed_at=r["completed_at"],
            )
        )
    return found


async def request_cancel(db: Executor, task_id: str, *, database_id: str) -> Task:
    """Cancel a pending task at once, or ask a running one to stop; finished tasks refuse."""
    parsed = parse_task_id(task_id)
    row = await get_task_row(db, parsed) if parsed else None
    if row is None or row.database_id != database_id:
        raise NotFoundError(f"task {task_id} not found", details={"task_id": task_id})
    await db.execute(
        "UPDATE tasks SET status = CASE status WHEN 'pending' THEN 'canceled'"
        " WHEN 'running' THEN 'canceling' ELSE status END,"
        " completed_at = CASE WHEN status = 'pending' THEN now() ELSE completed_at END,"
        " error = CASE WHEN status = 'pending' THEN 'canceled before it started' ELSE error END,"
        " cancel_requested_at = coalesce(cancel_requested_at, now())"
        " WHERE task_id = $1 AND status IN ('pending', 'running', 'canceling')",
        row.task_id,
    )
    task = await get_task(db, task_id, database_id=database_id)
    if row.status not in ACTIVE_STATUSES:
        raise TaskNotCancelableError(
            f"task {task_id} is already {row.status}", details={"task_id": task_id}
        )
    return task
