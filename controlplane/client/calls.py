"""The API's endpoints as requests: method, path, query, body and how to read the answer.

Each endpoint is written here once; `Client` sends a `Call` with blocking I/O and
`AsyncClient` with asyncio, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import msgspec

from controlplane.client.core import (
    Body,
    decode,
)
from controlplane.models import (
    BackupCatalog,
    Database,
    DatabaseHealth,
    DatabaseOperation,
    DatabasesAnswer,
    Host,
    HostsAnswer,
    RestoreOperation,
    RestorePoint,
    RestorePointsAnswer,
    Schedule,
    SchedulesAnswer,
    Task,
    TaskAnswer,
    TaskLog,
    TasksAnswer,
    Version,
)

R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[R]):
    """One request and the reader of its answer's body."""

    method: str
    path: str
    read: Callable[[bytes], R]
    params: Mapping[str, str] | None = None
    body: bytes | None = None
    # Seconds to wait for the answer when the server may take longer than the client's default.
    timeout: float | None = None


def _as(type_: type[T]) -> Callable[[bytes], T]:
    return lambda content: decode(content, type_)


def _task(content: bytes) -> Task:
    return decode(content, TaskAnswer).task


def encode_body(body: Body) -> bytes:
    """JSON bytes of a request body (bytes are sent as they are)."""
    return body if isinstance(body, bytes) else msgspec.json.encode(body)


def api_path(*parts: str) -> str:
    """`/v1/<parts>` with every part percent-encoded."""
    return "/v1/" + "/".join(quote(part, safe="") for part in parts)


def _backups(database_id: str, node: str, *more: str) -> str:
    return api_path("databases", database_id, "nodes", node, "backups", *more)


def _task_path(database_id: str, task_id: str, *more: str) -> str:
    return api_path("databases", database_id, "tasks", task_id, *more)


# -- databases ---------------------------------------------------------------------------------
def create_database(body: Body) -> Call[DatabaseOperation]:
    return Call("POST", "/v1/databases", _as(DatabaseOperation), body=encode_body(body))


def list_databases() -> Call[list[Database]]:
    return Call("GET", "/v1/databases", lambda c: decode(c, DatabasesAnswer).databases)


def get_database(database_id: str) -> Call[Database]:
    return Call("GET", api_path("databases", database_id), _as(Database))


def database_health(database_id: str) -> Call[DatabaseHealth]:
    return Call("GET", api_path("databases", database_id, "health"), _as(DatabaseHealth))


def update_database(database_id: str, body: Body) -> Call[DatabaseOperation]:
    path = api_path("databases", database_id)
    return Call("POST", path, _as(DatabaseOperation), body=encode_body(body))


def delete_database(database_id: str) -> Call[Task]:
    return Call("DELETE", api_path("databases", database_id), _task)


# -- backups and restores ----------------------------------------------------------------------
def start_backup(
    database_id: str,
    node: str,
    type: str,
    annotations: Mapping[str, str] | None,
    repository_id: str | None,
) -> Call[Task]:
    body: dict[str, Any] = {"type": type, "annotations": dict(annotations or {})}
    if repository_id is not None:
        body["repository_id"] = repository_id
    return Call("POST", _backups(database_id, node), _task, body=msgspec.json.encode(body))


def list_backups(database_id: str, node: str) -> Call[BackupCatalog]:
    return Call("GET", _backups(database_id, node), _as(BackupCatalog))


def verify_backups(
    database_id: str, node: str, *, drill: bool = False, set_label: str | None = None
) -> Call[Task]:
    """`pgbackrest verify`, or with `drill` a restore drill of `set_label` (else the newest)."""
    if not drill:
        return Call("POST", _backups(database_id, node, "verify"), _task)
    body: dict[str, Any] = {"drill": True}
    if set_label is not None:
        body["set"] = set_label
    return Call(
        "POST", _backups(database_id, node, "verify"), _task, body=msgspec.json.encode(body)
    )


def expire_backup(database_id: str, node: str, label: str, force: bool) -> Call[Task]:
    params = {"force": "true"} if force else None
    return Call("DELETE", _backups(database_id, node, label), _task, params=params)


def create_restore_point(database_id: str, node: str, name: str) -> Call[RestorePoint]:
    path = api_path("databases", database_id, "nodes", node, "restore-points")
    body = msgspec.json.encode({"name": name})
    # The server waits up to 60 s for the restore point's WAL to be archived.
    return Call("POST", path, _as(RestorePoint), body=body, timeout=90.0)


def list_restore_points(database_id: str, node: str) -> Call[list[RestorePoint]]:
    path = api_path("databases", database_id, "nodes", node, "restore-points")
    return Call("GET", path, lambda c: decode(c, RestorePointsAnswer).restore_points)


def restore(
    database_id: str,
    restore_config: Body,
    target_nodes: list[str] | None,
    pre_restore_backup: bool,
) -> Call[RestoreOperation]:
    """The config may be a dict, a RestoreConfig or JSON bytes."""
    body = {
        "restore_config": msgspec.json.decode(encode_body(restore_config)),
        "target_nodes": list(target_nodes or []),
        "pre_restore_backup": pre_restore_backup,
    }
    path = api_path("databases", database_id, "restore")
    return Call("POST", path, _as(RestoreOperation), body=msgspec.json.encode(body))


def list_schedules(database_id: str) -> Call[list[Schedule]]:
    path = api_path("databases", database_id, "schedules")
    return Call("GET", path, lambda c: decode(c, SchedulesAnswer).schedules)


# -- tasks -------------------------------------------------------------------------------------
def list_tasks(
    database_id: str | None,
    status: str | None,
    type: str | None,
    after_task_id: str | None,
    limit: int | None,
    sort_order: str | None,
) -> Call[list[Task]]:
    """Tasks of one database (or of all when `database_id` is None); unset filters are left
    out of the query."""
    path = api_path("databases", database_id, "tasks") if database_id else "/v1/tasks"
    raw = {
        "status": status,
        "type": type,
        "after_task_id": after_task_id,
        "limit": limit,
        "sort_order": sort_order,
    }
    params = {key: str(value) for key, value in raw.items() if value is not None}
    return Call("GET", path, lambda c: decode(c, TasksAnswer).tasks, params=params)


def get_task(database_id: str, task_id: str) -> Call[Task]:
    return Call("GET", _task_path(database_id, task_id), _as(Task))


def cancel_task(database_id: str, task_id: str) -> Call[Task]:
    return Call("POST", _task_path(database_id, task_id, "cancel"), _as(Task))


def task_log_path(database_id: str, task_id: str) -> str:
    return _task_path(database_id, task_id, "log")


def get_task_log(database_id: str, task_id: str, after_entry_id: int, limit: int) -> Call[TaskLog]:
    params = {"after_entry_id": str(after_entry_id), "limit": str(limit)}
    return Call("GET", task_log_path(database_id, task_id), _as(TaskLog), params=params)


# -- the server --------------------------------------------------------------------------------
def list_hosts() -> Call[list[Host]]:
    return Call("GET", "/v1/hosts", lambda c: decode(c, HostsAnswer).hosts)


def version() -> Call[Version]:
    return Call("GET", "/v1/version", _as(Version))


def metrics() -> Call[str]:
    return Call("GET", "/metrics", lambda c: c.decode())
