"""The task engine under stress: crashes, concurrency, cancel, live logs, the monitor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.api import connect, create_and_wait, database_body, full_log, wait_task
from tests.support.eventually import eventually
from tests.support.processes import postmasters_under
from tests.support.server import ServerProcess

CREATE_STEPS = [
    "plan_instances",
    "init_instances",
    "configure_instances",
    "start_instances",
    "create_users",
    "create_replication_mesh",
]


async def _task_of(client: httpx.AsyncClient, database_id: str) -> dict[str, Any]:
    tasks = (await client.get(f"/v1/databases/{database_id}/tasks")).json()["tasks"]
    assert len(tasks) == 1, tasks
    task: dict[str, Any] = tasks[0]
    return task


@pytest.mark.parametrize("step", CREATE_STEPS)
async def test_create_survives_sigkill_after_each_step(server: ServerProcess, step: str) -> None:
    """A server killed right after a step commits resumes the create at the next step on
    restart, and the result is exactly one working instance per node."""
    server.terminate()
    server.extra_env = {"CONTROLPLANE_CRASH_AFTER_STEP": f"create:{step}"}
    server.start()
    async with server.client() as client:
        try:
            response = await client.post("/v1/databases", json=database_body("crash", nodes=2))
            assert response.status_code == 202
        except httpx.RemoteProtocolError:
            pass  # the task committed its first step, and the server died, before answering
    await server.killed_at_crash_point("crash", timeout=60)
    server.extra_env = {}
    server.start()
    async with server.client() as client:
        task = await wait_task(client, "crash", (await _task_of(client, "crash"))["task_id"])
        assert task["status"] == "completed", task
        messages = [e["message"] for e in await full_log(client, "crash", task["task_id"])]
        assert sum(m == f"step {step} started" for m in messages) == 1
        assert any(m.startswith("resuming task") for m in messages)
        database = (await client.get("/v1/databases/crash")).json()
    assert database["state"] == "available"
    assert len(postmasters_under(server.data_dir / "instances")) == 2
    for node in ("n1", "n2"):
        conn = await connect(database, node)
        try:
            assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'admin'") == 1
        finally:
            await conn.close()


async def test_create_survives_sigkill_mid_step(server: ServerProcess) -> None:
    """Killed while initdb runs, the create redoes that step cleanly after restart."""
    async with server.client() as client:
        response = await client.post("/v1/databases", json=database_body("mid", nodes=3))
        task_id = response.json()["task"]["task_id"]

        async def initdb_running() -> bool:
            task = (await client.get(f"/v1/databases/mid/tasks/{task_id}")).json()
            return any(
                s["name"] == "init_instances" and s["status"] == "running" for s in task["steps"]
            )

        await eventually(initdb_running, interval=0.02, what="init_instances to run")
    server.kill()
    server.start()
    async with server.client() as client:
        task = await wait_task(client, "mid", task_id)
        assert task["status"] == "completed", task
        database = (await client.get("/v1/databases/mid")).json()
    assert len(postmasters_under(server.data_dir / "instances")) == 3
    assert not list((server.data_dir / "instances").glob("*/pgdata.init"))
    for node in ("n1", "n2", "n3"):
        conn = await connect(database, node)
        await conn.close()


async def test_concurrent_updates_exactly_one_accepted(api: httpx.AsyncClient) -> None:
    """Twenty simultaneous updates: one 202, nineteen 409s naming the accepted task."""
    body = database_body("busy")
    await create_and_wait(api, body)
    body["spec"]["postgresql_conf"] = {"work_mem": "5MB"}
    responses = await asyncio.gather(
        *(api.post("/v1/databases/busy", json=body) for _ in range(20))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] + [409] * 19
    accepted = next(r for r in responses if r.status_code == 202).json()["task"]["task_id"]
    for response in responses:
        if response.status_code == 409:
            error = response.json()
            assert error["name"] == "operation_in_progress"
            assert error["details"]["task_id"] == accepted
    await wait_task(api, "busy", accepted)
    tasks = (await api.get("/v1/databases/busy/tasks", params={"type": "update"})).json()["tasks"]
    assert len(tasks) == 1


async def test_concurrent_creates_of_one_id(api: httpx.AsyncClient) -> None:
    """Twenty simultaneous creates of one id: exactly one database and one create task."""
    responses = await asyncio.gather(
        *(api.post("/v1/databases", json=database_body("race")) for _ in range(20))
    )
    assert sorted(r.status_code for r in responses) == [202] + [409] * 19
    task_id = next(r for r in responses if r.status_code == 202).json()["task"]["task_id"]
    await wait_task(api, "race", task_id)
    assert len((await api.get("/v1/databases/race/tasks")).json()["tasks"]) == 1


async def test_cancel_running_create_leaves_no_orphans(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """Canceling a create mid-way stops everything it started; the database ends `failed`."""
    response = await api.post("/v1/databases", json=database_body("stopme", nodes=3))
    task_id = response.json()["task"]["task_id"]

    async def started() -> bool:
        task = (await api.get(f"/v1/databases/stopme/tasks/{task_id}")).json()
        return any(
            s["name"] == "init_instances" and s["status"] == "running" for s in task["steps"]
        )

    await eventually(started, interval=0.02, what="create to be under way")
    cancel = await api.post(f"/v1/databases/stopme/tasks/{task_id}/cancel")
    assert cancel.status_code == 202
    assert cancel.json()["status"] in ("canceling", "canceled")
    task = await wait_task(api, "stopme", task_id)
    assert task["status"] == "canceled"
    assert "canceled" in [s["status"] for s in task["steps"]]
    database = (await api.get("/v1/databases/stopme")).json()
    assert database["state"] == "failed"
    assert database["error"] == "create was canceled"
    assert postmasters_under(server.data_dir / "instances") == []
    again = await api.post(f"/v1/databases/stopme/tasks/{task_id}/cancel")
    assert again.status_code == 409
    # The database is in a defined state: it can be deleted cleanly.
    deleted = await api.delete("/v1/databases/stopme")
    assert (await wait_task(api, "stopme", deleted.json()["task"]["task_id"]))[
        "status"
    ] == "completed"


async def test_sse_follower_gets_every_entry_once_in_order(api: httpx.AsyncClient) -> None:
    """A live follower started with the task sees exactly the stored entries, then `end`."""
    response = await api.post("/v1/databases", json=database_body("follow", nodes=2))
    task_id = response.json()["task"]["task_id"]
    seen: list[int] = []
    ended: dict[str, Any] = {}
    async with api.stream(
        "GET", f"/v1/databases/follow/tasks/{task_id}/log", headers={"Accept": "text/event-stream"}
    ) as stream:
        event = ""
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "entry":
                    seen.append(data["entry_id"])
                elif event == "end":
                    ended = data
    stored = [e["entry_id"] for e in await full_log(api, "follow", task_id)]
    assert seen == stored
    assert seen == list(range(1, len(seen) + 1))
    assert ended == {"task_status": "completed", "last_entry_id": seen[-1]}


async def test_pagination_limit_one_walks_without_gaps(api: httpx.AsyncClient) -> None:
    """Walking the log one entry at a time visits ids 1..N with no gap or repeat."""
    response = await api.post("/v1/databases", json=database_body("pages"))
    task_id = response.json()["task"]["task_id"]
    await wait_task(api, "pages", task_id)
    ids, after = [], 0
    while True:
        page = (
            await api.get(
                f"/v1/databases/pages/tasks/{task_id}/log",
                params={"after_entry_id": after, "limit": 1},
            )
        ).json()
        assert page["task_status"] == "completed"
        if not page["entries"]:
            assert page["last_entry_id"] == after
            break
        assert len(page["entries"]) == 1
        ids.append(page["entries"][0]["entry_id"])
        after = page["last_entry_id"]
    assert ids == list(range(1, len(ids) + 1))
    assert len(ids) > 10


async def test_task_list_filters(api: httpx.AsyncClient) -> None:
    """status/type/sort_order/after_task_id/limit filter and page the task list."""
    body = database_body("filters")
    await create_and_wait(api, body)
    body["spec"]["postgresql_conf"] = {"work_mem": "6MB"}
    update = (await api.post("/v1/databases/filters", json=body)).json()["task"]["task_id"]
    await wait_task(api, "filters", update)
    asc = (await api.get("/v1/databases/filters/tasks", params={"sort_order": "asc"})).json()
    assert [t["type"] for t in asc["tasks"]] == ["create", "update"]
    first = asc["tasks"][0]["task_id"]
    after = (
        await api.get(
            "/v1/databases/filters/tasks", params={"sort_order": "asc", "after_task_id": first}
        )
    ).json()
    assert [t["task_id"] for t in after["tasks"]] == [update]
    only = (await api.get("/v1/tasks", params={"type": "update", "status": "completed"})).json()
    assert [t["task_id"] for t in only["tasks"]] == [update]
    one = (await api.get("/v1/tasks", params={"limit": 1})).json()
    assert [t["task_id"] for t in one["tasks"]] == [update]
    bad = await api.get("/v1/tasks", params={"status": "bogus"})
    assert bad.status_code == 422
    assert bad.json()["details"]["errors"][0]["path"] == "query.status"

    # pgEdge's spellings: scope/entity_id select one database's tasks, ascend/descend sort.
    await create_and_wait(api, database_body("other"))
    scoped = await api.get(
        "/v1/tasks", params={"scope": "database", "entity_id": "filters", "sort_order": "ascend"}
    )
    assert [t["task_id"] for t in scoped.json()["tasks"]] == [first, update]
    descend = await api.get("/v1/tasks", params={"sort_order": "descend"})
    assert [t["database_id"] for t in descend.json()["tasks"]][:2] == ["other", "filters"]
    hosts = await api.get("/v1/tasks", params={"scope": "host", "entity_id": "local"})
    assert hosts.json()["tasks"] == []  # every task here belongs to a database
    for params, path in (
        ({"entity_id": "filters"}, "query.scope"),
        ({"scope": "database", "entity_id": "bad\x00id"}, "query.entity_id"),
        ({"scope": "cluster"}, "query.scope"),
    ):
        refused = await api.get("/v1/tasks", params=params)
        assert refused.status_code == 422, (params, refused.text)
        assert refused.json()["details"]["errors"][0]["path"] == path
    missing = await api.get("/v1/tasks", params={"scope": "database", "entity_id": "nope"})
    assert missing.status_code == 404


async def test_monitor_restarts_killed_postmaster(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """SIGKILL of a node's postmaster: the monitor starts it again and the database returns to
    available with its data intact."""
    database = await create_and_wait(api, database_body("heal", nodes=2))
    conn = await connect(database, "n1")
    await conn.execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (1), (2)")
    await conn.close()
    n1_dir = server.data_dir / "instances" / "heal-n1"
    (pid,) = postmasters_under(n1_dir)
    os.kill(pid, signal.SIGKILL)

    async def healed() -> int | None:
        pids = postmasters_under(n1_dir)
        state = (await api.get("/v1/databases/heal")).json()["state"]
        if not pids or pids[0] == pid or state != "available":
            return None
        try:
            conn = await connect(database, "n1")
        except (OSError, asyncpg.PostgresError):
            return None
        try:
            count: int = await conn.fetchval("SELECT count(*) FROM kept")
            return count
        finally:
            await conn.close()

    assert await eventually(healed, timeout=60, what="n1 to be restarted") == 2


async def test_monitor_marks_unstartable_instance(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """A node that cannot start is marked failed with the reason; the database is degraded."""
    await create_and_wait(api, database_body("broken", nodes=2))
    n2 = server.data_dir / "instances" / "broken-n2"
    (pid,) = postmasters_under(n2)
    with (n2 / "pgdata" / "postgresql.conf").open("a") as conf:
        conf.write("\nshared_buffers = 'not a size'\n")
    os.kill(pid, signal.SIGKILL)

    async def degraded() -> dict[str, Any] | None:
        database: dict[str, Any] = (await api.get("/v1/databases/broken")).json()
        return database if database["state"] == "degraded" else None

    database = await eventually(degraded, timeout=60, what="database to be degraded")
    n2_view = next(i for i in database["instances"] if i["node_name"] == "n2")
    assert n2_view["state"] == "failed"
    assert "start of instance broken-n2 failed" in n2_view["error"]
    assert next(i for i in database["instances"] if i["node_name"] == "n1")["state"] == "available"


async def test_retention_prunes_old_finished_tasks(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """Finished tasks older than the retention are deleted with their logs; recent ones stay."""
    await create_and_wait(api, database_body("old"))
    store = await asyncpg.connect(server.database_url)
    try:
        await store.execute(
            "INSERT INTO tasks (task_id, database_id, type, status, created_at, completed_at)"
            " VALUES ('00000000-0000-7000-8000-000000000001', 'old', 'update', 'completed',"
            " now() - interval '40 days', now() - interval '40 days')"
        )
        await store.execute(
            "INSERT INTO task_log (task_id, entry_id, level, message)"
            " VALUES ('00000000-0000-7000-8000-000000000001', 1, 'info', 'ancient')"
        )
    finally:
        await store.close()
    server.restart()
    async with server.client() as client:

        async def pruned() -> bool:
            tasks = (await client.get("/v1/databases/old/tasks")).json()["tasks"]
            return [t["type"] for t in tasks] == ["create"]

        await eventually(pruned, timeout=30, what="old task to be pruned")
    store = await asyncpg.connect(server.database_url)
    try:
        assert await store.fetchval("SELECT count(*) FROM task_log WHERE message = 'ancient'") == 0
    finally:
        await store.close()


async def test_terminal_states_are_final_in_sql(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """The store itself refuses to move a finished task back to running."""
    response = await api.post("/v1/databases", json=database_body("final"))
    task_id = response.json()["task"]["task_id"]
    await wait_task(api, "final", task_id)
    store = await asyncpg.connect(server.database_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="illegal status transition"):
            await store.execute(
                "UPDATE tasks SET status = 'running' WHERE task_id = $1",
                uuid.UUID(task_id),
            )
    finally:
        await store.close()


async def test_failed_recently_sees_only_recent_failed_tasks_of_its_kind(
    server: ServerProcess,
) -> None:
    """The monitor's back-off after a failed failover task it queued: only a failed task of
    that node, type and trigger that finished within the window counts."""
    from controlplane.store import tasks

    store = await asyncpg.connect(server.database_url)

    async def add(number: int, node: str, trigger: str, status: str, ago: float) -> None:
        await store.execute(
            "INSERT INTO tasks (task_id, database_id, node_name, type, trigger, status,"
            " created_at, completed_at) VALUES ($1, 'db', $2, 'failover', $3, $4,"
            " now() - make_interval(secs => $5), now() - make_interval(secs => $5))",
            uuid.UUID(f"00000000-0000-7000-8000-{number:012d}"),
            node,
            trigger,
            status,
            ago,
        )

    async def found(node: str) -> str | None:
        row = await tasks.failed_recently(
            store, "db", node, "failover", trigger="system", seconds=60
        )
        return None if row is None else str(row.task_id)[-2:]

    try:
        await add(1, "n1", "system", "failed", 200)
        await add(2, "n1", "manual", "failed", 5)
        await add(3, "n2", "system", "failed", 5)
        await add(4, "n1", "system", "completed", 5)
        assert await found("n1") is None
        assert await found("n2") == "03"
        await add(5, "n1", "system", "failed", 10)
        assert await found("n1") == "05"
    finally:
        await store.close()
