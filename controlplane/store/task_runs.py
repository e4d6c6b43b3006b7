"""Running tasks: claim with SKIP LOCKED, leases and heartbeats, step progress, completion."""

from __future__ import annotations

import uuid
from typing import Any

from controlplane.store.pool import Executor
from controlplane.store.tasks import _COLUMNS, TaskRow, _row


async def claim_next_task(db: Executor, *, worker_id: str, lease_seconds: float) -> TaskRow | None:
    """Take one runnable task: pending, or running/canceling whose lease expired (worker died).

    A parent task waiting on its children holds its own lease like any other running task.
    """
    record = await db.fetchrow(
        f"""
        UPDATE tasks SET
            status = CASE WHEN status = 'pending' THEN 'running' ELSE status END,
            started_at = coalesce(started_at, now()),
            lease_owner = $1,
            lease_expires_at = now() + make_interval(secs => $2),
            attempts = attempts + 1
        WHERE task_id = (
            SELECT task_id FROM tasks
            WHERE status = 'pending'
               OR (status IN ('running', 'canceling') AND lease_expires_at < now())
            ORDER BY created_at
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        )
        RETURNING {_COLUMNS}
        """,
        worker_id,
        lease_seconds,
    )
    return None if record is None else _row(record)


async def renew_lease(
    db: Executor, task_id: uuid.UUID, *, worker_id: str, lease_seconds: float
) -> tuple[bool, bool]:
    """Extend our lease; returns (still ours, cancel requested)."""
    record = await db.fetchrow(
        "UPDATE tasks SET lease_expires_at = now() + make_interval(secs => $3)"
        " WHERE task_id = $1 AND lease_owner = $2 AND status IN ('running', 'canceling')"
        " RETURNING cancel_requested_at IS NOT NULL AS cancel",
        task_id,
        worker_id,
        lease_seconds,
    )
    if record is None:
        return False, False
    return True, bool(record["cancel"])


async def expire_leases_of(db: Executor, worker_id: str) -> int:
    """Give up every lease a worker holds (clean shutdown: another server may resume at once)."""
    result = await db.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second'"
        " WHERE lease_owner = $1 AND status IN ('running', 'canceling')",
        worker_id,
    )
    return int(result.split()[-1])


async def start_step(db: Executor, task_id: uuid.UUID, position: int) -> None:
    await db.execute(
        "UPDATE task_steps SET status = 'running', started_at = coalesce(started_at, now())"
        " WHERE task_id = $1 AND position = $2 AND status <> 'completed'",
        task_id,
        position,
    )


async def complete_step(
    db: Executor, task_id: uuid.UUID, position: int, *, worker_id: str, state: dict[str, Any]
) -> bool:
    """Mark a step done with its state, only while we still hold the lease (one transaction)."""
    result = await db.execute(
        "UPDATE task_steps s SET status = 'completed', completed_at = now(), state = $3"
        " FROM tasks t WHERE s.task_id = $1 AND s.position = $2 AND t.task_id = s.task_id"
        " AND t.lease_owner = $4",
        task_id,
        position,
        state,
        worker_id,
    )
    return result.endswith(" 1")


async def end_open_steps(db: Executor, task_id: uuid.UUID, status: str) -> None:
    """Close the step that was running when the task failed or was canceled."""
    await db.execute(
        "UPDATE task_steps SET status = $2, completed_at = now()"
        " WHERE task_id = $1 AND status = 'running'",
        task_id,
        status,
    )


async def finish_task(
    db: Executor,
    task_id: uuid.UUID,
    *,
    worker_id: str,
    status: str,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Move our task to a terminal status and drop the lease; False if it was not ours."""
    done = await db.execute(
        "UPDATE tasks SET status = $3, error = $4, result = coalesce($5, result),"
        " completed_at = now(), lease_owner = NULL, lease_expires_at = NULL"
        " WHERE task_id = $1 AND lease_owner = $2 AND status IN ('running', 'canceling')",
        task_id,
        worker_id,
        status,
        error,
        result,
    )
    return done.endswith(" 1")


async def prune_finished_tasks(db: Executor, *, older_than_days: int) -> int:
    """Delete finished top-level tasks (with children, steps, logs) older than the retention."""
    done = await db.execute(
        "DELETE FROM tasks WHERE parent_id IS NULL AND completed_at IS NOT NULL"
        " AND completed_at < now() - make_interval(days => $1)",
        older_than_days,
    )
    return int(done.split()[-1])
