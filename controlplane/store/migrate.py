"""Forward-only SQL migrations (`migrations/NNNN_name.sql`), applied under an advisory lock."""

from __future__ import annotations

import importlib.resources
import logging
import re

from controlplane.store.pool import Pool

log = logging.getLogger(__name__)

# Arbitrary but fixed: every server agrees on it, so concurrent starts apply migrations once.
_LOCK_KEY = 0x636F6E74726F6C

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration file shipped with the package, in order."""
    folder = importlib.resources.files("controlplane.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


async def migrate(pool: Pool) -> list[int]:
    """Apply pending migrations, each in its own transaction; return the versions applied."""
    applied: list[int] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in available_migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            log.info("applied migration %04d_%s", version, name)
            applied.append(version)
    return applied
