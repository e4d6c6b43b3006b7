"""Backup operations the API offers: start a backup, read the catalog, verify, expire a set,
and named restore points."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from controlplane.errors import (
    ConflictError,
    DatabaseNotModifiableError,
    DependencyError,
    InvalidInputError,
    NotFoundError,
)
from controlplane.models import BackupCatalog, Drill, RepositoryStatus, RestorePoint, Task
from controlplane.nodes import backups, restore_targets
from controlplane.nodes.common import ref_of, spec_of
from controlplane.nodes.expiry import expire_refusal
from controlplane.nodes.restore_targets import RESTORE_POINT_ARCHIVE_SECONDS
from controlplane.pgbackrest import info as pgb_info
from controlplane.spec import parse_backup_request, parse_request, parse_verify_request
from controlplane.spec.models import repository_id
from controlplane.spec.restore_options import RestorePointRequest
from controlplane.store import databases, drills, instances, restore_points, tasks
from controlplane.store.instances import InstanceRow
from controlplane.store.restore_points import RestorePointRow
from controlplane.tasks.context import Services
from controlplane.tasks.inputs import BackupInput, DrillInput, ExpireInput, TaskInput
from controlplane.workflows import all_workflows

_BUSY_STATES = ("creating", "deleting", "restoring")


async def _node(
    services: Services, database_id: str, node: str, *, unconfigured: str = ""
) -> tuple[Any, InstanceRow, backups.BackupSetup]:
    row = await databases.get_database(services.pool, database_id)
    spec = spec_of(services, row)
    instance = await _instance(services, database_id, node)
    try:
        setup = await backups.backup_setup(services, spec, instance, ref_of(instance))
    except ValueError as exc:
        # A spec stored before its rules were checked up front: say what to fix, not 500.
        raise ConflictError(
            f"the backup_config of node {node} of {database_id} cannot be used ({exc}): "
            "correct it with an update",
            details={"node": node},
        ) from None
    if not setup.enabled:
        message = f"node {node} of {database_id} has no backup_config{unconfigured}"
        raise InvalidInputError([{"path": "node", "message": message}])
    return row, instance, setup


async def _instance(services: Services, database_id: str, node: str) -> InstanceRow:
    instance = await instances.get_instance(services.pool, database_id, node)
    if instance is None:
        await databases.get_database(services.pool, database_id)  # 404 for the database first
        raise NotFoundError(
            f"node {node} of database {database_id} not found",
            details={"database_id": database_id, "node": node},
        )
    return instance


async def enqueue_node_task(
    services: Services, database_id: str, node: str, type: str, input: TaskInput, actor: str
) -> Task:
    """Queue a task on one node of a database that no operation is making, restoring or
    removing."""
    row = await databases.get_database(services.pool, database_id)
    if row.state in _BUSY_STATES:
        raise DatabaseNotModifiableError(f"database {database_id} is {row.state}")
    async with services.pool.acquire() as conn:
        task = await tasks.insert_task(
            conn,
            database_id=database_id,
            type=type,
            node_name=node,
            steps=all_workflows()[type].step_names,
            actor=actor,
            input=input,
        )
    return await tasks.get_task(services.pool, str(task.task_id))


async def start_backup(
    services: Services,
    database_id: str,
    node: str,
    body: bytes,
    actor: str,
    *,
    trigger: str = "manual",
) -> Task:
    """Validate a backup request and enqueue a node_backup task."""
    request = parse_backup_request(body)
    _, _, setup = await _node(services, database_id, node)
    if request.backup_options.get("backup-standby") == "y" and not await instances.list_replicas(
        services.pool, database_id, node
    ):
        message = f"node {node} has no replica to back up from: add a host to its host_ids"
        raise InvalidInputError([{"path": "backup_options.backup-standby", "message": message}])
    if request.repository_id is not None:
        setup.repo_index(request.repository_id)
    task_input = BackupInput(
        type=request.type,
        annotations=request.annotations,
        repository_id=request.repository_id,
        options=request.backup_options,
    )
    return await enqueue_node_task(services, database_id, node, "node_backup", task_input, actor)


async def start_verify(
    services: Services, database_id: str, node: str, body: bytes, actor: str
) -> Task:
    """Enqueue a verify of every set (empty body), or with `drill` a restore drill of one set
    (`set`, else the newest when the drill runs). A named set is looked up first: one the
    repositories do not hold is a 404 at once."""
    request = parse_verify_request(body)
    _, _, setup = await _node(services, database_id, node)
    if not request.drill:
        return await enqueue_node_task(services, database_id, node, "verify", TaskInput(), actor)
    if request.set is not None:
        entries, _ = await _entries(services, setup)
        if request.set not in {entry.label for entry in entries}:
            raise NotFoundError(
                f"backup set {request.set} of node {node} of {database_id} not found",
                details={"set": request.set},
            )
    task_input = DrillInput(set_label=request.set)
    return await enqueue_node_task(services, database_id, node, "drill", task_input, actor)


async def start_expire(
    services: Services, database_id: str, node: str, label: str, *, force: bool, actor: str
) -> Task:
    """Refuse at once what the task would refuse: an unknown set, or the last restorable one."""
    _, _, setup = await _node(services, database_id, node)
    entries, statuses = await _entries(services, setup)
    refusal = expire_refusal(entries, label, force)
    if refusal is not None:
        unread = [f"{s.repository_id} ({s.message})" for s in statuses if s.status == "degraded"]
        if isinstance(refusal, NotFoundError) and unread:
            raise DependencyError(
                f"{refusal.message} in the repositories that can be read; "
                f"not read: {', '.join(unread)}"
            )
        raise refusal
    return await enqueue_node_task(
        services, database_id, node, "expire", ExpireInput(label=label, force=force), actor
    )


async def _entries(
    services: Services, setup: backups.BackupSetup
) -> tuple[list[pgb_info.CatalogEntry], list[RepositoryStatus]]:
    """The sets of every readable repository (oldest first) and each repository's status.

    Each repository is read on its own, within a deadline: one that cannot be read is reported
    `degraded` while the others' sets are listed. Only when none can be read is it an error.
    """
    subject = backups.subject_of(setup.ref, "reading the backup catalog")
    states = await backups.read_repositories(services, setup, subject=subject)
    if states and all(state.health.status == "degraded" for state in states):
        reasons = "; ".join(str(state.health.message) for state in states)
        raise DependencyError(f"{subject} failed: no repository can be read: {reasons}")
    entries = [
        entry
        for state in states
        if state.stanza is not None and state.health.status == "ok"
        for entry in pgb_info.catalog(state.stanza, setup.repository_ids)
    ]
    entries.sort(key=lambda entry: (entry.stopped_at, entry.label))
    statuses = [
        RepositoryStatus(
            repository_id=state.repository_id,
            status=state.health.status,
            message=state.health.message,
        )
        for state in states
    ]
    return entries, statuses


async def backup_catalog(services: Services, database_id: str, node: str) -> BackupCatalog:
    """Every backup set of the node, oldest first, and the window a PITR can reach, with the
    status of each repository (a degraded one is named rather than failing the catalog)."""
    _, instance, setup = await _node(services, database_id, node)
    entries, statuses = await _entries(services, setup)
    window = pgb_info.recovery_window(
        entries, last_archived_at=await _last_archived(services, instance)
    )
    points = await restore_points.list_restore_points(services.pool, database_id, node)
    drilled = await drills.list_drills(services.pool, database_id, node)
    for entry in entries:
        if entry.label in drilled:
            entry.last_drill = _drill_view(drilled[entry.label])
    return BackupCatalog(
        backups=entries,
        recovery_window=window,
        repositories=[repository_id(p.repository) for p in setup.plans],
        repository_status=statuses,
        restore_points=[_point_view(p) for p in points],
    )


async def _last_archived(services: Services, instance: InstanceRow) -> datetime | None:
    """When the node last archived a WAL segment (the newest point a PITR can reach)."""
    try:
        conn = await services.orchestrator.connect(ref_of(instance))
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        value = await conn.fetchval("SELECT last_archived_time FROM pg_stat_archiver")
    finally:
        await conn.close()
    return value if isinstance(value, datetime) else None


def _drill_view(row: drills.DrillRow) -> Drill:
    return Drill(
        task_id=str(row.task_id),
        status="completed" if row.status == "completed" else "failed",
        started_at=row.started_at,
        finished_at=row.finished_at,
        amcheck_ok=row.amcheck_ok,
        row_counts=row.row_counts,
        error=row.error,
        last_success_at=row.last_success_at,
    )


def _point_view(row: RestorePointRow) -> RestorePoint:
    return RestorePoint(
        name=row.name,
        lsn=row.lsn,
        time=row.time,
        timeline=row.timeline,
        created_by=row.created_by,
    )


async def list_node_restore_points(
    services: Services, database_id: str, node: str
) -> list[RestorePoint]:
    """The node's recorded restore points, oldest first."""
    await _instance(services, database_id, node)
    points = await restore_points.list_restore_points(services.pool, database_id, node)
    return [_point_view(p) for p in points]


async def create_restore_point(
    services: Services, database_id: str, node: str, body: bytes, actor: str
) -> RestorePoint:
    """Write a named restore point on the node's running instance, wait until its WAL is in
    the node's repository, and record it: a `name` restore can then be checked against it.

    Synchronous and bounded: the wait for archiving ends after RESTORE_POINT_ARCHIVE_SECONDS,
    and then nothing is recorded (502).
    """
    request = parse_request(body, RestorePointRequest)
    row, instance, _ = await _node(
        services,
        database_id,
        node,
        unconfigured=": configure backups first (a restore point is only restorable from the "
        "repository its WAL is archived to)",
    )
    if row.state in _BUSY_STATES:
        raise DatabaseNotModifiableError(f"database {database_id} is {row.state}")
    if await restore_points.get_restore_point(services.pool, database_id, node, request.name):
        raise restore_points.exists_error(database_id, node, request.name)
    try:
        conn = await services.orchestrator.connect(ref_of(instance))
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConflictError(
            f"node {node} of {database_id} is not running: a restore point is written by the "
            f"running instance ({exc})",
            details={"node": node},
        ) from None
    try:
        written = await restore_targets.write_restore_point(
            conn, request.name, seconds=RESTORE_POINT_ARCHIVE_SECONDS
        )
    finally:
        await conn.close()
    if not written.archived:
        raise DependencyError(
            f"restore point {request.name} was written at {written.lsn} on node {node} of "
            f"{database_id}, but WAL segment {written.segment} did not reach the repository "
            f"within {RESTORE_POINT_ARCHIVE_SECONDS:.0f} s, so it was not recorded: check the "
            "node's archiving (pg_stat_archiver), then create it again under another name"
        )
    recorded = await restore_points.insert_restore_point(
        services.pool,
        RestorePointRow(
            database_id=database_id,
            node_name=node,
            name=request.name,
            lsn=written.lsn,
            timeline=written.timeline,
            timeline_history=written.timeline_history,
            system_identifier=written.system_identifier,
            time=written.time,
            created_by=actor,
        ),
    )
    return _point_view(recorded)
