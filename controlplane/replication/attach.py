"""Subscriptions that start at a chosen point of their provider's WAL: joins that lose nothing.

pglogical starts a new subscription where its sync worker creates the slot on the provider:
now, never in the past. A node that joins holding the rows of some moment (restored from a
backup to that moment, or copied from a snapshot) would miss what was committed between that
moment and its subscriptions. PostgreSQL 17's `pg_createsubscriber` closes the gap by creating
the slots first, bringing the new node to a point after them, and starting each subscription
at that point; this module does the same with pglogical:

1. `create_slot` on each provider makes the slot pglogical would make for provider->subscriber,
   *before* the point the subscriber is brought to;
2. `set_origin` on the subscriber records where in the provider's WAL its rows end: the
   replication origin pglogical tracks that subscription's progress with;
3. `attach_subscription` creates the subscription without data and marks it synchronised in
   the same transaction, so its apply worker never runs pglogical's initial sync (which would
   drop the prepared slot and make a new one) and streams from the slot, starting at the origin.

A transaction of the provider is then applied on the subscriber exactly once: recovery (or the
copy's snapshot) covers the commits that start before the origin's LSN, and logical decoding
skips exactly those. The slot must begin at or before that LSN; `join_guard` and the callers'
catch-up waits prove it did.

`pause_subscriptions` stops a node's apply workers for the providers given and returns their
progress (a copy join reads where a source stands in every other member's WAL while nothing
moves); `resume_subscriptions` undoes it, and is safe to call at any time.
"""

from __future__ import annotations

from collections.abc import Collection

from controlplane.replication.errors import ReplicationError
from controlplane.replication.names import (
    PLUGIN,
    MeshNode,
    pglogical_node_name,
    subscription_name,
)
from controlplane.replication.subscriptions import (
    create_subscription,
    list_subscriptions,
    stop_workers,
)
from controlplane.store.pool import Connection

# pglogical's sync states (pglogical_sync.h): 'r' is "done", and the only one in which its
# apply worker starts streaming without first (re)creating the slot.
_SYNC_READY = "r"


async def slot_name(conn: Connection, provider: str, subscriber: str) -> str:
    """The slot (and origin) name pglogical uses for provider->subscriber; every node of a
    database shares its name, so any of them derives the same."""
    name = await conn.fetchval(
        "SELECT pglogical.pglogical_gen_slot_name(current_database(), $1, $2)::text",
        pglogical_node_name(provider),
        subscription_name(provider, subscriber),
    )
    return str(name)


async def create_slot(conn: Connection, provider: str, subscriber: str) -> str:
    """On `provider` (`conn`), the slot of provider->subscriber, created now if missing; the
    LSN its stream begins at (a slot nobody consumed yet still begins where it was made)."""
    slot = await slot_name(conn, provider, subscriber)
    lsn = await _slot_start(conn, slot)
    if lsn is None:
        await conn.execute("SELECT pg_create_logical_replication_slot($1, $2)", slot, PLUGIN)
        lsn = await _slot_start(conn, slot)
    assert lsn is not None
    return lsn


async def slot_start(conn: Connection, provider: str, subscriber: str) -> str | None:
    """Where the slot of provider->subscriber begins on `provider`; None when it is missing."""
    return await _slot_start(conn, await slot_name(conn, provider, subscriber))


async def _slot_start(conn: Connection, slot: str) -> str | None:
    lsn = await conn.fetchval(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot
    )
    return None if lsn is None else str(lsn)


async def set_origin(conn: Connection, provider: str, subscriber: str, lsn: str) -> None:
    """On `subscriber` (`conn`), record that its rows hold `provider`'s commits up to `lsn`."""
    origin = await slot_name(conn, provider, subscriber)
    if await conn.fetchval("SELECT 1 FROM pg_replication_origin WHERE roname = $1", origin) is None:
        await conn.execute("SELECT pg_replication_origin_create($1)", origin)
    await conn.execute("SELECT pg_replication_origin_advance($1, $2::text::pg_lsn)", origin, lsn)


async def origin_lsn(conn: Connection, provider: str, subscriber: str) -> str | None:
    """Where `subscriber`'s rows end in `provider`'s WAL, as recorded; None when unrecorded."""
    origin = await slot_name(conn, provider, subscriber)
    if await conn.fetchval("SELECT 1 FROM pg_replication_origin WHERE roname = $1", origin) is None:
        return None
    lsn = await conn.fetchval("SELECT pg_replication_origin_progress($1, true)::text", origin)
    return None if lsn is None else str(lsn)


async def restored_origins(conn: Connection) -> dict[str, str]:
    """In a catalog restored from a backup, how far the backed-up node had applied each of its
    providers' writes: provider node name -> LSN in that provider's WAL. Read it before the
    catalog is reset (dropping a subscription drops its origin)."""
    if await conn.fetchval("SELECT to_regclass('pglogical.subscription')") is None:
        return {}
    rows = await conn.fetch(
        "SELECT n.node_name, pg_replication_origin_progress(s.sub_slot_name, true)::text AS lsn"
        "  FROM pglogical.subscription s JOIN pglogical.node n ON n.node_id = s.sub_origin"
        "  JOIN pg_replication_origin o ON o.roname = s.sub_slot_name"
    )
    return {str(r["node_name"]): str(r["lsn"]) for r in rows if r["lsn"] is not None}


async def attach_subscription(
    subscriber_conn: Connection, *, provider: MeshNode, subscriber: MeshNode
) -> bool:
    """Create provider->subscriber on the subscriber, streaming from the prepared slot from the
    recorded origin, with no copy and no new slot; False when it exists already.

    Refuses when the origin or the slot is missing: pglogical would otherwise start the
    subscription now and silently skip what was committed since the subscriber's point.
    """
    name = subscription_name(provider.name, subscriber.name)
    if any(s.name == name for s in await list_subscriptions(subscriber_conn)):
        return False
    if await origin_lsn(subscriber_conn, provider.name, subscriber.name) is None:
        raise ReplicationError(
            f"cannot attach {name}: node {subscriber.name} has no record of where its rows of "
            f"{provider.name} end"
        )
    async with subscriber_conn.transaction():
        sub = await create_subscription(
            subscriber_conn, provider=provider, name=name, synchronize_data=False
        )
        await subscriber_conn.execute(
            'UPDATE pglogical.local_sync_status SET sync_status = $2::text::"char",'
            "   sync_statuslsn = pg_replication_origin_progress($3, false)"
            " WHERE sync_subid = (SELECT sub_id FROM pglogical.subscription WHERE sub_name = $1)"
            "   AND sync_relname IS NULL",
            name,
            _SYNC_READY,
            sub.slot_name,
        )
    return True


async def pause_subscriptions(
    conn: Connection, node: str, providers: Collection[str], *, limit: float = 30.0
) -> dict[str, str]:
    """Disable `node`'s subscriptions from `providers` and wait until their apply workers have
    exited; then nothing of theirs is applied on `node` until `resume_subscriptions`. Returns
    how far each was applied: provider -> LSN in the provider's WAL."""
    wanted = {subscription_name(p, node): p for p in providers}
    subs = [s for s in await list_subscriptions(conn) if s.name in wanted]
    try:
        await stop_workers(conn, [s.name for s in subs], limit=limit)
    except ReplicationError as exc:
        raise ReplicationError(f"node {node}: {exc}") from None
    progress = {}
    for sub in subs:
        lsn = await conn.fetchval(
            "SELECT pg_replication_origin_progress($1, true)::text", sub.slot_name
        )
        progress[wanted[sub.name]] = str(lsn or "0/0")
    return progress


async def resume_subscriptions(conn: Connection) -> list[str]:
    """Enable every disabled subscription of the node (the mesh never keeps one disabled: one
    is only left so by a join cut short while it paused its source); the names enabled."""
    enabled: list[str] = []
    if await conn.fetchval("SELECT to_regclass('pglogical.subscription')") is None:
        return enabled
    for name in await conn.fetch(
        "SELECT sub_name FROM pglogical.subscription WHERE NOT sub_enabled ORDER BY sub_name"
    ):
        await conn.execute("SELECT pglogical.alter_subscription_enable($1, true)", name[0])
        enabled.append(str(name[0]))
    return enabled
