"""The control plane killed while pgBackRest restores: the task still finishes, exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.data import TABLE, backup, digest, on_every, posix, restore_config, write
from tests.support.deployment import Deployment
from tests.support.eventually import eventually


async def test_server_killed_mid_restore_resumes(
    api: httpx.AsyncClient, deployment: Deployment, repo_dir: Path
) -> None:
    """SIGKILL of the server while pgBackRest restores (a local process, or a one-off
    container): after a restart the resumed task replaces the orphaned restore, nothing of it
    is left running, and the data is exactly the set's."""
    database = await create_and_wait(api, database_body("crash", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 20001))
    expected = await digest(database)
    first = await backup(api, "crash")
    await write(database, "n1", range(20001, 20101))
    repository = posix(repo_dir)["repositories"][0]
    config = restore_config(
        "crash", "n1", repository, type="immediate", set=first["result"]["label"]
    )
    response = await api.post("/v1/databases/crash/restore", json={"restore_config": config})
    assert response.status_code == 202, response.text
    task_id = response.json()["task"]["task_id"]

    async def restoring() -> bool:
        return await asyncio.to_thread(deployment.restore_in_flight, "crash-n1")

    await eventually(restoring, timeout=120, interval=0.02, what="pgBackRest restoring")
    deployment.server.kill()
    deployment.server.start()
    task = await wait_task(api, "crash", task_id, timeout=300)
    assert task["status"] == "completed", task["error"]
    assert await digest(database) == expected
    assert not await asyncio.to_thread(deployment.restore_in_flight, "crash-n1")
    assert (await api.get("/v1/databases/crash")).json()["state"] == "available"
