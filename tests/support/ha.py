"""Nodes with replicas in tests: a server with three local hosts, and waits for a node's
Patroni cluster to stream and to hold the mesh's slots on every member."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.support.api import database_body, fresh_view, wait_task
from tests.support.eventually import eventually
from tests.support.server import ServerProcess, serving

PATRONI = (
    {"CONTROLPLANE_PATRONI_BIN": os.environ["TEST_PATRONI_BIN"]}
    if os.environ.get("TEST_PATRONI_BIN")
    else {}
)


def serving_hosts(scratch_dir: Path, store_url: str) -> Iterator[ServerProcess]:
    """A server with local hosts h1, h2 and h3; the instances' logs are printed at the end
    (pytest shows them when the test failed)."""
    env = {"CONTROLPLANE_LOCAL_HOSTS": "h1,h2,h3", **PATRONI}
    with serving(scratch_dir / "cp", database_url=store_url, env=env) as proc:
        try:
            yield proc
        finally:
            print_logs(proc)


def print_logs(proc: ServerProcess) -> None:
    """The instances' errors and Patroni's own lines."""
    for log in sorted(proc.data_dir.glob("hosts/*/*/postgres.log")):
        lines = [
            line
            for line in log.read_text().splitlines()
            if not line.startswith(("\t", " ")) and " STATEMENT: " not in line
        ]
        print(f"---- {log.parent.name}: postgres ----\n" + "\n".join(lines[-60:]))
    for log in sorted(proc.data_dir.glob("hosts/*/*/patroni.log")):
        lines = log.read_text().splitlines()
        ours = [line for line in lines if " INFO: " in line and "no action" not in line]
        print(f"---- {log.parent.name}: patroni ----\n" + "\n".join(ours[-60:]))
        # Patroni's Postgres writes its own log lines to the same file.
        theirs = [line for line in lines if any(w in line for w in ("ERROR", "FATAL", "PANIC"))]
        print(f"---- {log.parent.name}: its postgres errors ----\n" + "\n".join(theirs[-30:]))


def replica_body(database_id: str, **fields: Any) -> dict[str, Any]:
    """A create body of two nodes: n1 on h1 with a replica on h2, n2 on h3 (more spec fields
    as keywords, as `database_body` takes them)."""
    body = database_body(database_id, nodes=2, **fields)
    body["spec"]["nodes"] = [
        {"name": "n1", "host_ids": ["h1", "h2"]},
        {"name": "n2", "host_ids": ["h3"]},
    ]
    return body


def by_id(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in view["instances"]}


async def streaming(api: httpx.AsyncClient, database_id: str) -> dict[str, Any]:
    """The view once every replica streams (the primary sees it, with its lag)."""

    async def probe() -> dict[str, Any] | None:
        view = await fresh_view(api, database_id)
        replicas = [i for i in view["instances"] if i["role"] == "replica"]
        if replicas and all(i["lag_bytes"] is not None for i in replicas):
            return view
        return None

    return await eventually(probe, timeout=120, what="replicas streaming")


async def connect_instance(instance: dict[str, Any]) -> asyncpg.Connection:
    """A connection to this very instance (a replica included), as the database owner. An
    instance not taking connections yet fails an assertion, which `eventually` retries: Patroni
    restarts a replica to load the logical slots it copied, and it refuses connections ("the
    database system is starting up") until it is consistent again."""
    info = instance["connection_info"]
    try:
        return await asyncpg.connect(
            host=info["host"],
            port=info["port"],
            database=info["database"],
            user="admin",
            password="s3cret-pass",
        )
    except (OSError, asyncpg.CannotConnectNowError) as exc:
        raise AssertionError(f"{instance['id']}: {exc}") from exc


async def query_instance(instance: dict[str, Any], sql: str) -> tuple[Any, ...]:
    """One row of `sql` on this very instance, as the database owner."""
    conn = await connect_instance(instance)
    try:
        return tuple(await conn.fetchrow(sql))
    finally:
        await conn.close()


async def logical_slots(instance: dict[str, Any]) -> set[str]:
    conn = await connect_instance(instance)
    try:
        rows = await conn.fetch(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'"
        )
    finally:
        await conn.close()
    return {str(r[0]) for r in rows}


async def slots_copied(view: dict[str, Any], node: str) -> None:
    """Until the node's replicas hold a copy of every logical slot of its primary: before
    that, a failover would leave the other nodes' subscriptions without their slot."""
    members = [i for i in view["instances"] if i["node_name"] == node]
    primary = next(i for i in members if i["role"] == "primary")

    async def copied() -> bool:
        wanted = await logical_slots(primary)
        assert wanted, "no logical slot on the primary"
        for replica in (i for i in members if i["role"] == "replica"):
            assert await logical_slots(replica) >= wanted, replica["id"]
        return True

    await eventually(copied, timeout=60, what=f"{node}'s slots on its replicas")


async def permanent_slots(server: ServerProcess, instance: dict[str, Any]) -> set[str]:
    """The names of the permanent slots of the Patroni cluster `instance` is a member of, as
    its DCS holds them (read through the member's REST API, which reads without a password)."""
    home = server.data_dir / "hosts" / instance["host_id"] / instance["id"]
    config = json.loads((home / "patroni.json").read_text())
    url = f"http://{config['restapi']['connect_address']}/config"
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    response.raise_for_status()
    return set(response.json().get("slots") or {})


async def run_action(
    api: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None, timeout: float = 300
) -> dict[str, Any]:
    """POST an action, expect 202, wait for its task and return it (whatever its status)."""
    response = await api.post(path, json=body) if body is not None else await api.post(path)
    assert response.status_code == 202, response.text
    task = response.json()["task"]
    return await wait_task(api, task["database_id"], task["task_id"], timeout=timeout)


async def switch_over(
    api: httpx.AsyncClient, database_id: str, node: str, candidate: str
) -> dict[str, Any]:
    """A switchover of `node` to `candidate`, its task awaited. Asked again while the
    candidate is not yet a streaming replica as Patroni sees it: Patroni restarts a member
    once after loading a slot copy or a rewind, and only a streaming replica may take over."""
    path = f"/v1/databases/{database_id}/nodes/{node}/switchover"

    async def accepted() -> dict[str, Any] | None:
        response = await api.post(path, json={"candidate_instance_id": candidate})
        if response.status_code == 409 and "a streaming replica can" in response.text:
            return None
        assert response.status_code == 202, response.text
        return dict(response.json()["task"])

    task = await eventually(accepted, timeout=90, interval=2, what=f"{candidate} to stream")
    return await wait_task(api, database_id, task["task_id"], timeout=300)


async def task_log(api: httpx.AsyncClient, task: dict[str, Any]) -> str:
    response = await api.get(
        f"/v1/databases/{task['database_id']}/tasks/{task['task_id']}/log", params={"limit": 500}
    )
    assert response.status_code == 200, response.text
    return "\n".join(e["message"] for e in response.json()["entries"])


async def failover_log(api: httpx.AsyncClient, database_id: str) -> str:
    """The log of the failover task the control plane queued when Patroni failed over by
    itself, once it completed."""

    async def finished() -> dict[str, Any] | None:
        found = (await api.get(f"/v1/databases/{database_id}/tasks")).json()["tasks"]
        failovers = [t for t in found if t["type"] == "failover"]
        if not failovers or failovers[0]["status"] not in ("completed", "failed"):
            return None
        return dict(failovers[0])

    task = await eventually(finished, timeout=120, what="the failover task")
    assert (task["status"], task["trigger"]) == ("completed", "system"), task
    return await task_log(api, task)


async def replica_holds(replica: dict[str, Any], expected: set[int]) -> None:
    """Until the replica, in recovery, holds exactly `expected` (the ids of `items`)."""

    async def replayed() -> bool:
        conn = await connect_instance(replica)
        try:
            ids = {int(r[0]) for r in await conn.fetch("SELECT id FROM items")}
            assert await conn.fetchval("SELECT pg_is_in_recovery()")
        finally:
            await conn.close()
        assert ids == expected, (len(ids), len(expected))
        return True

    await eventually(replayed, timeout=60, what=f"{replica['id']} to hold its primary's rows")
