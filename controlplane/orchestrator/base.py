"""The Orchestrator seam: how instances are created, started, stopped and reached."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import asyncpg
from msgspec import Struct

from controlplane.models import Host
from controlplane.system.process import CommandResult, LineSink

InstanceStatus = Literal["running", "stopped", "missing"]


class ExtraMount(Struct, frozen=True, kw_only=True, order=True):
    """A host directory bind-mounted into an instance's containers (pgEdge's extra_volumes)."""

    host_path: str
    destination_path: str


class ContainerOptions(Struct, frozen=True, kw_only=True):
    """What an instance's container runs with beyond the control plane's own needs: pgEdge's
    `cpus`, `memory` and `orchestrator_opts.swarm`, node values over the database's. Only an
    orchestrator with containers applies them (the local one refuses them at validation)."""

    image: str | None = None  # None: the orchestrator's own instance image
    nano_cpus: int = 0  # 0: no limit
    memory_bytes: int = 0  # 0: no limit
    labels: tuple[tuple[str, str], ...] = ()
    volumes: tuple[ExtraMount, ...] = ()


class InstanceRef(Struct, frozen=True, kw_only=True):
    """What an orchestrator needs to know to place and address one instance."""

    instance_id: str
    database_id: str
    node_name: str
    host_id: str
    port: int
    # Who starts and stops its Postgres: the orchestrator itself ("pg_ctl"), or the instance's
    # Patroni ("patroni": the instances of a node with replicas).
    supervisor: str = "pg_ctl"
    # The container options of the instance's node as the spec gives them now; None when the
    # caller does not know the spec (the orchestrator then uses those it was last given).
    container: ContainerOptions | None = None


class Orchestrator(Protocol):
    """Runs Postgres instances somewhere (local processes, Docker containers)."""

    name: str

    def hosts(self) -> list[Host]:
        """The hosts this orchestrator can place instances on."""
        ...

    def default_host(self) -> str: ...

    def port_is_free(self, host_id: str, port: int) -> bool:
        """True when nothing listens on `port` of the host."""
        ...

    def pick_port(self, host_id: str, exclude: set[int]) -> int:
        """A free port on the host, not in `exclude` (ports already given to instances)."""
        ...

    async def create_instance(self, ref: InstanceRef, *, on_line: LineSink) -> bool:
        """Initialise the instance's data directory if absent; True when it was created now."""
        ...

    async def write_postgresql_conf(self, ref: InstanceRef, settings: Mapping[str, str]) -> bool:
        """Write the managed configuration file; True when its content changed."""
        ...

    async def write_file(self, ref: InstanceRef, name: str, text: str) -> bool:
        """Write a private file (mode 0600) into the instance directory; True when changed."""
        ...

    async def set_environment(self, ref: InstanceRef, env: Mapping[str, str]) -> bool:
        """Environment Postgres starts with (archive-push runs inside it and needs repository
        secrets); True when it changed, which takes a restart to apply."""
        ...

    async def make_dirs(self, ref: InstanceRef, paths: Sequence[str]) -> None:
        """Create directories (absolute, as seen by the instance) owned by the OS user."""
        ...

    async def start_patroni(self, ref: InstanceRef, config: str, *, role: str) -> None:
        """Make the instance a member of its node's Patroni cluster with `config` (rendered by
        `orchestrator.patroni.render_config`) and start its Patroni; wait until the member
        serves as `role` (primary or replica)."""
        ...

    async def release_from_patroni(self, ref: InstanceRef) -> None:
        """Give a stopped instance's data directory back to pg_ctl: the configuration Patroni
        had moved aside (`postgresql.base.conf`) becomes `postgresql.conf` again, and Patroni's
        own files are removed. A no-op for an instance Patroni never ran."""
        ...

    async def read_file(self, ref: InstanceRef, name: str) -> str | None:
        """A file written by `write_file`, or None when absent."""
        ...

    async def has_cluster(self, ref: InstanceRef) -> bool:
        """True when the data directory holds a complete cluster (pg_control present: initdb
        finished, or a restore did — pgBackRest writes pg_control last)."""
        ...

    async def empty_data_dir(self, ref: InstanceRef) -> None:
        """Create (or empty) the data directory, private to the OS user, for a restore."""
        ...

    def file_path(self, ref: InstanceRef, name: str) -> str:
        """Where a file written by `write_file` is seen from inside the instance."""
        ...

    async def start(
        self, ref: InstanceRef, *, on_line: LineSink, options: Mapping[str, str] | None = None
    ) -> None:
        """Start Postgres (with one-off `-c` options) and wait until it accepts writes."""
        ...

    async def stop(self, ref: InstanceRef, *, on_line: LineSink) -> None:
        """Stop Postgres (fast shutdown); a no-op when it is not running."""
        ...

    async def fence_clients(self, ref: InstanceRef, *, fenced: bool) -> bool:
        """Admit only the superuser (`fenced`) or every client again, from the next start or
        reload on (`hba.client_hba`); True when the rules changed."""
        ...

    async def status(self, ref: InstanceRef) -> InstanceStatus: ...

    async def exec(
        self,
        ref: InstanceRef,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
    ) -> CommandResult:
        """Run a tool (pgbackrest, psql …) next to the instance, as the OS user."""
        ...

    async def run_one_off(
        self,
        ref: InstanceRef,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: LineSink | None = None,
    ) -> CommandResult:
        """Run a tool against the instance's data while Postgres is stopped (restore)."""
        ...

    async def remove_instance(self, ref: InstanceRef, *, on_line: LineSink) -> None:
        """Stop and delete the instance and its data (backup repositories are kept)."""
        ...

    def replication_dsn(self, ref: InstanceRef, database: str) -> str:
        """A superuser libpq DSN by which the other instances reach this one."""
        ...

    async def build_settings(self) -> dict[str, str]:
        """Settings the Postgres build itself needs (beyond what the spec and mesh need)."""
        ...

    def connection_info(self, ref: InstanceRef) -> tuple[str, int]:
        """(host, port) clients use to reach the instance."""
        ...

    async def connect(self, ref: InstanceRef, database: str = "postgres") -> asyncpg.Connection:
        """An administrative (superuser) connection to the instance."""
        ...

    def data_dir(self, ref: InstanceRef) -> str:
        """The instance's PGDATA as seen by tools run through `exec`/`run_one_off`."""
        ...

    def socket_dir(self, ref: InstanceRef) -> str: ...


async def reload_settings(orchestrator: Orchestrator, ref: InstanceRef) -> None:
    """Make a running instance re-read its configuration files (pg_reload_conf)."""
    conn = await orchestrator.connect(ref)
    try:
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
