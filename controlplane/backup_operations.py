"""Backup operations the API offers: start a backup, read the catalog, verify, expire a set."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from controlplane.errors import (
    ConflictError,
    DatabaseNotModifiableError,
    InvalidInputError,
    NotFoundError,
)
from controlplane.models import Task
from controlplane.pgbackrest import info as pgb_info
from controlplane.spec import parse_backup_request
from controlplane.spec.models import repository_id
from controlplane.store import databases, instances, tasks
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services
from controlplane.workflows import all_workflows, backups
from controlplane.workflows.common import ref_of, spec_of
from controlplane.workflows.maintain_backups import expire_refusal

_BUSY_STATES = ("creating", "deleting", "restoring")


async def _node(
    services: Services, database_id: str, node: str
) -> tuple[Any, InstanceRow, backups.BackupSetup]:
    row = await databases.get_database(services.pool, database_id)
    spec = spec_of(services, row)
    instance = await instances.get_instance(services.pool, database_id, node)
    if instance is None:
        raise NotFoundError(
            f"node {node} of database {database_id} not found",
            details={"database_id": database_id, "node": node},
        )
    setup = await backups.backup_setup(services, spec, instance, ref_of(instance))
    if not setup.enabled:
        raise InvalidInputError(
            [{"path": "node", "message": f"node {node} of {database_id} has no backup_config"}]
        )
    return row, instance, setup


async def _enqueue(
    services: Services, database_id: str, node: str, type: str, input: dict[str, Any], actor: str
) -> Task:
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
    if request.repository_id is not None:
        setup.repo_index(request.repository_id)
    return await _enqueue(
        services, database_id, node, "node_backup", msgspec.to_builtins(request), actor
    )


async def start_verify(services: Services, database_id: str, node: str, actor: str) -> Task:
    await _node(services, database_id, node)
    return await _enqueue(services, database_id, node, "verify", {}, actor)


async def start_expire(
    services: Services, database_id: str, node: str, label: str, *, force: bool, actor: str
) -> Task:
    """Refuse at once what the task would refuse: an unknown set, or the last restorable one."""
    _, _, setup = await _node(services, database_id, node)
    entries = await _entries(services, setup)
    refusal = expire_refusal(entries, label, force)
    if refusal is not None:
        if "not found" in refusal:
            raise NotFoundError(refusal, details={"label": label})
        raise ConflictError(refusal, details={"label": label})
    return await _enqueue(
        services, database_id, node, "expire", {"label": label, "force": force}, actor
    )


async def _entries(services: Services, setup: backups.BackupSetup) -> list[pgb_info.CatalogEntry]:
    subject = backups.subject_of(setup.ref, "reading the backup catalog")
    stanza = await backups.read_info(services, setup, subject=subject)
    if stanza.status.code == 1:  # no stanza yet: nothing backed up
        return []
    return pgb_info.catalog(stanza, setup.repository_ids)


async def backup_catalog(services: Services, database_id: str, node: str) -> dict[str, Any]:
    """Every backup set of the node, oldest first, and the window a PITR can reach."""
    _, instance, setup = await _node(services, database_id, node)
    entries = await _entries(services, setup)
    window = pgb_info.recovery_window(
        entries, last_archived_at=await _last_archived(services, instance)
    )
    return {
        "backups": [msgspec.to_builtins(e) for e in entries],
        "recovery_window": msgspec.to_builtins(window) if window else None,
        "repositories": [repository_id(p.repository) for p in setup.plans],
    }


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
