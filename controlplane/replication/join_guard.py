"""Join guard: the last line of defence of a join, proving no member's write fell between
the new node's rows and its subscription from that member.

A joining node holds a member's commits up to some LSN P (what its source had applied of that
member when the new node's rows were taken) and its subscription from the member streams
commits from the start L of a slot made for it (`attach`). The joins order their steps so that
L <= P, or so that nothing of the member's own was committed between P and L; the guard checks
it: before the slot is made, the member gets a logical slot (`test_decoding`, local writes
only) that sees every commit from then on, and a commit of the member's own ending after P and
before L means rows would be missing. The join is then undone rather than completed.
"""

from __future__ import annotations

from controlplane.replication.names import check_node_name
from controlplane.store.pool import Connection

_PREFIX = "cp_join_"


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


async def written_tables(conn: Connection, new: str, after_lsn: str, upto_lsn: str) -> list[str]:
    """Tables the member itself wrote to (not replicated writes) in transactions whose commit
    ends after `after_lsn` and before `upto_lsn`, as far as its guard for `new` saw them;
    pglogical's own tables are left out. Peeking leaves the slot where it is."""
    records = await conn.fetch(
        "WITH c AS (SELECT lsn, xid, data FROM pg_logical_slot_peek_changes($1,"
        "   $3::text::pg_lsn, NULL, 'only-local', '1', 'skip-empty-xacts', '1',"
        "   'include-xids', '0'))"
        " SELECT DISTINCT substring(data from '^table ([^:]+): ') AS name FROM c"
        " WHERE data ~ '^table ' AND data !~ '^table pglogical\\.'"
        "   AND xid IN (SELECT xid FROM c WHERE data ~ '^COMMIT' AND lsn > $2::text::pg_lsn)",
        guard_slot(new),
        after_lsn,
        upto_lsn,
    )
    return sorted(str(r["name"]) for r in records)


async def close_guard(conn: Connection, new: str) -> bool:
    """Drop the member's guard slot for `new` (a slot nobody reads retains WAL forever)."""
    if not await has_guard(conn, new):
        return False
    await conn.execute("SELECT pg_drop_replication_slot($1)", guard_slot(new))
    return True
