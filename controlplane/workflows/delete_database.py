"""delete: stop and remove every instance, then the record (repositories are kept)."""

from __future__ import annotations

from typing import Any

from controlplane.nodes import replicas
from controlplane.nodes.common import ref_of
from controlplane.store import databases, instances
from controlplane.tasks.context import StepContext
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.steps import converge


async def remove_instances(ctx: StepContext) -> dict[str, Any]:
    """Stop and delete every instance; each is forgotten only once it is gone."""
    pool = ctx.services.pool
    rows = await instances.list_instances(pool, ctx.database_id, replicas=True)
    # Replicas first: a primary stopped while its replicas run would hand over to one.
    for row in sorted(rows, key=lambda r: r.role == "primary"):
        await ctx.services.orchestrator.remove_instance(
            ref_of(row), on_line=ctx.log.sink("pg_ctl", node=row.node_name)
        )
        await instances.delete_instance_by_id(pool, row.id)
        await ctx.log.info(f"node {row.node_name}: instance {row.id} removed", node=row.node_name)
    for node in sorted({r.node_name for r in rows if r.supervisor == "patroni"}):
        await replicas.forget_cluster(ctx.services, ctx.database_id, node)
    return {}


async def delete_record(ctx: StepContext) -> dict[str, Any]:
    await databases.delete_database(ctx.services.pool, ctx.database_id)
    await ctx.log.info(f"database {ctx.database_id} deleted; backup repositories are kept")
    return {}


DELETE = Workflow(
    type="delete",
    steps=(
        Step("remove_instances", remove_instances),
        Step("delete_record", delete_record),
    ),
    on_failure=converge.settle_after_failure,
    on_cancel=converge.settle_after_failure,
)
