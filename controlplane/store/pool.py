"""asyncpg pool for the state store, with jsonb decoded to Python values."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Pool = asyncpg.Pool[asyncpg.Record]
    Connection = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:  # asyncpg's classes are not subscriptable at run time
    from asyncpg.pool import PoolConnectionProxy

    Pool = asyncpg.Pool
    Connection = asyncpg.Connection | PoolConnectionProxy

# Anything that runs a query: the pool itself or one (pooled) connection.
Executor = Pool | Connection


async def _init_connection(conn: Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> Pool:
    """Open a pool on the store; every connection speaks jsonb as Python values."""
    pool: Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=60
    )
    return pool


def record_dict(record: asyncpg.Record | None) -> dict[str, Any] | None:
    """A row as a plain dict (None stays None)."""
    return None if record is None else dict(record.items())
