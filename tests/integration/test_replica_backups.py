"""Backups of a node with replicas taken from a replica (pgBackRest's backup-standby), while
both nodes take writes, and what they restore to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.data import TABLE, backup, on_every, posix, posix_repository
from tests.support.ha import (
    replica_body,
    replica_holds,
    run_action,
    serving_hosts,
    slots_copied,
    streaming,
    task_log,
)
from tests.support.load import assert_holds, ids_on, settle, writers
from tests.support.server import ServerProcess


@pytest.fixture
def ha_server(scratch_dir: Path, store_url: str) -> Iterator[ServerProcess]:
    yield from serving_hosts(scratch_dir, store_url)


async def test_backup_from_a_replica_restores_the_rows(
    ha_server: ServerProcess, scratch_dir: Path
) -> None:
    """n1 (primary on h1, replica on h2) is backed up from its replica while both nodes write;
    a database created from that backup, to a restore point made once the writers stopped,
    holds exactly n1's rows. A standby backup of a node without replicas is refused first."""
    repo = scratch_dir / "repo"
    async with ha_server.client(timeout=60) as api:
        body = replica_body("rb", backup_config=posix(repo))
        database = await create_and_wait(api, body)
        view = await streaming(api, "rb")
        await on_every(database, TABLE)
        await slots_copied(view, "n1")

        standby = {"type": "full", "backup_options": {"backup-standby": "y"}}
        refused = await api.post("/v1/databases/rb/nodes/n2/backups", json=standby)
        assert refused.status_code == 422, refused.text
        error = refused.json()["details"]["errors"][0]
        assert error["path"] == "backup_options.backup-standby" and "no replica" in error["message"]

        async with writers(database) as load:
            await load.progress(30)
            started = await api.post("/v1/databases/rb/nodes/n1/backups", json=standby)
            assert started.status_code == 202, started.text
            task = await wait_task(api, "rb", started.json()["task"]["task_id"], timeout=300)
            log = await task_log(api, task)
            assert task["status"] == "completed", (task, log)
            assert " --backup-standby " in log, log
            # pgBackRest copies the files from the standby once it has replayed the backup start.
            assert "on the standby" in log, log
            await load.progress(30)
        await settle(database, timeout=120)
        point = await api.post("/v1/databases/rb/nodes/n1/restore-points", json={"name": "done"})
        assert point.status_code == 201, point.text
        expected = await ids_on(database, "n1")
        assert load.committed() <= expected

        restore_config = {
            "source_database_id": "rb",
            "source_node_name": "n1",
            "repository": posix_repository(repo),
            "restore_options": {"type": "name", "target": "done"},
        }
        copy = database_body("rbcopy", restore_config=restore_config)
        # Made from the backup with a replica of its own: cloned from the restored primary.
        copy["spec"]["nodes"] = [{"name": "n1", "host_ids": ["h3", "h1"]}]
        restored = await create_and_wait(api, copy)
        assert await ids_on(restored, "n1") == expected
        view = await streaming(api, "rbcopy")
        roles = {i["id"]: (i["host_id"], i["role"]) for i in view["instances"]}
        assert roles == {"rbcopy-n1": ("h3", "primary"), "rbcopy-n1-h1": ("h1", "replica")}
        replica = next(i for i in view["instances"] if i["role"] == "replica")
        await replica_holds(replica, expected)

        # A node added from n1's backup, with a replica of its own, while n1 and n2 write.
        body["spec"]["nodes"].append(
            {
                "name": "n3",
                "host_ids": ["h2", "h3"],
                "restore_config": {**restore_config, "restore_options": {}},
            }
        )
        async with writers(database) as load:
            await load.progress(30)
            updated = await api.post("/v1/databases/rb", json=body)
            assert updated.status_code == 202, updated.text
            task = await wait_task(api, "rb", updated.json()["task"]["task_id"], timeout=400)
            assert task["status"] == "completed", (task, await task_log(api, task))
            assert "made from backup set" in await task_log(api, task)
            await load.progress(30)
        grown = (await api.get("/v1/databases/rb")).json()
        await settle(grown, timeout=120)
        expected = await ids_on(grown, "n3")
        await assert_holds(grown, load.committed())
        view = await streaming(api, "rb")
        added = [i for i in view["instances"] if i["node_name"] == "n3"]
        roles = {i["id"]: (i["host_id"], i["role"]) for i in added}
        assert roles == {"rb-n3": ("h2", "primary"), "rb-n3-h3": ("h3", "replica")}, roles
        await replica_holds(next(i for i in added if i["role"] == "replica"), expected)

        # A replica stopped by an operator stays stopped through a backup of its node (the
        # backup marks and clears the primary only).
        stopped = await run_action(api, "/v1/databases/rb/instances/rb-n1-h2/stop-instance")
        assert stopped["status"] == "completed", (stopped, await task_log(api, stopped))
        await backup(api, "rb", "n1")
        states = {
            i["id"]: i["state"] for i in (await api.get("/v1/databases/rb")).json()["instances"]
        }
        assert states["rb-n1-h2"] == "stopped", states
        assert states["rb-n1"] == "available", states
