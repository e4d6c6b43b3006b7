"""Per-host addresses: Docker keeps 127.0.0.1 (bind probes); a host reached at another address
(a swarm node) is probed by connecting, and its instances are rendered with that address."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.orchestrator.base import InstanceRef
from controlplane.orchestrator.docker_orchestrator import DockerOrchestrator, _answers
from controlplane.orchestrator.swarm_orchestrator import source_address
from controlplane.settings import Settings

# Another loopback address: on this machine, yet not the Docker orchestrator's 127.0.0.1.
NODE_ADDRESS = "127.0.0.9"


class NodeAddressed(DockerOrchestrator):
    """Every host reached at NODE_ADDRESS, as the swarm orchestrator does with its nodes'."""

    def address(self, host_id: str) -> str:
        return NODE_ADDRESS


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something listens on at NODE_ADDRESS."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((NODE_ADDRESS, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((NODE_ADDRESS, 0))
        return int(sock.getsockname()[1])


def ref(port: int) -> InstanceRef:
    return InstanceRef(
        instance_id="db-n1", database_id="db", node_name="n1", host_id="h1", port=port
    )


def test_a_connection_probe_tells_a_listening_port_from_a_closed_one(listener: int) -> None:
    assert _answers(NODE_ADDRESS, listener) is True
    assert _answers(NODE_ADDRESS, closed_port()) is False


def test_a_host_at_another_address_is_probed_there(tmp_path: Path, listener: int) -> None:
    """A port taken at the node's address is not free, one free there is; the instance is
    reached, listed and replicated to at that address."""
    orchestrator = NodeAddressed(Settings(data_dir=tmp_path / "cp"))
    assert orchestrator.port_is_free("h1", listener) is False
    assert orchestrator.port_is_free("h1", closed_port()) is True
    assert orchestrator.pick_port("h1", {listener}) != listener
    assert orchestrator.connection_info(ref(6001)) == (NODE_ADDRESS, 6001)
    assert orchestrator.replication_dsn(ref(6001), "app").startswith(
        f"host={NODE_ADDRESS} port=6001 dbname=app "
    )


def test_docker_hosts_stay_on_loopback_and_bind_probes(tmp_path: Path) -> None:
    """The Docker orchestrator's hosts are 127.0.0.1: a port bound there is not free."""
    orchestrator = DockerOrchestrator(Settings(data_dir=tmp_path / "cp"))
    assert orchestrator.address("local") == "127.0.0.1"
    assert orchestrator.connection_info(ref(6001)) == ("127.0.0.1", 6001)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        taken = int(sock.getsockname()[1])
        assert orchestrator.port_is_free("local", taken) is False
    assert orchestrator.port_is_free("local", taken) is True


def test_this_machine_s_own_address_toward_a_node() -> None:
    """What connections to the node come from (pg_hba.conf admits it): a loopback address
    for a loopback node."""
    found = source_address(NODE_ADDRESS)
    assert found is not None
    assert found.startswith("127.")
