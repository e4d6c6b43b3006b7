"""Task log writer: one per running task, numbering entries and redacting secrets.

Every entry carries the node it is about (the task's own node unless the writer names one), and
also reaches the server log (`controlplane.task`) at its level, with the task's id, so an
operator shipping the server log sees task activity without reading each task's log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from controlplane.pgbackrest.command import console_level
from controlplane.store import logs
from controlplane.store.pool import Executor, Pool
from controlplane.system.process import LineSink

log = logging.getLogger(__name__)
# Task activity in the server log: entries at their level, command output one level down (it is
# in the task's log in full; warnings and errors from a command stay warnings and errors).
server_log = logging.getLogger("controlplane.task")
REDACTED = "********"
_SERVER_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Output of these commands says its own level on each line (`P00   WARN: …`).
_LEVELLED_SOURCES = frozenset({"pgbackrest"})


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """Replace every known secret value in `text` (longest first, so overlaps are covered)."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


class TaskLogger:
    """Appends entries with consecutive ids; a lock keeps ids in commit order."""

    def __init__(
        self,
        pool: Pool,
        task_id: uuid.UUID,
        *,
        next_id: int,
        secrets: set[str],
        database_id: str | None = None,
        node: str | None = None,
    ) -> None:
        self._pool = pool
        self._task_id = task_id
        self._next_id = next_id
        self._lock = asyncio.Lock()
        self.secrets = secrets
        self._database_id = database_id
        self._node = node

    @classmethod
    async def open(
        cls,
        pool: Pool,
        task_id: uuid.UUID,
        secrets: set[str],
        *,
        database_id: str | None = None,
        node: str | None = None,
    ) -> TaskLogger:
        """Resume numbering after the last entry a previous attempt wrote. `node`: the task's
        node, which every entry names unless it names another."""
        return cls(
            pool,
            task_id,
            next_id=await logs.last_entry_id(pool, task_id) + 1,
            secrets=secrets,
            database_id=database_id,
            node=node,
        )

    def redact(self, text: str) -> str:
        return redact_text(text, self.secrets)

    async def write(
        self, level: str, message: str, *, db: Executor | None = None, **fields: Any
    ) -> None:
        """Append one entry (through `db` when it must commit with something else)."""
        message = self.redact(message)
        clean = {k: self.redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        if self._node and "node" not in clean:
            clean["node"] = self._node
        async with self._lock:
            await logs.append_entries(
                db or self._pool, self._task_id, [(self._next_id, level, message, clean)]
            )
            self._next_id += 1
        self._to_server_log(level, message, clean)

    def _to_server_log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        severity = _SERVER_LEVELS.get(level, logging.INFO)
        if "source" in fields and severity == logging.INFO:
            severity = logging.DEBUG  # a command's routine output
        if not server_log.isEnabledFor(severity):
            return
        context = {"task_id": str(self._task_id)}
        if self._database_id:
            context["database_id"] = self._database_id
        server_log.log(severity, "%s", message, extra={"fields": {**fields, **context}})

    async def info(self, message: str, **fields: Any) -> None:
        await self.write("info", message, **fields)

    async def warning(self, message: str, **fields: Any) -> None:
        await self.write("warning", message, **fields)

    async def error(self, message: str, **fields: Any) -> None:
        await self.write("error", message, **fields)

    def sink(self, source: str, **fields: Any) -> LineSink:
        """A line sink for subprocess output: every line becomes an entry tagged with `source`,
        at the level the line states when its command states one (pgBackRest's `WARN:` is a
        warning; an indented line continues the level of the line before)."""
        levelled = source in _LEVELLED_SOURCES
        previous = "info"

        async def write_line(line: str) -> None:
            nonlocal previous
            if not line.strip():
                return
            level = "info"
            if levelled:
                stated = console_level(line)
                if stated is not None:
                    level = previous = stated
                elif line[:1].isspace():
                    level = previous
            await self.write(level, line, source=source, **fields)

        return write_line
