"""Operations that move data while every node writes: nodes added (by copy, from a backup),
removed, databases made from a backup, restores in place, a scheduled backup restored. Each
ends with every node converged (count and md5) and no committed row missing but those a
restore legitimately rewinds."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import create_and_wait, database_body, full_log, wait_task
from tests.support.data import (
    backup,
    posix,
    posix_repository,
    restore,
    restore_config,
    update_and_wait,
    write_rows,
)
from tests.support.eventually import eventually
from tests.support.load import (
    Load,
    assert_between,
    assert_holds,
    assert_prefix,
    ids_on,
    mark,
    settle,
    writers,
)


async def test_add_node_by_copy_while_every_node_writes(api: httpx.AsyncClient) -> None:
    """A node added with source_node while both members write joins (the task completes),
    holds every row committed anywhere, and its own writes reach the others."""
    body = database_body("bcopy", nodes=2)
    database = await create_and_wait(api, body)
    async with writers(database) as load:
        await load.progress()
        body["spec"]["nodes"].append({"name": "n3", "source_node": "n1"})
        database = await update_and_wait(api, body)
        load.start(database, "n3")
        await load.progress()
    await settle(database)
    await assert_holds(database, load.committed())


def _from_backup(database_id: str, repo_dir: Path) -> dict[str, Any]:
    """A node's restore_config with no restore_options: the latest the source can give."""
    return {
        "source_database_id": database_id,
        "source_node_name": "n1",
        "repository": posix_repository(repo_dir),
    }


async def test_add_node_from_backup_while_every_node_writes(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """A node added from n1's full backup while n1 and n2 write joins (the task completes),
    holds every row committed anywhere, and its own writes reach the others."""
    body = database_body("bbackup", nodes=2, backup_config=posix(repo_dir))
    database = await create_and_wait(api, body)
    async with writers(database) as load:
        await load.progress()
        await backup(api, "bbackup", "n1")
        body["spec"]["nodes"].append(
            {"name": "n3", "restore_config": _from_backup("bbackup", repo_dir)}
        )
        database = await update_and_wait(api, body)
        load.start(database, "n3")
        await load.progress()
    await settle(database)
    await assert_holds(database, load.committed())


async def test_add_node_from_backup_while_single_node_writes(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """The reported case: a 1-node database with 500 rows and a full backup, a writer
    committing a row every 20 ms on n1 while n2 is added from that backup; n1 and n2 end with
    identical rows, every committed one included."""
    body = database_body("bsingle", backup_config=posix(repo_dir))
    database = await create_and_wait(api, body)
    await write_rows(database, 1, 500)
    await backup(api, "bsingle")
    async with writers(database, ["n1"], interval=0.02) as load:
        await load.progress()
        body["spec"]["nodes"].append(
            {"name": "n2", "restore_config": _from_backup("bsingle", repo_dir)}
        )
        database = await update_and_wait(api, body)
        await load.progress()
    await settle(database)
    await assert_holds(database, load.committed() | set(range(1, 501)))


async def test_create_from_backup_while_source_writes(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """A 2-node database made from n1's backup to a time target read while both source nodes
    write holds exactly the rows n1 had committed at that target (a consistent point), its
    nodes converge and replicate; the source loses nothing."""
    source = await create_and_wait(
        api, database_body("bsrc", nodes=2, backup_config=posix(repo_dir))
    )
    async with writers(source) as load:
        await load.progress()
        await backup(api, "bsrc", "n1")
        await load.progress()
        point = await mark(source, "n1")
        await load.progress()
        config = restore_config("bsrc", "n1", posix_repository(repo_dir), **_time(point.target))
        copy = await create_and_wait(api, database_body("bnew", nodes=2, restore_config=config))
        found = await ids_on(copy, "n1")
        assert_between(found, set(point.at_least), set(point.at_most), "the new database")
        assert_prefix(found, load, "the new database")
        async with writers(copy) as copy_load:
            await copy_load.progress()
    await settle(copy)
    await assert_holds(copy, found | copy_load.committed())
    await settle(source)
    await assert_holds(source, load.committed())


def _time(target: str) -> dict[str, str]:
    return {"type": "time", "target": target}


async def test_restore_one_node_to_latest_while_both_write(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """n1 of a writing 2-node mesh restored in place to the latest point (no restore_options)
    while both nodes keep writing: the restore completes and, nothing being rewound, every
    row committed on either node ends on both, which converge."""
    load, log = await _restore_from_n1_while_all_write(api, repo_dir, "bone", 2, "n1")
    # n1's writer was logged in: the drain ended its session, and it stayed out until n1's
    # slots existed again (its reconnects were refused by the fence, not by a stopped node).
    assert any("client session(s) ended" in m for m in log), log
    n1 = load.writers["n1"]
    assert any("pg_hba.conf" in e for e in n1.kinds), n1.kinds


async def test_restore_one_node_from_another_nodes_backup_while_all_write(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """n3 of a writing 3-node mesh restored in place from n1's backup (the latest point, n1
    running): n3 rejoins at a point prepared when its task runs, so every row committed on
    any node, before, during and after the restore, ends on all three, which converge."""
    _, log = await _restore_from_n1_while_all_write(api, repo_dir, "bfrom", 3, "n3")
    assert any("joins at" in m for m in log), log


async def _restore_from_n1_while_all_write(
    api: httpx.AsyncClient, repo_dir: Path, database_id: str, nodes: int, target: str
) -> tuple[Load, list[str]]:
    """A mesh whose nodes all write; `target` restored in place from n1's backup to the
    latest point; every committed row on every node afterwards. The load and the node
    restore's log."""
    database = await create_and_wait(
        api, database_body(database_id, nodes=nodes, backup_config=posix(repo_dir))
    )
    async with writers(database) as load:
        await load.progress()
        await backup(api, database_id, "n1")
        await load.progress()
        config = restore_config(database_id, "n1", posix_repository(repo_dir))
        body = {"target_nodes": [target], "restore_config": config}
        result = await restore(api, database_id, body)
        await load.progress()
    await settle(database, timeout=30)
    await assert_holds(database, load.committed())
    node_task = result["node_tasks"][0]["task_id"]
    return load, [e["message"] for e in await full_log(api, database_id, node_task)]


@pytest.mark.parametrize("writes", ["continue", "pause"])
async def test_restore_every_node_to_a_time(
    api: httpx.AsyncClient, repo_dir: Path, writes: str
) -> None:
    """Both nodes of a writing mesh restored in place to a time read on n1 while both write,
    the writers going on through the restore or pausing just before it: the restore
    completes, of everything written before it the nodes hold exactly n1's rows at the target,
    and every row committed afterwards ends on both, which converge."""
    database_id = f"ball{writes[0]}"
    database = await create_and_wait(
        api, database_body(database_id, nodes=2, backup_config=posix(repo_dir))
    )
    async with writers(database) as load:
        await load.progress()
        await backup(api, database_id, "n1")
        await load.progress()
        point = await mark(database, "n1")
        await load.progress()
        if writes == "pause":
            await load.pause()
        requested = time.time()
        config = restore_config(
            database_id, "n1", posix_repository(repo_dir), **_time(point.target)
        )
        await restore(api, database_id, {"restore_config": config})
        restored = time.time()
        load.resume()
        await load.progress()
    await settle(database, timeout=30)
    found = await ids_on(database, "n1")
    earlier = found - load.sent_after(requested)
    assert_between(earlier, set(point.at_least), set(point.at_most), "the restored nodes")
    assert_prefix(earlier, load, "the restored nodes")
    await assert_holds(database, load.committed() & load.sent_after(restored))


async def test_restore_every_node_to_the_latest_point_while_both_write(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """Every node restored from n1's backup with no target while both write: they recover to
    one moment (a marker committed on n1 when the restore is requested), come back identical,
    and every row committed once the restore is done reaches both."""
    database = await create_and_wait(
        api, database_body("blatest", nodes=2, backup_config=posix(repo_dir))
    )
    async with writers(database) as load:
        await load.progress()
        await backup(api, "blatest", "n1")
        await load.progress()
        requested = time.time()
        config = restore_config("blatest", "n1", posix_repository(repo_dir))
        result = await restore(api, "blatest", {"restore_config": config})
        restored = time.time()
        await load.progress()
    await settle(database, timeout=30)
    before = load.committed() - load.sent_after(requested)
    assert before <= await ids_on(database, "n1"), "a row committed before the request is gone"
    await assert_holds(database, load.committed() & load.sent_after(restored))
    log = [e["message"] for e in await full_log(api, "blatest", result["task"]["task_id"])]
    assert not any("diverge" in m for m in log), log


async def test_remove_node_while_the_others_write(api: httpx.AsyncClient) -> None:
    """n3 removed from a 3-node mesh while n1 and n2 write: n1 and n2 converge with every row
    committed on any node (n3's stopped first) and keep replicating."""
    body = database_body("bremove", nodes=3)
    database = await create_and_wait(api, body)
    async with writers(database) as load:
        await load.progress()
        await load.pause("n3")
        body["spec"]["nodes"] = [n for n in body["spec"]["nodes"] if n["name"] != "n3"]
        database = await update_and_wait(api, body)
        await load.progress(25, "n1", "n2")
    await settle(database)
    await assert_holds(database, load.committed())


async def test_scheduled_backup_during_writes_restores_its_rows(
    api: httpx.AsyncClient, repo_dir: Path
) -> None:
    """A per-minute scheduled full backup of a mesh whose nodes both write, restored into a
    new database: it holds a consistent point of every writer within the backup's span, and
    the new nodes replicate each other's writes and converge."""
    body = database_body("bsched", nodes=2, backup_config=posix(repo_dir))
    database = await create_and_wait(api, body)
    async with writers(database) as load:
        await load.progress()
        schedule = {"id": "minutely", "type": "full", "cron_expression": "* * * * *"}
        body["spec"]["backup_config"]["schedules"] = [schedule]
        await update_and_wait(api, body)
        task = await _first_scheduled_backup(api, "bsched", "n1")
        body["spec"]["backup_config"]["schedules"] = []
        await update_and_wait(api, body)
    sets = (await api.get("/v1/databases/bsched/nodes/n1/backups")).json()["backups"]
    [taken] = [s for s in sets if s["task_id"] == task["task_id"]]
    assert taken["annotations"]["schedule"] == "minutely"
    options = {"type": "immediate", "set": taken["label"]}
    config = restore_config("bsched", "n1", posix_repository(repo_dir), **options)
    copy = await create_and_wait(api, database_body("bschedcopy", nodes=2, restore_config=config))
    found = await ids_on(copy, "n1")
    started = datetime.fromisoformat(taken["started_at"]).timestamp()
    stopped = datetime.fromisoformat(taken["stopped_at"]).timestamp() + 1
    # n1's own rows committed before the set began are in it; n2's may still have been on
    # their way to n1, which the prefix check covers.
    before = load.writers["n1"].committed_before(started)
    within = (load.committed() | load.unknown()) - load.sent_after(stopped)
    assert_between(found, before, within, "the scheduled set")
    assert_prefix(found, load, "the scheduled set")
    async with writers(copy) as copy_load:
        await copy_load.progress()
    await settle(copy)
    await assert_holds(copy, found | copy_load.committed())
    await settle(database)
    await assert_holds(database, load.committed())


async def _first_scheduled_backup(
    api: httpx.AsyncClient, database_id: str, node: str
) -> dict[str, Any]:
    """The first scheduled backup of `node`, once it has completed."""

    async def scheduled() -> dict[str, Any] | None:
        listed = await api.get(f"/v1/databases/{database_id}/tasks", params={"type": "node_backup"})
        found = [
            t
            for t in listed.json()["tasks"]
            if t["trigger"] == "scheduled" and t["node_name"] == node and t["status"] != "skipped"
        ]
        return found[-1] if found else None  # the oldest: listed newest first

    task = await eventually(scheduled, timeout=90, interval=1, what="a scheduled backup")
    done = await wait_task(api, database_id, task["task_id"], timeout=300)
    assert done["status"] == "completed", done["error"]
    return done
