"""Docker Swarm layout (pure): names, placement, service specs and node/task readings.

An instance on a swarm is one service with one task, pinned to its host by the node label
`controlplane.host=<host_id>` (so a spec's `host_ids` are node labels), on the host network,
with its data in a named volume on that node. Rendered files come from Swarm configs and
secrets, each named `<base>-<content hash>`: new content is a new object (Swarm objects are
immutable), and an old one is removed once no service refers to it. Secret values appear only
in the secret objects themselves, never in labels, environment or logs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from controlplane.models import Host

LABEL = "controlplane"
HOST_LABEL = f"{LABEL}.host"
# Which logical object (the name without its hash) a secret or config holds a version of.
OBJECT_LABEL = f"{LABEL}.object"
SECRETS_DIR = "/run/secrets"
# Swarm object names: at most 64 characters, alphanumerics with inner `-`, `_` and `.`.
_OBJECT_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,62}[a-zA-Z0-9])?$")
_HASH_CHARS = 12
# Task states after which a task never runs again (swarmkit's api.TaskState).
TERMINAL_TASK_STATES = frozenset(
    {"complete", "shutdown", "failed", "rejected", "orphaned", "remove"}
)
# Why a task stays pending when no node satisfies its placement constraints.
NO_SUITABLE_NODE = "no suitable node"
# A host whose node the manager does not hear from (the Docker orchestrator's word for an
# engine it cannot reach).
UNREACHABLE = "unreachable"

RestartCondition = Literal["none", "on-failure", "any"]


class FileRef(msgspec.Struct, frozen=True, kw_only=True):
    """A secret or config mounted in a task: the Swarm object's name, the file's path (a
    secret's is relative to /run/secrets), owner and mode."""

    name: str
    target: str
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444


class BindRef(msgspec.Struct, frozen=True, kw_only=True):
    """A directory of the node bind-mounted into a task (it must exist on the node)."""

    source: str
    target: str
    read_only: bool = False


class ServiceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One service (one task) pinned to a host: what it runs, its volume, files and limits
    (0: none). `user` is the container user (a name of the image or `uid:gid`)."""

    name: str
    host_id: str
    image: str
    command: list[str]
    labels: dict[str, str] = {}
    user: str = ""
    volume: str = ""
    volume_target: str = ""
    secrets: list[FileRef] = []
    configs: list[FileRef] = []
    binds: list[BindRef] = []
    env: dict[str, str] = {}
    nano_cpus: int = 0
    memory: int = 0
    restart: RestartCondition = "on-failure"
    stop_grace_seconds: float = 30.0
    stop_signal: str = ""  # empty: the image's (SIGTERM)


class SwarmNode(msgspec.Struct, frozen=True, kw_only=True):
    """A swarm node as the manager reports it; `host_id` is its `controlplane.host` label and
    `addr` the address the node is reached at (its instances listen there)."""

    id: str
    hostname: str
    availability: str
    state: str
    labels: dict[str, str]
    host_id: str | None
    addr: str = ""


class TaskReading(msgspec.Struct, frozen=True, kw_only=True):
    """The newest task of a service: its state, error text, exit code and container."""

    id: str
    state: str
    desired_state: str
    error: str
    exit_code: int | None
    container_id: str | None
    node_id: str | None


def object_name(base: str, content: bytes) -> str:
    """The name of a secret or config holding `content`: `<base>-<hash>` (`base` is cut so the
    name fits Swarm's 64 characters)."""
    digest = hashlib.sha256(content).hexdigest()[:_HASH_CHARS]
    name = f"{base[: 63 - _HASH_CHARS]}-{digest}"
    if not _OBJECT_NAME.match(name):
        raise ValueError(f"not a valid swarm object name: {name!r}")
    return name


def base_of(name: str) -> str:
    """The base of a hashed object name (inverse of `object_name`, up to cutting)."""
    return name.rsplit("-", 1)[0]


def placement_constraint(host_id: str) -> str:
    """The constraint that pins a service to the node labelled with the host id."""
    return f"node.labels.{HOST_LABEL}=={host_id}"


def object_labels(base: str, labels: Mapping[str, str]) -> dict[str, str]:
    """Labels of a secret or config: the caller's, ours and which logical object it is."""
    return {**labels, LABEL: "", OBJECT_LABEL: base}


def service_labels(spec: ServiceSpec) -> dict[str, str]:
    return {**spec.labels, LABEL: "", HOST_LABEL: spec.host_id}


def referenced_objects(services: Sequence[Mapping[str, Any]]) -> tuple[set[str], set[str]]:
    """The names of the secrets and configs the services (inspect attributes) mount."""
    secrets: set[str] = set()
    configs: set[str] = set()
    for service in services:
        container = service.get("Spec", {}).get("TaskTemplate", {}).get("ContainerSpec", {})
        secrets.update(str(s["SecretName"]) for s in container.get("Secrets") or [])
        configs.update(str(c["ConfigName"]) for c in container.get("Configs") or [])
    return secrets, configs


def read_node(attrs: Mapping[str, Any]) -> SwarmNode:
    """A node's inspect attributes as a SwarmNode."""
    spec = attrs.get("Spec", {})
    labels = {str(k): str(v) for k, v in (spec.get("Labels") or {}).items()}
    return SwarmNode(
        id=str(attrs["ID"]),
        hostname=str(attrs.get("Description", {}).get("Hostname", "")),
        availability=str(spec.get("Availability", "")),
        state=str(attrs.get("Status", {}).get("State", "")),
        labels=labels,
        host_id=labels.get(HOST_LABEL),
        addr=node_addr(attrs),
    )


def node_addr(attrs: Mapping[str, Any]) -> str:
    """The node's address: `Status.Addr`; a manager that reports 0.0.0.0 there (it was given
    no advertise address) is reached at its manager address instead."""
    addr = str(attrs.get("Status", {}).get("Addr") or "")
    if addr in ("", "0.0.0.0"):
        manager = str((attrs.get("ManagerStatus") or {}).get("Addr") or "")
        addr = manager.rsplit(":", 1)[0].strip("[]") if manager else addr
    return addr


def node_state(node: SwarmNode) -> str:
    """A node's state in words for /v1/hosts: `available` when ready and active, the
    availability (`pause`, `drain`) of a ready node, and `unreachable` for a node the manager
    does not hear from (`down`, `disconnected`, `unknown`): as the Docker orchestrator says of
    an engine it cannot reach."""
    if node.state != "ready":
        return UNREACHABLE
    return "available" if node.availability == "active" else node.availability


def node_hba(base: str, addresses: Sequence[str]) -> str:
    """pg_hba.conf rules `base` (loopback) plus `host` rules (all users, and replication, by
    SCRAM) for each address alone: the swarm's nodes (replication links between instances on
    different nodes) and the control plane's own address toward them. Loopback addresses are
    covered by `base` already."""
    extra = []
    for addr in sorted(set(addresses)):
        if not addr or addr.startswith("127.") or addr == "0.0.0.0":
            continue
        cidr = f"{addr}/128" if ":" in addr else f"{addr}/32"
        extra += [
            f"host    all             all             {cidr:<23} scram-sha-256",
            f"host    replication     all             {cidr:<23} scram-sha-256",
        ]
    if not extra:
        return base
    return base.rstrip("\n") + "\n# The swarm's node addresses.\n" + "\n".join(extra) + "\n"


def hosts(nodes: Sequence[SwarmNode], instances: Mapping[str, int] | None = None) -> list[Host]:
    """The labelled nodes as hosts (a node without the host label is not a host)."""
    counts = instances or {}
    return sorted(
        (
            Host(
                id=node.host_id,
                orchestrator="swarm",
                state=node_state(node),
                instances=counts.get(node.host_id, 0),
            )
            for node in nodes
            if node.host_id
        ),
        key=lambda host: host.id,
    )


def latest_task(tasks: Sequence[Mapping[str, Any]]) -> TaskReading | None:
    """The newest of a service's tasks (by creation), or None when it has none yet."""
    if not tasks:
        return None
    task = max(tasks, key=lambda t: (str(t.get("CreatedAt", "")), int(t["Version"]["Index"])))
    status = task.get("Status", {})
    container = status.get("ContainerStatus") or {}
    exit_code = container.get("ExitCode")
    return TaskReading(
        id=str(task["ID"]),
        state=str(status.get("State", "")),
        desired_state=str(task.get("DesiredState", "")),
        error=str(status.get("Err") or ""),
        exit_code=int(exit_code) if exit_code is not None else None,
        container_id=str(container["ContainerID"]) if container.get("ContainerID") else None,
        node_id=str(task["NodeID"]) if task.get("NodeID") else None,
    )
