"""Several scratch PostgreSQL 15 clusters set up for a pglogical mesh, one per node name.

Each node is a :class:`ScratchCluster` (initdb + start, unix socket only) restarted once with the
settings pglogical needs, plus an application database ``app`` owned by a non-superuser role
``app_owner`` (tables are created by that role, as an application would).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from controlplane.replication import MeshNode
from tests.support.os_user import as_os_user, give_to_os_user
from tests.support.pgcluster import PG_BIN, ScratchCluster

APP_DB = "app"
APP_OWNER = "app_owner"

PGLOGICAL_SETTINGS = """
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_worker_processes = 24
track_commit_timestamp = on
shared_preload_libraries = 'pglogical'
"""


@dataclass
class PglogicalNode:
    """One running cluster: its node name, the cluster, and how peers reach its app database."""

    name: str
    cluster: ScratchCluster

    @property
    def mesh_node(self) -> MeshNode:
        """The node as the replication library sees it (libpq keyword DSN over the socket)."""
        return MeshNode(name=self.name, dsn=self.libpq_dsn())

    def libpq_dsn(self, database: str = APP_DB) -> str:
        return (
            f"host={self.cluster.socket_dir} port={self.cluster.port} "
            f"dbname={database} user=postgres"
        )

    async def connect(self, user: str = "postgres") -> asyncpg.Connection:  # type: ignore[type-arg]
        """A new connection to the app database (superuser by default)."""
        conn: asyncpg.Connection = await asyncpg.connect(  # type: ignore[type-arg]
            host=self.cluster.socket_dir, port=self.cluster.port, database=APP_DB, user=user
        )
        return conn

    def stop(self) -> None:
        self.cluster.stop()

    def start(self, *options: str) -> None:
        """Start the stopped cluster with server `options` for this start only, and wait until
        it accepts connections (``pg_ctl start -w`` returns earlier when it has to recover with
        hot_standby off)."""
        extra = ["-o", " ".join(options)] if options else []
        log = str(self.cluster.root / "server.log")
        _pg_ctl("start", "-w", "-D", str(self.cluster.data), "-l", log, *extra)
        ready = [str(PG_BIN / "pg_isready"), "-h", self.cluster.socket_dir, "-p"]
        ready += [str(self.cluster.port), "-d", APP_DB, "-U", "postgres"]
        deadline = time.monotonic() + 60
        while subprocess.run(as_os_user(ready), capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.name} does not accept connections; see {log}")
            time.sleep(0.1)

    def restart(self, *options: str) -> None:
        """Stop (fast) and start (not ``pg_ctl restart``: it would reuse earlier options)."""
        _pg_ctl("stop", "-m", "fast", "-w", "-D", str(self.cluster.data))
        self.start(*options)


def _pg_ctl(*args: str) -> None:
    subprocess.run(as_os_user([str(PG_BIN / "pg_ctl"), *args]), check=True, capture_output=True)


def start_node(root: Path, name: str) -> PglogicalNode:
    """initdb + start a cluster in ``root/name``, then restart it with pglogical settings."""
    node_root = root / name
    node_root.mkdir()
    give_to_os_user(node_root)
    cluster = ScratchCluster(node_root)
    cluster.start()
    with (cluster.data / "postgresql.conf").open("a") as conf:
        conf.write(PGLOGICAL_SETTINGS)
    # stop + start, not restart: shared_preload_libraries needs a new postmaster.
    _pg_ctl("stop", "-m", "fast", "-w", "-D", str(cluster.data))
    _pg_ctl("start", "-w", "-D", str(cluster.data), "-l", str(node_root / "server.log"))
    cluster.psql(f"CREATE ROLE {APP_OWNER} LOGIN")
    cluster.psql(f"CREATE DATABASE {APP_DB} OWNER {APP_OWNER}")
    return PglogicalNode(name=name, cluster=cluster)


def clone_node(source: PglogicalNode, root: Path, name: str, *options: str) -> PglogicalNode:
    """A new node whose data directory is a base backup of `source` (as a restore from the
    source's backup would produce), started with its own port and socket and `options`."""
    node_root = root / name
    node_root.mkdir()
    give_to_os_user(node_root)
    cluster = ScratchCluster(node_root)
    source_at = ["-h", source.cluster.socket_dir, "-p", str(source.cluster.port), "-U", "postgres"]
    subprocess.run(
        as_os_user(
            [
                str(PG_BIN / "pg_basebackup"),
                "-D",
                str(cluster.data),
                "-X",
                "stream",
                "-c",
                "fast",
                *source_at,
            ]
        ),
        check=True,
        capture_output=True,
    )
    with (cluster.data / "postgresql.conf").open("a") as conf:  # later lines win
        conf.write(f"port = {cluster.port}\nunix_socket_directories = '{node_root}'\n")
    node = PglogicalNode(name=name, cluster=cluster)
    node.start(*options)
    return node


async def start_nodes(root: Path, names: Iterable[str]) -> dict[str, PglogicalNode]:
    """Start several nodes concurrently (each start is a few blocking subprocesses)."""
    names = list(names)
    started = await asyncio.gather(
        *(asyncio.to_thread(start_node, root, name) for name in names), return_exceptions=True
    )
    nodes = {n.name: n for n in started if isinstance(n, PglogicalNode)}
    failures = [e for e in started if isinstance(e, BaseException)]
    if failures:
        stop_nodes(nodes.values())
        raise failures[0]
    return nodes


def stop_nodes(nodes: Iterable[PglogicalNode]) -> None:
    """Stop every node by its data directory (pg_ctl -m immediate)."""
    for node in nodes:
        node.stop()
