"""Restores in a replicating mesh: subscriptions dropped and recreated, data checked."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.integration.test_backups import backup, posix_config
from tests.integration.test_replication import TABLE, converged, on_every, write
from tests.integration.test_restores import restore
from tests.support.api import create_and_wait, database_body, full_log


def repo_of(scratch: Path) -> dict[str, str]:
    return {"type": "posix", "base_path": str(scratch / "repo")}


async def test_restore_n1_from_n3_backup_keeps_mesh_replicating(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """n1 restored from n3's backup (another system) gets n3's rows, replicates both ways with
    n2 and n3 afterwards, and takes backups again in a new repository generation."""
    body = database_body("trio", nodes=3, backup_config=posix_config(scratch_dir / "repo"))
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    for node, base in (("n1", 1), ("n2", 1001), ("n3", 2001)):
        await write(database, node, range(base, base + 100))
    await converged(database, 300)
    await backup(api, "trio", "n3")
    result = await restore(
        api,
        "trio",
        {
            "target_nodes": ["n1"],
            "restore_config": {
                "source_database_id": "trio",
                "source_node_name": "n3",
                "repository": repo_of(scratch_dir),
            },
        },
    )
    await converged(database, 300)
    await write(database, "n1", range(5001, 5051))
    await write(database, "n2", range(6001, 6051))
    await write(database, "n3", range(7001, 7051))
    await converged(database, 450)
    node_task = result["node_tasks"][0]["task_id"]
    node = (await api.get(f"/v1/databases/trio/tasks/{node_task}")).json()
    assert node["result"]["generation_moved"] is True
    sets = (await api.get("/v1/databases/trio/nodes/n1/backups")).json()["backups"]
    assert [s["type"] for s in sets] == ["full"]
    assert sets[0]["task_id"] == node["result"].get("protecting_backup_task", sets[0]["task_id"])
    log = [e["message"] for e in await full_log(api, "trio", node_task)]
    assert any("move to generation" in m for m in log)
    await backup(api, "trio", "n1", type="incr")


async def test_restore_all_nodes_to_one_point_is_identical(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """Every node restored from n1's backup ends with identical contents (md5) and the mesh
    replicates afterwards."""
    body = database_body("all", nodes=2, backup_config=posix_config(scratch_dir / "repo"))
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 201))
    await write(database, "n2", range(1001, 1201))
    digest = await converged(database, 400)
    await backup(api, "all", "n1")
    await write(database, "n2", range(2001, 2101))
    await converged(database, 500)
    await restore(
        api,
        "all",
        {
            "restore_config": {
                "source_database_id": "all",
                "source_node_name": "n1",
                "repository": repo_of(scratch_dir),
                "restore_options": {"type": "immediate"},
            }
        },
    )
    assert set(await on_every(database, "SELECT count(*) FROM items")) == {400}
    assert await converged(database, 400) == digest
    await write(database, "n2", range(3001, 3011))
    await write(database, "n1", range(4001, 4011))
    await converged(database, 420)


async def test_restored_subscriber_loses_no_rows_written_after_it(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """After n2 is restored to an earlier backup its subscription is new, not the stale one
    from the backup (whose slot position is ahead): every row n1 writes afterwards reaches
    n2, and n2's writes reach n1."""
    body = database_body("subs", nodes=2, backup_config=posix_config(scratch_dir / "repo"))
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    await converged(database, 100)
    await backup(api, "subs", "n2")
    await write(database, "n1", range(101, 201))
    await converged(database, 200)
    await restore(
        api,
        "subs",
        {
            "target_nodes": ["n2"],
            "restore_config": {
                "source_database_id": "subs",
                "source_node_name": "n2",
                "repository": repo_of(scratch_dir),
                "restore_options": {"type": "immediate"},
            },
        },
    )
    counts = await on_every(database, "SELECT count(*) FROM items")
    assert counts == [200, 100]
    await write(database, "n1", range(1001, 1301))
    await write(database, "n2", range(2001, 2051))

    async def arrived() -> bool:
        n1, n2 = await on_every(database, "SELECT count(*) FROM items WHERE id > 1000")
        return bool(n1 == 350 and n2 == 350)

    from tests.support.eventually import eventually

    await eventually(arrived, timeout=60, what="post-restore rows on both nodes")
    view = (await api.get("/v1/databases/subs")).json()
    for instance in view["instances"]:
        assert [s["status"] for s in instance["subscriptions"]] == ["replicating"]


async def test_create_database_from_backup(api: httpx.AsyncClient, scratch_dir: Path) -> None:
    """A 2-node database created from another's backup holds its rows under a new name,
    replicates between its own nodes, backs up to its own path, and never wrote WAL into the
    source's repository."""
    source = await create_and_wait(
        api, database_body("src", backup_config=posix_config(scratch_dir / "repo"))
    )
    await on_every(source, TABLE)
    await write(source, "n1", range(1, 301))
    expected = (
        await on_every(source, "SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM items")
    )[0]
    await backup(api, "src", "n1")
    body = database_body(
        "copy",
        nodes=2,
        backup_config=posix_config(scratch_dir / "repo"),
        restore_config={
            "source_database_id": "src",
            "source_node_name": "n1",
            "source_database_name": "app",
            "repository": repo_of(scratch_dir),
        },
    )
    body["spec"]["database_name"] = "shop"
    copy = await create_and_wait(api, body)
    assert {i["connection_info"]["database"] for i in copy["instances"]} == {"shop"}
    digests = await on_every(copy, "SELECT md5(string_agg(id || v, ',' ORDER BY id)) FROM items")
    assert digests == [expected, expected]
    await write(copy, "n2", range(1001, 1011))
    await converged(copy, 310)
    await backup(api, "copy", "n1")
    assert len((await api.get("/v1/databases/copy/nodes/n1/backups")).json()["backups"]) == 1
    assert len((await api.get("/v1/databases/src/nodes/n1/backups")).json()["backups"]) == 1
    archived = [p.name for p in (scratch_dir / "repo" / "databases" / "src").rglob("0000*")]
    assert archived and all(name.startswith("00000001") for name in archived)


async def test_add_node_from_backup_joins_without_copy(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """n3 added from n1's backup holds the rows, joins as a member (no data copy), and
    replicates both ways."""
    body = database_body("addbk", nodes=2, backup_config=posix_config(scratch_dir / "repo"))
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 201))
    await write(database, "n2", range(1001, 1101))
    await converged(database, 300)
    await backup(api, "addbk", "n1")
    body["spec"]["nodes"].append(
        {
            "name": "n3",
            "restore_config": {
                "source_database_id": "addbk",
                "source_node_name": "n1",
                "repository": repo_of(scratch_dir),
            },
        }
    )
    response = await api.post("/v1/databases/addbk", json=body)
    assert response.status_code == 202, response.text
    from tests.support.api import wait_task

    task = await wait_task(api, "addbk", response.json()["task"]["task_id"], timeout=300)
    assert task["status"] == "completed", task["error"]
    database = (await api.get("/v1/databases/addbk")).json()
    await converged(database, 300)
    log = [e["message"] for e in await full_log(api, "addbk", task["task_id"])]
    assert not [m for m in log if "joins the mesh with a copy" in m]
    assert any("made from backup set" in m for m in log)
    await write(database, "n3", range(5001, 5051))
    await write(database, "n1", range(6001, 6051))
    await converged(database, 400)


async def test_create_from_missing_backup_refused(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """A restore_config naming a source with no backups is 422 and creates nothing."""
    body = database_body(
        "nobk",
        restore_config={
            "source_database_id": "ghost",
            "source_node_name": "n1",
            "repository": repo_of(scratch_dir),
        },
    )
    response = await api.post("/v1/databases", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["details"]["errors"][0]["path"].startswith("spec.restore_config")
    assert (await api.get("/v1/databases")).json()["databases"] == []
