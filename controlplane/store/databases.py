"""Database records: the stored spec (secrets encrypted apart) and lifecycle state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from msgspec import Struct

from controlplane.errors import DatabaseAlreadyExistsError, NotFoundError
from controlplane.models import DatabaseState
from controlplane.store.pool import Executor


class DatabaseRow(Struct, kw_only=True):
    """A database as stored: `spec` is public (no secrets), `secrets` the encrypted remainder."""

    id: str
    state: DatabaseState
    spec: dict[str, Any]
    secrets: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime


_COLUMNS = "id, state, spec, secrets, error, created_at, updated_at"


def _row(record: asyncpg.Record) -> DatabaseRow:
    return DatabaseRow(**dict(record.items()))


async def insert_database(
    db: Executor, *, database_id: str, spec: dict[str, Any], secrets: str | None
) -> DatabaseRow:
    """Record a new database in state `creating`; an existing id is a conflict."""
    try:
        record = await db.fetchrow(
            f"INSERT INTO databases (id, state, spec, secrets) VALUES ($1, 'creating', $2, $3)"
            f" RETURNING {_COLUMNS}",
            database_id,
            spec,
            secrets,
        )
    except asyncpg.UniqueViolationError:
        raise DatabaseAlreadyExistsError(
            f"database {database_id} already exists", details={"database_id": database_id}
        ) from None
    assert record is not None
    return _row(record)


async def get_database(db: Executor, database_id: str, *, for_update: bool = False) -> DatabaseRow:
    """The database with this id, or NotFoundError."""
    lock = " FOR UPDATE" if for_update else ""
    record = await db.fetchrow(f"SELECT {_COLUMNS} FROM databases WHERE id = $1{lock}", database_id)
    if record is None:
        raise NotFoundError(
            f"database {database_id} not found", details={"database_id": database_id}
        )
    return _row(record)


async def find_database(db: Executor, database_id: str) -> DatabaseRow | None:
    record = await db.fetchrow(f"SELECT {_COLUMNS} FROM databases WHERE id = $1", database_id)
    return None if record is None else _row(record)


async def list_databases(db: Executor) -> list[DatabaseRow]:
    records = await db.fetch(f"SELECT {_COLUMNS} FROM databases ORDER BY created_at, id")
    return [_row(r) for r in records]


async def update_spec(
    db: Executor, database_id: str, *, spec: dict[str, Any], secrets: str | None
) -> None:
    await db.execute(
        "UPDATE databases SET spec = $2, secrets = $3, updated_at = now() WHERE id = $1",
        database_id,
        spec,
        secrets,
    )


async def set_state(
    db: Executor, database_id: str, state: str, *, error: str | None = None
) -> None:
    """Move the database to `state`, recording (or clearing) its error."""
    await db.execute(
        "UPDATE databases SET state = $2, error = $3, updated_at = now() WHERE id = $1",
        database_id,
        state,
        error,
    )


async def delete_database(db: Executor, database_id: str) -> None:
    """Remove the record (its instances go with it; task history is kept)."""
    await db.execute("DELETE FROM databases WHERE id = $1", database_id)


async def mark_backing_up(db: Executor, database_id: str) -> None:
    """An available database shows `backing_up` while a backup runs (other states win)."""
    await db.execute(
        "UPDATE databases SET state = 'backing_up', updated_at = now()"
        " WHERE id = $1 AND state = 'available'",
        database_id,
    )


async def clear_backing_up(db: Executor, database_id: str, finishing_task: object) -> None:
    """Back to `available` once no other backup of the database is still active."""
    await db.execute(
        "UPDATE databases SET state = 'available', updated_at = now()"
        " WHERE id = $1 AND state = 'backing_up' AND NOT EXISTS ("
        "   SELECT 1 FROM tasks WHERE database_id = $1 AND task_id <> $2"
        "   AND type IN ('node_backup', 'verify')"
        "   AND status IN ('pending', 'running', 'canceling'))",
        database_id,
        finishing_task,
    )
