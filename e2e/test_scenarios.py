"""User scenarios against the Docker orchestrator, driven through the HTTP API only."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx

from e2e.support.data import (
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
from e2e.support.server import DockerServer
from tests.support.api import create_and_wait, database_body, full_log
from tests.support.eventually import eventually


async def test_two_node_database_replicates(api: httpx.AsyncClient, server: DockerServer) -> None:
    """A 2-node database runs as two labelled containers on the host network, and rows written
    on either node reach the other."""
    database = await create_and_wait(api, database_body("e2e-mesh", nodes=2))
    containers = server.containers(database="e2e-mesh", role="instance")
    assert sorted(c.labels["controlplane.node"] for c in containers) == ["n1", "n2"]
    assert {c.attrs["HostConfig"]["NetworkMode"] for c in containers} == {"host"}
    assert {c.status for c in containers} == {"running"}
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    await write(database, "n2", range(1001, 1101))
    await converged(database, 200)
    hosts = (await api.get("/v1/hosts")).json()["hosts"]
    assert [(h["id"], h["orchestrator"]) for h in hosts] == [("local", "docker")]


async def test_backup_then_pitr_in_place(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """A posix backup lands in the host path; a time target restores exactly the rows committed
    before it, in place, and the node is writable and backs up again afterwards."""
    database = await create_and_wait(api, database_body("e2e-pitr", backup_config=posix(repo_dir)))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    first = await backup(api, "e2e-pitr")
    assert list((repo_dir / "databases" / "e2e-pitr").rglob("backup.info"))
    await write(database, "n1", range(101, 201))
    expected = await digest(database)
    target = str(await query(database, "n1", "SELECT clock_timestamp()"))
    await write(database, "n1", range(201, 301))
    result = await restore(
        api,
        "e2e-pitr",
        {
            "restore_config": restore_config(
                "e2e-pitr", "n1", posix(repo_dir)["repositories"][0], type="time", target=target
            )
        },
    )
    assert await digest(database) == expected
    log = [
        e["message"] for e in await full_log(api, "e2e-pitr", result["node_tasks"][0]["task_id"])
    ]
    assert "step restore_data started" in log
    await write(database, "n1", range(1001, 1011))
    after = await backup(api, "e2e-pitr")
    sets = (await api.get("/v1/databases/e2e-pitr/nodes/n1/backups")).json()["backups"]
    assert [s["task_id"] for s in sets][-1] == after["task_id"]
    assert first["task_id"] in [s["task_id"] for s in sets]


async def test_create_from_backup_and_add_node_from_backup(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """A new 2-node database made from another's backup holds its rows under a new name and
    replicates; a node added to the source from its backup joins with the same rows."""
    repository = posix(repo_dir)["repositories"][0]
    source_body = database_body("e2e-src", backup_config=posix(repo_dir))
    source = await create_and_wait(api, source_body)
    await on_every(source, TABLE)
    await write(source, "n1", range(1, 301))
    expected = await digest(source)
    await backup(api, "e2e-src")

    body = database_body(
        "e2e-copy",
        nodes=2,
        backup_config=posix(repo_dir),
        restore_config={
            **restore_config("e2e-src", "n1", repository),
            "source_database_name": "app",
        },
    )
    body["spec"]["database_name"] = "shop"
    copy = await create_and_wait(api, body)
    assert {i["connection_info"]["database"] for i in copy["instances"]} == {"shop"}
    assert await on_every(
        copy, "SELECT count(*) || ':' || md5(string_agg(id || v, ',' ORDER BY id)) FROM items"
    ) == [expected, expected]
    await write(copy, "n2", range(1001, 1011))
    await converged(copy, 310)
    await backup(api, "e2e-copy")

    source_body["spec"]["nodes"].append(
        {"name": "n2", "restore_config": restore_config("e2e-src", "n1", repository)}
    )
    source = await update_and_wait(api, source_body)
    assert await digest(source, "n2") == expected
    await write(source, "n2", range(5001, 5051))
    await write(source, "n1", range(6001, 6051))
    await converged(source, 400)


async def test_monitor_recreates_a_removed_container(
    api: httpx.AsyncClient, server: DockerServer
) -> None:
    """When an instance's container disappears but its volume stays, the monitor starts a
    new container on the same data."""
    database = await create_and_wait(api, database_body("e2e-heal"))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 51))
    expected = await digest(database)
    [old] = server.containers(database="e2e-heal", role="instance")
    old.remove(force=True)

    async def healed() -> str | None:
        found = server.containers(database="e2e-heal", role="instance")
        if not found or found[0].id == old.id or found[0].status != "running":
            return None
        try:
            return await digest(database)
        except (OSError, asyncpg.PostgresError):  # the container runs, Postgres is starting
            return None

    assert await eventually(healed, timeout=60, what="a new container") == expected


async def test_backups_enabled_later_get_their_mount(
    api: httpx.AsyncClient, server: DockerServer, repo_dir: Path
) -> None:
    """Adding a posix repository to a running database recreates its container with the new
    mount, so the backup lands in the host path (never inside the container's own layer)."""
    body = database_body("e2e-later")
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 11))
    [before] = server.containers(database="e2e-later", role="instance")
    body["spec"]["backup_config"] = posix(repo_dir)
    await update_and_wait(api, body)
    [after] = server.containers(database="e2e-later", role="instance")
    assert after.id != before.id
    mounts = {m["Destination"]: m["RW"] for m in after.attrs["Mounts"]}
    assert mounts[str(repo_dir / "databases" / "e2e-later")] is True
    await backup(api, "e2e-later")
    assert list((repo_dir / "databases" / "e2e-later").rglob("backup.info"))
    assert (await digest(database)).startswith("10:")
