"""update: converge the instances to the (already stored) desired spec; only changes act."""

from __future__ import annotations

from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows import converge, mesh

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
        Step("create_replication_mesh", mesh.converge_replication),
        Step("configure_backups", converge.configure_backups),
        Step("mark_available", converge.mark_available),
    ),
    on_failure=converge.settle_after_failure,
    on_cancel=converge.settle_after_failure,
)
