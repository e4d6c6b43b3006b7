"""A replicated database, and an instance lost behind the control plane's back."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from tests.support.api import create_and_wait, database_body
from tests.support.data import TABLE, converged, digest, on_every, write
from tests.support.deployment import Deployment
from tests.support.eventually import eventually


async def test_two_node_database_replicates(api: httpx.AsyncClient, deployment: Deployment) -> None:
    """A 2-node database runs one instance per node, and rows written on either node reach
    the other; the hosts list names the orchestrator."""
    database = await create_and_wait(api, database_body("mesh", nodes=2))
    assert database["state"] == "available"
    assert await asyncio.to_thread(deployment.running_nodes, "mesh") == ["n1", "n2"]
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    await write(database, "n2", range(1001, 1101))
    await converged(database, 200)
    hosts = (await api.get("/v1/hosts")).json()["hosts"]
    assert [(h["id"], h["orchestrator"]) for h in hosts] == [("local", deployment.orchestrator)]
    assert hosts[0]["instances"] >= 2  # at least this database's two


async def test_monitor_brings_back_a_lost_instance(
    api: httpx.AsyncClient, deployment: Deployment
) -> None:
    """An instance that disappears (postmaster killed, container removed) while its data stays
    is brought back by the monitor on the same data."""
    database = await create_and_wait(api, database_body("heal"))
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 51))
    expected = await digest(database)
    before = await asyncio.to_thread(deployment.instance_identity, "heal-n1")
    assert before is not None
    await asyncio.to_thread(deployment.lose_instance, "heal-n1")

    async def healed() -> str | None:
        now = await asyncio.to_thread(deployment.instance_identity, "heal-n1")
        if now is None or now == before:
            return None
        try:
            return await digest(database)
        except (OSError, asyncpg.PostgresError):  # it runs, Postgres is still starting
            return None

    assert await eventually(healed, timeout=60, what="the instance back") == expected

    async def available() -> bool:
        # The monitor derives the database's health on its next sweep.
        return bool((await api.get("/v1/databases/heal")).json()["state"] == "available")

    await eventually(available, timeout=30, what="the database available again")
