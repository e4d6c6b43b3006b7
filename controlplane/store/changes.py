"""What changed in the store, as this server learns it: one LISTEN connection.

Two channels arrive on it:

- `controlplane_tasks` (0001): a task may be waiting; the worker is woken.
- `controlplane_changes` (0005): a transaction that changed one of the tables the read routes
  show has committed; the payload names the table. Each table belongs to a topic, and each
  topic has a counter that every such notice bumps.

A cached answer is tagged with its topic's counter as it stood before the answer was read, and
is served again only while that counter has not moved. `sync()` makes that exact rather than
eventually right: it does one round trip on the listening connection, and Postgres delivers every
notice already committed before it answers. So a read that starts after a write was acknowledged
(to anyone, by any server sharing the store) sees that write. Concurrent readers share one round
trip, so a burst of reads costs one query, as `/health` does.

When the connection is lost, every counter is void (the epoch moves) until it is back, and
`sync()` answers False meanwhile: callers then read the store directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

TASKS_CHANNEL = "controlplane_tasks"
CHANGES_CHANNEL = "controlplane_changes"
# How the listening connection shows in pg_stat_activity.
APPLICATION_NAME = "controlplane change notices"

# Table -> topic: a topic's answers are built from its tables only.
TOPIC_OF_TABLE = {
    "databases": "databases",
    "instances": "databases",
    "tasks": "tasks",
    "task_steps": "tasks",
}

SYNC_TIMEOUT_SECONDS = 5.0
_RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
_CONNECTION_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class ChangeFeed:
    """The listening connection, its counters, and the shared round trip that syncs them."""

    def __init__(self, dsn: str, on_task: Callable[[], None]) -> None:
        self._dsn = dsn
        self._on_task = on_task
        self._conn: asyncpg.Connection[Any] | None = None
        self._counters: dict[str, int] = dict.fromkeys(TOPIC_OF_TABLE.values(), 0)
        self._epoch = 0
        self._round_trip = asyncio.Lock()
        self._asked = 0  # syncs asked for so far
        self._answered = 0  # every sync up to this one has had a round trip that began after it
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        await self._connect()

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(BaseException):
                await self._reconnecting
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def version(self, topic: str) -> tuple[int, int]:
        """The topic's counter, qualified by the connection's epoch."""
        return self._epoch, self._counters[topic]

    async def sync(self) -> bool:
        """Wait until every change committed before this call has been counted. False when
        the feed is down (counters then say nothing)."""
        conn = self._conn
        if conn is None:
            return False
        self._asked += 1
        ticket = self._asked
        async with self._round_trip:
            if self._answered < ticket:
                covers = self._asked  # every sync asked before this round trip begins
                try:
                    await conn.fetchval("SELECT 1", timeout=SYNC_TIMEOUT_SECONDS)
                except Exception as exc:  # any failure: this connection says nothing more
                    self._lost(conn, exc)
                    return False
                self._answered = covers
        return self._conn is conn

    async def _connect(self) -> None:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            self._dsn, server_settings={"application_name": APPLICATION_NAME}
        )
        await conn.add_listener(TASKS_CHANNEL, self._task_notice)
        await conn.add_listener(CHANGES_CHANNEL, self._change_notice)
        conn.add_termination_listener(lambda closed: self._lost(closed, None))
        self._epoch += 1  # whatever changed while no one listened
        self._conn = conn
        self._on_task()  # a task may have arrived meanwhile too

    def _task_notice(self, *_: object) -> None:
        self._on_task()

    def _change_notice(self, _conn: object, _pid: int, _channel: str, table: object) -> None:
        topic = TOPIC_OF_TABLE.get(str(table))
        if topic is not None:
            self._counters[topic] += 1

    def _lost(self, conn: object, exc: BaseException | None) -> None:
        if conn is not self._conn or self._closed:
            return
        self._conn = None
        self._epoch += 1
        log.warning("lost the store's change notices (%s); reconnecting", exc or "closed")
        if isinstance(conn, asyncpg.Connection):
            conn.terminate()
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closed:
            await asyncio.sleep(_RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)])
            try:
                await self._connect()
            except _CONNECTION_ERRORS as exc:
                attempt += 1
                log.debug("change notices: reconnect failed: %s", exc)
                continue
            log.info("listening to the store's change notices again")
            return
