"""A server killed inside a join while every member writes: the resumed join loses nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.data import backup, posix, posix_repository, write_rows
from tests.support.load import assert_holds, settle, writers
from tests.support.server import ServerProcess


async def _update_through_a_crash(
    server: ServerProcess, body: dict[str, Any], point: str
) -> dict[str, Any]:
    """Submit the update to a server that SIGKILLs itself at `point`, start it again, and wait
    for the resumed task; the database view afterwards."""
    server.terminate()
    server.extra_env = {"CONTROLPLANE_CRASH_AFTER_STEP": point}
    server.start()
    async with server.client(timeout=30) as api:
        response = await api.post(f"/v1/databases/{body['id']}", json=body)
        assert response.status_code == 202, response.text
        task_id = response.json()["task"]["task_id"]
    await server.killed_at_crash_point(body["id"], task_id)
    server.extra_env = {}
    server.start()
    async with server.client(timeout=30) as api:
        task = await wait_task(api, body["id"], task_id, timeout=300)
        assert task["status"] == "completed", task["error"]
        view: dict[str, Any] = (await api.get(f"/v1/databases/{body['id']}")).json()
        return view


@pytest.mark.parametrize(
    "point", ["update:init_instances:join_prepared", "update:init_instances:identity_taken"]
)
async def test_add_node_from_backup_resumes_after_a_crash(
    server: ServerProcess, scratch_dir: Path, point: str
) -> None:
    """Killed after the join point was prepared, or after the restored node recorded where
    its rows end and took its identity, the resumed update joins n3 at the same point: with
    n1 and n2 writing throughout, every node ends with every committed row."""
    repo = scratch_dir / "repo"
    repo.mkdir(mode=0o755)
    body = database_body("crashjoin", nodes=2, backup_config=posix(repo))
    async with server.client(timeout=30) as api:
        database = await create_and_wait(api, body)
        await write_rows(database, 1, 100)
        await backup(api, "crashjoin")
    body["spec"]["nodes"].append(
        {
            "name": "n3",
            "restore_config": {
                "source_database_id": "crashjoin",
                "source_node_name": "n1",
                "repository": posix_repository(repo),
            },
        }
    )
    async with writers(database) as load:
        await load.progress()
        database = await _update_through_a_crash(server, body, point)
        await load.progress()
    await settle(database)
    await assert_holds(database, load.committed() | set(range(1, 101)))


async def test_add_node_by_copy_resumes_after_a_crash_while_its_source_is_paused(
    server: ServerProcess,
) -> None:
    """Killed while the copy's source had its subscriptions paused, the resumed update
    resumes them and joins n3: with n1 and n2 writing throughout, nothing is lost."""
    body = database_body("crashcopy", nodes=2)
    async with server.client(timeout=30) as api:
        database = await create_and_wait(api, body)
    body["spec"]["nodes"].append({"name": "n3", "source_node": "n1"})
    async with writers(database) as load:
        await load.progress()
        database = await _update_through_a_crash(
            server, body, "update:create_replication_mesh:source_paused"
        )
        await load.progress()
    await settle(database)
    await assert_holds(database, load.committed())
