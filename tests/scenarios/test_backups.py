"""Backups through the API: one at a time per node, requests checked up front, retention,
verify and expire."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.api import create_and_wait, database_body, full_log, wait_task
from tests.support.data import TABLE, backup, on_every, posix, write


async def test_concurrent_backup_of_one_node_conflicts(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """A second backup request while one runs is 409 naming the running task."""
    database = await create_and_wait(api, database_body("twice", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    first = await api.post("/v1/databases/twice/nodes/n1/backups", json={"type": "full"})
    second = await api.post("/v1/databases/twice/nodes/n1/backups", json={"type": "full"})
    assert first.status_code == 202
    assert second.status_code == 409
    assert second.json()["name"] == "operation_in_progress"
    assert second.json()["details"]["task_id"] == first.json()["task"]["task_id"]
    task = await wait_task(api, "twice", first.json()["task"]["task_id"])
    assert task["status"] == "completed", task["error"]
    sets = (await api.get("/v1/databases/twice/nodes/n1/backups")).json()["backups"]
    assert [s["task_id"] for s in sets] == [task["task_id"]]


async def test_backup_requests_validated(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """No backup_config, an unknown node or repository, or a bad type are refused up front."""
    await create_and_wait(api, database_body("plain"))
    response = await api.post("/v1/databases/plain/nodes/n1/backups", json={"type": "full"})
    assert response.status_code == 422
    assert response.json()["details"]["errors"][0]["path"] == "node"
    assert (await api.post("/v1/databases/plain/nodes/n9/backups", json={})).status_code == 404
    await create_and_wait(api, database_body("withrepo", backup_config=posix(repo_dir)))
    bad_repo = await api.post(
        "/v1/databases/withrepo/nodes/n1/backups", json={"repository_id": "nope"}
    )
    assert bad_repo.status_code == 422
    assert bad_repo.json()["details"]["errors"][0]["path"] == "repository_id"
    bad_type = await api.post("/v1/databases/withrepo/nodes/n1/backups", json={"type": "weekly"})
    assert bad_type.status_code == 422
    assert bad_type.json()["details"]["errors"][0]["path"] == "type"
    assert (await api.get("/v1/databases/withrepo/nodes/n1/backups")).json()["backups"] == []


async def test_retention_full_count(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """retention_full=1 keeps only the newest full backup."""
    database = await create_and_wait(
        api,
        database_body(
            "keep1",
            backup_config=posix(repo_dir, retention_full=1, retention_full_type="count"),
        ),
    )
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 11))
    await backup(api, "keep1", "n1")
    second = await backup(api, "keep1", "n1")
    sets = (await api.get("/v1/databases/keep1/nodes/n1/backups")).json()["backups"]
    assert [s["task_id"] for s in sets] == [second["task_id"]]


async def test_verify_and_expire(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """verify reports every set valid; expiring a set removes it and its dependents; the last
    restorable set is refused unless forced."""
    database = await create_and_wait(api, database_body("maint", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    full1 = await backup(api, "maint", "n1")
    incr1 = await backup(api, "maint", "n1", type="incr")
    full2 = await backup(api, "maint", "n1")
    response = await api.post("/v1/databases/maint/nodes/n1/backups/verify")
    verify = await wait_task(api, "maint", response.json()["task"]["task_id"])
    assert verify["status"] == "completed", verify
    labels = [s["label"] for s in verify["result"]["sets"]]
    taken = [full1["result"]["label"], incr1["result"]["label"], full2["result"]["label"]]
    assert sorted(labels) == sorted(taken)  # each set once
    log = [e["message"] for e in await full_log(api, "maint", verify["task_id"])]
    assert "verify: 3 set(s) checked, status ok" in log
    assert (
        await api.delete("/v1/databases/maint/nodes/n1/backups/20990101-000000F")
    ).status_code == 404
    oldest = f"/v1/databases/maint/nodes/n1/backups/{full1['result']['label']}"
    unforced = await api.delete(oldest)
    assert unforced.status_code == 409
    assert "moves the start of the recovery window" in unforced.json()["message"]
    response = await api.delete(oldest, params={"force": "true"})
    assert response.status_code == 202
    expire = await wait_task(api, "maint", response.json()["task"]["task_id"])
    assert expire["status"] == "completed", expire["error"]
    assert sorted(expire["result"]["expired"]) == sorted(
        [full1["result"]["label"], incr1["result"]["label"]]
    )
    sets = (await api.get("/v1/databases/maint/nodes/n1/backups")).json()["backups"]
    assert [s["label"] for s in sets] == [full2["result"]["label"]]
    last = f"/v1/databases/maint/nodes/n1/backups/{full2['result']['label']}"
    for params in ({}, {"force": "true"}):
        refused = await api.delete(last, params=params)
        assert refused.status_code == 409
        assert "last full backup" in refused.json()["message"]
    assert len((await api.get("/v1/databases/maint/nodes/n1/backups")).json()["backups"]) == 1
