"""Encoded answers of the hot read routes, kept until what they show changes.

Dashboards and monitoring poll the same few routes (a database, the database list, task lists)
many times a second, while what they show changes rarely. Each answer is kept, encoded, under
its route and parameters, tagged with:

- its topic's change counter (store/changes.py), read after `sync()` and before the store is
  read, so a change committed while the answer is built voids it at once;
- for answers that include the monitor's observations, the facts book's version.

It is served again only while both are unchanged. Concurrent misses of one key build it once.
Errors (a missing database, a bad task id) are never kept. When the change feed is down,
every read goes to the store.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from controlplane.server.instance_facts import InstanceFactsBook
from controlplane.store.changes import ChangeFeed

MAX_ENTRIES = 512


@dataclass(frozen=True)
class _Entry:
    version: tuple[object, ...]
    body: asyncio.Future[bytes]


class ReadCache:
    def __init__(
        self, feed: ChangeFeed | None, facts: InstanceFactsBook, max_entries: int = MAX_ENTRIES
    ) -> None:
        self._feed = feed
        self._facts = facts
        self._max = max_entries
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()

    async def answer(
        self,
        key: Hashable,
        topic: str,
        build: Callable[[], Awaitable[bytes]],
        *,
        with_facts: bool = False,
    ) -> bytes:
        """The encoded answer for `key`: kept, or built now by `build` (and kept)."""
        if self._feed is None or not await self._feed.sync():
            return await build()
        version = (*self._feed.version(topic), self._facts.version if with_facts else None)
        entry = self._entries.get(key)
        if entry is not None and entry.version == version:
            self._entries.move_to_end(key)
            try:
                return await asyncio.shield(entry.body)
            except asyncio.CancelledError:
                if not entry.body.cancelled():
                    raise  # this request was cancelled
                return await build()  # the request building it was: build it here
        body: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._entries[key] = _Entry(version, body)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        try:
            encoded = await build()
        except BaseException as exc:
            if key in self._entries and self._entries[key].body is body:
                del self._entries[key]
            if isinstance(exc, asyncio.CancelledError):
                body.cancel()
            else:
                body.set_exception(exc)
                body.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        body.set_result(encoded)
        return encoded
