"""Stored records and the response shapes built from them (shared by server and client)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from msgspec import Struct, field

DatabaseState = Literal[
    "creating",
    "available",
    "modifying",
    "backing_up",
    "restoring",
    "deleting",
    "degraded",
    "failed",
]
InstanceState = Literal["creating", "available", "backing_up", "restoring", "stopped", "failed"]
TaskType = Literal[
    "create", "update", "delete", "node_backup", "restore", "node_restore", "verify", "expire"
]
TaskStatus = Literal[
    "pending", "running", "canceling", "completed", "failed", "canceled", "skipped"
]
TaskTrigger = Literal["manual", "scheduled", "pre_restore", "system"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "canceled", "skipped"})
ACTIVE_STATUSES: frozenset[str] = frozenset({"pending", "running", "canceling"})


class ConnectionInfo(Struct, kw_only=True):
    host: str
    port: int
    database: str


class Subscription(Struct, kw_only=True):
    provider_node: str
    name: str
    status: str


class Instance(Struct, kw_only=True):
    id: str
    node_name: str
    host_id: str
    state: InstanceState
    role: str
    port: int
    connection_info: ConnectionInfo
    error: str | None = None
    subscriptions: list[Subscription] = field(default_factory=list)


class Database(Struct, kw_only=True):
    id: str
    state: DatabaseState
    created_at: datetime
    updated_at: datetime
    spec: dict[str, Any]
    error: str | None = None
    instances: list[Instance] = field(default_factory=list)


class TaskStep(Struct, kw_only=True):
    name: str
    status: str
    started_at: datetime | None = None
    completed_at: datetime | None = None


class Task(Struct, kw_only=True):
    task_id: str
    parent_id: str | None
    database_id: str
    node_name: str | None
    type: TaskType
    status: TaskStatus
    trigger: TaskTrigger
    actor: str | None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    steps: list[TaskStep] = field(default_factory=list)


class LogEntry(Struct, kw_only=True):
    entry_id: int
    timestamp: datetime
    level: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


class TaskLog(Struct, kw_only=True):
    task_id: str
    task_status: TaskStatus
    last_entry_id: int
    entries: list[LogEntry]


class RestorePoint(Struct, kw_only=True):
    """A named restore point of a node, recorded once its WAL reached the repository."""

    name: str
    lsn: str
    time: datetime
    timeline: int
    created_by: str


class Host(Struct, kw_only=True):
    id: str
    orchestrator: str
    state: str
    instances: int = 0


class Version(Struct, kw_only=True):
    version: str
    api_version: str = "v1"
