"""Multi-node databases replicate both ways (pglogical mesh), and updates converge."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from tests.support.api import connect, create_and_wait, database_body, full_log, wait_task
from tests.support.eventually import eventually
from tests.support.server import ServerProcess

TABLE = "CREATE TABLE items (id int PRIMARY KEY, node text, v text)"
DIGEST = (
    "SELECT count(*) || ':' || coalesce(md5(string_agg(id || node || v, ',' ORDER BY id)), '')"
    " FROM items"
)


async def on_every(database: dict[str, Any], sql: str, *args: Any) -> list[Any]:
    """Run `sql` on every node as the application user; return each result."""
    results = []
    for instance in database["instances"]:
        conn = await connect(database, instance["node_name"])
        try:
            results.append(await conn.fetchval(sql, *args))
        finally:
            await conn.close()
    return results


async def write(database: dict[str, Any], node: str, ids: range) -> None:
    conn = await connect(database, node)
    try:
        await conn.executemany(
            "INSERT INTO items VALUES ($1::int, $2, md5($1::int::text))", [(i, node) for i in ids]
        )
    finally:
        await conn.close()


async def converged(database: dict[str, Any], rows: int, timeout: float = 60) -> str:
    """Wait until every node holds `rows` rows with the same digest; return it."""

    async def probe() -> str | None:
        digests = set(await on_every(database, DIGEST))
        if len(digests) == 1:
            (digest,) = digests
            if digest.startswith(f"{rows}:"):
                return str(digest)
        return None

    return await eventually(probe, timeout=timeout, what=f"{rows} identical rows on every node")


def superuser_socket(server: ServerProcess) -> str:
    """The private socket directory of the server's instances (superuser access for checks)."""
    return str(server.run_dir / "i")


async def slots_on(server: ServerProcess, instance: dict[str, Any]) -> list[str]:
    conn = await asyncpg.connect(
        host=superuser_socket(server), port=instance["port"], user="postgres", database="app"
    )
    try:
        return [
            r["slot_name"] for r in await conn.fetch("SELECT slot_name FROM pg_replication_slots")
        ]
    finally:
        await conn.close()


async def test_three_nodes_replicate_every_way(api: httpx.AsyncClient) -> None:
    """Rows written on each of three nodes reach the other two, and concurrent writes on all
    of them end with identical contents (md5) everywhere; subscriptions show as replicating."""
    database = await create_and_wait(api, database_body("mesh", nodes=3))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    await write(database, "n2", range(101, 201))
    await write(database, "n3", range(201, 301))
    await converged(database, 300)
    await asyncio.gather(
        *(
            write(database, node, range(base, base + 500))
            for node, base in (("n1", 1000), ("n2", 2000), ("n3", 3000))
        )
    )
    digest = await converged(database, 1800)
    assert digest.startswith("1800:")
    view = (await api.get("/v1/databases/mesh")).json()
    for instance in view["instances"]:
        subs = instance["subscriptions"]
        providers = sorted(s["provider_node"] for s in subs)
        others = sorted({"n1", "n2", "n3"} - {instance["node_name"]})
        assert providers == others
        assert {s["status"] for s in subs} == {"replicating"}


async def test_add_node_from_source_and_remove_node(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """n4 added with source_node n1 receives the schema and every row, then replicates both
    ways; removing n2 leaves the others replicating with no slot or subscription for n2."""
    body = database_body("grow", nodes=3)
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    for node, base in (("n1", 1), ("n2", 1001), ("n3", 2001)):
        await write(database, node, range(base, base + 200))
    await converged(database, 600)
    body["spec"]["nodes"].append({"name": "n4", "source_node": "n1"})
    response = await api.post("/v1/databases/grow", json=body)
    task = await wait_task(api, "grow", response.json()["task"]["task_id"])
    assert task["status"] == "completed", task["error"]
    database = (await api.get("/v1/databases/grow")).json()
    assert await converged(database, 600)
    await write(database, "n4", range(5001, 5101))
    await write(database, "n2", range(6001, 6101))
    await converged(database, 800)
    body["spec"]["nodes"] = [n for n in body["spec"]["nodes"] if n["name"] != "n2"]
    response = await api.post("/v1/databases/grow", json=body)
    task = await wait_task(api, "grow", response.json()["task"]["task_id"])
    assert task["status"] == "completed", task["error"]
    database = (await api.get("/v1/databases/grow")).json()
    assert sorted(i["node_name"] for i in database["instances"]) == ["n1", "n3", "n4"]
    await write(database, "n3", range(7001, 7101))
    await converged(database, 900)
    for instance in database["instances"]:
        assert not [s for s in await slots_on(server, instance) if "n2" in s]
        assert not [s for s in instance["subscriptions"] if "n2" in s["name"]]


async def test_add_node_resumes_its_copy_after_a_crash_inside_the_join(
    server: ServerProcess,
) -> None:
    """A server killed inside the mesh step, after the new node got its pglogical identity and
    before its copy began: the resumed update still copies every row to it (it is never linked
    empty), and it replicates both ways."""
    async with server.client(timeout=30) as api:
        body = database_body("joincrash", nodes=2)
        database = await create_and_wait(api, body)
        await on_every(database, TABLE)
        await write(database, "n1", range(1, 201))
        await write(database, "n2", range(1001, 1201))
        expected = await converged(database, 400)
    server.terminate()
    server.extra_env = {
        "CONTROLPLANE_CRASH_AFTER_STEP": "update:create_replication_mesh:nodes_ready"
    }
    server.start()
    async with server.client(timeout=30) as api:
        body["spec"]["nodes"].append({"name": "n3", "source_node": "n1"})
        response = await api.post("/v1/databases/joincrash", json=body)
        assert response.status_code == 202, response.text
        task_id = response.json()["task"]["task_id"]
    assert server.proc is not None
    assert await asyncio.to_thread(server.proc.wait, 120) != 0  # it SIGKILLed itself
    server.extra_env = {}
    server.start()
    async with server.client(timeout=30) as api:
        task = await wait_task(api, "joincrash", task_id, timeout=180)
        assert task["status"] == "completed", task["error"]
        database = (await api.get("/v1/databases/joincrash")).json()
        assert await converged(database, 400) == expected
        await write(database, "n3", range(3001, 3011))
        await write(database, "n2", range(2001, 2011))
        await converged(database, 420)
        log = [e["message"] for e in await full_log(api, "joincrash", task_id)]
        assert log.count("node n3 joins the mesh with a copy of n1's data") == 2


async def test_add_node_refused_while_another_member_writes(
    api: httpx.AsyncClient, server: ServerProcess
) -> None:
    """n3 joining from n1 while n2 keeps writing could miss n2's rows (n1 does not forward
    them): the update fails naming n2 and its table, n3 is left out of the mesh with no slot or
    subscription anywhere, and the same spec submitted again once n2 is quiet joins n3 with
    every row."""
    body = database_body("busyjoin", nodes=2)
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 201))
    await write(database, "n2", range(1001, 1201))
    await converged(database, 400)
    stop = asyncio.Event()

    async def keep_writing() -> int:
        conn = await connect(database, "n2")
        written = 0
        try:
            while not stop.is_set():
                await conn.execute(
                    "INSERT INTO items VALUES ($1::int, 'n2', 'during the join')", 10_000 + written
                )
                written += 1
                await asyncio.sleep(0.02)
        finally:
            await conn.close()
        return written

    writer = asyncio.create_task(keep_writing())
    body["spec"]["nodes"].append({"name": "n3", "source_node": "n1"})
    response = await api.post("/v1/databases/busyjoin", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(api, "busyjoin", response.json()["task"]["task_id"], timeout=180)
    stop.set()
    written = await writer
    assert task["status"] == "failed"
    assert "node n3 was not joined: node n2 wrote to public.items" in task["error"]
    view = (await api.get("/v1/databases/busyjoin")).json()
    pair = {**view, "instances": [i for i in view["instances"] if i["node_name"] != "n3"]}
    await converged(pair, 400 + written)
    for instance in view["instances"]:
        assert not [s for s in instance["subscriptions"] if "n3" in s["name"]], instance
    socket = superuser_socket(server)
    for instance in pair["instances"]:
        conn = await asyncpg.connect(host=socket, port=instance["port"], user="postgres")
        try:
            slots = await conn.fetch("SELECT slot_name FROM pg_replication_slots")
        finally:
            await conn.close()
        assert not [r for r in slots if "n3" in r["slot_name"]], slots

    response = await api.post("/v1/databases/busyjoin", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(api, "busyjoin", response.json()["task"]["task_id"], timeout=180)
    assert task["status"] == "completed", task["error"]
    database = (await api.get("/v1/databases/busyjoin")).json()
    await converged(database, 400 + written)
    await write(database, "n3", range(3001, 3011))
    await converged(database, 410 + written)


async def test_resubmitting_the_same_spec_is_a_no_op(api: httpx.AsyncClient) -> None:
    """An update with an unchanged spec completes without writing, restarting or linking."""
    body = database_body("same", nodes=2)
    database = await create_and_wait(api, body)
    started = await on_every(database, "SELECT pg_postmaster_start_time()")
    response = await api.post("/v1/databases/same", json=body)
    task = await wait_task(api, "same", response.json()["task"]["task_id"])
    assert task["status"] == "completed", task["error"]
    messages = [e["message"] for e in await full_log(api, "same", task["task_id"])]
    assert not [
        m
        for m in messages
        if m.startswith(("configuration written", "restarting", "subscriptions created"))
    ]
    assert "replication mesh already complete" in messages
    assert await on_every(database, "SELECT pg_postmaster_start_time()") == started
