"""A restore survives the control plane being SIGKILLed at every step boundary."""

from __future__ import annotations

from pathlib import Path

from tests.support.api import create_and_wait, database_body, full_log, wait_task
from tests.support.data import backup, checksum, posix, write_rows
from tests.support.server import ServerProcess

NODE_STEPS = [
    "validate_target",
    "pre_restore_backup",
    "drain_node",
    "stop_instance",
    "restore_data",
    "start_recovery",
    "prepare_links",
    "reenable_backups",
]
PARENT_STEPS = ["run_node_restores", "recreate_subscriptions"]
CRASH_POINTS = [f"node_restore:{s}" for s in NODE_STEPS] + [f"restore:{s}" for s in PARENT_STEPS]


async def test_restore_completes_after_sigkill_at_every_step(
    server: ServerProcess, scratch_dir: Path
) -> None:
    """One restore, SIGKILLed right after each of its steps commits in turn (the server is
    started again each time, to die after the next step): the last start finishes it, once,
    with exactly the backed-up rows, the node writable and the database available. Every step
    boundary is a crash point, and each step runs in a server that has just resumed the task
    from what the one before it committed."""
    async with server.client() as client:
        database = await create_and_wait(
            client,
            database_body("crash", nodes=2, backup_config=posix(scratch_dir / "repo")),
        )
        await write_rows(database, 1, 100)
        taken = await backup(client, "crash", "n1")
        expected = await checksum(database)
        await write_rows(database, 101, 100)
    server.terminate()
    server.extra_env = {"CONTROLPLANE_CRASH_AFTER_STEP": CRASH_POINTS[0]}
    server.start()
    async with server.client() as client:
        response = await client.post(
            "/v1/databases/crash/restore",
            json={
                "target_nodes": ["n1"],
                "pre_restore_backup": True,
                "restore_config": {
                    "source_database_id": "crash",
                    "source_node_name": "n1",
                    "repository": {"type": "posix", "base_path": str(scratch_dir / "repo")},
                    "restore_options": {"type": "immediate", "set": taken["result"]["label"]},
                },
            },
        )
        assert response.status_code == 202, response.text
    task_id = response.json()["task"]["task_id"]
    for crash_point in CRASH_POINTS:
        if crash_point != CRASH_POINTS[0]:
            server.extra_env = {"CONTROLPLANE_CRASH_AFTER_STEP": crash_point}
            server.start(may_crash=True)  # the next step may be done before it answers
        await server.killed_at_crash_point("crash", task_id)
    server.extra_env = {}
    server.start()
    async with server.client() as client:
        task = await wait_task(client, "crash", task_id, timeout=300)
        assert task["status"] == "completed", task["error"]
        node_task = response.json()["node_tasks"][0]["task_id"]
        log = [e["message"] for e in await full_log(client, "crash", node_task)]
        for step in NODE_STEPS:
            assert log.count(f"step {step} started") == 1, (step, log)
        assert (await client.get("/v1/databases/crash")).json()["state"] == "available"
        pre = [
            t
            for t in (
                await client.get("/v1/databases/crash/tasks", params={"type": "node_backup"})
            ).json()["tasks"]
            if t["trigger"] == "pre_restore"
        ]
        assert len(pre) == 1
    assert await checksum(database) == expected
    await write_rows(database, 5001, 3)
