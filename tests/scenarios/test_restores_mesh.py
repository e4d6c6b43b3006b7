"""Restores in a replicating mesh, and databases and nodes made from a backup: subscriptions
dropped and recreated, identities kept apart, data checked."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.api import create_and_wait, database_body, fresh_view, full_log
from tests.support.data import (
    TABLE,
    backup,
    converged,
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
from tests.support.eventually import eventually


async def test_restore_n1_from_n3_backup_keeps_mesh_replicating(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """n1 restored from n3's backup (another system) gets n3's rows, replicates both ways with
    n2 and n3 afterwards, and takes backups again in a new repository generation."""
    body = database_body("trio", nodes=3, backup_config=posix(repo_dir))
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    for node, base in (("n1", 1), ("n2", 1001), ("n3", 2001)):
        await write(database, node, range(base, base + 100))
    await converged(database, 300)
    await backup(api, "trio", "n3")
    config = restore_config("trio", "n3", posix_repository(repo_dir))
    result = await restore(api, "trio", {"target_nodes": ["n1"], "restore_config": config})
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
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """Every node restored from n1's backup ends with identical contents (md5) and the mesh
    replicates afterwards."""
    body = database_body("all", nodes=2, backup_config=posix(repo_dir))
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 201))
    await write(database, "n2", range(1001, 1201))
    expected = await converged(database, 400)
    await backup(api, "all", "n1")
    await write(database, "n2", range(2001, 2101))
    await converged(database, 500)
    config = restore_config("all", "n1", posix_repository(repo_dir), type="immediate")
    await restore(api, "all", {"restore_config": config})
    assert await on_every(database, "SELECT count(*) FROM items") == [400, 400]
    assert await converged(database, 400) == expected
    await write(database, "n2", range(3001, 3011))
    await write(database, "n1", range(4001, 4011))
    await converged(database, 420)


async def test_restored_subscriber_loses_no_rows_written_after_it(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """After n2 is restored to an earlier backup its subscription is new, not the stale one
    from the backup (whose slot position is ahead): every row n1 writes afterwards reaches
    n2, and n2's writes reach n1."""
    body = database_body("subs", nodes=2, backup_config=posix(repo_dir))
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    await converged(database, 100)
    await backup(api, "subs", "n2")
    await write(database, "n1", range(101, 201))
    await converged(database, 200)
    config = restore_config("subs", "n2", posix_repository(repo_dir), type="immediate")
    await restore(api, "subs", {"target_nodes": ["n2"], "restore_config": config})
    assert await on_every(database, "SELECT count(*) FROM items") == [200, 100]
    await write(database, "n1", range(1001, 1301))
    await write(database, "n2", range(2001, 2051))

    async def arrived() -> bool:
        n1, n2 = await on_every(database, "SELECT count(*) FROM items WHERE id > 1000")
        return bool(n1 == 350 and n2 == 350)

    await eventually(arrived, timeout=60, what="post-restore rows on both nodes")
    view = await fresh_view(api, "subs")
    for instance in view["instances"]:
        assert [s["status"] for s in instance["subscriptions"]] == ["replicating"]


async def test_create_from_backup_and_add_node_from_backup(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """A new 2-node database made from another's backup holds its rows under a new name,
    replicates, backs up to its own path and never writes WAL into the source's repository;
    a node added to the source from its backup joins with the same rows and no data copy."""
    repository = posix_repository(repo_dir)
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
    assert len((await api.get("/v1/databases/copy/nodes/n1/backups")).json()["backups"]) == 1
    assert len((await api.get("/v1/databases/src/nodes/n1/backups")).json()["backups"]) == 1
    archived = [p.name for p in (repo_dir / "databases" / "src").rglob("0000*")]
    assert archived and all(name.startswith("00000001") for name in archived)
    assert (await digest(source)).startswith("300:")  # the source is untouched

    await write(source, "n1", range(301, 311))  # after the set: the new node must not need it
    source_body["spec"]["nodes"].append(
        {"name": "n2", "restore_config": restore_config("src", "n1", repository)}
    )
    source = await update_and_wait(api, source_body)
    tasks = (await api.get("/v1/databases/src/tasks", params={"type": "update"})).json()["tasks"]
    log = [e["message"] for e in await full_log(api, "src", tasks[0]["task_id"])]
    assert any("made from backup set" in m for m in log)
    assert not [m for m in log if "joins the mesh with a copy" in m]
    await converged(source, 310)
    await write(source, "n2", range(5001, 5051))
    await write(source, "n1", range(6001, 6051))
    await converged(source, 410)


async def test_create_from_missing_backup_refused(api: httpx.AsyncClient, repo_dir: Path) -> None:
    """A restore_config naming a source with no backups is 422 on its path and creates
    nothing."""
    config = restore_config("ghost", "n1", posix_repository(repo_dir))
    body = database_body("nobk", restore_config=config)
    response = await api.post("/v1/databases", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["details"]["errors"][0]["path"].startswith("spec.restore_config")
    assert (await api.get("/v1/databases/nobk")).status_code == 404


async def test_partial_restore_to_an_earlier_set_says_the_nodes_diverge(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """Only n1 restored to a named set (immediate): n1 holds the set's rows and the restore's
    log warns that it now diverges from n2; restored to the latest point, nothing is said."""
    database = await create_and_wait(
        api, database_body("split", nodes=2, backup_config=posix(repo_dir))
    )
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 51))
    await converged(database, 50)
    label = (await backup(api, "split", "n1"))["result"]["label"]
    await write(database, "n2", range(1001, 1051))
    await converged(database, 100)
    repository = posix_repository(repo_dir)
    for options, warned in (({"set": label, "type": "immediate"}, True), ({}, False)):
        config = restore_config("split", "n1", repository, **options)
        result = await restore(api, "split", {"target_nodes": ["n1"], "restore_config": config})
        log = [e["message"] for e in await full_log(api, "split", result["task"]["task_id"])]
        assert any("diverge from n2" in m for m in log) is warned, log
        if warned:
            assert await query(database, "n1", "SELECT count(*) FROM items") == 50
