"""Typed client for the HTTP API: `Client` (blocking) and `AsyncClient` with the same methods.

Both return the msgspec models of `controlplane.models` (plus the response shapes of
`client_core`) and raise `ApiError` subclasses carrying the API's `name`, `message` and
`details`. The URL and token come from the arguments, else `CONTROLPLANE_URL` /
`CONTROLPLANE_TOKEN`, else http://127.0.0.1:3000 and the local `<data dir>/admin-token`.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import httpx
import msgspec

from controlplane.client_async import AsyncClient
from controlplane.client_core import (
    DEFAULT_URL,
    STREAM_TIMEOUT,
    ApiBadRequest,
    ApiConflict,
    ApiError,
    ApiForbidden,
    ApiInvalidInput,
    ApiNotFound,
    ApiServerError,
    ApiUnauthorized,
    ApiUnreachable,
    BackupCatalog,
    BackupSet,
    Body,
    ClientBase,
    DatabaseOperation,
    DatabasesAnswer,
    HostsAnswer,
    LogEnd,
    LogFollower,
    RecoveryWindow,
    RestoreOperation,
    Schedule,
    ScheduleLastTask,
    SchedulesAnswer,
    SseEvent,
    SseParser,
    TaskAnswer,
    TasksAnswer,
    api_path,
    backup_body,
    decode,
    encode_body,
    error_from_response,
    resolve_token,
    resolve_url,
    restore_body,
    task_filters,
    unreachable,
)
from controlplane.models import Database, Host, LogEntry, Task, TaskLog, Version

__all__ = [
    "DEFAULT_URL",
    "ApiBadRequest",
    "ApiConflict",
    "ApiError",
    "ApiForbidden",
    "ApiInvalidInput",
    "ApiNotFound",
    "ApiServerError",
    "ApiUnauthorized",
    "ApiUnreachable",
    "AsyncClient",
    "BackupCatalog",
    "BackupSet",
    "Client",
    "DatabaseOperation",
    "LogEnd",
    "LogFollower",
    "RecoveryWindow",
    "RestoreOperation",
    "Schedule",
    "ScheduleLastTask",
    "SseEvent",
    "SseParser",
    "error_from_response",
    "resolve_token",
    "resolve_url",
]
T = TypeVar("T")


class Client(ClientBase):
    """Blocking client; use as a context manager or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        data_dir: str | Path | None = None,
        timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.BaseTransport | None = None,
        reconnect_delay: float = 0.5,
        max_reconnects: int = 10,
    ) -> None:
        super().__init__(
            url, token, data_dir, reconnect_delay=reconnect_delay, max_reconnects=max_reconnects
        )
        self._http = httpx.Client(
            base_url=self.url,
            headers=self._headers(),
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            response = self._http.request(
                method, path, params=params, content=body, headers=headers
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content)
        return response.content

    def _call(
        self,
        method: str,
        path: str,
        type_: type[T],
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> T:
        return decode(self._request(method, path, params=params, body=body), type_)

    def create_database(self, body: Body) -> DatabaseOperation:
        """POST /v1/databases with `{id?, spec}`."""
        return self._call("POST", "/v1/databases", DatabaseOperation, body=encode_body(body))

    def list_databases(self) -> list[Database]:
        return self._call("GET", "/v1/databases", DatabasesAnswer).databases

    def get_database(self, database_id: str) -> Database:
        return self._call("GET", api_path("databases", database_id), Database)

    def update_database(self, database_id: str, body: Body) -> DatabaseOperation:
        """Declarative update with the full desired `{spec}`."""
        path = api_path("databases", database_id)
        return self._call("POST", path, DatabaseOperation, body=encode_body(body))

    def delete_database(self, database_id: str) -> Task:
        return self._call("DELETE", api_path("databases", database_id), TaskAnswer).task

    def start_backup(
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
        return self._call("POST", path, TaskAnswer, body=body).task

    def list_backups(self, database_id: str, node: str) -> BackupCatalog:
        path = api_path("databases", database_id, "nodes", node, "backups")
        return self._call("GET", path, BackupCatalog)

    def verify_backups(self, database_id: str, node: str) -> Task:
        path = api_path("databases", database_id, "nodes", node, "backups", "verify")
        return self._call("POST", path, TaskAnswer).task

    def expire_backup(
        self, database_id: str, node: str, label: str, *, force: bool = False
    ) -> Task:
        path = api_path("databases", database_id, "nodes", node, "backups", label)
        params = {"force": "true"} if force else None
        return self._call("DELETE", path, TaskAnswer, params=params).task

    def restore(
        self,
        database_id: str,
        restore_config: Body,
        *,
        target_nodes: list[str] | None = None,
        pre_restore_backup: bool = False,
    ) -> RestoreOperation:
        """In-place restore of `target_nodes` (every node when empty) from `restore_config`."""
        body = restore_body(restore_config, target_nodes, pre_restore_backup)
        path = api_path("databases", database_id, "restore")
        return self._call("POST", path, RestoreOperation, body=body)

    def list_schedules(self, database_id: str) -> list[Schedule]:
        return self._call(
            "GET", api_path("databases", database_id, "schedules"), SchedulesAnswer
        ).schedules

    def list_tasks(
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
        path = api_path("databases", database_id, "tasks") if database_id else "/v1/tasks"
        params = task_filters(status, type, after_task_id, limit, sort_order)
        return self._call("GET", path, TasksAnswer, params=params).tasks

    def get_task(self, database_id: str, task_id: str) -> Task:
        return self._call("GET", api_path("databases", database_id, "tasks", task_id), Task)

    def cancel_task(self, database_id: str, task_id: str) -> Task:
        path = api_path("databases", database_id, "tasks", task_id, "cancel")
        return self._call("POST", path, Task)

    def get_task_log(
        self, database_id: str, task_id: str, *, after_entry_id: int = 0, limit: int = 100
    ) -> TaskLog:
        """One page: the next `limit` entries after the cursor."""
        path = api_path("databases", database_id, "tasks", task_id, "log")
        params = {"after_entry_id": str(after_entry_id), "limit": str(limit)}
        return self._call("GET", path, TaskLog, params=params)

    def iter_task_log(
        self, database_id: str, task_id: str, *, after_entry_id: int = 0, page_size: int = 500
    ) -> Iterator[LogEntry]:
        """Every entry written so far after the cursor, walking the pages."""
        while True:
            page = self.get_task_log(
                database_id, task_id, after_entry_id=after_entry_id, limit=page_size
            )
            yield from page.entries
            if len(page.entries) < page_size:
                return
            after_entry_id = page.last_entry_id

    def follow_task_log(
        self, database_id: str, task_id: str, *, after_entry_id: int = 0
    ) -> Iterator[LogEntry | LogEnd]:
        """Entries as they are written, then one `LogEnd` once the task is over.

        A dropped stream is resumed after the last delivered entry (`Last-Event-ID`).
        """
        follower = LogFollower(after_entry_id)
        path = api_path("databases", database_id, "tasks", task_id, "log")
        failures = 0
        while True:
            params, headers = follower.request()
            error: Exception | None = None
            try:
                with self._http.stream(
                    "GET", path, params=params, headers=headers, timeout=STREAM_TIMEOUT
                ) as response:
                    if response.status_code >= 400:
                        raise error_from_response(response.status_code, response.read())
                    for line in response.iter_lines():
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
            time.sleep(delay)

    def wait_for_task(self, database_id: str, task_id: str) -> Task:
        """Follow the task's log until it ends, then return the finished task."""
        for _ in self.follow_task_log(database_id, task_id):
            pass
        return self.get_task(database_id, task_id)

    def list_hosts(self) -> list[Host]:
        return self._call("GET", "/v1/hosts", HostsAnswer).hosts

    def version(self) -> Version:
        return self._call("GET", "/v1/version", Version)

    def metrics(self) -> str:
        """The Prometheus exposition text of GET /metrics."""
        return self._request("GET", "/metrics").decode()
