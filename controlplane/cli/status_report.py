"""The operator's view of a database, as `controlplane status` prints it (and `-o json` emits
it): instances with state, role and lag, subscriptions, archiving, the last backup and the
recovery window of each node, and the tasks in flight with their current step.

Built from API answers only (pure): `status.py` fetches, `status_render.py` draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from msgspec import Struct, field

from controlplane.models import Archiver, BackupCatalog, Database, Task

# A `.ready` backlog this long means archiving is not keeping up (each file is one WAL
# segment, 16 MiB by default).
READY_BACKLOG_WARNING = 8


class ArchiverStatus(Struct, kw_only=True):
    """`state`: ok, failing (the newest attempt failed), backlog (WAL waits to be archived)."""

    state: str
    last_archived_at: datetime | None
    last_archived_age_seconds: float | None
    failed_count: int
    last_failed_at: datetime | None
    last_failed_wal: str | None
    ready_files: int


class InstanceStatus(Struct, kw_only=True):
    id: str
    node_name: str
    host_id: str
    state: str
    role: str
    timeline: int | None
    lag_bytes: int | None
    lag_seconds: float | None
    observed_at: datetime | None
    error: str | None
    archiver: ArchiverStatus | None


class SubscriptionStatus(Struct, kw_only=True):
    node_name: str
    name: str
    provider_node: str
    status: str
    lag_bytes: int | None


class LastBackup(Struct, kw_only=True):
    label: str
    type: str
    stopped_at: datetime
    age_seconds: float
    size: int | None  # this set's own increment (the whole set for a full one)
    database_size: int


class NodeBackups(Struct, kw_only=True):
    """A node's backups: `configured` false without a backup_config; `error` when the catalog
    could not be read."""

    node_name: str
    configured: bool
    sets: int = 0
    last: LastBackup | None = None
    recovery_window_start: datetime | None = None
    recovery_window_end: datetime | None = None
    error: str | None = None


class TaskInFlight(Struct, kw_only=True):
    task_id: str
    type: str
    node_name: str | None
    status: str
    step: str | None
    step_number: int | None
    steps_total: int
    started_at: datetime | None
    running_seconds: float | None


class DatabaseStatus(Struct, kw_only=True):
    id: str
    state: str
    database_name: str | None
    error: str | None
    instances: list[InstanceStatus]
    subscriptions: list[SubscriptionStatus]
    backups: list[NodeBackups]
    tasks: list[TaskInFlight]


class StatusReport(Struct, kw_only=True):
    observed_at: datetime
    databases: list[DatabaseStatus] = field(default_factory=list)
    error: str | None = None  # set when the server could not be asked (only while watching)


def node_names(database: Database) -> list[str]:
    """The database's nodes in spec order (then any instance's node the spec no longer has)."""
    names = [str(n.get("name")) for n in database.spec.get("nodes", []) if n.get("name")]
    for instance in database.instances:
        if instance.node_name not in names:
            names.append(instance.node_name)
    return names


def backups_configured(database: Database, node: str) -> bool:
    """Whether the node has a backup_config (its own, else the database's)."""
    spec = database.spec
    own: dict[str, Any] = next((n for n in spec.get("nodes", []) if n.get("name") == node), {})
    return bool(own.get("backup_config") or spec.get("backup_config"))


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def archiver_status(archiver: Archiver | None, now: datetime) -> ArchiverStatus | None:
    if archiver is None:
        return None
    failing = archiver.last_failed_at is not None and (
        archiver.last_archived_at is None or archiver.last_failed_at > archiver.last_archived_at
    )
    state = (
        "failing"
        if failing
        else "backlog"
        if archiver.ready_files >= READY_BACKLOG_WARNING
        else "ok"
    )
    return ArchiverStatus(
        state=state,
        last_archived_at=archiver.last_archived_at,
        last_archived_age_seconds=_age(now, archiver.last_archived_at),
        failed_count=archiver.failed_count,
        last_failed_at=archiver.last_failed_at,
        last_failed_wal=archiver.last_failed_wal,
        ready_files=archiver.ready_files,
    )


def node_backups(
    node: str, configured: bool, catalog: BackupCatalog | str | None, now: datetime
) -> NodeBackups:
    """A node's backup summary from its catalog (or the error met reading it)."""
    if not configured:
        return NodeBackups(node_name=node, configured=False)
    if catalog is None or isinstance(catalog, str):
        return NodeBackups(node_name=node, configured=True, error=catalog)
    last = None
    if catalog.backups:
        newest = max(catalog.backups, key=lambda b: b.stopped_at)
        last = LastBackup(
            label=newest.label,
            type=newest.type,
            stopped_at=newest.stopped_at,
            age_seconds=_age(now, newest.stopped_at) or 0.0,
            size=newest.delta if newest.delta is not None else newest.size,
            database_size=newest.size,
        )
    window = catalog.recovery_window
    return NodeBackups(
        node_name=node,
        configured=True,
        sets=len(catalog.backups),
        last=last,
        recovery_window_start=window.earliest if window else None,
        recovery_window_end=window.latest if window else None,
    )


def task_in_flight(task: Task, now: datetime) -> TaskInFlight:
    running = [i for i, s in enumerate(task.steps) if s.status == "running"]
    index = running[0] if running else None
    return TaskInFlight(
        task_id=task.task_id,
        type=task.type,
        node_name=task.node_name,
        status=task.status,
        step=task.steps[index].name if index is not None else None,
        step_number=index + 1 if index is not None else None,
        steps_total=len(task.steps),
        started_at=task.started_at,
        running_seconds=_age(now, task.started_at),
    )


def database_status(
    database: Database,
    catalogs: Mapping[str, BackupCatalog | str | None],
    tasks: Sequence[Task],
    now: datetime,
) -> DatabaseStatus:
    """One database's status from its view, each node's catalog (or error) and its tasks."""
    instances = sorted(database.instances, key=lambda i: (i.node_name, i.role != "primary", i.id))
    return DatabaseStatus(
        id=database.id,
        state=database.state,
        database_name=_text(database.spec.get("database_name")),
        error=database.error,
        instances=[
            InstanceStatus(
                id=i.id,
                node_name=i.node_name,
                host_id=i.host_id,
                state=i.state,
                role=i.role,
                timeline=i.timeline,
                lag_bytes=i.lag_bytes,
                lag_seconds=i.lag_seconds,
                observed_at=i.observed_at,
                error=i.error,
                archiver=archiver_status(i.archiver, now),
            )
            for i in instances
        ],
        subscriptions=[
            SubscriptionStatus(
                node_name=i.node_name,
                name=s.name,
                provider_node=s.provider_node,
                status=s.status,
                lag_bytes=s.lag_bytes,
            )
            for i in instances
            if i.role == "primary"
            for s in i.subscriptions
        ],
        backups=[
            node_backups(node, backups_configured(database, node), catalogs.get(node), now)
            for node in node_names(database)
        ],
        tasks=[task_in_flight(t, now) for t in sorted(tasks, key=lambda t: t.task_id)],
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
