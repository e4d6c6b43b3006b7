"""start_instance: start a stopped instance and let the monitor keep it running again. A member
of a node with replicas rejoins its cluster (as a replica of whoever leads now); a node's
primary gets its subscriptions, and the other nodes', reconnected at once."""

from __future__ import annotations

from typing import Any

from controlplane.nodes.cluster import NodeCluster
from controlplane.nodes.common import ref_of
from controlplane.orchestrator.patroni import ClusterMember, ClusterView
from controlplane.store import instances
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import InstanceActionInput
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.restart_instance import check_instance, instance_of, reconnect

_REJOIN_SECONDS = 300.0


async def start(ctx: StepContext) -> dict[str, Any]:
    row = await instance_of(ctx)
    node = row.node_name
    sink = ctx.log.sink("pg_ctl" if row.supervisor == "pg_ctl" else "patroni", node=node)
    await ctx.services.orchestrator.start(ref_of(row), on_line=sink)
    if row.supervisor == "patroni":
        cluster = await NodeCluster.of(ctx.services, ctx.database_id, node)

        def member_running(view: ClusterView) -> ClusterMember | None:
            return next(
                (
                    m
                    for m in view.members
                    if m.name == row.id and m.state in ("running", "streaming")
                ),
                None,
            )

        member = await cluster.wait_for(member_running, f"{row.id} running", _REJOIN_SECONDS)
        await ctx.log.info(f"node {node}: {row.id} is a {member.role} again", node=node)
    await instances.set_desired_of(ctx.services.pool, row.id, "running", "available")
    await ctx.log.info(f"instance {row.id} started", node=node)
    return {}


START_INSTANCE = Workflow(
    type="start_instance",
    steps=(
        Step("check_instance", check_instance),
        Step("start_instance", start),
        Step("reconnect_mesh", reconnect),
    ),
    input_type=InstanceActionInput,
)
