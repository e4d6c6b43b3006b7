"""create: bring up one instance per node, create users and the database."""

from __future__ import annotations

from controlplane.nodes import mesh, replicas
from controlplane.store import databases
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import DatabaseInput
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.steps import converge


async def _on_failure(ctx: StepContext, message: str) -> None:
    # A half-created database must not keep running unattended: stop what was started. The
    # instances stay (stopped) so the failure can be looked at; an update or a delete follows.
    await converge.stop_all_instances(ctx, message)
    await databases.set_state(ctx.services.pool, ctx.database_id, "failed", error=message)


async def _on_cancel(ctx: StepContext, message: str) -> None:
    await converge.stop_all_instances(ctx, "create was canceled")
    await databases.set_state(
        ctx.services.pool, ctx.database_id, "failed", error="create was canceled"
    )


CREATE = Workflow(
    type="create",
    steps=(
        Step("plan_instances", converge.plan_instances),
        Step("init_instances", converge.init_instances),
        Step("configure_instances", converge.configure_instances),
        Step("start_instances", converge.start_instances),
        Step("create_users", converge.create_users),
        Step("configure_backups", converge.configure_backups),
        Step("create_replication_mesh", mesh.converge_replication),
        Step("start_replicas", replicas.start_replicas),
        Step("mark_available", converge.mark_available),
    ),
    on_failure=_on_failure,
    on_cancel=_on_cancel,
    input_type=DatabaseInput,
)
