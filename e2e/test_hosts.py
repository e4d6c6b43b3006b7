"""Several configured engines: nodes placed by `host_ids`, an unreachable one reported."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.api import create_and_wait, database_body, wait_task
from tests.support.data import TABLE, converged, on_every, write
from tests.support.deployment import DockerDeployment, run_deployment

# One worker runs this module: its deployment is the module's own.
pytestmark = pytest.mark.xdist_group("hosts")


@pytest.fixture(scope="module")
def hosts_deployment() -> Iterator[DockerDeployment]:
    """A control plane with three engine entries: `east` and `west` (this machine's engine
    under two ids, as two Swarm nodes would be) and `gone`, whose socket does not exist."""
    url = os.environ["DOCKER_HOST"]
    engines = f"east={url},west={url},gone=unix:///nonexistent/docker.sock"
    for found in run_deployment("docker", {"CONTROLPLANE_DOCKER_HOSTS": engines}):
        assert isinstance(found, DockerDeployment)
        yield found


@pytest.fixture
async def hosts_api(hosts_deployment: DockerDeployment) -> AsyncIterator[httpx.AsyncClient]:
    server = hosts_deployment.server
    async with server.client(timeout=60) as client:
        yield client


async def test_nodes_run_on_the_hosts_they_name(
    hosts_api: httpx.AsyncClient, hosts_deployment: DockerDeployment
) -> None:
    """`GET /v1/hosts` lists every configured engine; each node's container runs on the engine
    its `host_ids` names, and the nodes replicate across hosts."""
    hosts = (await hosts_api.get("/v1/hosts")).json()["hosts"]
    assert sorted(h["id"] for h in hosts) == ["east", "gone", "west"]
    assert {h["orchestrator"] for h in hosts} == {"docker"}
    body = database_body("placed", nodes=2)
    body["spec"]["nodes"][0]["host_ids"] = ["east"]
    body["spec"]["nodes"][1]["host_ids"] = ["west"]
    database = await create_and_wait(hosts_api, body)
    assert {i["node_name"]: i["host_id"] for i in database["instances"]} == {
        "n1": "east",
        "n2": "west",
    }
    found = await asyncio.to_thread(hosts_deployment.containers, database="placed")
    assert {c.labels["controlplane.node"]: c.labels["controlplane.host"] for c in found} == {
        "n1": "east",
        "n2": "west",
    }
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 51))
    await write(database, "n2", range(51, 101))
    await converged(database, 100)


async def test_unreachable_engine_is_a_clear_task_error(
    hosts_api: httpx.AsyncClient, hosts_deployment: DockerDeployment
) -> None:
    """A node placed on an engine that cannot be reached fails its task with an error naming
    the host, the host shows as unreachable, and nothing runs for that database."""
    body = database_body("nowhere")
    body["spec"]["nodes"][0]["host_ids"] = ["gone"]
    response = await hosts_api.post("/v1/databases", json=body)
    assert response.status_code == 202, response.text
    task = await wait_task(hosts_api, "nowhere", response.json()["task"]["task_id"], timeout=180)
    assert task["status"] == "failed"
    assert "gone" in task["error"], task["error"]
    hosts = {h["id"]: h["state"] for h in (await hosts_api.get("/v1/hosts")).json()["hosts"]}
    assert hosts == {"east": "available", "west": "available", "gone": "unreachable"}
    assert await asyncio.to_thread(hosts_deployment.running_nodes, "nowhere") == []
