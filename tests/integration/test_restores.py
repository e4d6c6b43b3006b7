"""In-place and point-in-time restores through the HTTP API, checked on the restored data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_backups import backup, checksum, posix_config, write_rows
from tests.support.api import connect, create_and_wait, database_body, full_log, wait_task


async def restore(
    api: httpx.AsyncClient, database_id: str, body: dict[str, Any], expect: str = "completed"
) -> dict[str, Any]:
    response = await api.post(f"/v1/databases/{database_id}/restore", json=body)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    task = await wait_task(api, database_id, result["task"]["task_id"], timeout=300)
    assert task["status"] == expect, (task["error"], result)
    result["task"] = task
    return result


def restore_config(
    repo: Path, node: str = "n1", database_id: str = "pitr", **options: str
) -> dict[str, Any]:
    return {
        "source_database_id": database_id,
        "source_node_name": node,
        "repository": {"type": "posix", "base_path": str(repo)},
        "restore_options": options,
    }


async def now_on(database: dict[str, Any]) -> str:
    conn = await connect(database, "n1")
    try:
        value = await conn.fetchval("SELECT clock_timestamp()")
    finally:
        await conn.close()
    return str(value.isoformat())


async def test_pitr_between_two_batches(api: httpx.AsyncClient, scratch_dir: Path) -> None:
    """A time target between two batches restores exactly the rows committed before it, the
    node is writable afterwards and its backups keep working with no manual step."""
    repo = scratch_dir / "repo"
    database = await create_and_wait(api, database_body("pitr", backup_config=posix_config(repo)))
    await write_rows(database, 1, 100)
    await backup(api, "pitr", "n1")
    await write_rows(database, 101, 100)
    expected = await checksum(database)
    target = await now_on(database)
    await write_rows(database, 201, 100)
    result = await restore(
        api, "pitr", {"restore_config": restore_config(repo, type="time", target=target)}
    )
    assert len(result["node_tasks"]) == 1
    assert await checksum(database) == expected
    await write_rows(database, 1001, 5)
    after = await backup(api, "pitr", "n1")
    sets = (await api.get("/v1/databases/pitr/nodes/n1/backups")).json()["backups"]
    assert sets[-1]["task_id"] == after["task_id"]
    assert (await api.get("/v1/databases/pitr")).json()["state"] == "available"
    node_log = [
        e["message"] for e in await full_log(api, "pitr", result["node_tasks"][0]["task_id"])
    ]
    for step in (
        "drop_subscriptions",
        "stop_instance",
        "restore_data",
        "start_recovery",
        "drop_stale_subscriptions",
        "reenable_backups",
    ):
        assert f"step {step} started" in node_log


async def test_unreachable_time_target_refused_before_touching(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """A time before the first backup is 422 with its path; the node is never stopped."""
    repo = scratch_dir / "repo"
    database = await create_and_wait(api, database_body("pitr", backup_config=posix_config(repo)))
    early = await now_on(database)
    await write_rows(database, 1, 10)
    await backup(api, "pitr", "n1")
    conn = await connect(database, "n1")
    started = await conn.fetchval("SELECT pg_postmaster_start_time()")
    await conn.close()
    response = await api.post(
        "/v1/databases/pitr/restore",
        json={"restore_config": restore_config(repo, type="time", target=early)},
    )
    assert response.status_code == 422
    paths = [e["path"] for e in response.json()["details"]["errors"]]
    assert paths == ["restore_config.restore_options.target"]
    naive = await api.post(
        "/v1/databases/pitr/restore",
        json={"restore_config": restore_config(repo, type="time", target="2026-01-01 10:00:00")},
    )
    assert naive.status_code == 422
    conn = await connect(database, "n1")
    try:
        assert await conn.fetchval("SELECT pg_postmaster_start_time()") == started
    finally:
        await conn.close()
    tasks = (await api.get("/v1/databases/pitr/tasks", params={"type": "restore"})).json()
    assert tasks["tasks"] == []
