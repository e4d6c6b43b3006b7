"""Steps and helpers every task on one node's backups shares (node_backup, verify, expire)."""

from __future__ import annotations

from typing import Any

from controlplane.errors import PreconditionError
from controlplane.nodes import backups
from controlplane.nodes.common import load_spec, ref_of
from controlplane.store import databases, instances
from controlplane.tasks.context import StepContext


async def node_setup(ctx: StepContext) -> backups.BackupSetup:
    """The task's node, ready for pgBackRest: refused when it has no instance or no
    backup_config."""
    _, spec = await load_spec(ctx)
    node = ctx.task.node_name or ""
    row = await instances.get_instance(ctx.services.pool, ctx.database_id, node)
    if row is None:
        raise PreconditionError(f"node {node} of {ctx.database_id} has no instance")
    # The node's replicas too (pg2, …): pgBackRest then finds the primary among them, and a
    # backup may come from a standby (backup-standby). Not those removed while the node is
    # restored (desired stopped until they are rebuilt).
    replicas = await instances.list_replicas(ctx.services.pool, ctx.database_id, node)
    others = [r for r in replicas if r.desired == "running"]
    setup = await backups.backup_setup(ctx.services, spec, row, ref_of(row), standbys=others)
    if not setup.enabled:
        raise PreconditionError(f"node {node} of {ctx.database_id} has no backup_config")
    return setup


async def write_config(ctx: StepContext) -> dict[str, Any]:
    """Render the node's pgBackRest config from the current spec."""
    setup = await node_setup(ctx)
    await backups.write_backup_files(ctx.services, setup)
    return {}


async def settle(ctx: StepContext, message: str | None = None) -> None:
    """The node and its database are no longer backing up (whatever the task's outcome)."""
    pool = ctx.services.pool
    node = ctx.task.node_name or ""
    row = await instances.get_instance(pool, ctx.database_id, node)
    if row is not None and row.state == "backing_up":
        await instances.set_state_of(pool, row.id, "available")
    await databases.clear_backing_up(pool, ctx.database_id, ctx.task.task_id)


async def on_end(ctx: StepContext, message: str) -> None:
    await settle(ctx, message)
