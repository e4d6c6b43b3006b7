"""switchover: hand a node's primary role to one of its replicas, now or at a set time, losing
no committed row: Patroni stops the primary cleanly, so the replica it promotes has all of its
WAL. Then the mesh follows the new primary, and the old one streams from it."""

from __future__ import annotations

from typing import Any

from controlplane.errors import DependencyError, PreconditionError
from controlplane.nodes.cluster import (
    NodeCluster,
    describe,
    pick_candidate,
    running_leader,
    wait_until,
)
from controlplane.nodes.common import load_spec
from controlplane.nodes.following import follow_new_primary
from controlplane.orchestrator.patroni import ClusterMember, ClusterView
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import NodeActionInput
from controlplane.tasks.workflow import Step, Workflow

# How long Patroni may take to promote the replica and restart the old primary as its replica.
_HANDOVER_SECONDS = 180.0


def _node(ctx: StepContext) -> str:
    assert ctx.task.node_name is not None
    return ctx.task.node_name


async def check_cluster(ctx: StepContext) -> dict[str, Any]:
    """The node has a running primary and a healthy replica to hand over to."""
    if "leader" in ctx.state:  # decided by an earlier attempt of this task
        return {}
    node = _node(ctx)
    request = ctx.input_as(NodeActionInput)
    cluster = await NodeCluster.of(ctx.services, ctx.database_id, node)
    view = await cluster.view()
    leader = running_leader(view)
    if leader is None:
        raise PreconditionError(
            f"node {node} has no running primary ({describe(view)}): a switchover needs one; "
            "a failover promotes a replica without it"
        )
    candidate = pick_candidate(view, request.candidate_instance_id, node)
    await ctx.log.info(f"node {node}: {describe(view)}", node=node)
    await ctx.log.info(
        f"node {node}: switching over from {leader.name} to {candidate.name}", node=node
    )
    return {"leader": leader.name, "candidate": candidate.name}


async def wait_scheduled(ctx: StepContext) -> dict[str, Any]:
    """Until the requested time, if any."""
    await wait_until(ctx, ctx.input_as(NodeActionInput).scheduled_at, "the switchover")
    return {}


async def switch_over(ctx: StepContext) -> dict[str, Any]:
    """Ask Patroni for the switchover, unless the primary role already moved (an earlier
    attempt asked and crashed before it recorded the answer)."""
    node = _node(ctx)
    cluster = await NodeCluster.of(ctx.services, ctx.database_id, node)
    leader = running_leader(await cluster.view())
    if leader is not None and leader.name != ctx.state["leader"]:
        await ctx.log.info(f"node {node}: {leader.name} leads already", node=node)
        return {}
    answer = await cluster.hand_over(ctx.state["leader"], ctx.state["candidate"])
    await ctx.log.info(f"node {node}: patroni: {answer}", node=node)
    return {}


async def follow_primary(ctx: StepContext) -> dict[str, Any]:
    """Once the new primary runs: the mesh follows it, the store records it, and the old
    primary comes back as its replica."""
    await follow_handover(ctx, lossy=False)
    return {}


async def follow_handover(ctx: StepContext, *, lossy: bool) -> None:
    """The steps a switchover and a failover end with (see `follow_new_primary`)."""
    node = _node(ctx)
    _, spec = await load_spec(ctx)
    cluster = await NodeCluster.of(ctx.services, ctx.database_id, node)
    old = ctx.state.get("leader")

    def new_leader(view: ClusterView) -> ClusterMember | None:
        leader = running_leader(view)
        return leader if leader is not None and leader.name != old else None

    leader = await cluster.wait_for(new_leader, "the new primary", _HANDOVER_SECONDS)
    row = cluster.row(leader.name)
    if row is None:
        raise PreconditionError(f"patroni member {leader.name} is not an instance of node {node}")
    restarted = await follow_new_primary(
        ctx.services, ctx.database_id, spec.database_name, row, lossy=lossy, log=ctx.log
    )
    await ctx.log.info(
        f"node {node}: {leader.name} is the primary; the mesh follows it"
        + (f" (restarted {', '.join(restarted)})" if restarted else ""),
        node=node,
    )

    def all_streaming(view: ClusterView) -> ClusterMember | None:
        # After a switchover the old primary follows the new one; after a failover it may be
        # lost for good, and comes back by itself if ever.
        if not lossy and old is not None and not any(m.name == old for m in view.replicas):
            return None
        if all(m.state in ("streaming", "running") for m in view.replicas):
            return view.leader
        return None

    try:
        await cluster.wait_for(all_streaming, "every replica streaming", _HANDOVER_SECONDS)
    except DependencyError as exc:  # the handover stands; a replica late to follow is reported
        await ctx.log.warning(f"node {node}: {exc}", node=node)
    await ctx.log.info(f"node {node}: {describe(await cluster.view())}", node=node)


SWITCHOVER = Workflow(
    type="switchover",
    steps=(
        Step("check_cluster", check_cluster),
        Step("wait_scheduled", wait_scheduled),
        Step("switch_over", switch_over),
        Step("follow_primary", follow_primary),
    ),
    input_type=NodeActionInput,
)
