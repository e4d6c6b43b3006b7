"""Prometheus metrics read from the state store, rendered in the text exposition format 0.0.4.

Everything comes from a few indexed SQL queries over databases, instances and tasks, so a scrape
never runs pgBackRest or touches an instance. Series whose values are counts of stored rows are
gauges (finished tasks are pruned after the retention period, so they can go down).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, get_args

from msgspec import Struct, field

from controlplane import __version__
from controlplane.models import DatabaseState, InstanceState, TaskStatus, TaskType
from controlplane.store.pool import Executor

_DATABASE_STATES = get_args(DatabaseState)
_INSTANCE_STATES = get_args(InstanceState)
_TASK_TYPES = get_args(TaskType)
_TASK_STATUSES = get_args(TaskStatus)

# The newest completed backup of every node that has one or whose effective spec (node level,
# else database level) has a backup_config; such a node with no backup yet reports 0.
_LAST_BACKUPS = """
SELECT i.database_id, i.node_name, b.completed_at, b.result
FROM instances i
JOIN databases d ON d.id = i.database_id
LEFT JOIN LATERAL (
    SELECT t.completed_at, t.result FROM tasks t
    WHERE t.database_id = i.database_id AND t.node_name = i.node_name
      AND t.type = 'node_backup' AND t.status = 'completed'
    ORDER BY t.completed_at DESC LIMIT 1
) b ON true
WHERE b.completed_at IS NOT NULL
   OR jsonb_typeof(d.spec -> 'backup_config') = 'object'
   OR EXISTS (
       SELECT 1 FROM jsonb_array_elements(coalesce(d.spec -> 'nodes', '[]')) n
       WHERE n ->> 'name' = i.node_name AND jsonb_typeof(n -> 'backup_config') = 'object'
   )
ORDER BY i.database_id, i.node_name
"""
_QUEUE = """
SELECT count(*) FILTER (WHERE status = 'pending') AS depth,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0)
           AS oldest,
       coalesce(extract(epoch FROM now() - min(created_at)
           FILTER (WHERE status = 'pending' AND trigger = 'scheduled')), 0) AS scheduler_lag
FROM tasks WHERE status IN ('pending', 'running', 'canceling')
"""


class Sample(Struct, frozen=True):
    labels: tuple[tuple[str, str], ...]
    value: float


class Family(Struct, kw_only=True):
    """One metric: name, type, help text and its samples."""

    name: str
    type: Literal["gauge", "counter"]
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append(Sample(tuple(labels.items()), float(value)))


async def collect_metrics(db: Executor) -> list[Family]:
    """Every family this control plane exports, read from the store now."""
    families = [
        _info(),
        await _counted(
            db,
            "SELECT state, count(*) FROM databases GROUP BY state",
            Family(name="controlplane_databases", type="gauge", help="Databases by state."),
            "state",
            _DATABASE_STATES,
        ),
        await _counted(
            db,
            "SELECT state, count(*) FROM instances GROUP BY state",
            Family(name="controlplane_instances", type="gauge", help="Instances by state."),
            "state",
            _INSTANCE_STATES,
        ),
        await _tasks(db),
        *await _queue(db),
        *await _backups(db),
    ]
    return families


def _info() -> Family:
    family = Family(
        name="controlplane_build_info",
        type="gauge",
        help="Always 1; the version of the control plane serving the scrape.",
    )
    family.add(1, version=__version__)
    return family


async def _counted(
    db: Executor, sql: str, family: Family, label: str, known: Sequence[str]
) -> Family:
    counts = {str(r[0]): int(r[1]) for r in await db.fetch(sql)}
    for value in sorted(set(known) | set(counts)):
        family.add(counts.get(value, 0), **{label: value})
    return family


async def _tasks(db: Executor) -> Family:
    family = Family(
        name="controlplane_tasks",
        type="gauge",
        help="Tasks kept in the store by type and status (finished ones are pruned).",
    )
    rows = await db.fetch("SELECT type, status, count(*) FROM tasks GROUP BY type, status")
    counts = {(str(r[0]), str(r[1])): int(r[2]) for r in rows}
    keys = {(t, s) for t in _TASK_TYPES for s in _TASK_STATUSES} | set(counts)
    for task_type, status in sorted(keys):
        family.add(counts.get((task_type, status), 0), type=task_type, status=status)
    return family


async def _queue(db: Executor) -> list[Family]:
    row = await db.fetchrow(_QUEUE)
    depth = Family(
        name="controlplane_task_queue_depth",
        type="gauge",
        help="Tasks waiting for a worker (status pending).",
    )
    oldest = Family(
        name="controlplane_task_queue_oldest_age_seconds",
        type="gauge",
        help="Age of the oldest pending task; 0 when none waits.",
    )
    lag = Family(
        name="controlplane_scheduler_lag_seconds",
        type="gauge",
        help="How long the oldest pending scheduled task has waited to start; 0 when none.",
    )
    depth.add(int(row["depth"]) if row else 0)
    oldest.add(float(row["oldest"]) if row else 0.0)
    lag.add(float(row["scheduler_lag"]) if row else 0.0)
    return [depth, oldest, lag]


async def _backups(db: Executor) -> list[Family]:
    last = Family(
        name="controlplane_backup_last_success_timestamp_seconds",
        type="gauge",
        help="When the newest successful backup of the node stopped (0: never backed up).",
    )
    duration = Family(
        name="controlplane_backup_last_duration_seconds",
        type="gauge",
        help="How long the newest successful backup of the node took.",
    )
    size = Family(
        name="controlplane_backup_last_size_bytes",
        type="gauge",
        help="Database size captured by the newest successful backup of the node.",
    )
    for row in await db.fetch(_LAST_BACKUPS):
        labels = {"database": str(row["database_id"]), "node": str(row["node_name"])}
        if row["completed_at"] is None:
            last.add(0, **labels)
            continue
        started, stopped = _backup_span(row["result"], row["completed_at"])
        last.add(stopped.timestamp(), **labels)
        if started is not None:
            duration.add(max(0.0, (stopped - started).total_seconds()), **labels)
        result = row["result"]
        if isinstance(result, Mapping) and isinstance(result.get("size"), int):
            size.add(result["size"], **labels)
    return [last, duration, size]


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


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render_metrics(families: Sequence[Family]) -> str:
    """The text exposition format: HELP and TYPE, then one line per sample."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels)
            name = f"{family.name}{{{labels}}}" if labels else family.name
            lines.append(f"{name} {_number(sample.value)}")
    return "\n".join(lines) + "\n"
