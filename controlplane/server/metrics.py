"""Prometheus metrics: what the store knows (databases, tasks, backups) and what the monitor last
observed of each instance, exposed with prometheus_client.

A scrape reads a few indexed SQL queries and the monitor's in-memory facts
(`InstanceFactsBook`), so it never runs pgBackRest and never waits on an instance. Every scrape
renders a registry of its own (no global registry) holding these families and the process
collector. Series whose values are counts of stored rows are gauges (finished tasks are pruned
after the retention period, so they can go down); counters come from pg_stat_archiver.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple, get_args

import msgspec
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from controlplane import __version__
from controlplane.models import DatabaseState, InstanceState, TaskStatus, TaskType
from controlplane.server.instance_facts import InstanceFacts, InstanceFactsBook
from controlplane.spec.models import BackupConfig, BackupType, repository_id
from controlplane.store import drills as drill_records
from controlplane.store.pool import Executor

_DATABASE_STATES = get_args(DatabaseState)
_INSTANCE_STATES = get_args(InstanceState)
_TASK_TYPES = get_args(TaskType)
_TASK_STATUSES = get_args(TaskStatus)
_BACKUP_TYPES: tuple[str, ...] = get_args(BackupType)

_NODE = ("database", "node")
# Not `instance`: Prometheus gives every scraped series the target's `instance` label, and would
# rename ours to `exported_instance`.
_INSTANCE = ("database", "node", "instance_id", "role")
_REPLICA = ("database", "node", "instance_id")


class MetricSpec(NamedTuple):
    """One exported family: its type, help text and label names."""

    kind: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...] = ()


# Every family /metrics exports, by the name its samples carry (counters end in _total).
METRICS: dict[str, MetricSpec] = {
    "controlplane_build_info": MetricSpec(
        "gauge", "Always 1; the version of the control plane serving the scrape.", ("version",)
    ),
    "controlplane_databases": MetricSpec("gauge", "Databases by state.", ("state",)),
    "controlplane_database_degraded": MetricSpec(
        "gauge",
        "1 while the database is degraded (instances down, archiving failing or a subscription"
        " down for longer than the health grace; its error says why), else 0.",
        ("database",),
    ),
    "controlplane_instances": MetricSpec("gauge", "Instances by state.", ("state",)),
    "controlplane_tasks": MetricSpec(
        "gauge",
        "Tasks kept in the store by type and status (finished ones are pruned).",
        ("type", "status"),
    ),
    "controlplane_task_queue_depth": MetricSpec(
        "gauge", "Tasks waiting for a worker (status pending)."
    ),
    "controlplane_task_queue_oldest_age_seconds": MetricSpec(
        "gauge", "Age of the oldest pending task; 0 when none waits."
    ),
    "controlplane_scheduler_lag_seconds": MetricSpec(
        "gauge", "How long the oldest pending scheduled task has waited to start; 0 when none."
    ),
    "controlplane_backup_last_success_timestamp_seconds": MetricSpec(
        "gauge",
        "When the newest successful backup of this type of the node stopped (0: none yet).",
        (*_NODE, "type"),
    ),
    "controlplane_backup_last_failure_timestamp_seconds": MetricSpec(
        "gauge",
        "When the newest failed backup task of this type of the node ended (0: none).",
        (*_NODE, "type"),
    ),
    "controlplane_backup_last_duration_seconds": MetricSpec(
        "gauge", "How long the newest successful backup of the node (any type) took.", _NODE
    ),
    "controlplane_backup_last_size_bytes": MetricSpec(
        "gauge", "Database size captured by the newest successful backup of the node.", _NODE
    ),
    "controlplane_recovery_window_start_timestamp_seconds": MetricSpec(
        "gauge",
        "The first point a point-in-time restore of the node can reach: the stop time of its "
        "oldest backup set still kept (from the backups the store recorded).",
        _NODE,
    ),
    "controlplane_drill_last_success_timestamp_seconds": MetricSpec(
        "gauge",
        "When the newest restore drill of the node that passed finished (0: none yet, with a "
        "drill schedule).",
        _NODE,
    ),
    "controlplane_instance_up": MetricSpec(
        "gauge", "1 when the monitor's last observation could connect to the instance.", _INSTANCE
    ),
    "controlplane_instance_timeline": MetricSpec(
        "gauge", "The instance's timeline (pg_control_checkpoint).", _INSTANCE
    ),
    "controlplane_instance_replay_lag_bytes": MetricSpec(
        "gauge",
        "How far a streaming replica's replay is behind its primary's WAL (pg_stat_replication on "
        "the primary).",
        _REPLICA,
    ),
    "controlplane_instance_replay_lag_seconds": MetricSpec(
        "gauge",
        "A streaming replica's replay lag in time (pg_stat_replication.replay_lag).",
        _REPLICA,
    ),
    "controlplane_instance_facts_age_seconds": MetricSpec(
        "gauge", "Seconds since the monitor last observed the instance.", _NODE
    ),
    "controlplane_archiver_archived_total": MetricSpec(
        "counter", "WAL files archived (pg_stat_archiver.archived_count).", _NODE
    ),
    "controlplane_archiver_failed_total": MetricSpec(
        "counter", "Failed attempts to archive WAL (pg_stat_archiver.failed_count).", _NODE
    ),
    "controlplane_archiver_last_archived_timestamp_seconds": MetricSpec(
        "gauge", "When WAL was last archived successfully (0: never).", _NODE
    ),
    "controlplane_archiver_last_failed_timestamp_seconds": MetricSpec(
        "gauge", "When archiving WAL last failed (0: never).", _NODE
    ),
    "controlplane_wal_ready_files": MetricSpec(
        "gauge", "WAL files waiting to be archived (.ready files in pg_wal/archive_status).", _NODE
    ),
    "controlplane_replication_slot_retained_bytes": MetricSpec(
        "gauge", "Bytes of WAL the replication slot keeps (from its restart_lsn).", (*_NODE, "slot")
    ),
    "controlplane_replication_slot_lag_bytes": MetricSpec(
        "gauge",
        "Bytes of WAL a logical slot's consumer has not confirmed (from confirmed_flush_lsn).",
        (*_NODE, "slot"),
    ),
    "controlplane_replication_slot_active": MetricSpec(
        "gauge", "1 when a consumer is streaming from the replication slot.", (*_NODE, "slot")
    ),
    "controlplane_subscription_up": MetricSpec(
        "gauge",
        "1 when the pglogical subscription is replicating.",
        (*_NODE, "subscription", "provider"),
    ),
}


def _family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    spec = METRICS[name]
    kind = GaugeMetricFamily if spec.kind == "gauge" else CounterMetricFamily
    return kind(name, spec.help, labels=list(spec.labels))


_QUEUE = """
SELECT count(*) FILTER (WHERE status = 'pending') AS depth,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0)
           AS oldest,
       coalesce(extract(epoch FROM now() - min(created_at)
           FILTER (WHERE status = 'pending' AND trigger = 'scheduled')), 0) AS scheduler_lag
FROM tasks WHERE status IN ('pending', 'running', 'canceling')
"""
# Backup queries: they belong with the tasks table's store module, kept here (read-only) while
# metrics are their only reader. The type of a successful backup is the one pgBackRest took
# (an incr with no prior full is taken as a full), of a failed one the type asked for.
# Each takes $1, one database's id or NULL for all of them.
_BACKUP_NODES = """
SELECT DISTINCT i.database_id, i.node_name, d.spec
FROM instances i JOIN databases d ON d.id = i.database_id
WHERE $1::text IS NULL OR i.database_id = $1
ORDER BY i.database_id, i.node_name
"""
_BACKUP_OUTCOMES = """
SELECT DISTINCT ON (t.database_id, t.node_name, t.status, kind)
       t.database_id, t.node_name, t.status, t.completed_at, t.result,
       CASE WHEN t.status = 'completed'
            THEN coalesce(t.result ->> 'type', t.input ->> 'type', 'full')
            ELSE coalesce(t.input ->> 'type', 'full') END AS kind
FROM tasks t
JOIN instances i ON i.database_id = t.database_id AND i.node_name = t.node_name
WHERE t.type = 'node_backup' AND t.status IN ('completed', 'failed') AND i.role = 'primary'
  AND ($1::text IS NULL OR t.database_id = $1)
ORDER BY t.database_id, t.node_name, t.status, kind, t.completed_at DESC
"""
_BACKUP_SETS = """
SELECT t.database_id, t.node_name, t.result ->> 'label' AS label,
       t.result ->> 'type' AS type, t.result ->> 'repository_id' AS repository_id,
       t.result ->> 'system_id' AS system_id, t.result ->> 'stopped_at' AS stopped_at
FROM tasks t
JOIN instances i ON i.database_id = t.database_id AND i.node_name = t.node_name
WHERE t.type = 'node_backup' AND t.status = 'completed' AND jsonb_typeof(t.result) = 'object'
  AND i.role = 'primary' AND ($1::text IS NULL OR t.database_id = $1)
"""
_EXPIRED_SETS = """
SELECT t.database_id, t.node_name, jsonb_array_elements_text(t.result -> 'expired') AS label
FROM tasks t
WHERE t.type = 'expire' AND t.status = 'completed'
  AND jsonb_typeof(t.result -> 'expired') = 'array' AND ($1::text IS NULL OR t.database_id = $1)
"""


async def collect_metrics(db: Executor, facts: InstanceFactsBook | None = None) -> list[Metric]:
    """Every family this control plane exports: the store's now, the instances' as the
    monitor last observed them (none when `facts` is None)."""
    configs = await backup_configs(db)
    return [
        _info(),
        await _counted(db, "SELECT state, count(*) FROM databases GROUP BY state", "databases"),
        await _degraded(db),
        await _counted(db, "SELECT state, count(*) FROM instances GROUP BY state", "instances"),
        await _tasks(db),
        *await _queue(db),
        *await _backups(db, configs),
        await _recovery_windows(db, configs),
        await _drills(db, configs),
        *instance_families(facts.snapshot() if facts is not None else []),
    ]


def render_metrics(families: Iterable[Metric]) -> bytes:
    """The text exposition format 0.0.4 of `families` and of this process (cpu, memory, open
    files), from a registry made for this one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families)))
    ProcessCollector(registry=registry)
    return generate_latest(registry)


class _Families:
    """A collector handing out families collected beforehand (the store is read async)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _info() -> Metric:
    family = _family("controlplane_build_info")
    family.add_metric([__version__], 1)
    return family


async def _counted(db: Executor, sql: str, what: Literal["databases", "instances"]) -> Metric:
    family = _family(f"controlplane_{what}")
    known = _DATABASE_STATES if what == "databases" else _INSTANCE_STATES
    counts = {str(r[0]): int(r[1]) for r in await db.fetch(sql)}
    for value in sorted(set(known) | set(counts)):
        family.add_metric([value], counts.get(value, 0))
    return family


async def _degraded(db: Executor) -> Metric:
    family = _family("controlplane_database_degraded")
    for record in await db.fetch("SELECT id, state FROM databases ORDER BY id"):
        family.add_metric([str(record["id"])], 1 if record["state"] == "degraded" else 0)
    return family


async def _tasks(db: Executor) -> Metric:
    family = _family("controlplane_tasks")
    rows = await db.fetch("SELECT type, status, count(*) FROM tasks GROUP BY type, status")
    counts = {(str(r[0]), str(r[1])): int(r[2]) for r in rows}
    keys = {(t, s) for t in _TASK_TYPES for s in _TASK_STATUSES} | set(counts)
    for task_type, status in sorted(keys):
        family.add_metric([task_type, status], counts.get((task_type, status), 0))
    return family


async def _queue(db: Executor) -> list[Metric]:
    row = await db.fetchrow(_QUEUE)
    depth = _family("controlplane_task_queue_depth")
    oldest = _family("controlplane_task_queue_oldest_age_seconds")
    lag = _family("controlplane_scheduler_lag_seconds")
    depth.add_metric([], int(row["depth"]) if row else 0)
    oldest.add_metric([], float(row["oldest"]) if row else 0.0)
    lag.add_metric([], float(row["scheduler_lag"]) if row else 0.0)
    return [depth, oldest, lag]


def _backup_config(spec: Mapping[str, Any], node: str) -> BackupConfig | None:
    """The node's effective backup_config (a node-level one replaces the database's)."""
    nodes = spec.get("nodes") or []
    config = next((n.get("backup_config") for n in nodes if n.get("name") == node), None)
    config = config if isinstance(config, dict) else spec.get("backup_config")
    if not isinstance(config, dict):
        return None
    try:
        return msgspec.convert(config, BackupConfig)
    except msgspec.ValidationError:
        return None


async def backup_configs(
    db: Executor, database_id: str | None = None
) -> dict[tuple[str, str], BackupConfig]:
    """The effective backup_config of every node that has one (of one database, or all), by
    (database, node)."""
    configs = {}
    for row in await db.fetch(_BACKUP_NODES, database_id):
        config = _backup_config(row["spec"], row["node_name"])
        if config is not None:
            configs[(str(row["database_id"]), str(row["node_name"]))] = config
    return configs


class NodeBackups(NamedTuple):
    """A node's newest backup outcomes as its node_backup tasks recorded them, per type."""

    # type -> (start, stop, result) of the newest successful set of that type
    done: dict[str, tuple[datetime | None, datetime, Any]]
    # type -> when the newest failed backup of that type ended
    failed: dict[str, datetime]
    # every type reported for the node: full whenever a backup_config applies, each type a
    # schedule takes, and each type ever tried
    kinds: set[str]

    def newest(self) -> tuple[datetime | None, datetime, Any] | None:
        spans = list(self.done.values())
        return max(spans, key=lambda span: span[1]) if spans else None


async def backup_outcomes(
    db: Executor, configs: Mapping[tuple[str, str], BackupConfig], database_id: str | None = None
) -> dict[tuple[str, str], NodeBackups]:
    """Per (database, node), its backups' newest outcomes (of one database, or all)."""
    nodes = {
        key: NodeBackups(
            done={},
            failed={},
            kinds={"full"} | {s.type for s in config.schedules if s.type in _BACKUP_TYPES},
        )
        for key, config in configs.items()
    }
    for row in await db.fetch(_BACKUP_OUTCOMES, database_id):
        key = (str(row["database_id"]), str(row["node_name"]))
        kind = str(row["kind"])
        node = nodes.setdefault(key, NodeBackups(done={}, failed={}, kinds=set()))
        node.kinds.add(kind)
        if row["status"] == "completed":
            node.done[kind] = (*_backup_span(row["result"], row["completed_at"]), row["result"])
        else:
            node.failed[kind] = row["completed_at"]
    return nodes


async def _backups(db: Executor, configs: Mapping[tuple[str, str], BackupConfig]) -> list[Metric]:
    success = _family("controlplane_backup_last_success_timestamp_seconds")
    failure = _family("controlplane_backup_last_failure_timestamp_seconds")
    duration = _family("controlplane_backup_last_duration_seconds")
    size = _family("controlplane_backup_last_size_bytes")
    for (database, node), outcomes in sorted((await backup_outcomes(db, configs)).items()):
        for kind in sorted(outcomes.kinds, key=type_order):
            span = outcomes.done.get(kind)
            ended = outcomes.failed.get(kind)
            success.add_metric([database, node, kind], span[1].timestamp() if span else 0)
            failure.add_metric([database, node, kind], ended.timestamp() if ended else 0)
        newest = outcomes.newest()
        if newest is None:
            continue
        started, stopped, result = newest
        if started is not None:
            duration.add_metric([database, node], max(0.0, (stopped - started).total_seconds()))
        if isinstance(result, Mapping) and isinstance(result.get("size"), int):
            size.add_metric([database, node], result["size"])
    return [success, failure, duration, size]


def type_order(kind: str) -> tuple[int, str]:
    return (_BACKUP_TYPES.index(kind) if kind in _BACKUP_TYPES else len(_BACKUP_TYPES), kind)


def _backup_span(result: Any, completed_at: datetime) -> tuple[datetime | None, datetime]:
    """(start, stop) of the set a node_backup task recorded; the task's end when unreadable."""
    if isinstance(result, str):
        result = json.loads(result)
    if isinstance(result, Mapping):
        try:
            started = datetime.fromisoformat(str(result["started_at"]))
            stopped = datetime.fromisoformat(str(result["stopped_at"]))
        except (KeyError, ValueError):
            pass
        else:
            return started, stopped
    return None, completed_at


class RecordedSet(NamedTuple):
    """A backup set as its node_backup task recorded it."""

    label: str
    type: str
    repository_id: str
    system_id: str | None
    stopped_at: datetime


def recovery_window_start(
    sets: Sequence[RecordedSet], retention: Mapping[str, tuple[int, str]], expired: set[str]
) -> datetime | None:
    """The stop time of the oldest set still kept, replaying pgBackRest's full-backup retention
    (`retention`: repository id -> (retention_full, retention_full_type)) over the sets the
    store recorded, then dropping those expired by hand; None when no set is known.

    Only the store's records are read (never the repository), so the answer errs late, never
    early: a set whose task was pruned is not counted, and retention is replayed as if every
    set expired by hand had still been there, both of which can only move the start later.
    In each repository only the newest database system counts (a restore that changed the
    system starts a new generation). Without a full backup recorded, the oldest recorded set
    bounds the start from above.
    """
    by_repo: dict[str, list[RecordedSet]] = {}
    for entry in sets:
        if entry.repository_id in retention:
            by_repo.setdefault(entry.repository_id, []).append(entry)
    starts = []
    for repo, entries in by_repo.items():
        newest = max(entries, key=lambda e: e.stopped_at)
        entries = [e for e in entries if e.system_id == newest.system_id]
        fulls = sorted((e for e in entries if e.type == "full"), key=lambda e: e.stopped_at)
        floor = _oldest_kept(fulls, *retention[repo], newest.stopped_at) if fulls else None
        live = [
            e.stopped_at
            for e in entries
            if e.label not in expired and (floor is None or e.stopped_at >= floor)
        ]
        if live:
            starts.append(min(live))
    return min(starts) if starts else None


def _oldest_kept(fulls: list[RecordedSet], count: int, kind: str, now: datetime) -> datetime:
    """The stop of the oldest full backup retention keeps (`fulls` oldest first): the newest
    `count` ones, or with a time period of `count` days every one newer than the period and
    the newest one older than it, so that the whole period stays reachable. Expiry runs at the
    end of each backup, so `now` is the newest backup's stop."""
    if kind == "count":
        return fulls[-count:][0].stopped_at
    threshold = now - timedelta(days=count)
    older = [f for f in fulls if f.stopped_at < threshold]
    return older[-1].stopped_at if older else fulls[0].stopped_at


async def recovery_window_starts(
    db: Executor, configs: Mapping[tuple[str, str], BackupConfig], database_id: str | None = None
) -> dict[tuple[str, str], datetime]:
    """Per (database, node) with a recorded set, the first point a restore reaches
    (`recovery_window_start`), of one database or all."""
    retention = {
        key: {repository_id(r): (r.retention_full, r.retention_full_type) for r in c.repositories}
        for key, c in configs.items()
    }
    expired: dict[tuple[str, str], set[str]] = {}
    for row in await db.fetch(_EXPIRED_SETS, database_id):
        expired.setdefault((row["database_id"], row["node_name"]), set()).add(row["label"])
    sets: dict[tuple[str, str], list[RecordedSet]] = {}
    for row in await db.fetch(_BACKUP_SETS, database_id):
        try:
            entry = RecordedSet(
                label=str(row["label"]),
                type=str(row["type"]),
                repository_id=str(row["repository_id"]),
                system_id=row["system_id"],
                stopped_at=datetime.fromisoformat(str(row["stopped_at"])),
            )
        except ValueError:
            continue
        sets.setdefault((row["database_id"], row["node_name"]), []).append(entry)
    starts = {}
    for key in sorted(sets):
        start = recovery_window_start(sets[key], retention.get(key, {}), expired.get(key, set()))
        if start is not None:
            starts[key] = start
    return starts


async def _recovery_windows(
    db: Executor, configs: Mapping[tuple[str, str], BackupConfig]
) -> Metric:
    family = _family("controlplane_recovery_window_start_timestamp_seconds")
    for key, start in (await recovery_window_starts(db, configs)).items():
        family.add_metric(list(key), start.timestamp())
    return family


async def _drills(db: Executor, configs: Mapping[tuple[str, str], BackupConfig]) -> Metric:
    """Per node, its newest passing drill (from the drills table); 0 for a node with a drill
    schedule that has none yet, so an alert sees it."""
    family = _family("controlplane_drill_last_success_timestamp_seconds")
    found = {(d, n): when.timestamp() for d, n, when in await drill_records.last_successes(db)}
    for key, config in configs.items():
        if any(s.type == "drill" for s in config.schedules):
            found.setdefault(key, 0.0)
    for key in sorted(found):
        family.add_metric(list(key), found[key])
    return family


def instance_families(observed: Sequence[InstanceFacts]) -> list[Metric]:
    """The families read from the monitor's last facts of each instance."""
    names = [n for n in METRICS if n.startswith(_INSTANCE_PREFIXES)]
    families = {name: _family(name) for name in names}

    def add(name: str, labels: Sequence[str], value: float) -> None:
        families[name].add_metric(list(labels), value)

    for facts in observed:
        node = (facts.database, facts.node)
        instance = (*node, facts.instance, facts.role)
        add("controlplane_instance_up", instance, 1 if facts.up else 0)
        add("controlplane_instance_facts_age_seconds", node, facts.age())
        if facts.timeline is not None:
            add("controlplane_instance_timeline", instance, facts.timeline)
        for standby in facts.standbys:
            replica = (*node, standby.name)
            add("controlplane_instance_replay_lag_bytes", replica, standby.lag_bytes)
            add("controlplane_instance_replay_lag_seconds", replica, standby.lag_seconds)
        archiver = facts.archiver
        if archiver is not None:
            add("controlplane_archiver_archived_total", node, archiver.archived_count)
            add("controlplane_archiver_failed_total", node, archiver.failed_count)
            add(
                "controlplane_archiver_last_archived_timestamp_seconds",
                node,
                _epoch(archiver.last_archived_time),
            )
            add(
                "controlplane_archiver_last_failed_timestamp_seconds",
                node,
                _epoch(archiver.last_failed_time),
            )
            add("controlplane_wal_ready_files", node, archiver.ready_files)
        for slot in facts.slots:
            add(
                "controlplane_replication_slot_retained_bytes",
                (*node, slot.name),
                slot.retained_bytes,
            )
            add("controlplane_replication_slot_active", (*node, slot.name), int(slot.active))
            if slot.lag_bytes is not None:
                add("controlplane_replication_slot_lag_bytes", (*node, slot.name), slot.lag_bytes)
        for sub in facts.subscriptions or []:
            add(
                "controlplane_subscription_up",
                (*node, sub.name, sub.provider),
                1 if sub.status == "replicating" else 0,
            )
    return list(families.values())


_INSTANCE_PREFIXES = (
    "controlplane_instance_",
    "controlplane_archiver_",
    "controlplane_wal_",
    "controlplane_replication_slot_",
    "controlplane_subscription_",
)


def _epoch(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0
