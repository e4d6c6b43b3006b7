"""The asyncio variant of `controlplane.client.Client`: the same methods, awaited.

The two classes mirror each other on purpose, method by method, because Python cannot share a
method body between `def` and `async def`. What each endpoint means (path, body, how the answer
decodes) is written once in `calls.py`; a method here and its twin in `__init__.py` only send
that call with their own I/O, so the mirrored lines carry no logic."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TypeVar

import httpx

from controlplane.client import calls
from controlplane.client.core import (
    STREAM_TIMEOUT,
    Body,
    ClientBase,
    LogFollower,
    tls_verify,
)
from controlplane.client.errors import error_from_response, unreachable
from controlplane.models import (
    BackupCatalog,
    Database,
    DatabaseHealth,
    DatabaseOperation,
    Host,
    LogEnd,
    LogEntry,
    RestoreOperation,
    RestorePoint,
    Schedule,
    Task,
    TaskLog,
    Version,
)

R = TypeVar("R")


class AsyncClient(ClientBase):
    """The same API for asyncio; use `async with` or `await aclose()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        data_dir: str | Path | None = None,
        timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        reconnect_delay: float = 0.5,
        max_reconnects: int = 10,
    ) -> None:
        super().__init__(
            url, token, data_dir, reconnect_delay=reconnect_delay, max_reconnects=max_reconnects
        )
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=self._headers(),
            timeout=timeout,
            verify=tls_verify(self.url, verify),
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        seconds: float | None = None,
    ) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else None
        timeout = httpx.USE_CLIENT_DEFAULT if seconds is None else seconds
        try:
            response = await self._http.request(
                method, path, params=params, content=body, headers=headers, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content)
        return response.content

    async def _run(self, call: calls.Call[R]) -> R:
        content = await self._request(
            call.method, call.path, params=call.params, body=call.body, seconds=call.timeout
        )
        return call.read(content)

    async def create_database(self, body: Body) -> DatabaseOperation:
        """POST /v1/databases with `{id?, spec}`."""
        return await self._run(calls.create_database(body))

    async def list_databases(self) -> list[Database]:
        return await self._run(calls.list_databases())

    async def get_database(self, database_id: str) -> Database:
        return await self._run(calls.get_database(database_id))

    async def database_health(self, database_id: str) -> DatabaseHealth:
        """State, archiving, lag, backups and recovery window of every node, in one answer."""
        return await self._run(calls.database_health(database_id))

    async def update_database(self, database_id: str, body: Body) -> DatabaseOperation:
        """Declarative update with the full desired `{spec}`."""
        return await self._run(calls.update_database(database_id, body))

    async def delete_database(self, database_id: str) -> Task:
        return await self._run(calls.delete_database(database_id))

    async def start_backup(
        self,
        database_id: str,
        node: str,
        *,
        type: str = "full",
        annotations: Mapping[str, str] | None = None,
        repository_id: str | None = None,
    ) -> Task:
        call = calls.start_backup(database_id, node, type, annotations, repository_id)
        return await self._run(call)

    async def list_backups(self, database_id: str, node: str) -> BackupCatalog:
        return await self._run(calls.list_backups(database_id, node))

    async def verify_backups(
        self, database_id: str, node: str, *, drill: bool = False, set_label: str | None = None
    ) -> Task:
        return await self._run(
            calls.verify_backups(database_id, node, drill=drill, set_label=set_label)
        )

    async def expire_backup(
        self, database_id: str, node: str, label: str, *, force: bool = False
    ) -> Task:
        return await self._run(calls.expire_backup(database_id, node, label, force))

    async def create_restore_point(self, database_id: str, node: str, name: str) -> RestorePoint:
        """Write a named restore point on the running node and wait until it is archived."""
        return await self._run(calls.create_restore_point(database_id, node, name))

    async def list_restore_points(self, database_id: str, node: str) -> list[RestorePoint]:
        """The node's restore points, oldest first."""
        return await self._run(calls.list_restore_points(database_id, node))

    async def restore(
        self,
        database_id: str,
        restore_config: Body,
        *,
        target_nodes: list[str] | None = None,
        pre_restore_backup: bool = False,
    ) -> RestoreOperation:
        """In-place restore of `target_nodes` (every node when empty) from `restore_config`."""
        call = calls.restore(database_id, restore_config, target_nodes, pre_restore_backup)
        return await self._run(call)

    async def list_schedules(self, database_id: str) -> list[Schedule]:
        return await self._run(calls.list_schedules(database_id))

    async def list_tasks(
        self,
        database_id: str | None = None,
        *,
        status: str | None = None,
        type: str | None = None,
        after_task_id: str | None = None,
        limit: int | None = None,
        sort_order: str | None = None,
    ) -> list[Task]:
        """Tasks of one database (or of all when `database_id` is None), newest first."""
        call = calls.list_tasks(database_id, status, type, after_task_id, limit, sort_order)
        return await self._run(call)

    async def get_task(self, database_id: str, task_id: str) -> Task:
        return await self._run(calls.get_task(database_id, task_id))

    async def cancel_task(self, database_id: str, task_id: str) -> Task:
        return await self._run(calls.cancel_task(database_id, task_id))

    async def get_task_log(
        self, database_id: str, task_id: str, *, after_entry_id: int = 0, limit: int = 100
    ) -> TaskLog:
        """One page: the next `limit` entries after the cursor."""
        return await self._run(calls.get_task_log(database_id, task_id, after_entry_id, limit))

    async def list_hosts(self) -> list[Host]:
        return await self._run(calls.list_hosts())

    async def version(self) -> Version:
        return await self._run(calls.version())

    async def metrics(self) -> str:
        """The Prometheus exposition text of GET /metrics."""
        return await self._run(calls.metrics())

    async def iter_task_log(
        self, database_id: str, task_id: str, *, after_entry_id: int = 0, page_size: int = 500
    ) -> AsyncIterator[LogEntry]:
        while True:
            page = await self.get_task_log(
                database_id, task_id, after_entry_id=after_entry_id, limit=page_size
            )
            for entry in page.entries:
                yield entry
            if len(page.entries) < page_size:
                return
            after_entry_id = page.last_entry_id

    async def follow_task_log(
        self, database_id: str, task_id: str, *, after_entry_id: int = 0
    ) -> AsyncIterator[LogEntry | LogEnd]:
        """Entries as they are written, then one `LogEnd`; resumes a dropped stream."""
        follower = LogFollower(after_entry_id)
        path = calls.task_log_path(database_id, task_id)
        failures = 0
        while True:
            params, headers = follower.request()
            error: Exception | None = None
            try:
                async with self._http.stream(
                    "GET", path, params=params, headers=headers, timeout=STREAM_TIMEOUT
                ) as response:
                    if response.status_code >= 400:
                        raise error_from_response(response.status_code, await response.aread())
                    async for line in response.aiter_lines():
                        item = follower.feed(line)
                        if item is None:
                            continue
                        failures = 0
                        yield item
                        if isinstance(item, LogEnd):
                            return
            except httpx.TransportError as exc:
                error = exc
            failures += 1
            delay = self._stream_failed(failures, error)
            follower.reconnecting()
            await asyncio.sleep(delay)

    async def wait_for_task(self, database_id: str, task_id: str) -> Task:
        async for _ in self.follow_task_log(database_id, task_id):
            pass
        return await self.get_task(database_id, task_id)
