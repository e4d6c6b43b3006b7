"""Stored records and the response shapes built from them (shared by server and client)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

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
# `unreachable`: its host's engine or swarm node does not answer (whether it runs is unknown).
InstanceState = Literal[
    "creating", "available", "backing_up", "restoring", "stopped", "failed", "unreachable"
]
TaskType = Literal[
    "create",
    "update",
    "delete",
    "node_backup",
    "restore",
    "node_restore",
    "verify",
    "expire",
    "switchover",
    "failover",
    "restart_instance",
    "stop_instance",
    "start_instance",
    "drill",
]
TaskStatus = Literal[
    "pending", "running", "canceling", "completed", "failed", "canceled", "skipped"
]
BackupType = Literal["full", "diff", "incr"]
# What a schedule starts: a backup of that type, or a restore drill of the newest set.
ScheduleType = Literal["full", "diff", "incr", "drill"]
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
    # WAL the provider keeps for this subscription that it has not confirmed yet (its slot's
    # lag), as the provider last reported it; None when the provider was not observed.
    lag_bytes: int | None = None


class Archiver(Struct, kw_only=True):
    """WAL archiving of an instance as last observed: pg_stat_archiver, and the `.ready` files
    still waiting in pg_wal/archive_status (the backlog a failing archive_command piles up)."""

    archived_count: int
    failed_count: int
    last_archived_at: datetime | None = None
    last_failed_at: datetime | None = None
    last_failed_wal: str | None = None
    ready_files: int = 0


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
    # When the monitor last observed the instance: the age of what follows, and of
    # `subscriptions` and `role` (None: not observed yet).
    observed_at: datetime | None = None
    # The timeline the instance is on (it moves up with every promotion or point-in-time restore).
    timeline: int | None = None
    # A replica's replay lag behind its primary, in WAL bytes and in seconds, as the primary
    # last saw it; None for a primary, or a replica its primary does not see streaming.
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    archiver: Archiver | None = None


class Database(Struct, kw_only=True):
    id: str
    state: DatabaseState
    created_at: datetime
    updated_at: datetime
    # The spec as stored (secrets left out): a request's DatabaseSpec, read back.
    spec: Annotated[dict[str, Any], Meta(title="StoredSpec")]
    # pgEdge's owner of the database (the create request's tenant_id, kept in the spec).
    tenant_id: str | None = None
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
    # pgEdge's task scope: every task here belongs to a database, so `scope` is "database" and
    # `entity_id` the database id.
    scope: Literal["database", "host"]
    entity_id: str
    database_id: str
    node_name: str | None
    # Where a node's task acts: the instance it names (an instance action), else the node's
    # primary as it stands now, and that instance's host; None for database-wide tasks or a node
    # with no instance any more.
    host_id: str | None = None
    instance_id: str | None = None
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


# -- response shapes: each route's JSON body (api/contract.py says which route answers which);
# the clients decode these same types.


class ErrorBody(Struct, kw_only=True):
    """Every error: a stable `name`, a sentence for people, and details (for 422: `errors`,
    each with the JSON `path` of the bad field and its `message`)."""

    name: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class DatabaseOperation(Struct, kw_only=True):
    """Answer to create and update: the task carrying it out and the database as stored."""

    task: Task
    database: Database


class RestoreOperation(Struct, kw_only=True):
    """Answer to a restore: the parent task, one node_restore task per node, the database."""

    task: Task
    node_tasks: list[Task]
    database: Database


class TaskAnswer(Struct, kw_only=True):
    task: Task


class DatabasesAnswer(Struct, kw_only=True):
    databases: list[Database]


class TasksAnswer(Struct, kw_only=True):
    tasks: list[Task]


class HostsAnswer(Struct, kw_only=True):
    hosts: list[Host]


class RestorePointsAnswer(Struct, kw_only=True):
    restore_points: list[RestorePoint]


class Health(Struct, kw_only=True):
    status: Literal["ok"]


class Drill(Struct, kw_only=True):
    """The newest restore drill of a backup set: restored into a scratch instance, recovered,
    checked with pg_amcheck, its rows counted per table (`row_counts`), then removed.
    `last_success_at` is when a drill of the set last passed (kept when a later one fails)."""

    task_id: str
    status: Literal["completed", "failed"]
    started_at: datetime
    finished_at: datetime
    amcheck_ok: bool | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    last_success_at: datetime | None = None


class BackupSet(Struct, kw_only=True):
    """One backup set of a node's catalog."""

    label: str
    type: BackupType
    repository_id: str
    started_at: datetime
    stopped_at: datetime
    lsn_start: str | None = None
    lsn_stop: str | None = None
    wal_start: str | None = None
    wal_stop: str | None = None
    size: int = 0
    repository_size: int | None = None
    # This set's own increment (pgBackRest's `delta`): for a full set its whole size, for a
    # diff or incr set what it added since the set it depends on; None when not reported.
    delta: int | None = None
    repository_delta: int | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    task_id: str | None = None
    prior: str | None = None
    system_id: int | None = None
    # The set's newest restore drill, when it had one.
    last_drill: Drill | None = None


class RecoveryWindow(Struct, kw_only=True):
    """The span of time a point-in-time restore can reach."""

    earliest: datetime
    latest: datetime


class RepositoryStatus(Struct, kw_only=True):
    """How one repository answered: `ok` (readable), `missing_stanza` (readable, holding no
    stanza for this node) or `degraded` (unreadable: `message` says why)."""

    repository_id: str
    status: str
    message: str | None = None


class BackupCatalog(Struct, kw_only=True):
    """A node's backup sets, oldest first, the span a point-in-time restore can reach, its
    repositories and how each answered, and its named restore points (oldest first)."""

    backups: list[BackupSet]
    recovery_window: RecoveryWindow | None = None
    repositories: list[str] = field(default_factory=list)
    repository_status: list[RepositoryStatus] = field(default_factory=list)
    restore_points: list[RestorePoint] = field(default_factory=list)


class BackupOutcome(Struct, kw_only=True):
    """A node's newest backup of one type that completed, and the newest that failed, as the
    store recorded their tasks (None: none kept)."""

    type: str
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None


class ReplicaLag(Struct, kw_only=True):
    instance_id: str
    state: InstanceState
    lag_bytes: int | None = None
    lag_seconds: float | None = None


class NodeHealth(Struct, kw_only=True):
    """What one node's recoverability and replication look like now: its primary's archiver,
    its replicas' lag, the subscriptions it applies, its backups' outcomes per type, and the
    span a point-in-time restore of it reaches (from its oldest kept set, as recorded, to its
    last archived WAL)."""

    node_name: str
    primary_instance_id: str | None = None
    archiver: Archiver | None = None
    replicas: list[ReplicaLag] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    backups: list[BackupOutcome] = field(default_factory=list)
    recovery_window: RecoveryWindow | None = None


class DatabaseHealth(Struct, kw_only=True):
    """A database's health in one answer: its state (`degraded` with the reasons in `error`)
    and each node's facts, from the store and the monitor's last observation (it never runs
    pgBackRest and never waits on an instance)."""

    database_id: str
    state: DatabaseState
    error: str | None = None
    nodes: list[NodeHealth] = field(default_factory=list)


class ScheduleLastTask(Struct, kw_only=True):
    """The task a schedule's newest tick started."""

    task_id: str
    status: str
    completed_at: datetime | None = None


class Schedule(Struct, kw_only=True):
    """One schedule of a node's effective backup_config, its next run and its last task."""

    schedule_id: str
    node_name: str
    type: str
    cron_expression: str
    next_run_at: datetime | None = None
    last_task: ScheduleLastTask | None = None


class SchedulesAnswer(Struct, kw_only=True):
    schedules: list[Schedule]


class LogEnd(Struct, kw_only=True):
    """The last event of a followed log: the task's terminal status and its last entry."""

    task_status: TaskStatus
    last_entry_id: int
