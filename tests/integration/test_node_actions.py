"""Actions on a node with replicas, as tasks: switchover (now and scheduled), and an
instance's restart, stop and start, each with writers on every node and no committed row
lost; and every refusal made before anything is touched."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import create_and_wait, database_body, fresh_view, wait_task
from tests.support.data import TABLE, on_every, update_and_wait, write
from tests.support.eventually import eventually
from tests.support.ha import (
    by_id,
    logical_slots,
    permanent_slots,
    query_instance,
    replica_body,
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


async def _create(
    api: httpx.AsyncClient, database_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """n1 on h1 with a replica on h2, n2 on h3; the database and its view once streaming."""
    body = replica_body(database_id)
    database = await create_and_wait(api, body)
    view = await streaming(api, database_id)
    await on_every(database, TABLE)
    # The mesh flows both ways before anything else: a row from each node reaches the other.
    await write(database, "n1", [1])
    await write(database, "n2", [2])

    async def both() -> bool:
        for node in ("n1", "n2"):
            held = await ids_on(database, node)
            assert {1, 2} <= held, (node, held, (await fresh_view(api, database_id))["instances"])
        return True

    await eventually(both, timeout=60, what="a row from each node on the other")
    await slots_copied(view, "n1")
    return database, view


async def _primary_is(api: httpx.AsyncClient, database_id: str, instance: str) -> dict[str, Any]:
    """The view once it shows `instance` as its node's primary (a stopped instance is never
    observed, so this does not wait for every instance to be seen again)."""

    async def shown() -> dict[str, Any] | None:
        view: dict[str, Any] = (await api.get(f"/v1/databases/{database_id}")).json()
        return view if by_id(view)[instance]["role"] == "primary" else None

    return await eventually(shown, timeout=60, what=f"{instance} shown as the primary")


async def test_switchover_loses_no_committed_row(ha_server: ServerProcess) -> None:
    """Refusals first (each before anything is touched); then, with writers on both nodes, a
    switchover to the replica and a scheduled one back: every committed row is on both nodes
    after each, with equal digests, and the API shows the roles swapped and back."""
    async with ha_server.client(timeout=60) as api:
        database, view = await _create(api, "sw")
        base = "/v1/databases/sw/nodes"

        refusals: list[tuple[str, dict[str, Any] | None, int, str]] = [
            (f"{base}/n2/switchover", {}, 409, "no replicas"),
            (f"{base}/n3/switchover", {}, 404, "node n3"),
            (f"{base}/n1/switchover", {"candidate_instance_id": "sw-n2"}, 422, "not an instance"),
            (f"{base}/n1/switchover", {"candidate_instance_id": "sw-n1"}, 422, "primary already"),
            (f"{base}/n1/switchover", {"scheduled_at": "2026-12-01T22:00:00"}, 422, "offset"),
            (f"{base}/n1/switchover", {"when": "now"}, 422, "unknown field"),
            (f"{base}/n1/failover", {}, 409, "skip_validation"),
            ("/v1/databases/sw/instances/sw-n9/restart", {}, 404, "sw-n9"),
        ]
        for path, body, status, words in refusals:
            answer = await api.post(path, json=body)
            assert answer.status_code == status, (path, answer.text)
            assert words in answer.text, (path, answer.text)
        tasks = (await api.get("/v1/databases/sw/tasks")).json()["tasks"]
        assert [t["type"] for t in tasks] == ["create"]

        async with writers(database) as load:
            await load.progress(30)
            task = await run_action(
                api, f"{base}/n1/switchover", {"candidate_instance_id": "sw-n1-h2"}
            )
            assert task["status"] == "completed", (task, await task_log(api, task))
            assert task["node_name"] == "n1" and task["type"] == "switchover"
            log = await task_log(api, task)
            assert "switching over from sw-n1 to sw-n1-h2" in log, log
            view = await _primary_is(api, "sw", "sw-n1-h2")
            await load.progress(30)  # both nodes write again, n1 through its new primary
        states = await settle(database, timeout=120)
        await assert_holds(database, load.committed())
        assert states["n1"].count >= len(load.committed())
        view = await streaming(api, "sw")
        assert by_id(view)["sw-n1"]["role"] == "replica"
        await slots_copied(view, "n1")

        # Back, at a set time a few seconds ahead, to whichever replica is best (the only one).
        at = datetime.now(UTC) + timedelta(seconds=6)
        async with writers(database) as load:
            await load.progress(20)
            task = await run_action(api, f"{base}/n1/switchover", {"scheduled_at": at.isoformat()})
            assert task["status"] == "completed", (task, await task_log(api, task))
            assert datetime.fromisoformat(task["completed_at"]) >= at
            await _primary_is(api, "sw", "sw-n1")
            await load.progress(20)
        await settle(database, timeout=120)
        await assert_holds(database, load.committed())


async def test_instance_restart_stop_and_start(ha_server: ServerProcess) -> None:
    """With writers on both nodes: n2's primary (no replicas) restarts and the mesh reconnects
    at once; n1's primary is stopped (it hands over to its replica first, so n1 keeps taking
    writes) and started again (it rejoins as a replica); no committed row is lost."""
    async with ha_server.client(timeout=60) as api:
        database, _ = await _create(api, "ia")
        base = "/v1/databases/ia/instances"
        async with writers(database) as load:
            await load.progress(20)
            task = await run_action(api, f"{base}/ia-n2/restart", {})
            assert task["status"] == "completed", (task, await task_log(api, task))
            await load.progress(20)
            task = await run_action(api, f"{base}/ia-n1/stop-instance")
            assert task["status"] == "completed", (task, await task_log(api, task))
            assert "switching over to ia-n1-h2 first" in await task_log(api, task)
            view = await _primary_is(api, "ia", "ia-n1-h2")
            assert by_id(view)["ia-n1"]["state"] == "stopped"
            await load.progress(20)  # n1 takes writes on its new primary
        await settle(database, timeout=120)
        await assert_holds(database, load.committed())

        task = await run_action(api, f"{base}/ia-n1/start-instance")
        assert task["status"] == "completed", (task, await task_log(api, task))
        view = await streaming(api, "ia")
        assert by_id(view)["ia-n1"]["role"] == "replica"
        assert by_id(view)["ia-n1"]["state"] == "available"
        types = [t["type"] for t in (await api.get("/v1/databases/ia/tasks")).json()["tasks"]]
        assert types == ["start_instance", "stop_instance", "restart_instance", "create"], types


async def test_update_adds_and_removes_a_replica(ha_server: ServerProcess) -> None:
    """With writers on both nodes, an update that adds h3 to n1's host_ids makes n1 a Patroni
    cluster with a streaming replica there (its primary adopted in place), and one that takes
    h3 away removes the replica and its directory; no committed row is lost on the way."""
    async with ha_server.client(timeout=60) as api:
        body = database_body("gr", nodes=2)
        body["spec"]["nodes"] = [
            {"name": "n1", "host_ids": ["h1"]},
            {"name": "n2", "host_ids": ["h2"]},
        ]
        database = await create_and_wait(api, body)
        await on_every(database, TABLE)
        async with writers(database) as load:
            await load.progress(20)
            body["spec"]["nodes"][0]["host_ids"] = ["h1", "h3"]
            view = await update_and_wait(api, body)
            assert {i["id"] for i in view["instances"]} == {"gr-n1", "gr-n1-h3", "gr-n2"}
            view = await streaming(api, "gr")
            assert by_id(view)["gr-n1-h3"]["role"] == "replica"
            await load.progress(20)
        await settle(database, timeout=120)
        await assert_holds(database, load.committed())

        home = ha_server.data_dir / "hosts" / "h3" / "gr-n1-h3"
        assert home.is_dir()
        async with writers(database) as load:
            await load.progress(20)
            body["spec"]["nodes"][0]["host_ids"] = ["h1"]
            view = await update_and_wait(api, body)
            assert {i["id"] for i in view["instances"]} == {"gr-n1", "gr-n2"}
            await load.progress(20)
        await settle(database, timeout=120)
        await assert_holds(database, load.committed())
        assert not home.exists()


async def test_a_node_added_and_removed_beside_a_node_with_replicas(
    ha_server: ServerProcess,
) -> None:
    """With writers on every node, an update that adds n3 makes its slot on n1 a permanent slot
    of n1's cluster, copied to the replica (a failover must not leave n3 without it); one that
    removes n3 takes that slot out of the cluster for good: Patroni makes a permanent slot
    again when it is missing, and it would hold n1's WAL forever."""
    async with ha_server.client(timeout=60) as api:
        database, view = await _create(api, "an")
        body = replica_body("an")
        body["spec"]["nodes"].append({"name": "n3", "host_ids": ["h3"]})
        async with writers(database) as load:
            await load.progress(20)
            database = await update_and_wait(api, body)
            await load.progress(20)
        await settle(database, timeout=120)
        await assert_holds(database, load.committed())
        view = await streaming(api, "an")
        await slots_copied(view, "n1")
        primary = by_id(view)["an-n1"]
        to_n3 = {s for s in await logical_slots(primary) if s.endswith("_to_n3")}
        assert len(to_n3) == 1, await logical_slots(primary)
        assert to_n3 <= await permanent_slots(ha_server, primary)

        body["spec"]["nodes"].pop()
        async with writers(database, ["n1", "n2"]) as load:
            await load.progress(20)
            database = await update_and_wait(api, body)
            await load.progress(20)
        await settle(database, timeout=120)
        await assert_holds(database, load.committed())
        kept = await permanent_slots(ha_server, primary)
        assert kept and not kept & to_n3, kept
        members = [i for i in view["instances"] if i["node_name"] == "n1"]

        async def gone() -> bool:
            for member in members:
                held = await logical_slots(member)
                assert not held & to_n3, (member["id"], held)
            return True

        await eventually(gone, timeout=60, what="n3's slot gone from n1's members")


async def test_settings_that_need_a_restart_roll_through_the_cluster(
    ha_server: ServerProcess,
) -> None:
    """With writers on both nodes, an update of n1's settings (one a reload applies, one that
    needs a restart) goes through Patroni: the replica restarts first, then the primary hands
    over and restarts as a replica; every member runs the new values and no committed row is
    lost."""
    async with ha_server.client(timeout=60) as api:
        database, _ = await _create(api, "rs")
        body = replica_body("rs", postgresql_conf={"work_mem": "12MB", "shared_buffers": "48MB"})
        async with writers(database) as load:
            await load.progress(20)
            response = await api.post("/v1/databases/rs", json=body)
            assert response.status_code == 202, response.text
            task = await wait_task(api, "rs", response.json()["task"]["task_id"], timeout=400)
            log = await task_log(api, task)
            assert task["status"] == "completed", (task, log)
            assert "restarted rs-n1-h2 for its new settings" in log, log
            assert "switching over to rs-n1-h2 to restart rs-n1" in log, log
            await load.progress(20)
        await settle(database, timeout=120)
        await assert_holds(database, load.committed())
        view = await streaming(api, "rs")
        for instance in view["instances"]:
            shown = await query_instance(
                instance, "SELECT current_setting('shared_buffers'), current_setting('work_mem')"
            )
            assert shown == ("48MB", "12MB"), (instance["id"], shown)
