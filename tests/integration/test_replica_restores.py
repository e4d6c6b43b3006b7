"""In-place restores of a node with replicas, as pgEdge's eight steps have them: the node's
replicas are torn down, its primary restored, the mesh relinked and the replicas rebuilt from
the restored primary, while every node writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.api import create_and_wait, full_log, wait_task
from tests.support.data import (
    TABLE,
    backup,
    on_every,
    posix,
    posix_repository,
    restore,
    restore_config,
)
from tests.support.eventually import eventually
from tests.support.ha import (
    by_id,
    replica_body,
    serving_hosts,
    slots_copied,
    streaming,
    switch_over,
)
from tests.support.load import (
    assert_between,
    assert_holds,
    assert_prefix,
    ids_on,
    mark,
    settle,
    writers,
)
from tests.support.server import ServerProcess


@pytest.fixture
def ha_server(scratch_dir: Path, store_url: str) -> Iterator[ServerProcess]:
    yield from serving_hosts(scratch_dir, store_url)


async def _instance_rows(server: ServerProcess, instance: dict[str, Any]) -> tuple[set[int], int]:
    """The ids of `items` on one instance (a replica too) and its timeline, as the superuser."""
    conn = await asyncpg.connect(
        host=str(server.run_dir / "i" / instance["host_id"]),
        port=instance["port"],
        user="postgres",
        database="app",
    )
    try:
        ids = {int(r[0]) for r in await conn.fetch("SELECT id FROM items")}
        timeline = int(await conn.fetchval("SELECT timeline_id FROM pg_control_checkpoint()"))
    finally:
        await conn.close()
    return ids, timeline


async def _replica_follows(
    server: ServerProcess, primary: dict[str, Any], replica: dict[str, Any]
) -> set[int]:
    """Until the replica holds exactly the primary's rows, on its timeline; those rows (call it
    once the writers stopped)."""
    primary_ids, primary_timeline = await _instance_rows(server, primary)

    async def replayed() -> bool:
        ids, timeline = await _instance_rows(server, replica)
        assert timeline == primary_timeline, (timeline, primary_timeline)
        assert ids == primary_ids, (len(ids), len(primary_ids))
        return True

    await eventually(replayed, timeout=60, what=f"{replica['id']} to hold the primary's rows")
    return primary_ids


async def test_pitr_in_place_of_a_node_with_a_replica(
    ha_server: ServerProcess, scratch_dir: Path
) -> None:
    """n1 (primary on h1, replica on h2) and n2 (h3) write all along. Both nodes are restored
    in place to a time read on n1: n1's task tears down its replica, restores the primary, the
    mesh is relinked and the replica rebuilt. Of what was written before the restore, n1 and
    n2 hold exactly n1's rows at the target; every row committed afterwards is on both; and the
    rebuilt replica streams from the restored primary with the same rows, on its timeline, and
    can take over."""
    repo = scratch_dir / "repo"
    async with ha_server.client(timeout=60) as api:
        body = replica_body("rr", backup_config=posix(repo))
        database = await create_and_wait(api, body)
        view = await streaming(api, "rr")
        async with writers(database) as load:
            await load.progress()
            await slots_copied(view, "n1")
            await backup(api, "rr", "n1")
            await load.progress()
            point = await mark(database, "n1")
            await load.progress()
            requested = time.time()
            config = restore_config(
                "rr", "n1", posix_repository(repo), type="time", target=point.target
            )
            result = await restore(api, "rr", {"restore_config": config})
            restored = time.time()
            await load.progress()
        await settle(database, timeout=60)
        found = await ids_on(database, "n1")
        earlier = found - load.sent_after(requested)
        assert_between(earlier, set(point.at_least), set(point.at_most), "the restored node")
        assert_prefix(earlier, load, "the restored node")
        await assert_holds(database, load.committed() & load.sent_after(restored))

        n1_task = next(t for t in result["node_tasks"] if t["node_name"] == "n1")
        node_log = [e["message"] for e in await full_log(api, "rr", n1_task["task_id"])]
        assert "step tear_down_replicas started" in node_log, node_log
        assert any("removing replica rr-n1-h2" in m for m in node_log), node_log
        parent_log = [e["message"] for e in await full_log(api, "rr", result["task"]["task_id"])]
        assert any("rebuilding 1 replica(s)" in m for m in parent_log), parent_log
        assert result["task"]["result"]["restored_nodes"] == ["n1", "n2"]

        # The replica streams from the restored primary and holds exactly its rows.
        view = await streaming(api, "rr")
        members = by_id(view)
        assert members["rr-n1"]["role"] == "primary", members
        assert members["rr-n1-h2"]["role"] == "replica", members
        assert all(i["state"] == "available" for i in view["instances"]), view["instances"]
        primary_ids = await _replica_follows(ha_server, members["rr-n1"], members["rr-n1-h2"])
        assert found <= primary_ids

        # It is a real member of n1's new cluster: it holds the mesh's slots and takes over,
        # while both nodes write, with no committed row lost.
        await slots_copied(view, "n1")
        async with writers(database) as after:
            await after.progress()
            task = await switch_over(api, "rr", "n1", "rr-n1-h2")
            assert task["status"] == "completed", task
            await after.progress()
        assert by_id((await api.get("/v1/databases/rr")).json())["rr-n1-h2"]["role"] == "primary"
        await settle(database, timeout=120)
        await assert_holds(database, after.committed())


@pytest.mark.parametrize(
    "crash_point", ["node_restore:tear_down_replicas", "restore:make_cluster:leader_started"]
)
async def test_restore_of_a_node_with_a_replica_resumes_after_a_crash(
    ha_server: ServerProcess, scratch_dir: Path, crash_point: str
) -> None:
    """n1 (primary on h1, replica on h2) is restored in place to its latest point while both
    nodes write, and the control plane is SIGKILLed once the replica is torn down, or once
    Patroni adopted the restored primary and before the replica is cloned again. Restarted, it
    finishes the restore: every committed row is on both nodes, with equal digests, and the
    replica streams from the restored primary with its rows."""
    repo = scratch_dir / "repo"
    async with ha_server.client(timeout=60) as api:
        database = await create_and_wait(api, replica_body("rc", backup_config=posix(repo)))
        view = await streaming(api, "rc")
        await on_every(database, TABLE)
        await slots_copied(view, "n1")
        await backup(api, "rc", "n1")
    plain = dict(ha_server.extra_env)
    ha_server.terminate()
    ha_server.extra_env = {**plain, "CONTROLPLANE_CRASH_AFTER_STEP": crash_point}
    ha_server.start()
    async with writers(database) as load:
        await load.progress()
        async with ha_server.client(timeout=60) as api:
            config = restore_config("rc", "n1", posix_repository(repo))
            response = await api.post(
                "/v1/databases/rc/restore", json={"restore_config": config, "target_nodes": ["n1"]}
            )
            assert response.status_code == 202, response.text
        await ha_server.killed_at_crash_point("rc", response.json()["task"]["task_id"], timeout=300)
        ha_server.extra_env = plain
        ha_server.start()
        async with ha_server.client(timeout=60) as api:
            task = await wait_task(api, "rc", response.json()["task"]["task_id"], timeout=400)
            assert task["status"] == "completed", task
            await load.progress()
    async with ha_server.client(timeout=60) as api:
        await settle(database, timeout=120)
        await assert_holds(database, load.committed())
        view = await streaming(api, "rc")
        members = by_id(view)
        assert (members["rc-n1"]["role"], members["rc-n1-h2"]["role"]) == ("primary", "replica")
        assert all(i["state"] == "available" for i in view["instances"]), view["instances"]
        assert (await api.get("/v1/databases/rc")).json()["state"] == "available"
        assert await _replica_follows(ha_server, members["rc-n1"], members["rc-n1-h2"]) == (
            await ids_on(database, "n2")
        )
