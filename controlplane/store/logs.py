"""Task log entries: numbered per task, so a cursor never skips or repeats an entry."""

from __future__ import annotations

import uuid
from typing import Any

from controlplane.models import LogEntry
from controlplane.store.pool import Executor


async def last_entry_id(db: Executor, task_id: uuid.UUID) -> int:
    value = await db.fetchval(
        "SELECT coalesce(max(entry_id), 0) FROM task_log WHERE task_id = $1", task_id
    )
    return int(value)


async def append_entries(
    db: Executor, task_id: uuid.UUID, entries: list[tuple[int, str, str, dict[str, Any]]]
) -> None:
    """Insert (entry_id, level, message, fields) rows; ids are assigned by the single writer."""
    await db.executemany(
        "INSERT INTO task_log (task_id, entry_id, level, message, fields)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [(task_id, *entry) for entry in entries],
    )


async def read_entries(
    db: Executor, task_id: uuid.UUID, *, after_entry_id: int, limit: int
) -> list[LogEntry]:
    """The next `limit` entries after the cursor, oldest first."""
    records = await db.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM task_log"
        " WHERE task_id = $1 AND entry_id > $2 ORDER BY entry_id LIMIT $3",
        task_id,
        after_entry_id,
        limit,
    )
    return [_entry(r) for r in records]


async def read_newest_entries(db: Executor, task_id: uuid.UUID, *, limit: int) -> list[LogEntry]:
    """The newest `limit` entries (a tail, as pgEdge answers a page without a cursor), oldest
    first, so the last one's id is the cursor for what follows."""
    records = await db.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM task_log WHERE task_id = $1 ORDER BY entry_id DESC LIMIT $2",
        task_id,
        limit,
    )
    return [_entry(r) for r in reversed(records)]


_ENTRY_COLUMNS = "entry_id, ts, level, message, fields"


def _entry(record: Any) -> LogEntry:
    return LogEntry(
        entry_id=record["entry_id"],
        timestamp=record["ts"],
        level=record["level"],
        message=record["message"],
        fields=record["fields"],
    )
