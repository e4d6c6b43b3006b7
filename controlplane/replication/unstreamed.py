"""Rows a failover would leave on the other nodes only, in both directions.

A node's primary sends its writes to two places at once: WAL to its replicas, decoded changes
to the other nodes' subscriptions; and it confirms to the other nodes what it applied from them
once it flushed it, not once its replicas have it. PostgreSQL 15 makes neither wait for the
replicas, so when the primary dies, the replica promoted in its place may lack:

- transactions of the node that another node already applied. The new primary's timeline forks
  at its switch point; a subscriber whose origin for the node stands past it holds such rows
  (pglogical applies them with that origin and the provider's commit time). They are copied to
  the new primary as its own writes, so the mesh sends them to every node.
- transactions of another node that the old primary had applied and confirmed. That node's slot
  then stands past the new primary's origin for it, and would never send them again. The other
  node's rows of the last minutes that the new primary lacks are copied to it under that origin,
  as if its subscription had applied them, so they are not sent back.

Either way every node ends with the same rows. Only inserts can be made good: an update or a
delete the new primary missed stays missed until that row is written again, and a row of the
last moments that the new primary deletes before the mesh follows it can come back. Tables
without a primary key are left alone (a missing row cannot be told from a copy there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg

from controlplane.replication.subscriptions import list_subscriptions
from controlplane.store.pool import Connection

# How far back a subscriber's rows from the old primary are looked at: past the failover's
# detection (Patroni's TTL, the monitor's pass) and a replica's lag when it was promoted
# (the lag alert fires at 5 minutes).
WINDOW = timedelta(minutes=15)
BATCH = 500

KEYED_TABLES_SQL = """
SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name
  FROM pglogical.replication_set_table t
  JOIN pglogical.replication_set s ON s.set_id = t.set_id
  JOIN pglogical.local_node l ON l.node_id = s.set_nodeid
  JOIN pg_class c ON c.oid = t.set_reloid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE s.set_name = 'default'
 ORDER BY c.oid
"""

COLUMNS_SQL = """
SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
  FROM pg_attribute
 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
"""


@dataclass
class Copied:
    """What a subscriber had that the new primary lacked, by table, and what could not be
    copied (a table and PostgreSQL's reason)."""

    rows: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, other: Copied) -> None:
        for table, count in other.rows.items():
            self.rows[table] = self.rows.get(table, 0) + count
        self.failed.update(other.failed)


async def switch_point(primary: Connection) -> str | None:
    """The LSN at which the connected primary's timeline forked from its parent's, from the
    timeline's history file; None on the first timeline."""
    walfile = await primary.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())")
    timeline = int(str(walfile)[:8], 16)
    if timeline <= 1:
        return None
    history = await primary.fetchval("SELECT pg_read_file($1)", f"pg_wal/{timeline:08X}.history")
    entries = [
        line.split()
        for line in str(history).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return entries[-1][1] if entries else None


async def received_past(subscriber: Connection, origin: str, point: str) -> bool:
    """Whether the subscriber applied the provider's transactions past `point` (the origin of
    a pglogical subscription is named after its slot)."""
    return bool(
        await subscriber.fetchval(
            "SELECT pg_replication_origin_progress($1, false) > $2::text::pg_lsn", origin, point
        )
    )


async def recover(
    primary: Connection, peer: Connection, node: str, peer_node: str, point: str | None
) -> Copied:
    """Between `node`'s new `primary` (its timeline forked at `point`) and `peer_node`'s
    primary `peer`: copy to the new primary what the peer applied from the old one past that
    point, and the peer's own rows of WINDOW the new primary lacks. Run while the
    subscriptions on both sides are stopped, before they restart from the new primary's
    slots: the peer's origin still says how far it had got. Idempotent.

    The peer's own rows are copied whatever the new primary's origin for them says: its
    subscription may have restarted by itself from the peer's slot, already past them, before
    this runs. Rows merely still on their way are harmless: applied again, they change
    nothing."""
    copied = Copied()
    if point is not None:
        for sub in await list_subscriptions(peer):
            if sub.provider == node and await received_past(peer, sub.slot_name, point):
                copied.add(await copy_rows(peer, primary, sub.slot_name, as_origin=None))
    for sub in await list_subscriptions(primary):
        if sub.provider == peer_node:
            copied.add(await copy_rows(peer, primary, None, as_origin=sub.slot_name))
    return copied


async def copy_rows(
    source: Connection, primary: Connection, origin: str | None, *, as_origin: str | None
) -> Copied:
    """Copy to `primary` every row of `source` committed within WINDOW by `origin` (a
    replication origin's name; None: the source's own writes) that the primary lacks (INSERT
    … ON CONFLICT DO NOTHING: a row it has stays as it is). With `as_origin`, the primary
    writes them under that replication origin (pglogical does not send them on).

    A table whose rows wait for another's (a foreign key) is tried again after the others."""
    copied = Copied()
    roident = 0
    if origin is not None:
        found = await source.fetchval(
            "SELECT roident FROM pg_replication_origin WHERE roname = $1", origin
        )
        if found is None:
            return copied
        roident = int(found)
    if as_origin is not None:
        await primary.execute("SELECT pg_replication_origin_session_setup($1)", as_origin)
    try:
        pending = [(int(r["oid"]), str(r["name"])) for r in await source.fetch(KEYED_TABLES_SQL)]
        while pending:
            waiting: list[tuple[int, str]] = []
            for oid, table in pending:
                try:
                    count = await _copy_table(source, primary, oid, table, roident)
                except asyncpg.ForeignKeyViolationError as exc:
                    waiting.append((oid, table))
                    copied.failed[table] = str(exc)
                    continue
                except asyncpg.PostgresError as exc:
                    copied.failed[table] = str(exc)
                    continue
                copied.failed.pop(table, None)
                if count:
                    copied.rows[table] = count
            if len(waiting) == len(pending):
                break
            pending = waiting
    finally:
        if as_origin is not None:
            await primary.execute("SELECT pg_replication_origin_session_reset()")
    return copied


async def _copy_table(
    subscriber: Connection, primary: Connection, oid: int, table: str, roident: int
) -> int:
    """One table's rows of the origin (0: the source's own), in batches; the number the
    primary lacked."""
    columns = await subscriber.fetchval(COLUMNS_SQL, oid)
    # `table` and `columns` are quoted identifiers from the catalog, never client text.
    rows = await subscriber.fetch(
        f"SELECT row_to_json(t)::text AS row FROM {table} t,"
        " LATERAL pg_xact_commit_timestamp_origin(t.xmin) c"
        " WHERE c.roident = $1 AND c.timestamp >= now() - $2::interval",
        roident,
        WINDOW,
    )
    added = 0
    for start in range(0, len(rows), BATCH):
        batch = "[" + ",".join(str(r["row"]) for r in rows[start : start + BATCH]) + "]"
        status = await primary.execute(
            f"INSERT INTO {table} ({columns}) OVERRIDING SYSTEM VALUE"
            f" SELECT {columns} FROM json_populate_recordset(NULL::{table}, $1::json)"
            " ON CONFLICT DO NOTHING",
            batch,
        )
        added += int(status.rsplit(" ", 1)[-1])
    return added


def describe(copied: Copied) -> str:
    """For a log line: `3 rows of public.items` and the tables that failed."""
    parts = [f"{n} row(s) of {t}" for t, n in sorted(copied.rows.items())]
    parts += [f"{t} not copied: {reason}" for t, reason in sorted(copied.failed.items())]
    return "; ".join(parts) if parts else "nothing"
