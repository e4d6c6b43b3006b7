"""restore (in place): the parent of one node_restore per target node, run in parallel; once all
are back it recreates the mesh, so a restored node never streams from a node still restoring."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from controlplane.errors import ChildTaskFailedError
from controlplane.nodes import child_tasks, mesh, restore_replicas
from controlplane.nodes.common import load_spec, unseal
from controlplane.nodes.restore_outcome import partial_restore_note
from controlplane.spec.models import RestoreConfig
from controlplane.store import databases, instances, tasks
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import RestoreInput
from controlplane.tasks.workflow import Step, Workflow


async def _children(ctx: StepContext) -> list[uuid.UUID]:
    found = await tasks.list_tasks(
        ctx.services.pool, parent_id=ctx.task.task_id, type="node_restore", descending=False
    )
    return [uuid.UUID(t.task_id) for t in found]


async def run_node_restores(ctx: StepContext) -> dict[str, Any]:
    """Wait for every node_restore child; fail, naming each failed node, if any did."""
    failures = []
    for child_id in await _children(ctx):
        child = await child_tasks.wait_for(ctx, child_id)
        if child.status != "completed":
            failures.append(f"node {child.node_name}: {child.status} ({child.error})")
    if failures:
        raise ChildTaskFailedError("restore failed on " + "; ".join(failures))
    return {}


async def recreate_subscriptions(ctx: StepContext) -> dict[str, Any]:
    """Link the restored nodes with every other node again, without copying data (nodes
    restored together from one point are identical)."""
    return await mesh.converge_replication(ctx)


async def rebuild_replicas(ctx: StepContext) -> dict[str, Any]:
    """The replicas of the restored nodes, made again from their restored primaries once the
    mesh is linked (as a create makes them after its mesh)."""
    _, spec = await load_spec(ctx)
    targets = set(ctx.input_as(RestoreInput).target_nodes)
    rebuilt = await restore_replicas.rebuild(ctx, spec, targets)
    return {"replicas_rebuilt": rebuilt}


async def finish_restore(ctx: StepContext) -> dict[str, Any]:
    _, spec = await load_spec(ctx)
    request = ctx.input_as(RestoreInput)
    targets = set(request.target_nodes)
    config = msgspec.convert(unseal(ctx.services, ctx.task)["restore_config"], RestoreConfig)
    note = partial_restore_note(
        database_id=ctx.database_id,
        targets=targets,
        others=[n.name for n in spec.nodes if n.name not in targets],
        point_in_time=request.point_in_time,
        source_database_id=config.source_database_id,
        restore_options=config.restore_options,
    )
    if note is not None:
        await ctx.log.write(*note)
    await databases.set_state(ctx.services.pool, ctx.database_id, "available")
    return {"result": {"restored_nodes": sorted(targets)}}


async def _on_failure(ctx: StepContext, message: str) -> None:
    await databases.set_state(ctx.services.pool, ctx.database_id, "failed", error=message)


async def _on_cancel(ctx: StepContext, message: str) -> None:
    """Cancel the node restores still running and wait for their clean-up."""
    pool = ctx.services.pool
    for child_id in await _children(ctx):
        row = await tasks.get_task_row(pool, child_id)
        if row is not None and row.status in ("pending", "running"):
            await tasks.request_cancel(pool, str(child_id), database_id=ctx.database_id)
    for child_id in await _children(ctx):
        await child_tasks.wait_for(ctx, child_id)
    rows = await instances.list_instances(pool, ctx.database_id)
    state = "available" if all(r.state == "available" for r in rows) else "failed"
    await databases.set_state(pool, ctx.database_id, state, error="restore was canceled")


RESTORE = Workflow(
    type="restore",
    steps=(
        Step("run_node_restores", run_node_restores),
        Step("recreate_subscriptions", recreate_subscriptions),
        Step("rebuild_replicas", rebuild_replicas),
        Step("finish_restore", finish_restore),
    ),
    on_failure=_on_failure,
    on_cancel=_on_cancel,
    input_type=RestoreInput,
)
