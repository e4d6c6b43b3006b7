"""What an instance runs on: CPU and memory limits, container options and versions.

pgEdge's `cpus`, `memory` and `orchestrator_opts.swarm` describe the instance's container; the
docker and swarm orchestrators apply them, the local one (plain processes) has nothing to apply
them to and refuses them with that reason. Versions are pgEdge's `"15"` / `"15.x"` form.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import PurePosixPath

from controlplane.orchestrator.base import ContainerOptions, ExtraMount
from controlplane.spec.models import DatabaseSpec, NodeSpec, OrchestratorOpts
from controlplane.spec.paths import (
    UNSAFE_TEXT,
    Problem,
    field_path,
    has_control_chars,
    item_path,
    problem,
)

# The PostgreSQL majors this control plane runs, and the one form it reads them in.
POSTGRES_MAJORS = ("15",)
_POSTGRES_VERSION = re.compile(r"^([0-9]{1,2})(\.[0-9]{1,2})?$")
_SPOCK_VERSION = re.compile(r"^[0-9]$")

_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGTkmgt]i?[Bb]?|[Bb])?$")
_MULTIPLIERS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
# Below this Postgres with its shared memory does not start reliably (Docker's own floor is 6MB).
MIN_MEMORY_BYTES = 64 * 1024**2

# Docker labels the control plane sets on its containers (it finds them by these).
RESERVED_LABEL_PREFIX = "controlplane"
# Paths inside an instance container the control plane mounts or owns.
_RESERVED_MOUNTS = ("/var/lib/postgresql", "/var/run/postgresql", "/run/controlplane-secrets")

LOCAL_ORCHESTRATOR = "local"
DOCKER_ORCHESTRATOR = "docker"
SWARM_ORCHESTRATOR = "swarm"
_USE_DOCKER = (
    "the docker and swarm orchestrators apply it (CONTROLPLANE_ORCHESTRATOR=docker or swarm)"
)
# What the docker and swarm orchestrators apply to an instance's container (on swarm, its
# service: bind mounts, labels, its image, and resource limits): bind mounts, labels, its
# image, nano_cpus and mem_limit. Not extra_networks: instances use the host's network.
DOCKER_APPLIES = frozenset({"cpus", "memory", "extra_volumes", "extra_labels", "image"})


def _not_applied(orchestrator: str | None, name: str) -> str | None:
    """Why `orchestrator` cannot apply container option `name`, or None when it does (or the
    orchestrator is not known yet)."""
    if orchestrator == LOCAL_ORCHESTRATOR:
        return (
            "the local orchestrator runs Postgres as a plain process on this machine: there is "
            f"no container for {name}; {_USE_DOCKER}"
        )
    if orchestrator in (DOCKER_ORCHESTRATOR, SWARM_ORCHESTRATOR) and name not in DOCKER_APPLIES:
        return f"the {orchestrator} orchestrator does not apply {name} yet"
    return None


def check_postgres_version(version: str, path: str) -> list[Problem]:
    """`version` must be a major we run, as `"15"` or `"15.<minor>"`."""
    match = _POSTGRES_VERSION.match(version)
    can = ", ".join(f'"{major}" or "{major}.<minor>"' for major in POSTGRES_MAJORS)
    if match is None:
        return [problem(path, f"expected a PostgreSQL version like {can}, got {version!r}")]
    if match.group(1) not in POSTGRES_MAJORS:
        return [
            problem(
                path,
                f"postgres_version {version} cannot run here: this control plane runs "
                f"PostgreSQL {', '.join(POSTGRES_MAJORS)} only (use {can}; the minor is the "
                "installed one)",
            )
        ]
    return []


def check_spock_version(version: str, path: str) -> list[Problem]:
    """pgEdge's Spock major: one digit. Replication here is pglogical 2 whatever it says."""
    if _SPOCK_VERSION.match(version) is None:
        return [problem(path, f'expected a Spock major version like "5", got {version!r}')]
    return []


def major_of(version: str) -> str:
    """The major of a `"15"` / `"15.4"` version."""
    return version.split(".", 1)[0]


def cpu_count(cpus: str) -> Decimal:
    """pgEdge's `cpus` ("2", "0.5", "500m") as a number of CPUs; 0 means no limit."""
    if cpus.endswith("m"):
        return Decimal(cpus[:-1]) / 1000
    return Decimal(cpus)


def nano_cpus(cpus: str) -> int:
    """Docker's `nano_cpus` for pgEdge's `cpus` (0: no limit)."""
    return int(cpu_count(cpus) * 1_000_000_000)


def memory_bytes(memory: str) -> int | None:
    """pgEdge's `memory` in SI ("500M", "2GB") or IEC ("16GiB", "512Mi") notation as bytes,
    or None when it is neither."""
    match = _MEMORY.match(memory.strip())
    if match is None:
        return None
    number, unit = Decimal(match.group(1)), (match.group(2) or "").lower().rstrip("b")
    if unit.endswith("i"):
        return int(number * 1024 ** "kmgt".index(unit[0]) * 1024)
    return int(number * _MULTIPLIERS[unit])


def container_options(spec: DatabaseSpec, node: NodeSpec) -> ContainerOptions:
    """The container options of `node`'s instances, node values over the database's as in
    pgEdge: its cpus when set and not 0, its memory when set, its orchestrator_opts whole."""
    cpus = node.cpus if node.cpus is not None and cpu_count(node.cpus) > 0 else spec.cpus
    memory = node.memory if node.memory is not None else spec.memory
    opts = node.orchestrator_opts if node.orchestrator_opts is not None else spec.orchestrator_opts
    swarm = opts.swarm if opts is not None else None
    return ContainerOptions(
        image=swarm.image if swarm is not None and swarm.image else None,
        nano_cpus=nano_cpus(cpus) if cpus is not None else 0,
        memory_bytes=(memory_bytes(memory) or 0) if memory is not None else 0,
        labels=tuple(sorted(swarm.extra_labels.items())) if swarm is not None else (),
        volumes=tuple(
            ExtraMount(host_path=v.host_path, destination_path=v.destination_path)
            for v in (swarm.extra_volumes if swarm is not None else [])
        ),
    )


def check_volume_roots(
    spec: DatabaseSpec, roots: Sequence[PurePosixPath], data_dir: PurePosixPath
) -> list[Problem]:
    """An extra volume's host_path lies inside one of the backup roots the operator allows and
    outside the control plane's data directory: otherwise a database could have any host
    directory (the control plane's own secrets included) mounted into its container."""
    scopes: list[tuple[str, DatabaseSpec | NodeSpec]] = [("spec", spec)]
    scopes += [(item_path("spec.nodes", i), node) for i, node in enumerate(spec.nodes)]
    errors: list[Problem] = []
    for path, scope in scopes:
        opts = scope.orchestrator_opts
        if opts is None or opts.swarm is None:
            continue
        volumes_path = field_path(
            field_path(field_path(path, "orchestrator_opts"), "swarm"), "extra_volumes"
        )
        for index, volume in enumerate(opts.swarm.extra_volumes):
            if not volume.host_path.startswith("/"):
                continue  # reported by check_resources
            where = PurePosixPath(volume.host_path)
            host_path = field_path(item_path(volumes_path, index), "host_path")
            if where == data_dir or data_dir in where.parents or where in data_dir.parents:
                message = "must not be, hold or lie inside the control plane's data directory"
                errors.append(problem(host_path, message))
            elif not any(where == root or root in where.parents for root in roots):
                message = (
                    "must be inside one of the backup roots the operator allows "
                    f"({', '.join(str(r) for r in roots)}; CONTROLPLANE_BACKUP_ROOTS)"
                )
                errors.append(problem(host_path, message))
    return errors


def check_resources(spec: DatabaseSpec, orchestrator: str | None) -> list[Problem]:
    """cpus, memory and orchestrator_opts at database and node level, for `orchestrator`
    (None: only what holds on every orchestrator is checked)."""
    scopes: list[tuple[str, DatabaseSpec | NodeSpec]] = [("spec", spec)]
    scopes += [(item_path("spec.nodes", i), node) for i, node in enumerate(spec.nodes)]
    errors: list[Problem] = []
    for path, scope in scopes:
        errors += _check_limits(scope.cpus, scope.memory, path, orchestrator)
        if scope.orchestrator_opts is not None:
            opts_path = field_path(path, "orchestrator_opts")
            errors += _check_orchestrator_opts(scope.orchestrator_opts, opts_path, orchestrator)
        if scope.patroni_port:
            message = (
                "the control plane picks each Patroni member's REST port itself (one free "
                "port per instance): leave patroni_port out or 0"
            )
            errors.append(problem(field_path(path, "patroni_port"), message))
    return errors


def _check_limits(
    cpus: str | None, memory: str | None, path: str, orchestrator: str | None
) -> list[Problem]:
    errors: list[Problem] = []
    reason = _not_applied(orchestrator, "cpus")
    if cpus is not None and cpu_count(cpus) > 0 and reason is not None:
        errors.append(problem(field_path(path, "cpus"), f'{reason}; leave cpus out or "0"'))
    if memory is None:
        return errors
    size = memory_bytes(memory)
    reason = _not_applied(orchestrator, "memory")
    if size is None:
        message = f'expected memory in SI or IEC notation like "512M" or "16GiB", got {memory!r}'
        errors.append(problem(field_path(path, "memory"), message))
    elif reason is not None:
        message = f"{reason}; size shared_buffers and work_mem in postgresql_conf instead"
        errors.append(problem(field_path(path, "memory"), message))
    elif size < MIN_MEMORY_BYTES:
        message = f"memory {memory} is below 64MiB, too little for a Postgres instance"
        errors.append(problem(field_path(path, "memory"), message))
    return errors


def _check_orchestrator_opts(
    opts: OrchestratorOpts, path: str, orchestrator: str | None
) -> list[Problem]:
    swarm = opts.swarm
    if swarm is None:
        return []
    swarm_path = field_path(path, "swarm")
    errors: list[Problem] = []
    used = [
        name
        for name, value in (
            ("extra_volumes", swarm.extra_volumes),
            ("extra_labels", swarm.extra_labels),
            ("extra_networks", swarm.extra_networks),
            ("image", swarm.image),
        )
        if value
    ]
    for name in used:
        reason = _not_applied(orchestrator, name)
        if reason is not None and name != "extra_networks":
            if name == "extra_volumes" and orchestrator == LOCAL_ORCHESTRATOR:
                reason += "; here a posix repository's base_path is used as it is"
            errors.append(problem(field_path(swarm_path, name), reason))
    if orchestrator == LOCAL_ORCHESTRATOR:
        if swarm.extra_networks:
            reason = _not_applied(orchestrator, "extra_networks")
            errors.append(problem(field_path(swarm_path, "extra_networks"), str(reason)))
        return errors
    for index, network in enumerate(swarm.extra_networks):
        message = (
            f"instance containers use the host's network (network_mode host, so that every "
            f"instance is reached on its host's address and port): they cannot join network "
            f"{network.id}; reach the instance at its connection_info address instead"
        )
        errors.append(problem(item_path(field_path(swarm_path, "extra_networks"), index), message))
    destinations: set[str] = set()
    for index, volume in enumerate(swarm.extra_volumes):
        volume_path = item_path(field_path(swarm_path, "extra_volumes"), index)
        errors += _check_mount_path(volume.host_path, field_path(volume_path, "host_path"))
        destination = field_path(volume_path, "destination_path")
        errors += _check_mount_path(volume.destination_path, destination)
        if volume.destination_path in destinations:
            errors.append(problem(destination, "another extra volume is mounted there"))
        destinations.add(volume.destination_path)
        if any(
            volume.destination_path == reserved
            or volume.destination_path.startswith(reserved + "/")
            for reserved in _RESERVED_MOUNTS
        ):
            message = "the control plane mounts its own data and sockets there"
            errors.append(problem(destination, message))
    for key, value in swarm.extra_labels.items():
        label_path = field_path(field_path(swarm_path, "extra_labels"), key)
        if key.startswith(RESERVED_LABEL_PREFIX):
            message = f"labels starting with {RESERVED_LABEL_PREFIX} are the control plane's own"
            errors.append(problem(label_path, message))
        elif has_control_chars(key) or has_control_chars(value) or not key:
            errors.append(problem(label_path, UNSAFE_TEXT))
    if swarm.image is not None and (has_control_chars(swarm.image) or " " in swarm.image):
        errors.append(problem(field_path(swarm_path, "image"), "not an image reference"))
    return errors


def _check_mount_path(value: str, path: str) -> list[Problem]:
    if has_control_chars(value) or ":" in value:
        return [problem(path, "must not contain ':', a newline or NUL")]
    if not value.startswith("/"):
        return [problem(path, "must be an absolute path")]
    if posixpath.normpath(value) != value or "//" in value or value == "/":
        return [problem(path, "must be normalised (no '.', '..', '//' or trailing '/') and not /")]
    return []
