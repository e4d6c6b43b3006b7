"""A server killed while a restore runs in its one-off container: the task still finishes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from e2e.support.data import TABLE, backup, digest, on_every, posix, restore_config, write
from e2e.support.server import DockerServer
from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.eventually import eventually


async def test_server_killed_mid_restore_resumes(
    api: httpx.AsyncClient, server: DockerServer, repo_dir: Path
) -> None:
    """SIGKILL of the server while pgBackRest restores in the one-off container: after a
    restart the resumed task replaces the orphaned one-off, and the data is exactly the set's."""
    database = await create_and_wait(api, database_body("e2e-crash", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 20001))
    expected = await digest(database)
    first = await backup(api, "e2e-crash")
    await write(database, "n1", range(20001, 20101))
    body = {
        "restore_config": restore_config(
            "e2e-crash",
            "n1",
            posix(repo_dir)["repositories"][0],
            type="immediate",
            set=first["result"]["label"],
        )
    }
    response = await api.post("/v1/databases/e2e-crash/restore", json=body)
    assert response.status_code == 202, response.text
    task_id = response.json()["task"]["task_id"]

    async def restoring() -> list[Any]:
        return await asyncio.to_thread(
            server.containers, instance="e2e-crash-n1", role="data-one-off"
        )

    await eventually(restoring, timeout=120, interval=0.02, what="the restore's one-off")
    server.kill()
    server.start()
    task = await wait_task(api, "e2e-crash", task_id, timeout=300)
    assert task["status"] == "completed", task["error"]
    assert await digest(database) == expected
    leftovers = await asyncio.to_thread(
        server.containers, instance="e2e-crash-n1", role="data-one-off"
    )
    assert leftovers == []
    assert (await api.get("/v1/databases/e2e-crash")).json()["state"] == "available"
