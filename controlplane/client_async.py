"""The asyncio variant of `controlplane.client.Client`: the same methods, awaited."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TypeVar

import httpx
import msgspec

from controlplane.client_core import (
    STREAM_TIMEOUT,
    BackupCatalog,
    Body,
    ClientBase,
    DatabaseOperation,
    DatabasesAnswer,
    HostsAnswer,
    LogEnd,
    LogFollower,
    RestoreOperation,
    Schedule,
    SchedulesAnswer,
    TaskAnswer,
    TasksAnswer,
    api_path,
    backup_body,
    decode,
    encode_body,
    error_from_response,
    restore_body,
    task_filters,
    unreachable,
)
from controlplane.models import Database, Host, LogEntry, Task, TaskLog, Version

T = TypeVar("T")


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
            verify=verify,
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
    ) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            response = await self._http.request(
                method, path, params=params, content=body, headers=headers
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content)
        return response.content

    async def _call(
        self,
        method: str,
        path: str,
        type_: type[T],
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> T:
        return decode(await self._request(method, path, params=params, body=body), type_)

    async def create_database(self, body: Body) -> DatabaseOperation:
        return await self._call("POST", "/v1/databases", DatabaseOperation, body=encode_body(body))

    async def list_databases(self) -> list[Database]:
        return (await self._call("GET", "/v1/databases", DatabasesAnswer)).databases

    async def get_database(self, database_id: str) -> Database:
        return await self._call("GET", api_path("databases", database_id), Database)

    async def update_database(self, database_id: str, body: Body) -> DatabaseOperation:
        path = api_path("databases", database_id)
        return await self._call("POST", path, DatabaseOperation, body=encode_body(body))

    async def delete_database(self, database_id: str) -> Task:
        return (await self._call("DELETE", api_path("databases", database_id), TaskAnswer)).task

    async def start_backup(
        self,
        database_id: str,
        node: str,
        *,
        type: str = "full",
        annotations: Mapping[str, str] | None = None,
        repository_id: str | None = None,
    ) -> Task:
        body = msgspec.json.encode(backup_body(type, annotations, repository_id))
        path = api_path("databases", database_id, "nodes", node, "backups")
        return (await self._call("POST", path, TaskAnswer, body=body)).task

    async def list_backups(self, database_id: str, node: str) -> BackupCatalog:
        path = api_path("databases", database_id, "nodes", node, "backups")
        return await self._call("GET", path, BackupCatalog)

    async def verify_backups(self, database_id: str, node: str) -> Task:
        path = api_path("databases", database_id, "nodes", node, "backups", "verify")
        return (await self._call("POST", path, TaskAnswer)).task

    async def expire_backup(
        self, database_id: str, node: str, label: str, *, force: bool = False
    ) -> Task:
        path = api_path("databases", database_id, "nodes", node, "backups", label)
        params = {"force": "true"} if force else None
        return (await self._call("DELETE", path, TaskAnswer, params=params)).task

    async def restore(
        self,
        database_id: str,
        restore_config: Body,
        *,
        target_nodes: list[str] | None = None,
        pre_restore_backup: bool = False,
    ) -> RestoreOperation:
        body = restore_body(restore_config, target_nodes, pre_restore_backup)
        path = api_path("databases", database_id, "restore")
        return await self._call("POST", path, RestoreOperation, body=body)

    async def list_schedules(self, database_id: str) -> list[Schedule]:
        path = api_path("databases", database_id, "schedules")
        return (await self._call("GET", path, SchedulesAnswer)).schedules

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
        path = api_path("databases", database_id, "tasks") if database_id else "/v1/tasks"
        params = task_filters(status, type, after_task_id, limit, sort_order)
        return (await self._call("GET", path, TasksAnswer, params=params)).tasks

    async def get_task(self, database_id: str, task_id: str) -> Task:
        return await self._call("GET", api_path("databases", database_id, "tasks", task_id), Task)

    async def cancel_task(self, database_id: str, task_id: str) -> Task:
        path = api_path("databases", database_id, "tasks", task_id, "cancel")
        return await self._call("POST", path, Task)

    async def get_task_log(
        self, database_id: str, task_id: str, *, after_entry_id: int = 0, limit: int = 100
    ) -> TaskLog:
        path = api_path("databases", database_id, "tasks", task_id, "log")
        params = {"after_entry_id": str(after_entry_id), "limit": str(limit)}
        return await self._call("GET", path, TaskLog, params=params)

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
        path = api_path("databases", database_id, "tasks", task_id, "log")
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

    async def list_hosts(self) -> list[Host]:
        return (await self._call("GET", "/v1/hosts", HostsAnswer)).hosts

    async def version(self) -> Version:
        return await self._call("GET", "/v1/version", Version)

    async def metrics(self) -> str:
        return (await self._request("GET", "/metrics")).decode()
