"""Workflows: one module per operation, each an ordered tuple of idempotent steps."""

from __future__ import annotations

from controlplane.tasks.workflow import Workflow
from controlplane.workflows.create_database import CREATE
from controlplane.workflows.delete_database import DELETE
from controlplane.workflows.maintain_backups import EXPIRE, VERIFY
from controlplane.workflows.node_backup import NODE_BACKUP
from controlplane.workflows.node_restore import NODE_RESTORE
from controlplane.workflows.restore_database import RESTORE
from controlplane.workflows.update_database import UPDATE


def all_workflows() -> dict[str, Workflow]:
    """Task type -> workflow, for the worker."""
    return {
        workflow.type: workflow
        for workflow in (CREATE, UPDATE, DELETE, NODE_BACKUP, VERIFY, EXPIRE, RESTORE, NODE_RESTORE)
    }
