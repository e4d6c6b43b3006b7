"""Named hosts on the local orchestrator (CONTROLPLANE_LOCAL_HOSTS): nodes placed by host id,
each host's instances in their own directory, on their own loopback address and sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import connect, create_and_wait, database_body, fresh_view, wait_task
from tests.support.data import TABLE, converged, on_every, write_rows
from tests.support.pgcluster import bind_succeeds
from tests.support.processes import postmasters_under
from tests.support.server import ServerProcess, serving


@pytest.fixture
def hosts_server(scratch_dir: Path, store_url: str) -> Iterator[ServerProcess]:
    hosts = {"CONTROLPLANE_LOCAL_HOSTS": "h1,h2"}
    with serving(scratch_dir / "cp", database_url=store_url, env=hosts) as proc:
        yield proc


async def test_nodes_go_to_the_named_hosts(hosts_server: ServerProcess) -> None:
    """Two nodes on h1 and h2: /v1/hosts counts one instance on each, each instance lives in
    its host's directory, and the mesh replicates between them."""
    async with hosts_server.client() as api:
        hosts = (await api.get("/v1/hosts")).json()["hosts"]
        assert [h["id"] for h in hosts] == ["h1", "h2"]

        body = database_body("placed", nodes=2)
        body["spec"]["nodes"] = [
            {"name": "n1", "host_ids": ["h1"]},
            {"name": "n2", "host_ids": ["h2"]},
        ]
        database = await create_and_wait(api, body)
        assert {i["node_name"]: i["host_id"] for i in database["instances"]} == {
            "n1": "h1",
            "n2": "h2",
        }
        hosts = (await api.get("/v1/hosts")).json()["hosts"]
        assert {h["id"]: h["instances"] for h in hosts} == {"h1": 1, "h2": 1}
        for host, node in (("h1", "n1"), ("h2", "n2")):
            home = hosts_server.data_dir / "hosts" / host / f"placed-{node}"
            assert len(postmasters_under(home)) == 1, home
        assert not (hosts_server.data_dir / "instances").exists()

        view = await fresh_view(api, "placed")
        assert [(i["role"], i["timeline"], i["lag_bytes"]) for i in view["instances"]] == [
            ("primary", 1, None),
            ("primary", 1, None),
        ]

        await on_every(database, TABLE)  # DDL is not replicated: the table first, everywhere
        await write_rows(database, 1, 100, node="n1")
        await write_rows(database, 101, 100, node="n2")
        await converged(database, 200)

        unknown = database_body("lost")
        unknown["spec"]["nodes"] = [{"name": "n1", "host_ids": ["h3"]}]
        refused = await api.post("/v1/databases", json=unknown)
        assert refused.status_code == 422, refused.text
        error = refused.json()["details"]["errors"][0]
        assert error["path"] == "spec.nodes[0].host_ids[0]"
        assert "h1, h2" in error["message"]
        assert (await api.get("/v1/databases/lost")).status_code == 404

        deleted = await api.delete("/v1/databases/placed")
        task = await wait_task(api, "placed", deleted.json()["task"]["task_id"])
        assert task["status"] == "completed", task
        assert postmasters_under(hosts_server.data_dir) == []


H1, H2 = "127.0.1.1", "127.0.1.2"


def port_free_on(*addresses: str) -> int:
    """A port nothing listens on at any of `addresses`."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        if all(bind_succeeds(address, port) for address in addresses):
            return port
    raise AssertionError(f"no port free on all of {addresses}")


async def test_one_port_on_every_host(hosts_server: ServerProcess) -> None:
    """pgEdge's shape, one fixed port for every node on different hosts: each instance listens
    on that port at its host's own address, the mesh replicates both ways, and the port is
    refused to anything else on h1 before anything is created."""
    port = port_free_on(H1, H2, "127.0.0.1")
    async with hosts_server.client() as api:
        body = database_body("shared", port=port)
        body["spec"]["nodes"] = [
            {"name": "n1", "host_ids": ["h1"]},
            {"name": "n2", "host_ids": ["h2"]},
        ]
        database = await create_and_wait(api, body)
        assert {
            i["node_name"]: (i["port"], i["connection_info"]["host"], i["connection_info"]["port"])
            for i in database["instances"]
        } == {"n1": (port, H1, port), "n2": (port, H2, port)}
        for node, address, host in (("n1", H1, "h1"), ("n2", H2, "h2")):
            conn = await connect(database, node)
            try:
                assert await conn.fetchval("SELECT host(inet_server_addr())") == address
                assert await conn.fetchval("SELECT current_setting('port')::int") == port
            finally:
                await conn.close()
            assert (hosts_server.run_dir / "i" / host / f".s.PGSQL.{port}").is_socket()
        # Neither listens on the default host's address: each is on its own host alone.
        assert bind_succeeds("127.0.0.1", port)

        # DDL is not replicated: the table on both nodes first, so no row arrives before it.
        await on_every(database, TABLE)
        await write_rows(database, 1, 100, node="n1")
        await write_rows(database, 101, 100, node="n2")
        await converged(database, 200)

        # A new node inheriting the port on h1, where n1 has it.
        grown = database_body("shared", port=port)
        grown["spec"]["nodes"] = [*body["spec"]["nodes"], {"name": "n3", "host_ids": ["h1"]}]
        refused = await api.post("/v1/databases/shared", json=grown)
        assert refused.status_code == 422, refused.text
        assert refused.json()["details"]["errors"] == [
            {
                "path": "spec.port",
                "message": f"port {port}, inherited by node n3, is also used by node n1 on host "
                "h1: set a port per node or use 0",
            }
        ]

        # Another database: the port on h1 (another database's instance has it) and one port
        # twice on h2, both reported at once.
        other = port_free_on(H2)
        second = database_body("second")
        second["spec"]["nodes"] = [
            {"name": "n1", "host_ids": ["h1"], "port": port},
            {"name": "n2", "host_ids": ["h2"], "port": other},
            {"name": "n3", "host_ids": ["h2"], "port": other},
        ]
        refused = await api.post("/v1/databases", json=second)
        assert refused.status_code == 422, refused.text
        assert refused.json()["details"]["errors"] == [
            {"path": "spec.nodes[0].port", "message": f"port {port} is already in use on host h1"},
            {
                "path": "spec.nodes[2].port",
                "message": f"port {other} is also used by node n2 on host h2",
            },
        ]
        assert (await api.get("/v1/databases/second")).status_code == 404
        assert not list(hosts_server.data_dir.glob("hosts/*/second-*"))
        hosts = (await api.get("/v1/hosts")).json()["hosts"]
        assert {h["id"]: h["instances"] for h in hosts} == {"h1": 1, "h2": 1}
        shared = (await api.get("/v1/databases/shared")).json()
        assert len(shared["instances"]) == 2 and shared["state"] == "available", shared
