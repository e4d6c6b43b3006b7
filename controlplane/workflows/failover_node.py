"""failover: promote one of a node's replicas without its primary's consent, for a primary
that is lost or must be abandoned. Refused while the primary is healthy (a switchover loses
nothing; a failover may lose what the primary had not streamed), unless told otherwise.

When Patroni fails over by itself, the monitor queues this task (trigger `system`) naming the
promoted replica: its steps then find the candidate leading, and the mesh follows it, so the
failover shows in the task list with its log like one an operator asked for."""

from __future__ import annotations

from typing import Any

from controlplane.errors import DependencyError, PreconditionError
from controlplane.nodes.cluster import NodeCluster, describe, pick_candidate, running_leader
from controlplane.orchestrator.patroni import ClusterView
from controlplane.store import instances
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import NodeActionInput
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.switchover_node import follow_handover


def healthy_primary_refusal(node: str, leader: str) -> str:
    return (
        f"node {node}'s primary {leader} is running: a failover could lose what it has not "
        "streamed yet; use a switchover, or set skip_validation to fail over anyway"
    )


async def check_cluster(ctx: StepContext) -> dict[str, Any]:
    """A replica can take over, and the primary is down (or the request says go ahead)."""
    if "candidate" in ctx.state:
        return {}
    assert ctx.task.node_name is not None
    node = ctx.task.node_name
    request = ctx.input_as(NodeActionInput)
    cluster = await NodeCluster.of(ctx.services, ctx.database_id, node)
    view = await cluster.view()
    leader = running_leader(view)
    if leader is not None and leader.name == request.candidate_instance_id:
        return await _promoted_by_patroni(ctx, node, leader.name, view)
    if leader is not None and not request.skip_validation:
        raise PreconditionError(healthy_primary_refusal(node, leader.name))
    candidate = pick_candidate(view, request.candidate_instance_id, node)
    await ctx.log.info(f"node {node}: {describe(view)}", node=node)
    await ctx.log.warning(
        f"node {node}: failing over to {candidate.name}"
        + (f" (primary {leader.name} is running)" if leader is not None else ""),
        node=node,
    )
    return {"leader": view.leader.name if view.leader else None, "candidate": candidate.name}


async def _promoted_by_patroni(
    ctx: StepContext, node: str, promoted: str, view: ClusterView
) -> dict[str, Any]:
    """The candidate leads already: Patroni failed over by itself (the monitor queues such a
    task when it sees it), or an earlier attempt of this task got it done. What is left is
    the mesh following it, from the primary the store still names."""
    primary = await instances.get_instance(ctx.services.pool, ctx.database_id, node)
    old = primary.id if primary is not None and primary.id != promoted else None
    await ctx.log.info(f"node {node}: {describe(view)}", node=node)
    if old is not None:
        await ctx.log.warning(
            f"node {node}: Patroni promoted {promoted} in place of {old}, which it lost",
            node=node,
        )
    return {"leader": old, "candidate": promoted}


async def fail_over(ctx: StepContext) -> dict[str, Any]:
    """Ask Patroni to promote the candidate, unless it leads already."""
    assert ctx.task.node_name is not None
    node = ctx.task.node_name
    cluster = await NodeCluster.of(ctx.services, ctx.database_id, node)
    leader = running_leader(await cluster.view())
    candidate = ctx.state["candidate"]
    if leader is not None and leader.name == candidate:
        await ctx.log.info(f"node {node}: {candidate} leads already", node=node)
        return {}
    row = cluster.row(candidate)
    if row is None:
        raise PreconditionError(f"instance {candidate} of node {node} is gone")
    async with await cluster.client(row) as client:
        try:
            answer = await client.failover(candidate)
        except DependencyError as exc:
            # Patroni answers 503 when it could not see the outcome within its own wait; the
            # next step reads the cluster and waits for the promotion.
            if exc.details.get("status_code") != 503:
                raise
            answer = exc.message
    await ctx.log.info(f"node {node}: patroni: {answer}", node=node)
    return {}


async def follow_primary(ctx: StepContext) -> dict[str, Any]:
    """The mesh follows the promoted replica, from its slots' positions."""
    await follow_handover(ctx, lossy=True)
    return {}


FAILOVER = Workflow(
    type="failover",
    steps=(
        Step("check_cluster", check_cluster),
        Step("fail_over", fail_over),
        Step("follow_primary", follow_primary),
    ),
    input_type=NodeActionInput,
)
