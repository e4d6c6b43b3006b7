"""Work a task hands to child tasks (a pre-restore backup, a protecting backup) and waits for."""

from __future__ import annotations

import asyncio
import uuid

from controlplane.errors import ChildTaskFailedError, OperationInProgressError
from controlplane.store import tasks
from controlplane.store.tasks import TaskRow
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import BackupInput

_POLL = 0.1


async def run_child_backup(ctx: StepContext, *, trigger: str) -> str:
    """A full backup of this task's node as its own node_backup task (so it shows in the
    catalog and the task list), waited for. A resumed step adopts the child it created."""
    existing = [
        t
        for t in await tasks.list_tasks(
            ctx.services.pool, parent_id=ctx.task.task_id, type="node_backup"
        )
        if t.trigger == trigger and t.status != "failed"
    ]
    if existing:
        child_id = uuid.UUID(existing[0].task_id)
    else:
        child_id = await _insert_backup(ctx, trigger)
    await ctx.log.info(f"waiting for {trigger.replace('_', '-')} backup task {child_id}")
    child = await wait_for(ctx, child_id)
    if child.status != "completed":
        raise ChildTaskFailedError(
            f"{trigger.replace('_', '-')} backup task {child_id} {child.status}: {child.error}"
        )
    return str(child_id)


async def _insert_backup(ctx: StepContext, trigger: str) -> uuid.UUID:
    from controlplane.workflows.backup_node import NODE_BACKUP

    while True:
        try:
            async with ctx.services.pool.acquire() as conn:
                row = await tasks.insert_task(
                    conn,
                    database_id=ctx.database_id,
                    type="node_backup",
                    node_name=ctx.task.node_name,
                    parent_id=ctx.task.task_id,
                    trigger=trigger,
                    actor=ctx.task.actor,
                    steps=NODE_BACKUP.step_names,
                    input=BackupInput(),
                )
            return row.task_id
        except OperationInProgressError as busy:
            await ctx.log.info(f"node busy with task {busy.task_id}; waiting to back it up")
            await asyncio.sleep(_POLL)


async def wait_for(ctx: StepContext, task_id: uuid.UUID) -> TaskRow:
    """Poll a task until it is terminal (a cancel of this task interrupts the wait)."""
    while True:
        row = await tasks.get_task_row(ctx.services.pool, task_id)
        if row is None:
            raise ChildTaskFailedError(f"task {task_id} disappeared")
        if row.status in ("completed", "failed", "canceled", "skipped"):
            return row
        await asyncio.sleep(_POLL)
