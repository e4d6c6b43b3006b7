"""Task log writer: one per running task, numbering entries and redacting secrets."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from controlplane.store import logs
from controlplane.store.pool import Executor, Pool
from controlplane.system.process import LineSink

log = logging.getLogger(__name__)
REDACTED = "********"


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """Replace every known secret value in `text` (longest first, so overlaps are covered)."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


class TaskLogger:
    """Appends entries with consecutive ids; a lock keeps ids in commit order."""

    def __init__(self, pool: Pool, task_id: uuid.UUID, *, next_id: int, secrets: set[str]) -> None:
        self._pool = pool
        self._task_id = task_id
        self._next_id = next_id
        self._lock = asyncio.Lock()
        self.secrets = secrets

    @classmethod
    async def open(cls, pool: Pool, task_id: uuid.UUID, secrets: set[str]) -> TaskLogger:
        """Resume numbering after the last entry a previous attempt wrote."""
        return cls(
            pool, task_id, next_id=await logs.last_entry_id(pool, task_id) + 1, secrets=secrets
        )

    def redact(self, text: str) -> str:
        return redact_text(text, self.secrets)

    async def write(
        self, level: str, message: str, *, db: Executor | None = None, **fields: Any
    ) -> None:
        """Append one entry (through `db` when it must commit with something else)."""
        message = self.redact(message)
        clean = {k: self.redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        async with self._lock:
            await logs.append_entries(
                db or self._pool, self._task_id, [(self._next_id, level, message, clean)]
            )
            self._next_id += 1

    async def info(self, message: str, **fields: Any) -> None:
        await self.write("info", message, **fields)

    async def warning(self, message: str, **fields: Any) -> None:
        await self.write("warning", message, **fields)

    async def error(self, message: str, **fields: Any) -> None:
        await self.write("error", message, **fields)

    def sink(self, source: str, **fields: Any) -> LineSink:
        """A line sink for subprocess output: every line becomes an entry tagged with `source`."""

        async def write_line(line: str) -> None:
            if line.strip():
                await self.write("info", line, source=source, **fields)

        return write_line
