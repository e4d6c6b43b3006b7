"""Pure logic of the Swarm layout: object names, placement, nodes as hosts, task readings."""

from __future__ import annotations

import pytest

from controlplane.models import Host
from controlplane.orchestrator import swarm_layout as layout

# Trimmed from a 20.10 engine's answers (node inspect, task list).
NODE = {
    "ID": "6i39oxbbya80briyx6msgd6zj",
    "Version": {"Index": 98},
    "Spec": {"Labels": {"controlplane.host": "h1"}, "Role": "manager", "Availability": "active"},
    "Status": {"State": "ready", "Addr": "127.0.0.1"},
    "Description": {"Hostname": "vm"},
}
PENDING_TASK = {
    "ID": "sl1n1qr52kf2kw6lai49h4pat",
    "Version": {"Index": 105},
    "CreatedAt": "2026-12-02T03:49:06.331736155Z",
    "DesiredState": "running",
    "Status": {
        "State": "pending",
        "Message": "pending task scheduling",
        "Err": "no suitable node (scheduling constraints not satisfied on 1 node)",
    },
    "NodeID": None,
}


def node(
    ident: str, *, host: str | None, state: str = "ready", availability: str = "active"
) -> layout.SwarmNode:
    labels = {"controlplane.host": host} if host else {"other": "x"}
    return layout.read_node(
        {
            "ID": ident,
            "Spec": {"Labels": labels, "Availability": availability},
            "Status": {"State": state},
            "Description": {"Hostname": f"machine-{ident}"},
        }
    )


def test_object_names_change_with_content_and_fit_swarm_limits() -> None:
    """Same content, same name; new content, new name; a long base is cut to 64 characters."""
    first = layout.object_name("shop-n1-cipher", b"one")
    assert first == layout.object_name("shop-n1-cipher", b"one")
    assert first.startswith("shop-n1-cipher-")
    assert layout.object_name("shop-n1-cipher", b"two") != first
    assert layout.base_of(first) == "shop-n1-cipher"
    long = layout.object_name("d" * 80, b"x")
    assert len(long) == 64
    with pytest.raises(ValueError, match="not a valid swarm object name"):
        layout.object_name("bad/name", b"x")


def test_placement_pins_to_the_host_label() -> None:
    """A service is pinned by the node label `controlplane.host`."""
    assert layout.placement_constraint("h2") == "node.labels.controlplane.host==h2"


def test_a_node_reads_as_its_host() -> None:
    """Node attributes give id, hostname, availability, state, labels and the host id."""
    read = layout.read_node(NODE)
    assert read == layout.SwarmNode(
        id="6i39oxbbya80briyx6msgd6zj",
        hostname="vm",
        availability="active",
        state="ready",
        labels={"controlplane.host": "h1"},
        host_id="h1",
        addr="127.0.0.1",
    )


def test_hosts_are_labelled_nodes_with_their_availability() -> None:
    """Only labelled nodes are hosts; drained and paused nodes say so, a node the manager does
    not hear from is unreachable."""
    nodes = [
        node("a", host="h2", availability="drain"),
        node("b", host="h1"),
        node("c", host=None),
        node("d", host="h3", state="down"),
        node("e", host="h4", availability="pause"),
    ]
    assert layout.hosts(nodes, {"h1": 2}) == [
        Host(id="h1", orchestrator="swarm", state="available", instances=2),
        Host(id="h2", orchestrator="swarm", state="drain"),
        Host(id="h3", orchestrator="swarm", state="unreachable"),
        Host(id="h4", orchestrator="swarm", state="pause"),
    ]


@pytest.mark.parametrize("state", ["down", "disconnected", "unknown", ""])
def test_a_node_not_ready_is_unreachable(state: str) -> None:
    assert layout.node_state(node("a", host="h1", state=state)) == "unreachable"


def test_a_node_is_reached_at_its_status_address_or_its_manager_address() -> None:
    """`Status.Addr` as it is; a manager reporting 0.0.0.0 there is reached at the host part
    of its manager address (IPv6 brackets removed)."""
    worker = {**NODE, "Status": {"State": "down", "Addr": "100.64.0.2"}}
    assert layout.read_node(worker).addr == "100.64.0.2"
    manager = {
        **NODE,
        "Status": {"State": "ready", "Addr": "0.0.0.0"},
        "ManagerStatus": {"Addr": "100.64.0.1:2377", "Leader": True},
    }
    assert layout.read_node(manager).addr == "100.64.0.1"
    six = {**manager, "ManagerStatus": {"Addr": "[fd00::1]:2377"}}
    assert layout.read_node(six).addr == "fd00::1"
    assert layout.read_node({"ID": "x"}).addr == ""


def test_node_addresses_get_their_own_host_rules_and_loopback_none() -> None:
    """Each non-loopback address once, for all users and replication, after the base rules."""
    base = "# Managed.\nhost    all    all    127.0.0.0/8    scram-sha-256\n"
    text = layout.node_hba(base, ["100.64.0.2", "127.0.0.1", "100.64.0.1", "100.64.0.2", ""])
    lines = text.splitlines()
    assert lines[:2] == base.splitlines()
    rules = [line.split() for line in lines[2:] if not line.startswith("#")]
    assert rules == [
        ["host", "all", "all", "100.64.0.1/32", "scram-sha-256"],
        ["host", "replication", "all", "100.64.0.1/32", "scram-sha-256"],
        ["host", "all", "all", "100.64.0.2/32", "scram-sha-256"],
        ["host", "replication", "all", "100.64.0.2/32", "scram-sha-256"],
    ]
    assert layout.node_hba(base, ["127.0.0.1"]) == base


def test_the_newest_task_is_read_with_its_error() -> None:
    """The newest task wins; a pending one carries Swarm's placement error and no node."""
    older = {
        "ID": "old",
        "Version": {"Index": 90},
        "CreatedAt": "2026-12-02T03:40:00Z",
        "DesiredState": "shutdown",
        "NodeID": "n1",
        "Status": {
            "State": "failed",
            "Err": "task: non-zero exit (1)",
            "ContainerStatus": {"ContainerID": "c1", "ExitCode": 1},
        },
    }
    assert layout.latest_task([]) is None
    reading = layout.latest_task([older, PENDING_TASK])
    assert reading is not None
    assert (reading.id, reading.state, reading.node_id) == (
        "sl1n1qr52kf2kw6lai49h4pat",
        "pending",
        None,
    )
    assert layout.NO_SUITABLE_NODE in reading.error
    failed = layout.latest_task([older])
    assert failed is not None
    assert (failed.exit_code, failed.container_id, failed.error) == (
        1,
        "c1",
        "task: non-zero exit (1)",
    )


def test_referenced_objects_are_those_services_mount() -> None:
    """Secrets and configs in use are read from every service's container spec."""
    services = [
        {
            "Spec": {
                "TaskTemplate": {
                    "ContainerSpec": {
                        "Secrets": [{"SecretName": "k-1"}],
                        "Configs": [{"ConfigName": "c-1"}, {"ConfigName": "c-2"}],
                    }
                }
            }
        },
        {"Spec": {"TaskTemplate": {"ContainerSpec": {}}}},
    ]
    assert layout.referenced_objects(services) == ({"k-1"}, {"c-1", "c-2"})


def test_labels_never_carry_values() -> None:
    """Object and service labels are the caller's plus ours: names and ids only."""
    spec = layout.ServiceSpec(
        name="s", host_id="h1", image="i", command=["true"], labels={"a": "b"}
    )
    assert layout.service_labels(spec) == {"a": "b", "controlplane": "", "controlplane.host": "h1"}
    assert layout.object_labels("shop-key", {}) == {
        "controlplane": "",
        "controlplane.object": "shop-key",
    }
