"""Backups through the HTTP API with real pgBackRest: catalog, data checked by restoring."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.support.api import connect, create_and_wait, database_body, full_log, wait_task
from tests.support.restore_check import restore_and_query
from tests.support.server import ServerProcess

CHECKSUM = "SELECT count(*) || ':' || md5(string_agg(id::text || v, ',' ORDER BY id)) FROM items"


def posix_config(base: Path, **repo: Any) -> dict[str, Any]:
    return {"repositories": [{"type": "posix", "base_path": str(base), **repo}]}


async def backup(
    api: httpx.AsyncClient, database_id: str, node: str, **body: Any
) -> dict[str, Any]:
    response = await api.post(f"/v1/databases/{database_id}/nodes/{node}/backups", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(api, database_id, response.json()["task"]["task_id"])
    assert task["status"] == "completed", task
    return task


async def checksum(database: dict[str, Any], node: str = "n1") -> str:
    conn = await connect(database, node)
    try:
        return str(await conn.fetchval(CHECKSUM))
    finally:
        await conn.close()


async def write_rows(database: dict[str, Any], start: int, count: int, node: str = "n1") -> None:
    conn = await connect(database, node)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, v text)")
        await conn.execute(
            "INSERT INTO items SELECT g, md5(g::text) FROM generate_series($1::int, $2::int) g",
            start,
            start + count - 1,
        )
    finally:
        await conn.close()


async def test_posix_full_incr_diff_catalog_and_restored_data(
    api: httpx.AsyncClient, server: ServerProcess, scratch_dir: Path
) -> None:
    """Full, incr and diff backups appear in order linked to their tasks, and each set restores
    to exactly the rows present when it was taken."""
    repo = scratch_dir / "repo"
    body = database_body("bk", backup_config=posix_config(repo))
    database = await create_and_wait(api, body)
    await write_rows(database, 1, 1000)
    expected = {}
    tasks = {}
    for kind, start in (("full", 1001), ("incr", 2001), ("diff", 3001)):
        tasks[kind] = await backup(api, "bk", "n1", type=kind, annotations={"reason": kind})
        expected[kind] = await checksum(database)
        await write_rows(database, start, 500)
    catalog = (await api.get("/v1/databases/bk/nodes/n1/backups")).json()
    sets = catalog["backups"]
    assert [s["type"] for s in sets] == ["full", "incr", "diff"]
    assert [s["task_id"] for s in sets] == [tasks[k]["task_id"] for k in ("full", "incr", "diff")]
    assert [s["annotations"]["reason"] for s in sets] == ["full", "incr", "diff"]
    assert all(s["repository_id"] == "posix" for s in sets)
    assert sets[0]["stopped_at"] <= sets[1]["started_at"]
    window = catalog["recovery_window"]
    assert window["earliest"] == sets[0]["stopped_at"]
    for kind, entry in zip(("full", "incr", "diff"), sets, strict=True):
        assert tasks[kind]["result"]["label"] == entry["label"]
        config = str(server.data_dir / "instances" / "bk-n1" / "pgbackrest.conf")
        restored = await asyncio.to_thread(
            restore_and_query, config, entry["label"], CHECKSUM, scratch_dir
        )
        assert restored == expected[kind], kind
    messages = [e["message"] for e in await full_log(api, "bk", tasks["full"]["task_id"])]
    assert any("backup start archive" in m or "new backup label" in m for m in messages)
