"""What each dashboard page shows, read with the same operations the API's read routes call
(never through HTTP): databases, one database with its backups and tasks, one task."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from msgspec import Struct

from controlplane.dashboard.timeline import Timeline, catalog_timeline
from controlplane.errors import ControlPlaneError
from controlplane.models import TERMINAL_STATUSES, BackupCatalog, Database, Instance
from controlplane.operations import backups, databases
from controlplane.store import logs, tasks
from controlplane.tasks.context import Services

# The tasks a database page lists, newest first, and the log lines a task page starts with
# (its script follows the rest over the API's event stream).
TASKS_SHOWN = 50
LOG_LINES_RENDERED = 1000


class NodeBackups(Struct, kw_only=True):
    """One node's backup catalog and its timeline, or why there is none."""

    node: str
    catalog: BackupCatalog | None = None
    timeline: Timeline | None = None
    problem: str | None = None


class NodeView(Struct, kw_only=True):
    """A node with its instances (a primary and its replicas), the leader first."""

    name: str
    instances: list[Instance]


def node_names(database: Database) -> list[str]:
    """The database's nodes in spec order, then any node only an instance still names."""
    names = [str(node.get("name")) for node in database.spec.get("nodes", []) or []]
    names += [i.node_name for i in database.instances if i.node_name not in names]
    return list(dict.fromkeys(names))


def _nodes(database: Database) -> list[NodeView]:
    return [
        NodeView(
            name=name,
            instances=sorted(
                (i for i in database.instances if i.node_name == name),
                key=lambda i: (i.role != "primary", i.id),
            ),
        )
        for name in node_names(database)
    ]


async def _node_backups(services: Services, database_id: str, node: str) -> NodeBackups:
    try:
        catalog = await backups.backup_catalog(services, database_id, node)
    except ControlPlaneError as exc:
        # No backup_config, or a repository that cannot be read: the page says so per node.
        return NodeBackups(node=node, problem=exc.message)
    return NodeBackups(
        node=node, catalog=catalog, timeline=catalog_timeline(catalog, datetime.now(UTC))
    )


async def databases_page(services: Services) -> dict[str, Any]:
    """Every database with its state and instances."""
    return {"databases": await databases.list_databases(services)}


async def database_page(services: Services, database_id: str) -> dict[str, Any]:
    """One database: nodes and instances, subscriptions, each node's catalog, recent tasks."""
    database = await databases.get_database(services, database_id)
    names = node_names(database)
    catalogs, recent = await asyncio.gather(
        asyncio.gather(*(_node_backups(services, database_id, name) for name in names)),
        tasks.list_tasks(services.pool, database_id=database_id, limit=TASKS_SHOWN),
    )
    return {
        "database": database,
        "nodes": _nodes(database),
        "catalogs": catalogs,
        "tasks": recent,
    }


async def task_page(services: Services, database_id: str, task_id: str) -> dict[str, Any]:
    """One task with its steps and the start of its log."""
    task = await tasks.get_task(services.pool, task_id, database_id=database_id)
    entries = await logs.read_entries(
        services.pool, uuid.UUID(task.task_id), after_entry_id=0, limit=LOG_LINES_RENDERED
    )
    terminal = task.status in TERMINAL_STATUSES
    return {
        "task": task,
        "entries": entries,
        "after": entries[-1].entry_id if entries else 0,
        # A finished task whose whole log is on the page has nothing left to follow.
        "follow": not terminal or len(entries) == LOG_LINES_RENDERED,
    }
