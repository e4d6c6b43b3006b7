"""restart_instance: restart one instance's Postgres, now or at a set time (Patroni restarts a
member of a node with replicas in place, keeping its role); then the subscriptions that reach
it reconnect at once rather than after pglogical's 180 s retry."""

from __future__ import annotations

from typing import Any

from controlplane.errors import NotFoundError
from controlplane.nodes.cluster import NodeCluster, wait_until
from controlplane.nodes.common import load_spec, ref_of
from controlplane.nodes.following import restart_own_subscriptions, restart_subscriptions_to
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import InstanceActionInput
from controlplane.tasks.workflow import Step, Workflow


async def instance_of(ctx: StepContext) -> InstanceRow:
    """The instance the task acts on, as the store has it now."""
    wanted = ctx.input_as(InstanceActionInput).instance_id
    row = await instances.find_instance(ctx.services.pool, ctx.database_id, wanted)
    if row is None:
        raise NotFoundError(f"instance {wanted} of database {ctx.database_id} not found")
    return row


async def reconnect_mesh(ctx: StepContext, row: InstanceRow) -> None:
    """When `row` is its node's primary: restart its subscriptions, and the other nodes'
    subscriptions to it (their workers failed while it was down)."""
    if row.role != "primary":
        return
    _, spec = await load_spec(ctx)
    own = await restart_own_subscriptions(ctx.services, row, spec.database_name)
    await restart_subscriptions_to(
        ctx.services, ctx.database_id, spec.database_name, row.node_name, ctx.log
    )
    if own:
        await ctx.log.info(f"node {row.node_name}: restarted {', '.join(own)}", node=row.node_name)


async def check_instance(ctx: StepContext) -> dict[str, Any]:
    row = await instance_of(ctx)
    await ctx.log.info(
        f"instance {row.id} ({row.role} of node {row.node_name} on host {row.host_id})",
        node=row.node_name,
    )
    return {}


async def wait_scheduled(ctx: StepContext) -> dict[str, Any]:
    await wait_until(ctx, ctx.input_as(InstanceActionInput).scheduled_at, "the restart")
    return {}


async def restart(ctx: StepContext) -> dict[str, Any]:
    """Stop and start the instance's Postgres (through Patroni for a member of a cluster)."""
    row = await instance_of(ctx)
    node = row.node_name
    if row.supervisor == "patroni":
        cluster = await NodeCluster.of(ctx.services, ctx.database_id, node)
        async with await cluster.client(row) as client:
            await client.restart(timeout_seconds=600)
    else:
        sink = ctx.log.sink("pg_ctl", node=node)
        await ctx.services.orchestrator.stop(ref_of(row), on_line=sink)
        await ctx.services.orchestrator.start(ref_of(row), on_line=sink)
    await instances.set_desired_of(ctx.services.pool, row.id, "running", "available")
    await ctx.log.info(f"instance {row.id} restarted", node=node)
    return {}


async def reconnect(ctx: StepContext) -> dict[str, Any]:
    await reconnect_mesh(ctx, await instance_of(ctx))
    return {}


RESTART_INSTANCE = Workflow(
    type="restart_instance",
    steps=(
        Step("check_instance", check_instance),
        Step("wait_scheduled", wait_scheduled),
        Step("restart_instance", restart),
        Step("reconnect_mesh", reconnect),
    ),
    input_type=InstanceActionInput,
)
