"""Named hosts on the local orchestrator (CONTROLPLANE_LOCAL_HOSTS): nodes placed by host id,
each host's instances in their own directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import create_and_wait, database_body, fresh_view, wait_task
from tests.support.data import converged, write_rows
from tests.support.processes import postmasters_under
from tests.support.server import ServerProcess


@pytest.fixture
def hosts_server(scratch_dir: Path, store_url: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        scratch_dir / "cp", database_url=store_url, env={"CONTROLPLANE_LOCAL_HOSTS": "h1,h2"}
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.terminate()
        proc.stop_instances()
        print("---- server log (tail) ----\n" + proc.log_text()[-6000:])


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
