"""Scheduled backups on a real store: exactly once per tick across servers, catch-up, skips.

Time is driven two ways. One test runs two real `serve` processes against a per-minute
schedule in real time. The others run the scheduler in-process against the same store
database with a ManualClock (the real server, when there is one, executes the tasks): the
code under test is the scheduler's own pass and SQL, without a test-only setting in the
server and without waiting for minutes. Their cron expressions (29 February) never come due
in real time, so the real server's own scheduler stays out of the way.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.fernet import Fernet

from controlplane.nodes.backups import effective_backup_config
from controlplane.scheduler.loop import CatchUp, Fired, Scheduler, next_run_at, tick_at_or_before
from controlplane.spec.models import DatabaseSpec
from controlplane.spec.secrets import split_secrets
from controlplane.store import databases, instances, schedules
from controlplane.store.migrate import migrate
from controlplane.store.pool import Pool, create_pool
from controlplane.store.tasks import uuid7
from controlplane.system.clock import ManualClock
from controlplane.workflows.backup_node import NODE_BACKUP
from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.data import posix, write_rows
from tests.support.eventually import eventually
from tests.support.server import ServerProcess

LEAP = "0 0 29 2 *"  # next due in real time on 2028-02-29: never during a test run


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Pool]:
    """A migrated store database, for schedulers run in-process."""
    pool = await create_pool(store_url, min_size=1, max_size=10)
    await migrate(pool)
    yield pool
    await pool.close()


def scheduler(pool: Pool, clock: ManualClock, catch_up: CatchUp = "latest") -> Scheduler:
    return Scheduler(
        pool,
        backup_steps=NODE_BACKUP.step_names,
        config_of=effective_backup_config,
        clock=clock,
        catch_up=catch_up,
    )


def schedule(schedule_id: str, cron: str, type: str = "full") -> dict[str, str]:
    return {"id": schedule_id, "type": type, "cron_expression": cron}


def config(*schedules: dict[str, str], repo: Path = Path("/nonexistent/repo")) -> dict[str, Any]:
    """A backup_config with these schedules (store-only tests never touch the repository)."""
    return {**posix(repo), "schedules": list(schedules)}


async def add_database(pool: Pool, database_id: str, spec: dict[str, Any]) -> None:
    """A database row (state available) with an instance row per node, as the API leaves it."""
    public, _ = split_secrets(msgspec.convert(spec, DatabaseSpec))
    await databases.insert_database(pool, database_id=database_id, spec=public, secrets=None)
    await databases.set_state(pool, database_id, "available")
    for i, node in enumerate(spec["nodes"]):
        await instances.insert_instance(
            pool,
            database_id=database_id,
            node_name=node["name"],
            host_id=f"h-{database_id}",
            port=5000 + i,
        )


async def scheduled_tasks(pool: Pool, database_id: str) -> list[dict[str, Any]]:
    """Scheduled tasks of a database with the tick they belong to, oldest tick first."""
    records = await pool.fetch(
        "SELECT t.task_id::text, t.node_name, t.status, t.trigger, t.input, t.error, t.result,"
        " k.schedule_id, k.tick_at FROM tasks t"
        " LEFT JOIN schedule_ticks k ON k.task_id = t.task_id"
        " WHERE t.database_id = $1 AND t.trigger = 'scheduled'"
        " ORDER BY k.tick_at, t.node_name, k.schedule_id",
        database_id,
    )
    return [dict(r.items()) for r in records]


async def finish_tasks(pool: Pool, database_id: str) -> None:
    """Free the nodes: no worker runs in store-only tests, so end the pending tasks."""
    await pool.execute(
        "UPDATE tasks SET status = 'canceled', completed_at = now()"
        " WHERE database_id = $1 AND status = 'pending'",
        database_id,
    )


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def passes_at(pool: Pool, moment: datetime, count: int) -> list[Fired]:
    """`count` fresh schedulers (servers just started) run one pass each at the same time."""
    runs = [scheduler(pool, ManualClock(moment)).run_pass() for _ in range(count)]
    return [fired for result in await asyncio.gather(*runs) for fired in result]


async def test_concurrent_schedulers_claim_each_tick_once(store: Pool) -> None:
    """Eight schedulers passing at one tick insert one task per (node, schedule, tick); of two
    schedules due together on a node the full backup runs and the incr is skipped naming it;
    a node-level backup_config replaces the database's schedules."""
    spec = database_body(
        "ha",
        nodes=2,
        backup_config=config(
            schedule("hourly-incr", "0 * * * *", "incr"), schedule("hourly", "0 * * * *")
        ),
    )["spec"]
    spec["nodes"][1]["backup_config"] = config(schedule("half", "*/30 * * * *", "diff"))
    await add_database(store, "ha", spec)
    await passes_at(store, utc("2030-05-06T09:59:30"), 1)
    fired = await passes_at(store, utc("2030-05-06T10:00:00.2"), 8)
    assert len(fired) == 3
    found = await scheduled_tasks(store, "ha")
    assert [(t["node_name"], t["schedule_id"], t["status"]) for t in found] == [
        ("n1", "hourly", "pending"),
        ("n1", "hourly-incr", "skipped"),
        ("n2", "half", "pending"),
    ]
    full, incr, half = found
    assert full["input"] == {  # a BackupInput (controlplane.tasks.inputs)
        "type": "full",
        "annotations": {"schedule": "hourly"},
        "repository_id": None,
        "options": {},
        "schedule_id": "hourly",
        "tick_at": "2030-05-06T10:00:00Z",
    }
    assert half["input"]["type"] == "diff"
    assert incr["result"] == {"blocking_task_id": full["task_id"]}
    assert full["task_id"] in incr["error"]
    assert "schedule hourly-incr tick 2030-05-06T10:00:00Z skipped" in incr["error"]
    assert {t["tick_at"] for t in found} == {utc("2030-05-06T10:00")}
    assert await passes_at(store, utc("2030-05-06T10:00:00.9"), 4) == []


async def test_restart_runs_only_the_latest_missed_tick_once(store: Pool) -> None:
    """After all servers were down across several ticks, restarted servers run the newest
    missed tick once and none of the older ones."""
    await add_database(
        store,
        "down",
        database_body("down", backup_config=config(schedule("minute", "* * * * *")))["spec"],
    )
    await passes_at(store, utc("2030-05-06T10:00:00.5"), 1)
    assert len(await passes_at(store, utc("2030-05-06T10:01:00.1"), 1)) == 1
    await finish_tasks(store, "down")
    fired = await passes_at(store, utc("2030-05-06T10:05:30"), 3)
    assert [(f.tick_at, f.status) for f in fired] == [(utc("2030-05-06T10:05"), "pending")]
    assert [t["tick_at"] for t in await scheduled_tasks(store, "down")] == [
        utc("2030-05-06T10:01"),
        utc("2030-05-06T10:05"),
    ]
    assert await passes_at(store, utc("2030-05-06T10:05:59"), 2) == []


async def test_pruned_task_history_does_not_rerun_its_tick(store: Pool) -> None:
    """Once retention prunes a tick's task (and with it the tick's row), the newest tick of a
    rare schedule is still not run a second time."""
    yearly = config(schedule("yearly", "0 0 1 1 *"))
    await add_database(store, "rare", database_body("rare", backup_config=yearly)["spec"])
    await passes_at(store, utc("2030-12-31T23:59:59"), 1)
    assert len(await passes_at(store, utc("2031-01-01T00:00:01"), 1)) == 1
    await store.execute("DELETE FROM tasks WHERE database_id = 'rare'")
    assert await store.fetchval("SELECT count(*) FROM schedule_ticks") == 0
    assert await passes_at(store, utc("2031-02-01T00:00:00"), 2) == []
    assert await scheduled_tasks(store, "rare") == []


async def test_claims_never_go_back_in_time(store: Pool) -> None:
    """A server acting on a stale view cannot claim a tick older than one already handled, nor
    one from before the schedule was first seen."""
    minutely = config(schedule("m", "* * * * *"))
    await add_database(store, "mono", database_body("mono", backup_config=minutely)["spec"])
    await passes_at(store, utc("2030-05-06T10:00:30"), 1)
    assert len(await passes_at(store, utc("2030-05-06T10:02:00.1"), 1)) == 1
    async with store.acquire() as conn, conn.transaction():
        for tick in ("2030-05-06T10:01", "2030-05-06T10:00"):  # behind; before first seen
            claim = await schedules.claim_ticks(conn, "mono", [("n1", "m", utc(tick), uuid7())])
            assert claim is not None
            assert claim.claimed == set()
    found = [t["tick_at"] for t in await scheduled_tasks(store, "mono")]
    assert found == [utc("2030-05-06T10:02")]
    assert await store.fetchval("SELECT count(*) FROM schedule_ticks") == 1


async def test_catch_up_none_records_nothing_for_missed_ticks(store: Pool) -> None:
    """With catch_up=none an hourly tick missed while down is neither run nor recorded; the
    next tick on time runs."""
    await add_database(
        store,
        "strict",
        database_body("strict", backup_config=config(schedule("hourly", "0 * * * *")))["spec"],
    )
    clock = ManualClock(utc("2030-05-06T10:00:30"))
    strict = scheduler(store, clock, catch_up="none")
    await strict.run_pass()
    clock.set(utc("2030-05-06T12:30"))
    assert await strict.run_pass() == []
    assert await scheduler(store, clock, catch_up="none").run_pass() == []
    assert await scheduled_tasks(store, "strict") == []
    clock.set(utc("2030-05-06T13:00:00.4"))
    fired = await strict.run_pass()
    assert [f.tick_at for f in fired] == [utc("2030-05-06T13:00")]


async def test_spec_changes_apply_on_the_next_pass(store: Pool) -> None:
    """A changed cron expression takes effect at once (its own earlier tick does not run), and
    a removed schedule stops firing."""
    body = database_body("moving", backup_config=config(schedule("s", "0 * * * *")))
    await add_database(store, "moving", body["spec"])
    clock = ManualClock(utc("2030-05-06T10:00:30"))
    running = scheduler(store, clock)
    await running.run_pass()
    assert running.next_wake == utc("2030-05-06T11:00")
    body["spec"]["backup_config"]["schedules"][0]["cron_expression"] = "15 * * * *"
    public, _ = split_secrets(msgspec.convert(body["spec"], DatabaseSpec))
    await databases.update_spec(store, "moving", spec=public, secrets=None)
    clock.set(utc("2030-05-06T10:20"))
    assert await running.run_pass() == []  # 10:15 predates the change
    assert running.next_wake == utc("2030-05-06T11:15")
    clock.set(utc("2030-05-06T11:15:00.1"))
    assert [f.tick_at for f in await running.run_pass()] == [utc("2030-05-06T11:15")]
    await finish_tasks(store, "moving")
    body["spec"]["backup_config"]["schedules"] = []
    public, _ = split_secrets(msgspec.convert(body["spec"], DatabaseSpec))
    await databases.update_spec(store, "moving", spec=public, secrets=None)
    clock.set(utc("2030-05-06T12:15:00.1"))
    assert await running.run_pass() == []
    assert running.next_wake is None
    assert await store.fetchval("SELECT count(*) FROM schedules") == 0


async def test_scheduled_backup_lands_in_catalog_and_busy_ticks_are_skipped(
    api: httpx.AsyncClient, store: Pool, scratch_dir: Path
) -> None:
    """A scheduled backup is taken by the server and listed in the catalog with its task id and
    schedule annotation; a tick during a running backup, or while the database is still being
    created, is recorded as a skipped task naming the blocking task."""
    body = database_body(
        "sched",
        backup_config=config(schedule("leap", LEAP), repo=scratch_dir / "repo"),
    )
    database = await create_and_wait(api, body)
    await write_rows(database, 1, 100)
    creating_body = database_body(
        "fresh", backup_config=config(schedule("leap", LEAP), repo=scratch_dir / "repo2")
    )
    creating = (await api.post("/v1/databases", json=creating_body)).json()["task"]
    clock = ManualClock(utc("2028-02-28T23:59:59"))  # just before the first leap-day tick
    running = scheduler(store, clock)
    assert await running.run_pass() == []
    clock.set(utc("2028-02-29T00:00:00.3"))
    fired = {f.key.database_id: f for f in await running.run_pass()}
    assert fired["sched"].status == "pending"
    assert fired["fresh"].status == "skipped"
    assert creating["task_id"] in (fired["fresh"].reason or "")
    assert "database fresh is creating" in (fired["fresh"].reason or "")
    task = await wait_task(api, "sched", fired["sched"].task_id)
    assert (task["status"], task["trigger"]) == ("completed", "scheduled"), task
    sets = (await api.get("/v1/databases/sched/nodes/n1/backups")).json()["backups"]
    assert [(s["task_id"], s["annotations"]["schedule"]) for s in sets] == [
        (task["task_id"], "leap")
    ]
    manual = (await api.post("/v1/databases/sched/nodes/n1/backups", json={})).json()["task"]
    clock.set(utc("2032-02-29T00:00:00.3"))
    skipped = next(f for f in await running.run_pass() if f.key.database_id == "sched")
    listed = (await api.get("/v1/databases/sched/tasks", params={"status": "skipped"})).json()
    assert [t["task_id"] for t in listed["tasks"]] == [skipped.task_id]
    shown = listed["tasks"][0]
    assert (shown["trigger"], shown["node_name"], shown["type"]) == (
        "scheduled",
        "n1",
        "node_backup",
    )
    assert shown["result"] == {"blocking_task_id": manual["task_id"]}
    assert f"node_backup task {manual['task_id']}" in shown["error"]
    assert (await wait_task(api, "sched", manual["task_id"]))["status"] == "completed"
    views = (await api.get("/v1/databases/sched/schedules")).json()["schedules"]
    assert [v["last_task"]["task_id"] for v in views] == [skipped.task_id]
    assert views[0]["last_task"]["status"] == "skipped"
    await wait_task(api, "fresh", creating["task_id"])


async def test_schedules_api_follows_updates(
    api: httpx.AsyncClient, server: ServerProcess, scratch_dir: Path
) -> None:
    """GET …/schedules lists each node's effective schedules with next_run_at; an update's new
    cron moves next_run_at at once, a removed schedule disappears; unknown databases are 404
    and a read token suffices."""
    body = database_body(
        "plan",
        backup_config=config(schedule("ignored", "0 1 29 2 *"), repo=scratch_dir / "repo"),
    )
    body["spec"]["nodes"][0]["backup_config"] = config(
        schedule("leap", "0 3 29 2 *", "diff"), repo=scratch_dir / "node-repo"
    )
    await create_and_wait(api, body)
    views = (await api.get("/v1/databases/plan/schedules")).json()["schedules"]
    assert views == [
        {
            "schedule_id": "leap",
            "node_name": "n1",
            "type": "diff",
            "cron_expression": "0 3 29 2 *",
            "next_run_at": "2028-02-29T03:00:00Z",
            "last_task": None,
        }
    ]
    body["spec"]["nodes"][0]["backup_config"]["schedules"][0]["cron_expression"] = "30 4 29 2 *"
    response = await api.post("/v1/databases/plan", json=body)
    assert response.status_code == 202, response.text
    views = (await api.get("/v1/databases/plan/schedules")).json()["schedules"]
    assert [v["next_run_at"] for v in views] == ["2028-02-29T04:30:00Z"]
    await wait_task(api, "plan", response.json()["task"]["task_id"])
    body["spec"]["nodes"][0]["backup_config"]["schedules"] = []
    response = await api.post("/v1/databases/plan", json=body)
    assert (await api.get("/v1/databases/plan/schedules")).json() == {"schedules": []}
    await wait_task(api, "plan", response.json()["task"]["task_id"])
    missing = await api.get("/v1/databases/nope/schedules")
    assert (missing.status_code, missing.json()["name"]) == (404, "not_found")
    reader = await asyncio.to_thread(server.create_token, "reader", "read")
    listed = await api.get(
        "/v1/databases/plan/schedules", headers={"Authorization": f"Bearer {reader}"}
    )
    assert listed.status_code == 200


def _peer(scratch_dir: Path, store_url: str, key: str, name: str, **env: str) -> ServerProcess:
    settings = {"CONTROLPLANE_SECRET_KEY": key, **env}
    return ServerProcess(scratch_dir / name, database_url=store_url, env=settings)


def _start_pair(first: ServerProcess, second: ServerProcess) -> None:
    first.start()
    second.data_dir.mkdir(parents=True)  # the admin token is in the store: bring its file
    shutil.copy(first.data_dir / "admin-token", second.data_dir / "admin-token")
    second.start()


async def _ticks(store: Pool) -> list[dict[str, Any]]:
    return [t for t in await scheduled_tasks(store, "ha") if t["schedule_id"] == "minute"]


async def _completed_tick(store: Pool) -> bool:
    return any(t["status"] == "completed" for t in await _ticks(store))


async def _down_across_a_tick(*servers: ServerProcess) -> tuple[datetime, datetime]:
    """Stop every server, wait for a tick to pass, start the first one again; return when
    they stopped and when the restart began."""
    for server in servers:
        server.terminate()
    stopped = datetime.now(UTC)
    missed = next_run_at("* * * * *", stopped) + timedelta(seconds=1)
    await eventually(lambda: _passed(missed), timeout=90, what="a tick while all are down")
    restarting = datetime.now(UTC)
    servers[0].start()
    return stopped, restarting


async def _passed(moment: datetime) -> bool:
    return datetime.now(UTC) >= moment


async def _first_tick_after(store: Pool, moment: datetime) -> dict[str, Any] | None:
    return next((t for t in await _ticks(store) if t["tick_at"] > moment), None)


@pytest.mark.slow
async def test_two_servers_fire_each_minute_once_and_catch_up_after_restart(
    store: Pool, store_url: str, scratch_dir: Path
) -> None:
    """Real time: two servers on one store insert exactly one task per minute tick; with every
    server down across a tick, the restarted server runs the newest missed tick once; the
    scheduled sets carry their task ids and schedule in the catalog."""
    key = Fernet.generate_key().decode()
    first = _peer(scratch_dir, store_url, key, "a")
    # The local orchestrator keeps instances under one data dir, so the peer only schedules
    # (and serves the API): its worker and monitor would not find the instances.
    quiet = {"CONTROLPLANE_WORKER_CONCURRENCY": "0", "CONTROLPLANE_MONITOR_INTERVAL": "3600"}
    second = _peer(scratch_dir, store_url, key, "b", **quiet)
    try:
        _start_pair(first, second)
        async with first.client(timeout=30) as api:
            minutely = config(schedule("minute", "* * * * *"), repo=scratch_dir / "repo")
            body = database_body("ha", backup_config=minutely)
            await write_rows(await create_and_wait(api, body), 1, 100)
            await eventually(
                lambda: _completed_tick(store), timeout=150, interval=0.5, what="a backup"
            )
            stopped, restarting = await _down_across_a_tick(first, second)
            restarted = datetime.now(UTC)
            caught = await eventually(
                lambda: _first_tick_after(store, stopped), timeout=30, what="the missed tick"
            )
            newest = {tick_at_or_before("* * * * *", m) for m in (restarting, restarted)}
            assert caught["tick_at"] in newest
            task = await wait_task(api, "ha", caught["task_id"])
            assert task["status"] == "completed", task
            ticks = [t["tick_at"] for t in await _ticks(store)]
            assert len(ticks) == len(set(ticks))
            sets = (await api.get("/v1/databases/ha/nodes/n1/backups")).json()["backups"]
            assert task["task_id"] in {s["task_id"] for s in sets}
            assert all(s["annotations"]["schedule"] == "minute" for s in sets)
    finally:
        for peer in (second, first):
            peer.terminate()
            print(f"---- {peer.data_dir.name} log (tail) ----\n" + peer.log_text()[-4000:])
        first.stop_instances()
