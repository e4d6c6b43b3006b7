"""Restore drills through the HTTP API with real pgBackRest and Postgres: a set restored into a
scratch instance, checked and counted, recorded next to the set; a damaged set fails naming
the file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.nodes.backups import effective_backup_config
from controlplane.scheduler.loop import Scheduler
from controlplane.store.migrate import migrate
from controlplane.store.pool import Pool, create_pool
from controlplane.system.clock import ManualClock
from controlplane.workflows.backup_node import NODE_BACKUP
from controlplane.workflows.drill_backup import DRILL
from tests.integration.test_scheduler import (
    LEAP,
    add_database,
    config,
    schedule,
    utc,
)
from tests.support.api import connect, create_and_wait, database_body, wait_task
from tests.support.data import backup, posix, query, write_rows
from tests.support.metrics import parse
from tests.support.server import ServerProcess

DRILL_METRIC = "controlplane_drill_last_success_timestamp_seconds"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Pool]:
    """A migrated store database, for a scheduler run in-process."""
    pool = await create_pool(store_url, min_size=1, max_size=4)
    await migrate(pool)
    yield pool
    await pool.close()


async def drill(api: httpx.AsyncClient, database_id: str, **body: Any) -> dict[str, Any]:
    """A drill of node n1 (`set` as a keyword), waited for; the finished task."""
    response = await api.post(
        f"/v1/databases/{database_id}/nodes/n1/backups/verify", json={"drill": True, **body}
    )
    assert response.status_code == 202, response.text
    assert response.json()["task"]["type"] == "drill"
    return await wait_task(api, database_id, response.json()["task"]["task_id"], timeout=300)


async def test_drill_restores_a_set_counts_its_rows_and_names_a_damaged_file(
    api: httpx.AsyncClient, server: ServerProcess, scratch_dir: Path
) -> None:
    """A drill of a real set completes with the table's row count, shows in the catalog and in
    /metrics, and leaves no scratch behind; a set with one byte changed in a repository file
    fails, and its error names that file."""
    repo = scratch_dir / "repo"
    database = await create_and_wait(api, database_body("dr", backup_config=posix(repo)))
    await write_rows(database, 1, 1000)
    conn = await connect(database, "n1")
    try:
        await conn.execute("CREATE SCHEMA sales; CREATE TABLE sales.orders (id int)")
        await conn.execute("INSERT INTO sales.orders SELECT generate_series(1, 37)")
    finally:
        await conn.close()
    first = (await backup(api, "dr"))["result"]["label"]

    task = await drill(api, "dr")
    assert task["status"] == "completed", task["error"]
    result = task["result"]
    assert result["set_label"] == first
    assert result["amcheck_ok"] is True
    assert result["row_counts"] == {"public.items": 1000, "sales.orders": 37}
    assert [s["name"] for s in task["steps"]] == [
        "write_config",
        "choose_set",
        "restore_scratch",
        "check_scratch",
        "remove_scratch",
    ]
    assert not (server.data_dir / "instances" / "dr-n1.drill").exists()
    # The node itself kept running and archiving throughout.
    assert await query(database, "n1", "SELECT count(*) FROM items") == 1000

    sets = (await api.get("/v1/databases/dr/nodes/n1/backups")).json()["backups"]
    drilled = sets[0]["last_drill"]
    assert drilled["status"] == "completed"
    assert drilled["task_id"] == task["task_id"]
    assert drilled["row_counts"] == {"public.items": 1000, "sales.orders": 37}
    assert drilled["last_success_at"] == drilled["finished_at"]

    _, samples = parse((await api.get("/metrics")).text)
    stamp = samples[(DRILL_METRIC, (("database", "dr"), ("node", "n1")))]
    assert abs(stamp - _epoch(drilled["finished_at"])) < 1

    await write_rows(database, 1001, 500)
    second = (await backup(api, "dr"))["result"]["label"]
    relation = await query(database, "n1", "SELECT pg_relation_filepath('items')")
    damaged = _flip_a_byte(repo, second, relation)
    task = await drill(api, "dr", set=second)
    assert task["status"] == "failed"
    assert f"{relation}" in task["error"], task["error"]
    assert f"backup set {second} is damaged: file pg_data/{relation}" in task["error"], task[
        "error"
    ]
    assert damaged.exists()
    assert not (server.data_dir / "instances" / "dr-n1.drill").exists()
    sets = {
        s["label"]: s
        for s in (await api.get("/v1/databases/dr/nodes/n1/backups")).json()["backups"]
    }
    assert sets[second]["last_drill"]["status"] == "failed"
    assert relation in sets[second]["last_drill"]["error"]
    assert sets[first]["last_drill"]["status"] == "completed"
    # The node's last passing drill is still the first one.
    _, samples = parse((await api.get("/metrics")).text)
    assert samples[(DRILL_METRIC, (("database", "dr"), ("node", "n1")))] == stamp


async def test_drill_requests_are_checked(api: httpx.AsyncClient, scratch_dir: Path) -> None:
    """A set the repository does not hold is a 404, a malformed one or a set without a drill a
    422 naming the field; an empty body still starts a verify."""
    await create_and_wait(api, database_body("drq", backup_config=posix(scratch_dir / "repo")))
    await backup(api, "drq")
    path = "/v1/databases/drq/nodes/n1/backups/verify"
    missing = await api.post(path, json={"drill": True, "set": "20200101-000000F"})
    assert missing.status_code == 404, missing.text
    assert "20200101-000000F" in missing.json()["message"]
    for body, field in (
        ({"drill": True, "set": "latest; rm"}, "set"),
        ({"set": "20200101-000000F"}, "set"),
        ({"drill": "yes"}, "drill"),
        ({"drill": True, "sets": []}, "sets"),
    ):
        response = await api.post(path, json=body)
        assert response.status_code == 422, response.text
        assert [e["path"] for e in response.json()["details"]["errors"]] == [field], body
    response = await api.post(path)
    assert response.status_code == 202, response.text
    assert response.json()["task"]["type"] == "verify"
    task = await wait_task(api, "drq", response.json()["task"]["task_id"])
    assert task["status"] == "completed", task["error"]


def _flip_a_byte(repo: Path, label: str, relation: str) -> Path:
    """Change one byte in the middle of the set's copy of `relation` (a data file path
    relative to the data directory), in the bundle holding it; the repository file changed."""
    (set_dir,) = [p for p in repo.rglob(label) if p.parent.name != "latest"]
    manifest = (set_dir / "backup.manifest").read_text()
    line = next(x for x in manifest.splitlines() if x.startswith(f"pg_data/{relation}="))
    entry = json.loads(line.split("=", 1)[1])
    if "bni" in entry:
        path = set_dir / "bundle" / str(entry["bni"])
        start, size = int(entry.get("bno", 0)), int(entry.get("repo-size", entry["size"]))
    else:
        (path,) = set_dir.glob(f"pg_data/{relation}*")
        start, size = 0, path.stat().st_size
    data = bytearray(path.read_bytes())
    data[start + size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_drill_schedules_start_drill_tasks(store: Pool) -> None:
    """A drill schedule's tick inserts a drill task with the drill's steps; on a node where a
    backup is due at the same tick the backup runs and the drill is recorded skipped."""
    spec = database_body(
        "drs",
        nodes=2,
        backup_config=config(schedule("weekly-drill", LEAP, "drill")),
    )["spec"]
    spec["nodes"][0]["backup_config"] = config(
        schedule("weekly-drill", LEAP, "drill"), schedule("nightly", LEAP)
    )
    await add_database(store, "drs", spec)
    tick = utc("2028-02-29T00:00:00")
    runner = Scheduler(
        store,
        backup_steps=NODE_BACKUP.step_names,
        drill_steps=DRILL.step_names,
        config_of=effective_backup_config,
        clock=ManualClock(tick - timedelta(minutes=1)),
    )
    await runner.run_pass()
    runner._clock = ManualClock(tick)
    fired = await runner.run_pass()
    assert sorted((f.key.node_name, f.key.schedule_id, f.status) for f in fired) == [
        ("n1", "nightly", "pending"),
        ("n1", "weekly-drill", "skipped"),
        ("n2", "weekly-drill", "pending"),
    ]
    rows = await store.fetch(
        "SELECT t.node_name, t.type, t.status, t.input,"
        " array(SELECT name FROM task_steps s WHERE s.task_id = t.task_id ORDER BY position)"
        " AS steps FROM tasks t WHERE t.database_id = 'drs' ORDER BY node_name, type"
    )
    found = {(r["node_name"], r["type"]): r for r in rows}
    assert found[("n1", "node_backup")]["status"] == "pending"
    assert found[("n1", "drill")]["status"] == "skipped"
    drill_task = found[("n2", "drill")]
    assert drill_task["status"] == "pending"
    assert list(drill_task["steps"]) == DRILL.step_names
    assert drill_task["input"] == {  # a DrillInput: the newest set when it runs
        "set_label": None,
        "schedule_id": "weekly-drill",
        "tick_at": "2028-02-29T00:00:00Z",
    }
    assert list(found[("n1", "node_backup")]["steps"]) == NODE_BACKUP.step_names
