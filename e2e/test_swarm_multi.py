"""A database across the nodes of a multi-node swarm (`e2e/swarm-multi up`): each node's
dockerd in its own network namespace, so every instance is reached at its node's address.

One instance per node, pinned by the node label; rows written on either replicate to the
other; a node whose dockerd stops is an unreachable host and its instance `unreachable`, while
the other node's instance keeps taking writes; the node back, its instance is available again
with every row. A node with a replica on another swarm node fails over when its primary's
node is lost, with the etcd an operator provides (CONTROLPLANE_ETCD_HOSTS) on this machine's
address toward the nodes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from controlplane.orchestrator.swarm_orchestrator import source_address
from tests.support.api import create_and_wait, database_body, fresh_view
from tests.support.data import TABLE, converged, digest, on_every, write
from tests.support.eventually import eventually
from tests.support.ha import by_id, failover_log, replica_holds, slots_copied, streaming
from tests.support.load import assert_holds, ids_on, reaches_every_node, settle, writers
from tests.support.os_user import give_to_os_user
from tests.support.patroni import EtcdServer
from tests.support.server import ServerProcess

ROOT = Path(os.environ.get("CONTROLPLANE_SWARM_MULTI_ROOT", "/var/tmp/controlplane-swarm-multi"))
SCRIPT = Path(__file__).parent / "swarm-multi"
IMAGE = os.environ.get("CONTROLPLANE_INSTANCE_IMAGE", "controlplane-e2e/postgres:15")
HOST_LABEL = "controlplane.host"
# A create of a node with a replica on two swarm nodes took over 120 s beside the docker stage.
CREATE_TIMEOUT = 300.0

pytestmark = pytest.mark.skipif(
    not os.environ.get("CONTROLPLANE_SWARM_MULTI"),
    reason="no multi-node swarm: run `e2e/swarm-multi up`, then `e2e/swarm-multi test`",
)


@dataclass(frozen=True)
class Node:
    """One swarm node as `e2e/swarm-multi up` wrote it down."""

    index: int
    host_id: str
    url: str
    addr: str
    pidfile: Path

    def client(self) -> Any:
        return docker.DockerClient(base_url=self.url, version="1.41", timeout=10)

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        return None


def read_nodes() -> list[Node]:
    lines = (ROOT / "nodes").read_text().split("\n")
    found = []
    for index, line in enumerate((line for line in lines if line.strip()), start=1):
        host_id, url, addr, pidfile = line.split()
        found.append(Node(index, host_id, url, addr, Path(pidfile)))
    return found


def stop_node(node: Node) -> None:
    """SIGTERM the node's dockerd by its pid (it stops its containers on the way out) and
    wait until it is gone."""
    pid = node.pid()
    assert pid is not None, f"dockerd of {node.host_id} is not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError(f"dockerd {pid} of {node.host_id} did not stop")


def start_node(node: Node) -> None:
    subprocess.run([str(SCRIPT), "start-node", str(node.index)], check=True, capture_output=True)


@dataclass
class Swarm:
    nodes: list[Node]
    server: ServerProcess
    manager: Any

    def node_of(self, host_id: str) -> Node:
        return next(n for n in self.nodes if n.host_id == host_id)

    def running_task(self, instance_id: str) -> dict[str, Any] | None:
        """The running task of the instance's service, as the manager lists it."""
        labels = [f"controlplane.instance={instance_id}", "controlplane.role=instance"]
        tasks = [
            t
            for s in self.manager.services.list(filters={"label": labels})
            for t in s.tasks(filters={"desired-state": "running"})
            if t["Status"]["State"] == "running"
        ]
        return tasks[0] if len(tasks) == 1 else None


def print_instance_logs(nodes: list[Node]) -> None:
    """The end of every instance container's output, on each node (Patroni's and its
    Postgres's lines; shown on failure)."""
    for node in nodes:
        with contextlib.suppress(docker.errors.DockerException, OSError):
            client = node.client()
            for container in client.containers.list(
                all=True, filters={"label": ["controlplane.role=instance"]}
            ):
                text = container.logs(tail=600).decode(errors="replace")
                lines = [ln for ln in text.splitlines() if "INFO: no action" not in ln][-80:]
                print(f"---- {node.host_id}: {container.name} ----\n" + "\n".join(lines))


def remove_everything(nodes: list[Node]) -> None:
    """Every service, secret, config, task container and volume of ours, on every node."""
    manager = nodes[0].client()
    for service in manager.services.list(filters={"label": ["controlplane"]}):
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()
    for kind in (manager.secrets, manager.configs):
        for item in kind.list(filters={"label": ["controlplane"]}):
            with contextlib.suppress(docker.errors.APIError):
                item.remove()
    for node in nodes:
        client = node.client()
        labels = {"label": ["controlplane"]}
        for _ in range(100):
            if not client.api.containers(all=True, filters=labels):
                break
            time.sleep(0.2)
        for container in client.api.containers(all=True, filters=labels):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(container["Id"], force=True)
        for volume in client.volumes.list(filters=labels):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    """`controlplane serve` on the swarm orchestrator against the first node (the manager),
    with every node's own engine for container calls, and Patroni's etcd the operator's: one
    on this machine's address toward the nodes (the embedded one listens on loopback, which
    a task in another node's network does not share). Everything removed afterwards, every
    node's dockerd running again and etcd stopped by its pid."""
    nodes = read_nodes()
    assert len(nodes) >= 2, nodes
    work = ROOT / "work"
    work.mkdir(parents=True, exist_ok=True)
    give_to_os_user(work)
    work_dir = Path(tempfile.mkdtemp(prefix="cps-multi-", dir=work))
    give_to_os_user(work_dir)
    own = source_address(nodes[0].addr)
    assert own is not None, f"no route to {nodes[0].addr}"
    etcd = EtcdServer(work_dir, address=own)
    etcd.start()
    server = ServerProcess(
        work_dir / "cp",
        database_url=None,
        env={
            "CONTROLPLANE_ORCHESTRATOR": "swarm",
            "CONTROLPLANE_SWARM_URL": nodes[0].url,
            "CONTROLPLANE_DOCKER_HOSTS": ",".join(f"{n.host_id}={n.url}" for n in nodes),
            "CONTROLPLANE_INSTANCE_IMAGE": IMAGE,
            "CONTROLPLANE_ETCD_HOSTS": etcd.host,
        },
    )
    try:
        server.start()
        yield Swarm(nodes, server, nodes[0].client())
    finally:
        server.terminate()
        print_instance_logs(nodes)
        for node in nodes:
            if node.pid() is None:
                start_node(node)
        remove_everything(nodes)
        server.stop_instances()
        etcd.stop()
        # The control plane's own lines (not the API's access log), end first.
        lines = [ln for ln in server.log_text().splitlines() if "controlplane.access" not in ln]
        print("---- swarm server log (tail) ----\n" + "\n".join(lines[-150:]))
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture
async def api(swarm: Swarm) -> AsyncIterator[httpx.AsyncClient]:
    async with swarm.server.client(timeout=60) as client:
        yield client


async def host_states(api: httpx.AsyncClient) -> dict[str, str]:
    hosts = (await api.get("/v1/hosts")).json()["hosts"]
    return {h["id"]: h["state"] for h in hosts}


async def instance_states(api: httpx.AsyncClient, database_id: str) -> dict[str, str]:
    view = (await api.get(f"/v1/databases/{database_id}")).json()
    return {i["id"]: i["state"] for i in view["instances"]}


async def test_instances_on_two_nodes_replicate_and_a_lost_node_is_unreachable(
    swarm: Swarm, api: httpx.AsyncClient
) -> None:
    first, second = swarm.nodes[0], swarm.nodes[1]
    assert await host_states(api) == {n.host_id: "available" for n in swarm.nodes}
    nodes = [
        {"name": "n1", "host_ids": [first.host_id]},
        {"name": "n2", "host_ids": [second.host_id]},
    ]
    database = await create_spread(api, nodes)

    # Each instance's task runs on the node carrying its host label, reached at its address.
    by_node = {i["node_name"]: i for i in database["instances"]}
    for name, node in (("n1", first), ("n2", second)):
        instance = by_node[name]
        assert instance["host_id"] == node.host_id
        assert instance["connection_info"]["host"] == node.addr
        task = swarm.running_task(instance["id"])
        assert task is not None, f"no running task for {instance['id']}"
        placed = swarm.manager.nodes.get(task["NodeID"])
        assert placed.attrs["Spec"]["Labels"][HOST_LABEL] == node.host_id
        assert placed.attrs["Status"]["Addr"] == node.addr
        container = task["Status"]["ContainerStatus"]["ContainerID"]
        # The container is on that node's own engine, and on no other.
        for other in swarm.nodes:
            ids = {c["Id"] for c in other.client().api.containers()}
            assert (container in ids) == (other is node), (other.host_id, instance["id"])

    # Rows written on either node reach the other.
    await on_every(database, TABLE)
    await write(database, "n1", range(1, 101))
    await write(database, "n2", range(1001, 1101))
    both = await converged(database, 200)
    assert await digest(database, "n1") == await digest(database, "n2") == both

    # The second node's dockerd stops: its host and its instance are unreachable.
    await asyncio.to_thread(stop_node, second)
    lost = by_node["n2"]["id"]
    kept = by_node["n1"]["id"]

    async def host_lost() -> bool:
        states = await host_states(api)
        return states == {
            **{n.host_id: "available" for n in swarm.nodes},
            second.host_id: "unreachable",
        }

    await eventually(host_lost, timeout=90, interval=1, what=f"host {second.host_id} unreachable")

    async def instance_lost() -> bool:
        return await instance_states(api, "spread") == {kept: "available", lost: "unreachable"}

    await eventually(instance_lost, timeout=90, interval=1, what=f"{lost} unreachable")
    # The first node's instance still takes writes.
    await write(database, "n1", range(2001, 2051))
    assert (await digest(database, "n1")).startswith("250:")
    view = (await api.get("/v1/databases/spread")).json()
    assert view["state"] == "degraded", view

    # The node back, its instance is available again and catches up on every row.
    await asyncio.to_thread(start_node, second)

    async def host_back() -> bool:
        return await host_states(api) == {n.host_id: "available" for n in swarm.nodes}

    await eventually(host_back, timeout=90, interval=1, what=f"host {second.host_id} back")

    async def instance_back() -> bool:
        return await instance_states(api, "spread") == {kept: "available", lost: "available"}

    await eventually(instance_back, timeout=180, interval=1, what=f"{lost} available again")
    after = await converged(database, 250, limit=120)
    assert await digest(database, "n2") == after
    assert swarm.running_task(lost) is not None


async def create_spread(api: httpx.AsyncClient, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    body = database_body("spread", nodes=2)
    body["spec"]["nodes"] = nodes
    return await create_and_wait(api, body, CREATE_TIMEOUT)


async def test_a_replica_on_another_node_takes_over_when_its_primary_node_is_lost(
    swarm: Swarm, api: httpx.AsyncClient
) -> None:
    """n1 has its primary on the second swarm node and a replica on the first (the manager,
    which stays up), n2 runs on the first: each of n1's members is a service running Patroni,
    pinned by label. With writers on both nodes the second node's dockerd stops, taking n1's
    primary down: the replica is promoted, the API shows it and the lost member
    `unreachable`, and rows written afterwards on either node reach both. The node back, the
    old primary rejoins as a replica on the new timeline, and every node and the rejoined
    replica end with the same rows."""
    kept, lost = swarm.nodes[0], swarm.nodes[1]
    body = database_body("hs", nodes=2)
    body["spec"]["nodes"] = [
        {"name": "n1", "host_ids": [lost.host_id, kept.host_id]},
        {"name": "n2", "host_ids": [kept.host_id]},
    ]
    database = await create_and_wait(api, body, CREATE_TIMEOUT)
    view = await streaming(api, "hs")
    replica_id = f"hs-n1-{kept.host_id}"
    roles = {i["id"]: (i["host_id"], i["role"]) for i in view["instances"]}
    assert roles == {
        "hs-n1": (lost.host_id, "primary"),
        replica_id: (kept.host_id, "replica"),
        "hs-n2": (kept.host_id, "primary"),
    }
    for instance_id, node in (("hs-n1", lost), (replica_id, kept), ("hs-n2", kept)):
        task = swarm.running_task(instance_id)
        assert task is not None, f"no running task for {instance_id}"
        placed = swarm.manager.nodes.get(task["NodeID"])
        assert placed.attrs["Spec"]["Labels"][HOST_LABEL] == node.host_id
        command = task["Spec"]["ContainerSpec"].get("Command") or []
        # n1's members run Patroni as their task's process; n2's runs Postgres itself.
        assert ("/usr/bin/patroni" in command) == instance_id.startswith("hs-n1"), command

    await on_every(database, TABLE)
    async with writers(database) as load:
        await load.progress(50)
        await slots_copied(view, "n1")
        await load.progress(25)
        lost_at = time.monotonic()
        await asyncio.to_thread(stop_node, lost)

        async def promoted() -> bool:
            now = by_id((await api.get("/v1/databases/hs")).json())
            seen = {i: (m["role"], m["state"]) for i, m in now.items()}
            assert seen[replica_id][0] == "primary", seen
            assert seen["hs-n1"][1] == "unreachable", seen
            return True

        await eventually(promoted, timeout=90, interval=0.5, what="the replica promoted")
        print(f"replica promoted {time.monotonic() - lost_at:.1f} s after the node was lost")
        promoted_at = time.time()
        await load.progress(50)  # both nodes take writes again, n1 through its new primary
    after = load.committed() & load.sent_after(promoted_at)
    assert after, "no row written after the failover"

    await reaches_every_node(database, after, what="rows written after the failover")
    log = await failover_log(api, "hs")
    assert f"Patroni promoted {replica_id} in place of hs-n1" in log, log

    # The node back: the monitor starts the old primary's service, and Patroni makes it a
    # replica of the new primary.
    await asyncio.to_thread(start_node, lost)

    async def rejoined() -> bool:
        now = by_id(await fresh_view(api, "hs"))
        seen = {i: (m["role"], m["state"], m["timeline"]) for i, m in now.items()}
        # In recovery again, on the new primary's timeline: rewound, and following it.
        assert seen["hs-n1"] == ("replica", "available", seen[replica_id][2]), seen
        return True

    await eventually(rejoined, timeout=240, interval=1, what="the old primary back as a replica")
    # The shutdown on the lost node was clean (dockerd stopped its task): nothing committed
    # was lost, and every node ends with the same rows, the rejoined replica included.
    await settle(database, timeout=120)
    await assert_holds(database, load.committed())
    found = await ids_on(database, "n1")
    await replica_holds(by_id((await api.get("/v1/databases/hs")).json())["hs-n1"], found)
    response = await api.delete("/v1/databases/hs")
    assert response.status_code == 202, response.text
