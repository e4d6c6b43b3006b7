"""Restore drill records: the newest drill of each backup set of a node, and when it passed."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
from msgspec import Struct, field

from controlplane.store.pool import Executor

_COLUMNS = (
    "database_id, node_name, set_label, task_id, status, started_at, finished_at, amcheck_ok,"
    " row_counts, error, last_success_at"
)


class DrillRow(Struct, kw_only=True, frozen=True):
    """One drill of one set: `completed` (restored, recovered, checked) or `failed` (why)."""

    database_id: str
    node_name: str
    set_label: str
    task_id: uuid.UUID
    status: str
    started_at: datetime
    finished_at: datetime
    amcheck_ok: bool | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    last_success_at: datetime | None = None


def _row(record: asyncpg.Record) -> DrillRow:
    values: dict[str, Any] = dict(record.items())
    values["row_counts"] = {str(k): int(v) for k, v in dict(values["row_counts"]).items()}
    return DrillRow(**values)


async def record_drill(db: Executor, drill: DrillRow) -> DrillRow:
    """Keep `drill` as the set's newest; a failed one keeps when the set last passed."""
    record = await db.fetchrow(
        f"INSERT INTO drills ({_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
        "   CASE WHEN $5::text = 'completed' THEN $7::timestamptz END)"
        " ON CONFLICT (database_id, node_name, set_label) DO UPDATE SET"
        "   task_id = EXCLUDED.task_id, status = EXCLUDED.status,"
        "   started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,"
        "   amcheck_ok = EXCLUDED.amcheck_ok, row_counts = EXCLUDED.row_counts,"
        "   error = EXCLUDED.error,"
        "   last_success_at = coalesce(EXCLUDED.last_success_at, drills.last_success_at)"
        f" RETURNING {_COLUMNS}",
        drill.database_id,
        drill.node_name,
        drill.set_label,
        drill.task_id,
        drill.status,
        drill.started_at,
        drill.finished_at,
        drill.amcheck_ok,
        drill.row_counts,
        drill.error,
    )
    assert record is not None
    return _row(record)


async def list_drills(db: Executor, database_id: str, node_name: str) -> dict[str, DrillRow]:
    """The node's drills by set label."""
    records = await db.fetch(
        f"SELECT {_COLUMNS} FROM drills WHERE database_id = $1 AND node_name = $2",
        database_id,
        node_name,
    )
    return {r["set_label"]: _row(r) for r in records}


async def last_successes(db: Executor) -> list[tuple[str, str, datetime]]:
    """(database, node, when its newest passing drill finished) of every node that still has
    an instance; one row per node."""
    records = await db.fetch(
        "SELECT d.database_id, d.node_name, max(d.last_success_at) AS last_success_at"
        " FROM drills d"
        " WHERE d.last_success_at IS NOT NULL AND EXISTS (SELECT 1 FROM instances i"
        "   WHERE i.database_id = d.database_id AND i.node_name = d.node_name)"
        " GROUP BY d.database_id, d.node_name ORDER BY d.database_id, d.node_name"
    )
    return [(r["database_id"], r["node_name"], r["last_success_at"]) for r in records]
