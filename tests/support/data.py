"""Data checks shared by the tests: a table on every node, rows, digests, convergence."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

from tests.support.api import connect, wait_task
from tests.support.eventually import eventually

TABLE = "CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, v text)"
# What a restored copy is compared by (also run by hand against a restored data directory).
CHECKSUM = "SELECT count(*) || ':' || md5(string_agg(id::text || v, ',' ORDER BY id)) FROM items"
DIGEST = (
    "SELECT count(*) || ':' || coalesce(md5(string_agg(id || v, ',' ORDER BY id)), '') FROM items"
)


def nodes_of(database: dict[str, Any]) -> list[str]:
    """The database's nodes (a node with replicas has several instances)."""
    return sorted({i["node_name"] for i in database["instances"]})


async def query(database: dict[str, Any], node: str, sql: str) -> Any:
    conn = await connect(database, node)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def on_every(database: dict[str, Any], sql: str) -> list[Any]:
    """Run `sql` on every node (DDL is not replicated); the values, by node name."""
    return [await query(database, node, sql) for node in nodes_of(database)]


async def checksum(database: dict[str, Any], node: str = "n1") -> str:
    return str(await query(database, node, CHECKSUM))


async def write_rows(database: dict[str, Any], start: int, count: int, node: str = "n1") -> None:
    """`count` rows from id `start` on `node`, creating the table there first if needed."""
    conn = await connect(database, node)
    try:
        await conn.execute(TABLE)
        await conn.execute(
            "INSERT INTO items SELECT g, md5(g::text) FROM generate_series($1::int, $2::int) g",
            start,
            start + count - 1,
        )
    finally:
        await conn.close()


async def write(database: dict[str, Any], node: str, ids: Iterable[int]) -> None:
    conn = await connect(database, node)
    try:
        await conn.execute(
            "INSERT INTO items SELECT g, md5(g::text) FROM unnest($1::int[]) g", list(ids)
        )
    finally:
        await conn.close()


async def digest(database: dict[str, Any], node: str = "n1") -> str:
    return str(await query(database, node, DIGEST))


async def converged(database: dict[str, Any], rows: int, limit: float = 60.0) -> str:
    """Wait until every node holds `rows` rows with one digest; that digest."""

    async def probe() -> str | None:
        digests = {str(d) for d in await on_every(database, DIGEST)}
        if len(digests) == 1:
            value = digests.pop()
            if value.startswith(f"{rows}:"):
                return value
        return None

    return await eventually(probe, timeout=limit, what=f"{rows} identical rows on every node")


async def backup(
    api: httpx.AsyncClient, database_id: str, node: str = "n1", **body: Any
) -> dict[str, Any]:
    """A manual backup of `node` (the body's fields as keywords; the type defaults to full),
    waited for; the completed task."""
    response = await api.post(f"/v1/databases/{database_id}/nodes/{node}/backups", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(api, database_id, response.json()["task"]["task_id"], timeout=300)
    assert task["status"] == "completed", task["error"]
    return task


async def restore(api: httpx.AsyncClient, database_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.post(f"/v1/databases/{database_id}/restore", json=body)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    task = await wait_task(api, database_id, result["task"]["task_id"], timeout=300)
    assert task["status"] == "completed", task["error"]
    result["task"] = task
    return result


async def update_and_wait(api: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.post(f"/v1/databases/{body['id']}", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(api, body["id"], response.json()["task"]["task_id"], timeout=300)
    assert task["status"] == "completed", task["error"]
    database: dict[str, Any] = (await api.get(f"/v1/databases/{body['id']}")).json()
    return database


def posix(base: Any, **repository: Any) -> dict[str, Any]:
    """A backup_config with one posix repository at `base` (more repository fields as
    keywords, e.g. retention_full=1)."""
    return {"repositories": [posix_repository(base, **repository)]}


def posix_repository(base: Any, **repository: Any) -> dict[str, Any]:
    return {"type": "posix", "base_path": str(base), **repository}


def restore_config(
    database_id: str, node: str, repository: dict[str, Any], **options: str
) -> dict[str, Any]:
    return {
        "source_database_id": database_id,
        "source_node_name": node,
        "repository": repository,
        "restore_options": options,
    }
