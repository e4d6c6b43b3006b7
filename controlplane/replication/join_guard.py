"""Join guard: notice writes a joining node's copy may have missed.

A joining node gets one copy of its source's rows, then direct subscriptions from the other
members. A row another member wrote while the copy ran, and that reached the source only after
the copy's snapshot, is in neither: the source does not forward it (`forward_origins '{}'`) and
the direct subscription starts later. pglogical cannot start a subscription in the past, so the
join is guarded instead: before the source catches up, each other member gets a logical slot
(`test_decoding`, local writes only) that records what it writes from then on; once the direct
subscriptions exist, any write recorded before they started means rows may be missing, and the
join is undone rather than completed.
"""

from __future__ import annotations

from controlplane.replication.names import check_node_name
from controlplane.store.pool import Connection

_PREFIX = "cp_join_"
# How much of a member's decoded WAL is looked at: the first writes are enough to refuse.
_PEEK_CHANGES = 1000


def guard_slot(new: str) -> str:
    """The slot that records, on another member, its writes while `new` joins."""
    return f"{_PREFIX}{check_node_name(new)}"


async def open_guard(conn: Connection, new: str) -> bool:
    """Create the member's guard slot for `new` unless it exists; True when created."""
    if await has_guard(conn, new):
        return False
    await conn.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", guard_slot(new)
    )
    return True


async def has_guard(conn: Connection, new: str) -> bool:
    found = await conn.fetchval(
        "SELECT true FROM pg_replication_slots WHERE slot_name = $1", guard_slot(new)
    )
    return bool(found)


async def written_tables(conn: Connection, new: str, upto_lsn: str) -> list[str]:
    """Tables the member itself wrote to (not replicated writes) in transactions committed
    since its guard for `new` opened and up to `upto_lsn`; pglogical's own tables are left
    out. Peeking leaves the slot where it is."""
    records = await conn.fetch(
        "SELECT DISTINCT substring(data from '^table ([^:]+): ') AS name"
        " FROM pg_logical_slot_peek_changes($1, $2::text::pg_lsn, $3,"
        "   'only-local', '1', 'skip-empty-xacts', '1', 'include-xids', '0')"
        " WHERE data ~ '^table ' AND data !~ '^table pglogical\\.'",
        guard_slot(new),
        upto_lsn,
        _PEEK_CHANGES,
    )
    return sorted(str(r["name"]) for r in records)


async def close_guard(conn: Connection, new: str) -> bool:
    """Drop the member's guard slot for `new` (a slot nobody reads retains WAL forever)."""
    if not await has_guard(conn, new):
        return False
    await conn.execute("SELECT pg_drop_replication_slot($1)", guard_slot(new))
    return True
