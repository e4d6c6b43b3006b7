"""Backups to a posix repository and restores in place: point in time, a named set, and the
targets refused before anything is touched."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.api import create_and_wait, database_body, full_log
from tests.support.data import (
    TABLE,
    backup,
    digest,
    on_every,
    posix,
    posix_repository,
    query,
    restore,
    restore_config,
    update_and_wait,
    write,
)


async def test_backup_then_pitr_in_place(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """A posix backup lands in the repository path; a time target between two batches restores
    exactly the rows committed before it, in place, through every step of a node restore; the
    node is writable and its backups keep working with no manual step."""
    database = await create_and_wait(api, database_body("pitr", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    first = await backup(api, "pitr")
    assert list((repo_dir / "databases" / "pitr").rglob("backup.info"))
    await write(database, "n1", range(101, 201))
    expected = await digest(database)
    target = (await query(database, "n1", "SELECT clock_timestamp()")).isoformat()
    await write(database, "n1", range(201, 301))
    config = restore_config("pitr", "n1", posix_repository(repo_dir), type="time", target=target)
    result = await restore(api, "pitr", {"restore_config": config})
    assert len(result["node_tasks"]) == 1
    assert await digest(database) == expected
    node_log = [
        e["message"] for e in await full_log(api, "pitr", result["node_tasks"][0]["task_id"])
    ]
    for step in (
        "drain_node",
        "stop_instance",
        "restore_data",
        "start_recovery",
        "prepare_links",
        "reenable_backups",
    ):
        assert f"step {step} started" in node_log
    await write(database, "n1", range(1001, 1011))
    assert (await digest(database)).startswith("210:")
    after = await backup(api, "pitr")
    sets = (await api.get("/v1/databases/pitr/nodes/n1/backups")).json()["backups"]
    assert [s["task_id"] for s in sets][-1] == after["task_id"]
    assert first["task_id"] in [s["task_id"] for s in sets]
    assert (await api.get("/v1/databases/pitr")).json()["state"] == "available"


async def test_lsn_target_in_place(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """An LSN target restores exactly the rows committed before it; an LSN before the first
    set's consistent point, or past the end of the archive, is refused before anything stops."""
    database = await create_and_wait(api, database_body("lsn", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    await backup(api, "lsn")
    await write(database, "n1", range(101, 201))
    expected = await digest(database)
    target = await query(database, "n1", "SELECT pg_current_wal_lsn()::text")
    await write(database, "n1", range(201, 301))
    repository = posix_repository(repo_dir)
    started = await query(database, "n1", "SELECT pg_postmaster_start_time()")
    for wrong in ("0/1", "FFFF/0"):
        config = restore_config("lsn", "n1", repository, type="lsn", target=wrong)
        response = await api.post("/v1/databases/lsn/restore", json={"restore_config": config})
        assert response.status_code == 422, response.text
        assert [e["path"] for e in response.json()["details"]["errors"]] == [
            "restore_config.restore_options.target"
        ]
    assert await query(database, "n1", "SELECT pg_postmaster_start_time()") == started
    config = restore_config("lsn", "n1", repository, type="lsn", target=target)
    await restore(api, "lsn", {"restore_config": config})
    assert await digest(database) == expected


async def test_unreachable_time_target_refused_before_touching(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """A time before the first backup, or one without a timezone, is 422 with its path; the
    node is never stopped and no task is made."""
    database = await create_and_wait(api, database_body("early", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    early = (await query(database, "n1", "SELECT clock_timestamp()")).isoformat()
    await write(database, "n1", range(1, 11))
    await backup(api, "early")
    started = await query(database, "n1", "SELECT pg_postmaster_start_time()")
    repository = posix_repository(repo_dir)
    for target in (early, "2026-01-01 10:00:00"):
        config = restore_config("early", "n1", repository, type="time", target=target)
        response = await api.post("/v1/databases/early/restore", json={"restore_config": config})
        assert response.status_code == 422, response.text
        paths = [e["path"] for e in response.json()["details"]["errors"]]
        assert paths == ["restore_config.restore_options.target"]
    assert await query(database, "n1", "SELECT pg_postmaster_start_time()") == started
    tasks = (await api.get("/v1/databases/early/tasks", params={"type": "restore"})).json()
    assert tasks["tasks"] == []
    assert (await digest(database)).startswith("10:")


async def test_restore_named_set_immediate(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """type immediate with a named set restores that set's consistency point, not the newest
    one; an unknown set is 422 on its path."""
    database = await create_and_wait(api, database_body("named", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 51))
    first = await backup(api, "named")
    expected = await digest(database)
    await write(database, "n1", range(51, 101))
    await backup(api, "named", type="incr")
    await write(database, "n1", range(101, 151))
    repository = posix_repository(repo_dir)
    label = first["result"]["label"]
    config = restore_config("named", "n1", repository, type="immediate", set=label)
    await restore(api, "named", {"restore_config": config})
    assert await digest(database) == expected
    config = restore_config("named", "n1", repository, type="immediate", set="20200101-000000F")
    missing = await api.post("/v1/databases/named/restore", json={"restore_config": config})
    assert missing.status_code == 422
    assert missing.json()["details"]["errors"][0]["path"] == "restore_config.restore_options.set"


async def test_backups_enabled_later(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """Adding a posix repository to a running database makes its backups land in that path,
    and they restore."""
    body = database_body("later")
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 11))
    body["spec"]["backup_config"] = posix(repo_dir)
    await update_and_wait(api, body)
    first = await backup(api, "later")
    assert list((repo_dir / "databases" / "later").rglob("backup.info"))
    await write(database, "n1", range(11, 21))
    label = first["result"]["label"]
    config = restore_config("later", "n1", posix_repository(repo_dir), type="immediate", set=label)
    await restore(api, "later", {"restore_config": config})
    assert (await digest(database)).startswith("10:")
