"""Instance records: one Postgres per node, its host, port, observed and desired state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from msgspec import Struct

from controlplane.models import InstanceState
from controlplane.store.pool import Executor


class InstanceRow(Struct, kw_only=True):
    id: str
    database_id: str
    node_name: str
    host_id: str
    port: int
    state: InstanceState
    role: str
    desired: str
    error: str | None
    generations: dict[str, Any]
    created_at: datetime
    updated_at: datetime


_COLUMNS = (
    "id, database_id, node_name, host_id, port, state, role, desired, error, generations,"
    " created_at, updated_at"
)


def _row(record: asyncpg.Record) -> InstanceRow:
    return InstanceRow(**dict(record.items()))


def instance_id(database_id: str, node_name: str) -> str:
    """Stable instance id: database ids never contain `--`, so this cannot collide."""
    return f"{database_id}-{node_name}"


async def insert_instance(
    db: Executor, *, database_id: str, node_name: str, host_id: str, port: int
) -> InstanceRow | None:
    """Record an instance; None when its host/port is already taken by another instance."""
    try:
        record = await db.fetchrow(
            "INSERT INTO instances (id, database_id, node_name, host_id, port, state)"
            " VALUES ($1, $2, $3, $4, $5, 'creating')"
            f" ON CONFLICT (id) DO UPDATE SET updated_at = now() RETURNING {_COLUMNS}",
            instance_id(database_id, node_name),
            database_id,
            node_name,
            host_id,
            port,
        )
    except asyncpg.UniqueViolationError:
        return None
    assert record is not None
    return _row(record)


async def list_instances(db: Executor, database_id: str | None = None) -> list[InstanceRow]:
    if database_id is None:
        records = await db.fetch(
            f"SELECT {_COLUMNS} FROM instances ORDER BY database_id, node_name"
        )
    else:
        records = await db.fetch(
            f"SELECT {_COLUMNS} FROM instances WHERE database_id = $1 ORDER BY node_name",
            database_id,
        )
    return [_row(r) for r in records]


async def get_instance(db: Executor, database_id: str, node_name: str) -> InstanceRow | None:
    record = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM instances WHERE database_id = $1 AND node_name = $2",
        database_id,
        node_name,
    )
    return None if record is None else _row(record)


async def used_ports(db: Executor, host_id: str) -> set[int]:
    rows = await db.fetch("SELECT port FROM instances WHERE host_id = $1", host_id)
    return {r["port"] for r in rows}


async def count_by_host(db: Executor) -> dict[str, int]:
    """How many instances each host runs (hosts without any are absent)."""
    rows = await db.fetch("SELECT host_id, count(*) AS n FROM instances GROUP BY host_id")
    return {str(r["host_id"]): int(r["n"]) for r in rows}


async def set_instance_state(
    db: Executor,
    database_id: str,
    node_name: str,
    state: str,
    *,
    error: str | None = None,
    desired: str | None = None,
) -> None:
    await db.execute(
        "UPDATE instances SET state = $3, error = $4, desired = coalesce($5, desired),"
        " updated_at = now() WHERE database_id = $1 AND node_name = $2",
        database_id,
        node_name,
        state,
        error,
        desired,
    )


async def delete_instance(db: Executor, database_id: str, node_name: str) -> None:
    await db.execute(
        "DELETE FROM instances WHERE database_id = $1 AND node_name = $2", database_id, node_name
    )


async def set_generations(
    db: Executor, database_id: str, node_name: str, generations: dict[str, int]
) -> None:
    """Record the repository generation each of the node's repositories now writes to."""
    await db.execute(
        "UPDATE instances SET generations = generations || $3::jsonb, updated_at = now()"
        " WHERE database_id = $1 AND node_name = $2",
        database_id,
        node_name,
        generations,
    )
