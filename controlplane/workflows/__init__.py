"""Workflows: one module per operation, each an ordered tuple of idempotent steps."""

from __future__ import annotations

from controlplane.tasks.workflow import Workflow
from controlplane.workflows.backup_node import NODE_BACKUP
from controlplane.workflows.create_database import CREATE
from controlplane.workflows.delete_database import DELETE
from controlplane.workflows.drill_backup import DRILL
from controlplane.workflows.expire_backup import EXPIRE
from controlplane.workflows.failover_node import FAILOVER
from controlplane.workflows.restart_instance import RESTART_INSTANCE
from controlplane.workflows.restore_database import RESTORE
from controlplane.workflows.restore_node import NODE_RESTORE
from controlplane.workflows.start_instance import START_INSTANCE
from controlplane.workflows.stop_instance import STOP_INSTANCE
from controlplane.workflows.switchover_node import SWITCHOVER
from controlplane.workflows.update_database import UPDATE
from controlplane.workflows.verify_backups import VERIFY


def all_workflows() -> dict[str, Workflow]:
    """Task type -> workflow, for the worker."""
    return {
        workflow.type: workflow
        for workflow in (
            CREATE,
            UPDATE,
            DELETE,
            NODE_BACKUP,
            VERIFY,
            DRILL,
            EXPIRE,
            RESTORE,
            NODE_RESTORE,
            SWITCHOVER,
            FAILOVER,
            RESTART_INSTANCE,
            STOP_INSTANCE,
            START_INSTANCE,
        )
    }
