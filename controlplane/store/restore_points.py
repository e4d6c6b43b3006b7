"""Restore point records: the named points in a node's WAL that `name` restores may target."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from msgspec import Struct

from controlplane.errors import RestorePointExistsError
from controlplane.store.pool import Executor

_COLUMNS = (
    "database_id, node_name, name, lsn, timeline, timeline_history, system_identifier, time,"
    " created_by"
)


class RestorePointRow(Struct, kw_only=True, frozen=True):
    """A restore point whose WAL reached the node's repository when it was recorded."""

    database_id: str
    node_name: str
    name: str
    lsn: str
    timeline: int
    # [[parent timeline, switch LSN], ...] of `timeline`'s history file, oldest first.
    timeline_history: list[tuple[int, str]]
    system_identifier: int
    time: datetime
    created_by: str


def _row(record: asyncpg.Record) -> RestorePointRow:
    values = dict(record.items())
    values["timeline_history"] = [(int(t), str(lsn)) for t, lsn in values["timeline_history"]]
    return RestorePointRow(**values)


async def insert_restore_point(db: Executor, point: RestorePointRow) -> RestorePointRow:
    """Record a restore point; a name the node already has raises RestorePointExistsError."""
    try:
        record = await db.fetchrow(
            f"INSERT INTO restore_points ({_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            f" RETURNING {_COLUMNS}",
            point.database_id,
            point.node_name,
            point.name,
            point.lsn,
            point.timeline,
            [list(entry) for entry in point.timeline_history],
            point.system_identifier,
            point.time,
            point.created_by,
        )
    except asyncpg.UniqueViolationError:
        raise exists_error(point.database_id, point.node_name, point.name) from None
    assert record is not None
    return _row(record)


def exists_error(database_id: str, node_name: str, name: str) -> RestorePointExistsError:
    return RestorePointExistsError(
        f"node {node_name} of {database_id} already has a restore point named {name}",
        details={"name": name},
    )


async def get_restore_point(
    db: Executor, database_id: str, node_name: str, name: str
) -> RestorePointRow | None:
    record = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM restore_points"
        " WHERE database_id = $1 AND node_name = $2 AND name = $3",
        database_id,
        node_name,
        name,
    )
    return None if record is None else _row(record)


async def list_restore_points(
    db: Executor, database_id: str, node_name: str
) -> list[RestorePointRow]:
    """The node's restore points, oldest first."""
    records = await db.fetch(
        f"SELECT {_COLUMNS} FROM restore_points WHERE database_id = $1 AND node_name = $2"
        " ORDER BY time, name",
        database_id,
        node_name,
    )
    return [_row(r) for r in records]
