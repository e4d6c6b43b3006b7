"""Instance records: one Postgres per node, its host, port, observed and desired state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from msgspec import Struct

from controlplane.models import InstanceState
from controlplane.store.pool import Connection, Executor


class InstanceRow(Struct, kw_only=True):
    id: str
    database_id: str
    node_name: str
    host_id: str
    port: int
    state: InstanceState
    role: str
    desired: str
    error: str | None
    generations: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    # Who starts and stops its Postgres: "pg_ctl" (the control plane) or "patroni".
    supervisor: str = "pg_ctl"


_COLUMNS = (
    "id, database_id, node_name, host_id, port, state, role, desired, error, generations,"
    " created_at, updated_at, supervisor"
)


def _row(record: asyncpg.Record) -> InstanceRow:
    return InstanceRow(**dict(record.items()))


def instance_id(database_id: str, node_name: str) -> str:
    """Stable instance id: database ids never contain `--`, so this cannot collide."""
    return f"{database_id}-{node_name}"


def replica_id(database_id: str, node_name: str, host_id: str) -> str:
    """A replica's id: its node's id and its host (one instance of a node per host)."""
    return f"{database_id}-{node_name}-{host_id}"


async def insert_instance(
    db: Executor,
    *,
    database_id: str,
    node_name: str,
    host_id: str,
    port: int,
    replica: bool = False,
) -> InstanceRow | None:
    """Record a node's primary instance (or, with `replica`, a replica on `host_id`); None
    when its host/port is already taken by another instance."""
    instance = (
        replica_id(database_id, node_name, host_id)
        if replica
        else instance_id(database_id, node_name)
    )
    try:
        record = await db.fetchrow(
            "INSERT INTO instances (id, database_id, node_name, host_id, port, state, role)"
            " VALUES ($1, $2, $3, $4, $5, 'creating', $6)"
            f" ON CONFLICT (id) DO UPDATE SET updated_at = now() RETURNING {_COLUMNS}",
            instance,
            database_id,
            node_name,
            host_id,
            port,
            "replica" if replica else "primary",
        )
    except asyncpg.UniqueViolationError:
        return None
    assert record is not None
    return _row(record)


async def list_instances(
    db: Executor, database_id: str | None = None, *, replicas: bool = False
) -> list[InstanceRow]:
    """The primaries (one per node: what node-level work acts on), of one database or all;
    with `replicas`, every instance, each node's primary first."""
    records = await db.fetch(
        f"SELECT {_COLUMNS} FROM instances WHERE ($1::text IS NULL OR database_id = $1)"
        " AND ($2 OR role = 'primary')"
        " ORDER BY database_id, node_name, role = 'replica', host_id",
        database_id,
        replicas,
    )
    return [_row(r) for r in records]


async def list_replicas(db: Executor, database_id: str, node_name: str) -> list[InstanceRow]:
    records = await db.fetch(
        f"SELECT {_COLUMNS} FROM instances WHERE database_id = $1 AND node_name = $2"
        " AND role = 'replica' ORDER BY host_id",
        database_id,
        node_name,
    )
    return [_row(r) for r in records]


async def set_primary(db: Connection, database_id: str, node_name: str, instance: str) -> bool:
    """Make `instance` its node's primary row and every other instance of the node a replica
    (after a switchover or failover); True when a role changed."""
    async with db.transaction():
        demoted = await db.execute(
            "UPDATE instances SET role = 'replica', updated_at = now() WHERE database_id = $1"
            " AND node_name = $2 AND role = 'primary' AND id <> $3",
            database_id,
            node_name,
            instance,
        )
        promoted = await db.execute(
            "UPDATE instances SET role = 'primary', updated_at = now() WHERE database_id = $1"
            " AND node_name = $2 AND id = $3 AND role = 'replica'",
            database_id,
            node_name,
            instance,
        )
    return demoted != "UPDATE 0" or promoted != "UPDATE 0"


async def set_supervisor(db: Executor, database_id: str, node_name: str, supervisor: str) -> None:
    """Who starts and stops the Postgres of every instance of the node from now on."""
    await db.execute(
        "UPDATE instances SET supervisor = $3, updated_at = now()"
        " WHERE database_id = $1 AND node_name = $2",
        database_id,
        node_name,
        supervisor,
    )


async def set_state_of(
    db: Executor, instance: str, state: str, *, error: str | None = None
) -> None:
    """The state of one instance (a node's other instances keep theirs)."""
    await db.execute(
        "UPDATE instances SET state = $2, error = $3, updated_at = now() WHERE id = $1",
        instance,
        state,
        error,
    )


async def delete_instance_by_id(db: Executor, instance: str) -> None:
    await db.execute("DELETE FROM instances WHERE id = $1", instance)


async def get_instance(db: Executor, database_id: str, node_name: str) -> InstanceRow | None:
    record = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM instances WHERE database_id = $1 AND node_name = $2"
        " AND role = 'primary'",
        database_id,
        node_name,
    )
    return None if record is None else _row(record)


async def find_instance(db: Executor, database_id: str, instance: str) -> InstanceRow | None:
    """One instance of a database by its id (primary or replica)."""
    record = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM instances WHERE database_id = $1 AND id = $2",
        database_id,
        instance,
    )
    return None if record is None else _row(record)


async def list_node_instances(db: Executor, database_id: str, node_name: str) -> list[InstanceRow]:
    """Every instance of one node, its primary first."""
    records = await db.fetch(
        f"SELECT {_COLUMNS} FROM instances WHERE database_id = $1 AND node_name = $2"
        " ORDER BY role = 'replica', host_id",
        database_id,
        node_name,
    )
    return [_row(r) for r in records]


async def set_desired_of(db: Executor, instance: str, desired: str, state: str) -> None:
    """Whether one instance should run (the monitor starts only those that should), and its
    state now."""
    await db.execute(
        "UPDATE instances SET desired = $2, state = $3, error = NULL, updated_at = now()"
        " WHERE id = $1",
        instance,
        desired,
        state,
    )


async def used_ports(db: Executor, host_id: str) -> set[int]:
    rows = await db.fetch("SELECT port FROM instances WHERE host_id = $1", host_id)
    return {r["port"] for r in rows}


async def count_by_host(db: Executor) -> dict[str, int]:
    """How many instances each host runs (hosts without any are absent)."""
    rows = await db.fetch("SELECT host_id, count(*) AS n FROM instances GROUP BY host_id")
    return {str(r["host_id"]): int(r["n"]) for r in rows}


async def set_instance_state(
    db: Executor,
    database_id: str,
    node_name: str,
    state: str,
    *,
    error: str | None = None,
    desired: str | None = None,
) -> None:
    await db.execute(
        "UPDATE instances SET state = $3, error = $4, desired = coalesce($5, desired),"
        " updated_at = now() WHERE database_id = $1 AND node_name = $2",
        database_id,
        node_name,
        state,
        error,
        desired,
    )


async def delete_instance(db: Executor, database_id: str, node_name: str) -> None:
    await db.execute(
        "DELETE FROM instances WHERE database_id = $1 AND node_name = $2", database_id, node_name
    )


async def set_generations(
    db: Executor, database_id: str, node_name: str, generations: dict[str, int]
) -> None:
    """Record the repository generation each of the node's repositories now writes to."""
    await db.execute(
        "UPDATE instances SET generations = generations || $3::jsonb, updated_at = now()"
        " WHERE database_id = $1 AND node_name = $2",
        database_id,
        node_name,
        generations,
    )


async def any_supervised_by(db: Executor, supervisor: str) -> bool:
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM instances WHERE supervisor = $1)", supervisor
        )
    )
