"""A node with replicas on the Docker orchestrator: its instances are containers running
Patroni (etcd started by the control plane on this machine), one per host id. The hosts h1,
h2 and h3 are this machine's engine under three ids, as three Swarm nodes would be."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.api import create_and_wait, fresh_view, wait_task
from tests.support.data import (
    TABLE,
    backup,
    on_every,
    posix,
    posix_repository,
    restore,
    restore_config,
)
from tests.support.deployment import DockerDeployment, run_deployment
from tests.support.eventually import eventually
from tests.support.ha import (
    by_id,
    failover_log,
    replica_body,
    replica_holds,
    slots_copied,
    streaming,
    switch_over,
    task_log,
)
from tests.support.load import (
    assert_between,
    assert_holds,
    assert_prefix,
    ids_on,
    mark,
    reaches_every_node,
    settle,
    writers,
)

# One worker runs this module: its deployment is the module's own.
pytestmark = pytest.mark.xdist_group("replicas")


@pytest.fixture(scope="module")
def ha_deployment() -> Iterator[DockerDeployment]:
    url = os.environ["DOCKER_HOST"]
    engines = ",".join(f"{host}={url}" for host in ("h1", "h2", "h3"))
    for found in run_deployment("docker", {"CONTROLPLANE_DOCKER_HOSTS": engines}):
        assert isinstance(found, DockerDeployment)
        try:
            yield found
        finally:
            _print_container_logs(found)


def _print_container_logs(deployment: DockerDeployment) -> None:
    """Patroni's and its Postgres's lines of every instance container (shown on failure)."""
    for container in deployment.containers(role="instance"):
        lines = container.logs(tail=80).decode(errors="replace").splitlines()
        print(f"---- {container.name} ----\n" + "\n".join(lines))


@pytest.fixture
async def ha_api(ha_deployment: DockerDeployment) -> AsyncIterator[httpx.AsyncClient]:
    async with ha_deployment.server.client(timeout=60) as client:
        yield client


async def _primary_is(api: httpx.AsyncClient, database_id: str, instance_id: str) -> None:
    async def probe() -> bool:
        view = await fresh_view(api, database_id)
        return bool(by_id(view)[instance_id]["role"] == "primary")

    await eventually(probe, timeout=60, what=f"{instance_id} primary")


async def test_lost_primary_container_fails_over_and_rejoins(
    ha_api: httpx.AsyncClient, ha_deployment: DockerDeployment
) -> None:
    """n1 has its primary on h1 and a replica on h2, n2 runs on h3, each instance in its own
    container. With writers on both nodes, n1's primary container is removed (docker rm -f):
    the replica is promoted within 30 s and the API shows it, rows written afterwards on
    either node reach both, the old primary comes back (the monitor recreates its container
    from its volume) as a replica of the new one, a switchover back under writers loses no
    committed row, and deleting the database removes every container."""
    api = ha_api
    body = replica_body("ha")
    database = await create_and_wait(api, body)
    view = await streaming(api, "ha")
    roles = {i["id"]: (i["node_name"], i["host_id"], i["role"]) for i in view["instances"]}
    assert roles == {
        "ha-n1": ("n1", "h1", "primary"),
        "ha-n1-h2": ("n1", "h2", "replica"),
        "ha-n2": ("n2", "h3", "primary"),
    }
    containers = await asyncio.to_thread(ha_deployment.containers, database="ha", role="instance")
    placed = {c.labels["controlplane.instance"]: c.labels["controlplane.host"] for c in containers}
    assert placed == {"ha-n1": "h1", "ha-n1-h2": "h2", "ha-n2": "h3"}
    # n1's instances run Patroni as their container's process; n2's runs Postgres itself.
    commands = {c.labels["controlplane.instance"]: c.attrs["Config"]["Cmd"] for c in containers}
    assert "/usr/bin/patroni" in commands["ha-n1"], commands["ha-n1"]
    assert "/usr/bin/patroni" in commands["ha-n1-h2"], commands["ha-n1-h2"]
    assert "/usr/bin/patroni" not in commands["ha-n2"], commands["ha-n2"]

    await on_every(database, TABLE)
    async with writers(database) as load:
        await load.progress(50)
        await slots_copied(view, "n1")
        await load.progress(25)
        removed_at = time.monotonic()
        await asyncio.to_thread(ha_deployment.lose_instance, "ha-n1")

        async def promoted() -> bool:
            now = (await api.get("/v1/databases/ha")).json()
            return bool(by_id(now)["ha-n1-h2"]["role"] == "primary")

        await eventually(promoted, timeout=60, interval=0.5, what="the replica promoted")
        took = time.monotonic() - removed_at
        print(f"replica promoted (as the API shows) {took:.1f} s after the container was removed")
        assert took < 30 + 5, took  # + the monitor's observation
        promoted_at = time.time()
        await load.progress(50)  # both nodes take writes again, through the new primary
    after = load.committed() & load.sent_after(promoted_at)
    assert after, "no row written after the failover"

    # Every row written after the failover, on either node, reaches both nodes.
    await reaches_every_node(database, after, what="rows written after the failover")
    # Asynchronous replicas: what the old primary had not streamed yet may be lost (README).
    for node in ("n1", "n2"):
        lost = load.committed(node) - await ids_on(database, "n1")
        assert len(lost) <= 25, (node, sorted(lost))

    async def rejoined() -> bool:
        now = await fresh_view(api, "ha")
        back, new = by_id(now)["ha-n1"], by_id(now)["ha-n1-h2"]
        # In recovery again, on the new primary's timeline: rewound, and following it.
        return bool(back["role"] == "replica" and back["timeline"] == new["timeline"])

    await eventually(rejoined, timeout=180, what="the old primary back as a replica")
    print(f"old primary back as a replica {time.monotonic() - removed_at:.1f} s after")
    # What n2 had received from the old primary and the new one had not is copied to it:
    # every node ends with the same rows.
    await settle(database, timeout=120)
    identity = await asyncio.to_thread(ha_deployment.instance_identity, "ha-n1")
    assert identity is not None, "no container runs ha-n1"
    # The monitor held its Patroni back until the replica led: started again while its own
    # leader lock lived, it would have taken the lock back.
    assert "ha-n1 still holds its node's leader lock" in ha_deployment.server.log_text()

    # The failover shows as a task the control plane queued when it saw Patroni's promotion.
    log = await failover_log(api, "ha")
    assert "Patroni promoted ha-n1-h2 in place of ha-n1, which it lost" in log, log

    # A switchover back to h1 with writers on both nodes loses no committed row.
    view = await streaming(api, "ha")
    await slots_copied(view, "n1")
    async with writers(database) as load:
        await load.progress(30)
        task = await switch_over(api, "ha", "n1", "ha-n1")
        assert task["status"] == "completed", (task, await task_log(api, task))
        await _primary_is(api, "ha", "ha-n1")
        await load.progress(30)
    await settle(database, timeout=120)
    await assert_holds(database, load.committed())
    assert by_id(await fresh_view(api, "ha"))["ha-n1-h2"]["role"] == "replica"

    # Deleting the database stops every member (Patroni first) and removes their containers
    # and volumes.
    response = await api.delete("/v1/databases/ha")
    assert response.status_code == 202, response.text
    task = await wait_task(api, "ha", response.json()["task"]["task_id"], timeout=300)
    assert task["status"] == "completed", task["error"]
    left = await asyncio.to_thread(ha_deployment.containers, database="ha")
    assert left == [], [c.name for c in left]


async def test_pitr_in_place_of_a_node_with_a_replica(
    ha_api: httpx.AsyncClient, ha_deployment: DockerDeployment
) -> None:
    """n1 (primary on h1, replica on h2) and n2 (h3) write all along; both nodes are restored
    in place to a time read on n1. n1's replica container is removed, its primary released
    from Patroni and restored, and the replica rebuilt: of what was written before, both nodes
    hold exactly n1's rows at the target, every row committed afterwards is on both, and the
    rebuilt replica streams from the restored primary with the same rows."""
    api = ha_api
    repo = ha_deployment.repo_dir("replica-pitr")
    database = await create_and_wait(api, replica_body("rr", backup_config=posix(repo)))
    view = await streaming(api, "rr")
    await on_every(database, TABLE)
    async with writers(database) as load:
        await load.progress()
        await slots_copied(view, "n1")
        await backup(api, "rr", "n1")
        await load.progress()
        point = await mark(database, "n1")
        await load.progress()
        requested = time.time()
        config = restore_config("rr", "n1", posix_repository(repo), type="time")
        config["restore_options"]["target"] = point.target
        await restore(api, "rr", {"restore_config": config})
        restored = time.time()
        await load.progress()
    await settle(database, timeout=120)
    found = await ids_on(database, "n1")
    earlier = found - load.sent_after(requested)
    assert_between(earlier, set(point.at_least), set(point.at_most), "the restored nodes")
    assert_prefix(earlier, load, "the restored nodes")
    await assert_holds(database, load.committed() & load.sent_after(restored))
    containers = await asyncio.to_thread(ha_deployment.containers, database="rr", role="instance")
    assert {c.labels["controlplane.instance"] for c in containers} == {"rr-n1", "rr-n1-h2", "rr-n2"}

    view = await streaming(api, "rr")
    members = by_id(view)
    assert (members["rr-n1"]["role"], members["rr-n1-h2"]["role"]) == ("primary", "replica")

    await replica_holds(members["rr-n1-h2"], found)
    response = await api.delete("/v1/databases/rr")
    assert response.status_code == 202, response.text
    await wait_task(api, "rr", response.json()["task"]["task_id"], timeout=300)
