"""Small helpers over the HTTP API used by integration tests."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from tests.support.eventually import eventually

TERMINAL = {"completed", "failed", "canceled", "skipped"}


def database_body(
    database_id: str, *, nodes: int = 1, password: str = "s3cret-pass", **spec: Any
) -> dict[str, Any]:
    """A minimal valid create body: one owner user, `nodes` nodes on the local host."""
    body: dict[str, Any] = {
        "id": database_id,
        "spec": {
            "database_name": "app",
            "database_users": [
                {
                    "username": "admin",
                    "password": password,
                    "db_owner": True,
                    "attributes": ["LOGIN"],
                }
            ],
            "nodes": [{"name": f"n{i + 1}"} for i in range(nodes)],
        },
    }
    body["spec"].update(spec)
    return body


async def wait_task(
    api: httpx.AsyncClient, database_id: str, task_id: str, timeout: float = 120.0
) -> dict[str, Any]:
    """Poll a task until it is terminal and return it."""

    async def probe() -> dict[str, Any] | None:
        response = await api.get(f"/v1/databases/{database_id}/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task if task["status"] in TERMINAL else None

    return await eventually(probe, timeout=timeout, what=f"task {task_id} to finish")


async def create_and_wait(
    api: httpx.AsyncClient, body: dict[str, Any], timeout: float = 120.0
) -> dict[str, Any]:
    """Create a database, wait for its task to complete, return the database view."""
    response = await api.post("/v1/databases", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(api, body["id"], response.json()["task"]["task_id"], timeout)
    assert task["status"] == "completed", task
    database = await api.get(f"/v1/databases/{body['id']}")
    result: dict[str, Any] = database.json()
    return result


async def connect(
    database: dict[str, Any], node: str, *, user: str = "admin", password: str = "s3cret-pass"
) -> asyncpg.Connection:  # type: ignore[type-arg]
    """Log in to a node over TCP exactly as a client application would: to a node with
    replicas through all of its instances, at whichever is the primary (libpq's multi-host
    form with target_session_attrs=read-write, as a client of a highly available node does)."""
    infos = [i["connection_info"] for i in database["instances"] if i["node_name"] == node]
    conn: asyncpg.Connection = await asyncpg.connect(  # type: ignore[type-arg]
        host=[i["host"] for i in infos] if len(infos) > 1 else infos[0]["host"],
        port=[i["port"] for i in infos] if len(infos) > 1 else infos[0]["port"],
        database=infos[0]["database"],
        user=user,
        password=password,
        **({"target_session_attrs": "read-write"} if len(infos) > 1 else {}),
    )
    return conn


async def full_log(api: httpx.AsyncClient, database_id: str, task_id: str) -> list[dict[str, Any]]:
    """Every log entry of a task, walked with the cursor."""
    entries: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (
            await api.get(
                f"/v1/databases/{database_id}/tasks/{task_id}/log",
                params={"after_entry_id": after, "limit": 100},
            )
        ).json()
        entries += page["entries"]
        if not page["entries"]:
            return entries
        after = page["last_entry_id"]


async def fresh_view(api: httpx.AsyncClient, database_id: str, timeout: float = 60.0) -> Any:
    """The database as the API shows it once the monitor has observed every instance since
    this call (subscriptions are what the monitor last saw, `observed_at` says when)."""
    since = datetime.now(UTC)
    deadline = time.monotonic() + timeout
    while True:
        view = (await api.get(f"/v1/databases/{database_id}")).json()
        seen = [i["observed_at"] for i in view["instances"]]
        if all(s and datetime.fromisoformat(s) > since for s in seen):
            return view
        assert time.monotonic() < deadline, f"instances not observed since {since}: {seen}"
        await asyncio.sleep(0.2)
