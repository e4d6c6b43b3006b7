"""The task routes as pgEdge's users call them: strict query parameters, the GET spelling of
cancel, tasks that say their scope and where they ran, and a log page without a cursor that is
the newest entries."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.api import create_and_wait, database_body
from tests.support.data import backup, posix
from tests.support.server import ServerProcess


async def test_task_routes_refuse_unknown_query_parameters(api: httpx.AsyncClient) -> None:
    """A misspelt filter is a 422 naming it on every task route, never a silently unfiltered
    answer; known parameters still work, pgEdge's `ascending` included."""
    await create_and_wait(api, database_body("strict"))
    task_id = (await api.get("/v1/tasks")).json()["tasks"][0]["task_id"]
    base = f"/v1/databases/strict/tasks/{task_id}"
    for path in ("/v1/tasks", "/v1/databases/strict/tasks", base, f"{base}/log"):
        answer = await api.get(path, params={"stauts": "failed"})
        assert answer.status_code == 422, (path, answer.text)
        errors = answer.json()["details"]["errors"]
        assert [e["path"] for e in errors] == ["query.stauts"], errors
        assert "stauts" in errors[0]["message"]
    for method in ("GET", "POST"):
        answer = await api.request(method, f"{base}/cancel", params={"force": "1"})
        assert answer.status_code == 422, answer.text
    listed = await api.get("/v1/tasks", params={"sort_order": "ascending", "limit": 5})
    assert listed.status_code == 200 and listed.json()["tasks"][0]["task_id"] == task_id


async def test_tasks_say_scope_entity_host_and_instance(
    api: httpx.AsyncClient, scratch_dir: Path
) -> None:
    """A database task has scope database and its database as entity; a node's backup task
    names the node's instance and host too."""
    database = await create_and_wait(
        api, database_body("placed", backup_config=posix(scratch_dir / "repo"))
    )
    done = await backup(api, "placed", "n1")
    instance = database["instances"][0]
    tasks = (await api.get("/v1/databases/placed/tasks")).json()["tasks"]
    by_type = {t["type"]: t for t in tasks}
    create, node_backup = by_type["create"], by_type["node_backup"]
    assert (create["scope"], create["entity_id"]) == ("database", "placed")
    assert (create["host_id"], create["instance_id"]) == (None, None)
    assert node_backup["task_id"] == done["task_id"]
    assert (node_backup["scope"], node_backup["entity_id"]) == ("database", "placed")
    assert (node_backup["instance_id"], node_backup["host_id"]) == (
        instance["id"],
        instance["host_id"],
    )
    one = (await api.get(f"/v1/databases/placed/tasks/{done['task_id']}")).json()
    assert one["instance_id"] == instance["id"]
    scoped = await api.get("/v1/tasks", params={"scope": "database", "entity_id": "placed"})
    assert {t["entity_id"] for t in scoped.json()["tasks"]} == {"placed"}


async def test_log_without_cursor_is_the_newest_entries(api: httpx.AsyncClient) -> None:
    """`limit` alone returns the newest entries, oldest first, with the last one's id as the
    cursor (pgEdge's tail); with `after_entry_id` the next entries after it."""
    await create_and_wait(api, database_body("tail"))
    task_id = (await api.get("/v1/databases/tail/tasks")).json()["tasks"][0]["task_id"]
    log = f"/v1/databases/tail/tasks/{task_id}/log"
    everything = (await api.get(log, params={"after_entry_id": 0, "limit": 1000})).json()
    ids = [e["entry_id"] for e in everything["entries"]]
    assert len(ids) > 5 and ids == list(range(1, len(ids) + 1))
    tail = (await api.get(log, params={"limit": 3})).json()
    assert [e["entry_id"] for e in tail["entries"]] == ids[-3:]
    assert tail["last_entry_id"] == ids[-1]
    assert tail["entries"][-1]["message"] == "task completed"
    head = (await api.get(log, params={"after_entry_id": 0, "limit": 3})).json()
    assert [e["entry_id"] for e in head["entries"]] == ids[:3]
    after_tail = (await api.get(log, params={"after_entry_id": tail["last_entry_id"]})).json()
    assert after_tail["entries"] == []


async def test_cancel_by_get_is_the_post(api: httpx.AsyncClient, server: ServerProcess) -> None:
    """GET …/cancel answers as the POST does (a finished task: 409 naming its status), and
    needs a write token like it."""
    await create_and_wait(api, database_body("alias"))
    task_id = (await api.get("/v1/databases/alias/tasks")).json()["tasks"][0]["task_id"]
    path = f"/v1/databases/alias/tasks/{task_id}/cancel"
    by_post, by_get = await api.post(path), await api.get(path)
    assert by_post.status_code == by_get.status_code == 409, (by_post.text, by_get.text)
    assert (
        by_get.json()["message"]
        == by_post.json()["message"]
        == (f"task {task_id} is already completed")
    )
    reader = server.create_token("reader", "read")
    async with server.client(token=reader) as read_only:
        refused = await read_only.get(path)
    assert refused.status_code == 403, refused.text
    assert refused.json()["details"] == {"required_scope": "write"}
    missing = await api.get(f"/v1/databases/alias/tasks/{'0' * 8}-0000-4000-8000-{'0' * 12}/cancel")
    assert missing.status_code == 404


async def test_hosts_count_their_instances(api: httpx.AsyncClient, server: ServerProcess) -> None:
    """`GET /v1/hosts` and `controlplane host list` count the instances placed on each host
    (they once showed 0 whatever ran)."""
    await create_and_wait(api, database_body("counted", nodes=2))
    hosts = (await api.get("/v1/hosts")).json()["hosts"]
    assert [(h["id"], h["instances"]) for h in hosts] == [("local", 2)]
    env = {**server.env(), "CONTROLPLANE_URL": server.url, "CONTROLPLANE_TOKEN": server.token}
    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "controlplane", "host", "list", "--output", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert [(h["id"], h["instances"]) for h in json.loads(listed.stdout)] == [("local", 2)]
