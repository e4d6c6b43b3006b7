"""Backups to a posix repository, point-in-time restore in place, and new databases and nodes
made from a backup."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.api import create_and_wait, database_body, full_log
from tests.support.data import (
    TABLE,
    backup,
    converged,
    digest,
    on_every,
    posix,
    query,
    restore,
    restore_config,
    update_and_wait,
    write,
)


async def test_backup_then_pitr_in_place(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """A posix backup lands in the repository path; a time target restores exactly the rows
    committed before it, in place, and the node is writable and backs up again afterwards."""
    database = await create_and_wait(api, database_body("pitr", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    first = await backup(api, "pitr")
    assert list((repo_dir / "databases" / "pitr").rglob("backup.info"))
    await write(database, "n1", range(101, 201))
    expected = await digest(database)
    target = str(await query(database, "n1", "SELECT clock_timestamp()"))
    await write(database, "n1", range(201, 301))
    repository = posix(repo_dir)["repositories"][0]
    result = await restore(
        api,
        "pitr",
        {"restore_config": restore_config("pitr", "n1", repository, type="time", target=target)},
    )
    assert await digest(database) == expected
    log = [e["message"] for e in await full_log(api, "pitr", result["node_tasks"][0]["task_id"])]
    assert "step restore_data started" in log
    await write(database, "n1", range(1001, 1011))
    assert (await digest(database)).startswith("210:")
    after = await backup(api, "pitr")
    sets = (await api.get("/v1/databases/pitr/nodes/n1/backups")).json()["backups"]
    assert [s["task_id"] for s in sets][-1] == after["task_id"]
    assert first["task_id"] in [s["task_id"] for s in sets]


async def test_create_from_backup_and_add_node_from_backup(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """A new 2-node database made from another's backup holds its rows under a new name and
    replicates; a node added to the source from its backup joins with the same rows."""
    repository = posix(repo_dir)["repositories"][0]
    source_body = database_body("src", backup_config=posix(repo_dir))
    source = await create_and_wait(api, source_body)
    await on_every(source, TABLE)
    await write(source, "n1", range(1, 301))
    expected = await digest(source)
    await backup(api, "src")

    body = database_body(
        "copy",
        nodes=2,
        backup_config=posix(repo_dir),
        restore_config={**restore_config("src", "n1", repository), "source_database_name": "app"},
    )
    body["spec"]["database_name"] = "shop"
    copy = await create_and_wait(api, body)
    assert {i["connection_info"]["database"] for i in copy["instances"]} == {"shop"}
    assert await on_every(copy, "SELECT count(*) FROM items") == [300, 300]
    assert await digest(copy, "n1") == await digest(copy, "n2") == expected
    await write(copy, "n2", range(1001, 1011))
    await converged(copy, 310)
    await backup(api, "copy")
    assert (await digest(source)).startswith("300:")  # the source is untouched

    source_body["spec"]["nodes"].append(
        {"name": "n2", "restore_config": restore_config("src", "n1", repository)}
    )
    source = await update_and_wait(api, source_body)
    assert await digest(source, "n2") == expected
    await write(source, "n2", range(5001, 5051))
    await write(source, "n1", range(6001, 6051))
    await converged(source, 400)


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
    repository = posix(repo_dir)["repositories"][0]
    config = restore_config(
        "later", "n1", repository, type="immediate", set=first["result"]["label"]
    )
    await restore(api, "later", {"restore_config": config})
    assert (await digest(database)).startswith("10:")
