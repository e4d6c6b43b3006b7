"""What each task type takes: one Struct per type, built by every producer (the API, the
scheduler, parent tasks), stored as JSON, and converted once per attempt for the steps
(`StepContext.input_as`). Unknown keys are ignored, so a task written by an older version still
runs."""

from __future__ import annotations

from typing import Any

from msgspec import Struct, field

from controlplane.models import BackupType


class TaskInput(Struct, kw_only=True):
    """Base of every task input; a task type without one takes this (nothing)."""


class SealedInput(TaskInput, kw_only=True):
    """An input carrying secrets sealed with the control plane's key (`nodes.common.seal`)."""

    sealed: str | None = None


class DatabaseInput(TaskInput, kw_only=True):
    """create and update: nodes to populate from a backup, by node name (RestorePlan states)."""

    restore_plans: dict[str, dict[str, Any]] = field(default_factory=dict)


class BackupInput(TaskInput, kw_only=True):
    """node_backup: what a manual request, a schedule or a parent task asked for."""

    type: BackupType = "full"
    annotations: dict[str, str] = field(default_factory=dict)
    repository_id: str | None = None
    # pgBackRest options for this backup (a request's allow-listed `backup_options`).
    options: dict[str, str] = field(default_factory=dict)
    # A scheduled tick's: which schedule, and the tick (RFC 3339) it was due at.
    schedule_id: str | None = None
    tick_at: str | None = None


class DrillInput(TaskInput, kw_only=True):
    """drill: the set to restore (None: the newest when the task runs); a scheduled tick's
    schedule and tick (RFC 3339)."""

    set_label: str | None = None
    schedule_id: str | None = None
    tick_at: str | None = None


class ExpireInput(TaskInput, kw_only=True):
    """expire: the set to remove (with the sets built on it)."""

    label: str
    force: bool = False


class RestoreInput(SealedInput, kw_only=True):
    """restore (the parent): its target nodes, and whether they come back behind the others."""

    target_nodes: list[str] = field(default_factory=list)
    point_in_time: bool = False


class NodeRestoreInput(SealedInput, kw_only=True):
    """node_restore: the decided plan (RestorePlan state) and how this node rejoins."""

    plan: dict[str, Any]
    pre_restore_backup: bool = False
    target_nodes: list[str] = field(default_factory=list)
    join_source: str | None = None


class NodeActionInput(TaskInput, kw_only=True):
    """switchover and failover: the replica to hand over to (else the best one), when (RFC 3339;
    switchover only), and whether a failover may go ahead although the primary is healthy."""

    candidate_instance_id: str | None = None
    scheduled_at: str | None = None
    skip_validation: bool = False


class InstanceActionInput(TaskInput, kw_only=True):
    """restart_instance, stop_instance and start_instance: the instance, and when (RFC 3339;
    restart only)."""

    instance_id: str
    scheduled_at: str | None = None


def restore_plans(value: TaskInput) -> dict[str, dict[str, Any]]:
    """The nodes a create or update populates from a backup ({} for other task types)."""
    return value.restore_plans if isinstance(value, DatabaseInput) else {}


def target_nodes(value: TaskInput) -> list[str]:
    """The nodes an in-place restore brings back ([] for other task types)."""
    return value.target_nodes if isinstance(value, RestoreInput | NodeRestoreInput) else []
