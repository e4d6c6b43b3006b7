"""update: converge the instances to the (already stored) desired spec; only changes act."""

from __future__ import annotations

from controlplane.nodes import mesh, replicas, restore_join
from controlplane.nodes.common import load_spec
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import DatabaseInput
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.steps import converge


async def _on_failure(ctx: StepContext, message: str) -> None:
    # A node restored to join and not linked yet would otherwise keep slots on every member
    # (retaining WAL) and, resubmitted, be linked as if it held every row.
    _, spec = await load_spec(ctx)
    await restore_join.abandon_joins(ctx, spec)
    await converge.settle_after_failure(ctx, message)


UPDATE = Workflow(
    type="update",
    steps=(
        Step("plan_instances", converge.plan_instances),
        Step("init_instances", converge.init_instances),
        Step("configure_instances", converge.configure_instances),
        Step("start_instances", converge.start_instances),
        Step("apply_configuration", converge.apply_configuration),
        Step("create_users", converge.create_users),
        Step("remove_dropped_nodes", converge.remove_dropped_nodes),
        Step("configure_backups", converge.configure_backups),
        Step("create_replication_mesh", mesh.converge_replication),
        Step("start_replicas", replicas.start_replicas),
        Step("mark_available", converge.mark_available),
    ),
    on_failure=_on_failure,
    on_cancel=_on_failure,
    input_type=DatabaseInput,
)
