"""stop_instance: stop one instance and keep it down (the monitor starts only instances that
should run). A node's primary with a healthy replica first hands its role over, as in a
switchover, so the node keeps taking writes; a node's only instance stops taking them."""

from __future__ import annotations

from typing import Any

from controlplane.nodes.cluster import NodeCluster, pick_candidate, running_leader
from controlplane.nodes.common import ref_of
from controlplane.store import instances
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import InstanceActionInput
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.restart_instance import check_instance, instance_of
from controlplane.workflows.switchover_node import follow_handover


async def hand_over(ctx: StepContext) -> dict[str, Any]:
    """A cluster's leader hands its role to the best replica before it stops."""
    row = await instance_of(ctx)
    node = row.node_name
    if row.supervisor != "patroni":
        if row.role == "primary":
            await ctx.log.warning(
                f"node {node} has no replica: it takes no writes, and the mesh does not reach "
                "it, until the instance starts again",
                node=node,
            )
        return {}
    cluster = await NodeCluster.of(ctx.services, ctx.database_id, node)
    leader = running_leader(await cluster.view())
    if leader is not None and leader.name == row.id:
        candidate = pick_candidate(await cluster.view(), None, node)
        await ctx.log.info(
            f"node {node}: {row.id} leads; switching over to {candidate.name} first", node=node
        )
        answer = await cluster.hand_over(row.id, candidate.name)
        await ctx.log.info(f"node {node}: patroni: {answer}", node=node)
    elif row.role != "primary":
        return {}  # a replica (or a leader that already handed over and was recorded)
    ctx.state["leader"] = row.id
    await follow_handover(ctx, lossy=False)
    return {"leader": row.id}


async def stop(ctx: StepContext) -> dict[str, Any]:
    row = await instance_of(ctx)
    # Desired first: the monitor must not start it again between the two.
    await instances.set_desired_of(ctx.services.pool, row.id, "stopped", "stopped")
    sink = ctx.log.sink("pg_ctl" if row.supervisor == "pg_ctl" else "patroni", node=row.node_name)
    await ctx.services.orchestrator.stop(ref_of(row), on_line=sink)
    await ctx.log.info(f"instance {row.id} stopped", node=row.node_name)
    return {}


STOP_INSTANCE = Workflow(
    type="stop_instance",
    steps=(
        Step("check_instance", check_instance),
        Step("hand_over", hand_over),
        Step("stop_instance", stop),
    ),
    input_type=InstanceActionInput,
)
