"""A database's life through declarative updates: settings, nodes in and out, then delete."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.api import connect, create_and_wait, database_body, fresh_view, wait_task
from tests.support.data import TABLE, converged, on_every, update_and_wait, write
from tests.support.deployment import Deployment


async def test_settings_nodes_and_delete(api: httpx.AsyncClient, deployment: Deployment) -> None:
    """Settings change on every node (a restart-only one included) with the omitted password
    kept; a node added from a source node gets every row and replicates; a removed node's
    instance, subscriptions and slots go; delete removes every instance."""
    body = database_body("life", nodes=2)
    database = await create_and_wait(api, body)
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 201))
    await write(database, "n2", range(1001, 1201))
    await converged(database, 400)

    body["spec"]["postgresql_conf"] = {"work_mem": "8MB", "max_connections": 150}
    del body["spec"]["database_users"][0]["password"]
    database = await update_and_wait(api, body)
    assert await on_every(database, "SHOW work_mem") == ["8MB", "8MB"]
    assert await on_every(database, "SHOW max_connections") == ["150", "150"]

    body["spec"]["nodes"].append({"name": "n3", "source_node": "n1"})
    database = await update_and_wait(api, body)
    assert await asyncio.to_thread(deployment.running_nodes, "life") == ["n1", "n2", "n3"]
    await converged(database, 400)
    await write(database, "n3", range(3001, 3101))
    await converged(database, 500)

    body["spec"]["nodes"] = [n for n in body["spec"]["nodes"] if n["name"] != "n2"]
    database = await update_and_wait(api, body)
    assert await asyncio.to_thread(deployment.running_nodes, "life") == ["n1", "n3"]
    assert sorted(i["node_name"] for i in database["instances"]) == ["n1", "n3"]
    for instance in (await fresh_view(api, "life"))["instances"]:
        assert [s["status"] for s in instance["subscriptions"]] == ["replicating"]
        assert not [s for s in instance["subscriptions"] if "n2" in s["name"]]
    slots = await on_every(database, "SELECT string_agg(slot_name, ',') FROM pg_replication_slots")
    assert all("n2" not in str(names) for names in slots), slots
    await write(database, "n1", range(5001, 5101))
    await converged(database, 600)

    response = await api.delete("/v1/databases/life")
    assert response.status_code == 202, response.text
    task = await wait_task(api, "life", response.json()["task"]["task_id"], timeout=300)
    assert task["status"] == "completed", task["error"]
    assert (await api.get("/v1/databases/life")).status_code == 404
    assert await asyncio.to_thread(deployment.running_nodes, "life") == []
    with pytest.raises(OSError):
        await connect(database, "n1")
