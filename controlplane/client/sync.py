"""The blocking client: `Client`, the twin of `controlplane.client.aio.AsyncClient`."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator, Mapping
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
            verify=tls_verify(self.url, verify),
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
        seconds: float | None = None,
    ) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else None
        timeout = httpx.USE_CLIENT_DEFAULT if seconds is None else seconds
        try:
            response = self._http.request(
                method, path, params=params, content=body, headers=headers, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content)
        return response.content

    def _run(self, call: calls.Call[R]) -> R:
        content = self._request(
            call.method, call.path, params=call.params, body=call.body, seconds=call.timeout
        )
        return call.read(content)

    def create_database(self, body: Body) -> DatabaseOperation:
        """POST /v1/databases with `{id?, spec}`."""
        return self._run(calls.create_database(body))

    def list_databases(self) -> list[Database]:
        return self._run(calls.list_databases())

    def get_database(self, database_id: str) -> Database:
        return self._run(calls.get_database(database_id))

    def database_health(self, database_id: str) -> DatabaseHealth:
        """State, archiving, lag, backups and recovery window of every node, in one answer."""
        return self._run(calls.database_health(database_id))

    def update_database(self, database_id: str, body: Body) -> DatabaseOperation:
        """Declarative update with the full desired `{spec}`."""
        return self._run(calls.update_database(database_id, body))

    def delete_database(self, database_id: str) -> Task:
        return self._run(calls.delete_database(database_id))

    def start_backup(
        self,
        database_id: str,
        node: str,
        *,
        type: str = "full",
        annotations: Mapping[str, str] | None = None,
        repository_id: str | None = None,
    ) -> Task:
        call = calls.start_backup(database_id, node, type, annotations, repository_id)
        return self._run(call)

    def list_backups(self, database_id: str, node: str) -> BackupCatalog:
        return self._run(calls.list_backups(database_id, node))

    def verify_backups(
        self, database_id: str, node: str, *, drill: bool = False, set_label: str | None = None
    ) -> Task:
        return self._run(calls.verify_backups(database_id, node, drill=drill, set_label=set_label))

    def expire_backup(
        self, database_id: str, node: str, label: str, *, force: bool = False
    ) -> Task:
        return self._run(calls.expire_backup(database_id, node, label, force))

    def create_restore_point(self, database_id: str, node: str, name: str) -> RestorePoint:
        """Write a named restore point on the running node and wait until it is archived."""
        return self._run(calls.create_restore_point(database_id, node, name))

    def list_restore_points(self, database_id: str, node: str) -> list[RestorePoint]:
        """The node's restore points, oldest first."""
        return self._run(calls.list_restore_points(database_id, node))

    def restore(
        self,
        database_id: str,
        restore_config: Body,
        *,
        target_nodes: list[str] | None = None,
        pre_restore_backup: bool = False,
    ) -> RestoreOperation:
        """In-place restore of `target_nodes` (every node when empty) from `restore_config`."""
        call = calls.restore(database_id, restore_config, target_nodes, pre_restore_backup)
        return self._run(call)

    def list_schedules(self, database_id: str) -> list[Schedule]:
        return self._run(calls.list_schedules(database_id))

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
        call = calls.list_tasks(database_id, status, type, after_task_id, limit, sort_order)
        return self._run(call)

    def get_task(self, database_id: str, task_id: str) -> Task:
        return self._run(calls.get_task(database_id, task_id))

    def cancel_task(self, database_id: str, task_id: str) -> Task:
        return self._run(calls.cancel_task(database_id, task_id))

    def get_task_log(
        self, database_id: str, task_id: str, *, after_entry_id: int = 0, limit: int = 100
    ) -> TaskLog:
        """One page: the next `limit` entries after the cursor."""
        return self._run(calls.get_task_log(database_id, task_id, after_entry_id, limit))

    def list_hosts(self) -> list[Host]:
        return self._run(calls.list_hosts())

    def version(self) -> Version:
        return self._run(calls.version())

    def metrics(self) -> str:
        """The Prometheus exposition text of GET /metrics."""
        return self._run(calls.metrics())

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
        path = calls.task_log_path(database_id, task_id)
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
