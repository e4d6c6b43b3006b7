"""In-place and point-in-time restores through the HTTP API, checked on the restored data."""

from __future__ import annotations

import asyncio
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


async def test_restore_named_set_immediate(api: httpx.AsyncClient, scratch_dir: Path) -> None:
    """type immediate with a named set restores that set's consistency point."""
    repo = scratch_dir / "repo"
    database = await create_and_wait(api, database_body("pitr", backup_config=posix_config(repo)))
    await write_rows(database, 1, 50)
    first = await backup(api, "pitr", "n1")
    expected = await checksum(database)
    await write_rows(database, 51, 50)
    await backup(api, "pitr", "n1")
    await write_rows(database, 101, 50)
    label = first["result"]["label"]
    await restore(
        api, "pitr", {"restore_config": restore_config(repo, type="immediate", set=label)}
    )
    assert await checksum(database) == expected
    missing = await api.post(
        "/v1/databases/pitr/restore",
        json={"restore_config": restore_config(repo, type="immediate", set="20200101-000000F")},
    )
    assert missing.status_code == 422
    assert missing.json()["details"]["errors"][0]["path"] == "restore_config.restore_options.set"


async def test_restore_guards(api: httpx.AsyncClient, server: Any, scratch_dir: Path) -> None:
    """Restore needs the admin scope, is refused entirely when disabled, and names unknown
    target nodes."""
    repo = scratch_dir / "repo"
    await create_and_wait(api, database_body("pitr", backup_config=posix_config(repo)))
    body = {"restore_config": restore_config(repo), "target_nodes": ["n7"]}
    bad = await api.post("/v1/databases/pitr/restore", json=body)
    assert bad.status_code == 422
    assert bad.json()["details"]["errors"][0]["path"] == "target_nodes[0]"
    token = await asyncio.to_thread(server.create_token, "ops", "write")
    writer = await api.post(
        "/v1/databases/pitr/restore",
        json={"restore_config": restore_config(repo)},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert writer.status_code == 403
    server.terminate()
    server.extra_env = {"CONTROLPLANE_ALLOW_RESTORE": "false"}
    server.start()
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers) as client:
        refused = await client.post(
            "/v1/databases/pitr/restore", json={"restore_config": restore_config(repo)}
        )
        assert refused.status_code == 403
        assert refused.json()["name"] == "restore_not_allowed"
