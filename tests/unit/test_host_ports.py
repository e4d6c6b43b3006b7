"""Ports are unique per host, not globally: the placement rule (`check_host_ports`), the
privileged-port rule of spec validation, and the local orchestrator's named hosts, each its
own loopback address and socket directory."""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from controlplane.errors import InvalidInputError, PreconditionError
from controlplane.orchestrator.base import InstanceRef
from controlplane.orchestrator.local import LocalOrchestrator
from controlplane.settings import Settings
from controlplane.spec import parse_database_request
from controlplane.spec.models import DatabaseSpec
from controlplane.spec.paths import Problem
from controlplane.spec.validate import check_host_ports, node_host
from controlplane.system.postgres import HBA_RULES


def spec_of(port: int = 0, *nodes: dict[str, Any]) -> DatabaseSpec:
    body = {"spec": {"database_name": "app", "port": port, "nodes": list(nodes)}}
    return parse_database_request(msgspec.json.encode(body)).spec


def clashes(
    spec: DatabaseSpec,
    *,
    default_host: str = "h1",
    placed: Mapping[str, tuple[str, int]] | None = None,
    taken: Collection[tuple[str, int]] = (),
    address_of: Callable[[str], str] = lambda host: host,
    busy: Collection[tuple[str, int]] = (),
) -> list[Problem]:
    """What placement reports for `spec`, every host known, `busy` (host, port) listened on."""
    return check_host_ports(
        spec,
        {node.name: node_host(node, default_host) for node in spec.nodes},
        placed=placed or {},
        taken=taken,
        address_of=address_of,
        is_free=lambda host, port: (host, port) not in busy,
    )


# --- the placement rule ----------------------------------------------------------------------


def test_same_port_on_different_hosts_is_accepted() -> None:
    """Every node on 5432, each on its own host, as pgEdge users write their specs."""
    spec = spec_of(
        0,
        {"name": "n1", "host_ids": ["h1"], "port": 5432},
        {"name": "n2", "host_ids": ["h2"], "port": 5432},
        {"name": "n3", "host_ids": ["h3"], "port": 5432},
    )
    assert clashes(spec) == []


def test_inherited_port_on_different_hosts_is_accepted() -> None:
    """A database-level port inherited by nodes on different hosts is no clash."""
    spec = spec_of(5432, {"name": "n1", "host_ids": ["h1"]}, {"name": "n2", "host_ids": ["h2"]})
    assert clashes(spec) == []


def test_same_port_on_one_host_is_refused_at_the_second_node() -> None:
    """Two nodes on one host with one fixed port: the second node's port, naming the first."""
    spec = spec_of(
        0,
        {"name": "n1", "host_ids": ["h1"], "port": 5432},
        {"name": "n2", "host_ids": ["h2"], "port": 5432},
        {"name": "n3", "host_ids": ["h1"], "port": 5432},
    )
    assert clashes(spec) == [
        {"path": "spec.nodes[2].port", "message": "port 5432 is also used by node n1 on host h1"}
    ]


def test_a_node_without_host_ids_is_on_the_default_host() -> None:
    """A node with no host_ids goes on the default host, so it clashes with a node placed
    there explicitly; on another default host it does not."""
    spec = spec_of(
        0, {"name": "n1", "host_ids": ["h1"], "port": 6001}, {"name": "n2", "port": 6001}
    )
    assert clashes(spec, default_host="h1") == [
        {"path": "spec.nodes[1].port", "message": "port 6001 is also used by node n1 on host h1"}
    ]
    assert clashes(spec, default_host="h2") == []


def test_inherited_port_on_one_host_is_refused_at_spec_port() -> None:
    """A database-level port two nodes of one host inherit is reported at `spec.port`."""
    spec = spec_of(5432, {"name": "n1"}, {"name": "n2", "port": 6000}, {"name": "n3"})
    assert clashes(spec) == [
        {
            "path": "spec.port",
            "message": "port 5432, inherited by node n3, is also used by node n1 on host h1: "
            "set a port per node or use 0",
        }
    ]


def test_every_clash_is_reported_at_once() -> None:
    """Clashes on several hosts and ports are all reported, in node order."""
    spec = spec_of(
        7000,
        {"name": "n1", "host_ids": ["h1"], "port": 6001},
        {"name": "n2", "host_ids": ["h1"], "port": 6001},
        {"name": "n3", "host_ids": ["h2"]},
        {"name": "n4", "host_ids": ["h2"]},
    )
    assert [p["path"] for p in clashes(spec)] == ["spec.nodes[1].port", "spec.port"]


def test_nodes_with_an_instance_keep_their_port_first() -> None:
    """A node that already has an instance claims its port whatever its place in the list: a
    new node asking for it on that host is the one refused."""
    spec = spec_of(
        0,
        {"name": "n3", "host_ids": ["h1"], "port": 6001},
        {"name": "n1", "host_ids": ["h1"], "port": 6001},
    )
    assert clashes(spec, placed={"n1": ("h1", 6001)}) == [
        {"path": "spec.nodes[0].port", "message": "port 6001 is also used by node n1 on host h1"}
    ]


def test_ports_of_other_instances_on_the_host_are_refused() -> None:
    """A port recorded for another database's instance on that host is refused; the same port
    on another host is free."""
    spec = spec_of(
        0,
        {"name": "n1", "host_ids": ["h1"], "port": 6001},
        {"name": "n2", "host_ids": ["h2"], "port": 6001},
    )
    assert clashes(spec, taken={("h1", 6001)}) == [
        {"path": "spec.nodes[0].port", "message": "port 6001 is already in use on host h1"}
    ]


def test_a_port_something_listens_on_is_refused() -> None:
    """A port the host's own probe finds taken is refused, at `spec.port` when inherited."""
    spec = spec_of(6001, {"name": "n1", "host_ids": ["h1"]}, {"name": "n2", "host_ids": ["h2"]})
    assert clashes(spec, busy={("h2", 6001)}) == [
        {
            "path": "spec.port",
            "message": "port 6001, inherited by node n2, is already in use on host h2",
        }
    ]


def test_zero_ports_are_never_probed() -> None:
    """Port 0 (pick one) never clashes and never asks the host."""
    spec = spec_of(0, {"name": "n1"}, {"name": "n2"})

    def probe(host: str, port: int) -> bool:
        raise AssertionError(f"probed {host}:{port}")

    assert (
        check_host_ports(
            spec,
            {"n1": "h1", "n2": "h1"},
            placed={},
            taken=(),
            address_of=lambda host: host,
            is_free=probe,
        )
        == []
    )


def test_hosts_sharing_an_address_share_their_ports() -> None:
    """Hosts whose instances listen on one address (containers on one machine's host
    network) are one host for ports, and the message says why."""
    spec = spec_of(
        0,
        {"name": "n1", "host_ids": ["d1"], "port": 6001},
        {"name": "n2", "host_ids": ["d2"], "port": 6001},
    )
    assert clashes(spec, address_of=lambda host: "127.0.0.1") == [
        {
            "path": "spec.nodes[1].port",
            "message": "port 6001 is also used by node n1 on host d1, which shares address "
            "127.0.0.1 with host d2",
        }
    ]


def test_unknown_hosts_are_left_to_the_host_check() -> None:
    """A node whose host is unknown (absent from `hosts`) is not checked for ports."""
    spec = spec_of(
        0,
        {"name": "n1", "host_ids": ["h1"], "port": 6001},
        {"name": "n2", "host_ids": ["h1"], "port": 6001},
    )
    problems = check_host_ports(
        spec, {"n1": "h1"}, placed={}, taken=(), address_of=str, is_free=lambda h, p: True
    )
    assert problems == []


# --- spec validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "nodes", "path"),
    [
        (80, [{"name": "n1", "host_ids": ["h1"]}], "spec.port"),
        (
            0,
            [{"name": "n1"}, {"name": "n2", "host_ids": ["h2"], "port": 1023}],
            "spec.nodes[1].port",
        ),
    ],
)
def test_privileged_ports_are_still_refused(
    port: int, nodes: list[dict[str, Any]], path: str
) -> None:
    """Ports 1-1023 are refused by spec validation, at the field that sets them."""
    body = {"spec": {"database_name": "app", "port": port, "nodes": nodes}}
    with pytest.raises(InvalidInputError) as info:
        parse_database_request(msgspec.json.encode(body))
    assert [e["path"] for e in info.value.errors] == [path]
    assert "privileged" in info.value.errors[0]["message"]


# --- local named hosts -----------------------------------------------------------------------


@pytest.fixture
def named(tmp_path: Path) -> LocalOrchestrator:
    return LocalOrchestrator(Settings(data_dir=tmp_path, local_hosts="h1,h2"))


@pytest.fixture
def single(tmp_path: Path) -> LocalOrchestrator:
    return LocalOrchestrator(Settings(data_dir=tmp_path))


def ref(host: str, port: int = 5432) -> InstanceRef:
    return InstanceRef(
        instance_id=f"shop-{host}", database_id="shop", node_name="n1", host_id=host, port=port
    )


def test_the_default_host_keeps_its_address_and_sockets(
    single: LocalOrchestrator, tmp_path: Path
) -> None:
    """Without named hosts, instances stay on 127.0.0.1 and `<run dir>/i`, as before."""
    run_dir = Settings(data_dir=tmp_path).run_dir
    assert single.connection_info(ref("local")) == ("127.0.0.1", 5432)
    assert single.socket_dir(ref("local")) == str(run_dir / "i")
    assert single.replication_dsn(ref("local"), "app") == (
        f"host={run_dir / 'i'} port=5432 dbname=app user=postgres"
    )


def test_named_hosts_have_their_own_address_and_sockets(named: LocalOrchestrator) -> None:
    """The i-th named host listens on 127.0.1.i with a socket directory of its own, and the
    replication DSN and connection info follow it."""
    sockets = {named.socket_dir(ref("h1")), named.socket_dir(ref("h2"))}
    assert len(sockets) == 2
    for index, host in enumerate(("h1", "h2"), start=1):
        directory = named.socket_dir(ref(host))
        assert directory.endswith(f"/i/{host}")
        assert named.connection_info(ref(host)) == (f"127.0.1.{index}", 5432)
        assert named.replication_dsn(ref(host), "app") == (
            f"host={directory} port=5432 dbname=app user=postgres"
        )


def test_socket_paths_stay_short(tmp_path: Path) -> None:
    """Even for the longest host id, a socket path fits the ~107-byte limit of unix sockets."""
    longest = "h" * 32
    orchestrator = LocalOrchestrator(Settings(data_dir=tmp_path, local_hosts=longest))
    path = f"{orchestrator.socket_dir(ref(longest, 65535))}/.s.PGSQL.65535"
    assert len(path.encode()) < 100, path


def test_an_unknown_host_has_no_address(named: LocalOrchestrator) -> None:
    """An instance on a host no longer named is refused in words, not given a wrong address."""
    with pytest.raises(PreconditionError, match="host h3 is not a local host"):
        named.connection_info(ref("h3"))


@pytest.fixture
def listening() -> Iterator[Callable[[str, int], int]]:
    """Listen on an address (on a port free on both named hosts); closed after the test."""
    opened: list[socket.socket] = []

    def listen(address: str, port: int) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        opened.append(sock)
        sock.bind((address, port))
        sock.listen()
        return int(sock.getsockname()[1])

    yield listen
    for sock in opened:
        sock.close()


def test_a_port_busy_on_one_host_is_free_on_another(
    named: LocalOrchestrator, listening: Callable[[str, int], int]
) -> None:
    """port_is_free probes the host's own address: a listener on h1's port leaves h2's free."""
    port = listening("127.0.1.1", 0)
    assert not named.port_is_free("h1", port)
    assert named.port_is_free("h2", port)
    listening("127.0.1.2", port)
    assert not named.port_is_free("h2", port)


def test_picked_ports_are_free_on_the_host(named: LocalOrchestrator) -> None:
    """pick_port gives a port free on the host's own address, never an excluded one."""
    port = named.pick_port("h2", exclude=set())
    assert named.port_is_free("h2", port)
    assert named.pick_port("h2", exclude={port}) != port


def test_tcp_rules_admit_the_whole_loopback_network_with_a_password() -> None:
    """Clients and replication over TCP from any loopback address need SCRAM; the socket
    stays trusted."""
    rules = [line.split() for line in HBA_RULES.splitlines()]
    ipv4 = [r for r in rules if r[0] == "host" and r[3].startswith("127.")]
    assert [(r[1], r[3], r[4]) for r in ipv4] == [
        ("all", "127.0.0.0/8", "scram-sha-256"),
        ("replication", "127.0.0.0/8", "scram-sha-256"),
    ]
