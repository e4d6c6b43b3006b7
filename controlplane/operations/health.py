"""A database's health in one view: its state, and per node the archiver, replica lag,
subscriptions, backup outcomes per type and recovery window (`GET /v1/databases/{id}/health`).

The instance facts are the monitor's last observation (as in the database view), the backup
outcomes and recovery window are worked out from the tasks the store recorded, exactly as
`/metrics` and its alerts see them: the view never runs pgBackRest and never waits on an
instance.
"""

from __future__ import annotations

from datetime import datetime

from controlplane.models import (
    BackupOutcome,
    Database,
    DatabaseHealth,
    NodeHealth,
    RecoveryWindow,
    ReplicaLag,
)
from controlplane.operations.databases import get_database
from controlplane.server.metrics import (
    NodeBackups,
    backup_configs,
    backup_outcomes,
    recovery_window_starts,
    type_order,
)
from controlplane.tasks.context import Services


async def database_health(services: Services, database_id: str) -> DatabaseHealth:
    view = await get_database(services, database_id)  # 404 for an unknown database
    configs = await backup_configs(services.pool, database_id)
    outcomes = await backup_outcomes(services.pool, configs, database_id)
    starts = await recovery_window_starts(services.pool, configs, database_id)
    nodes = sorted({i.node_name for i in view.instances})
    return DatabaseHealth(
        database_id=view.id,
        state=view.state,
        error=view.error,
        nodes=[
            _node(view, name, outcomes.get((view.id, name)), starts.get((view.id, name)))
            for name in nodes
        ],
    )


def _node(
    view: Database, name: str, backups: NodeBackups | None, start: datetime | None
) -> NodeHealth:
    members = [i for i in view.instances if i.node_name == name]
    primary = next((i for i in members if i.role == "primary"), None)
    archiver = primary.archiver if primary is not None else None
    window = None
    if start is not None:
        archived = archiver.last_archived_at if archiver is not None else None
        # The newest point reachable: the last WAL in the archive (never before the set).
        window = RecoveryWindow(earliest=start, latest=max(start, archived or start))
    return NodeHealth(
        node_name=name,
        primary_instance_id=primary.id if primary is not None else None,
        archiver=archiver,
        replicas=[
            ReplicaLag(
                instance_id=i.id, state=i.state, lag_bytes=i.lag_bytes, lag_seconds=i.lag_seconds
            )
            for i in members
            if i.role == "replica"
        ],
        subscriptions=primary.subscriptions if primary is not None else [],
        backups=[
            BackupOutcome(
                type=kind,
                last_success_at=span[1] if (span := backups.done.get(kind)) else None,
                last_failure_at=backups.failed.get(kind),
            )
            for kind in sorted(backups.kinds, key=type_order)
        ]
        if backups is not None
        else [],
        recovery_window=window,
    )
