"""Take a node out of the mesh for an in-place restore without losing a write of its own.

A node about to be stopped and restored has written rows that the other nodes may not have
received yet, and once it is restored its replication slots (which are not in backups) are
gone: nothing could send those rows any more. So, while it still runs and admits no client
(the caller fenced it, and ends the clients' sessions with `end_client_sessions`):

1. its own subscriptions pause: nothing more of the others is applied on it, so everything it
   holds is in its WAL up to the point E read next;
2. every other node that keeps running confirms it has received and applied the node's WAL up
   to E (the slot it streams from reports E as flushed);
3. those nodes drop their subscription to it: after the restore it streams to them from a slot
   made while it is still fenced, at its new timeline.

The slots it streams *from* (on the other nodes) are kept: they retain every later write of
theirs, and the restored node is attached to them at the point its restored catalog says it
had applied (`attach`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from controlplane.replication.attach import pause_subscriptions, slot_name
from controlplane.replication.errors import ReplicationError
from controlplane.replication.names import subscription_name
from controlplane.replication.subscriptions import (
    POLL_INTERVAL,
    drop_subscription,
    list_subscriptions,
)
from controlplane.store.pool import Connection

# The role the control plane and the nodes' links log in as; a fenced node admits only it.
SUPERUSER = "postgres"


async def end_client_sessions(conn: Connection, *, settle: float = 0.3) -> int:
    """End every client session but the superuser's, until none is left (a login that raced
    the fence's reload may still arrive once); how many were ended."""
    ended = 0
    quiet_rounds = 0
    while quiet_rounds < 2:
        count = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            "   AND usename IS DISTINCT FROM $1",
            SUPERUSER,
        )
        ended += int(count or 0)
        quiet_rounds = quiet_rounds + 1 if not count else 0
        await asyncio.sleep(settle)
    return ended


async def drain(
    conns: Mapping[str, Connection],
    node: str,
    *,
    providers: Sequence[str],
    confirm: Sequence[str],
    cut: Sequence[str],
    limit: float = 120.0,
) -> str:
    """Steps 1-3 for `node` (`conns[node]`): pause its subscriptions from `providers`, wait
    until each node in `confirm` has its WAL up to E, then drop the subscription to it of
    every node in `cut` (those in `confirm`, and others being restored too, which must not
    stream from its next slots). Returns E. Safe to repeat: a node whose subscription is gone
    confirmed earlier."""
    own = conns[node]
    await pause_subscriptions(own, node, providers)
    end = str(await own.fetchval("SELECT pg_current_wal_lsn()::text"))
    deadline = time.monotonic() + limit
    for subscriber in confirm:
        if not await _subscribes(conns[subscriber], node, subscriber):
            continue
        slot = await slot_name(own, node, subscriber)
        while not await own.fetchval(
            "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots"
            " WHERE slot_name = $1",
            slot,
            end,
        ):
            if time.monotonic() > deadline:
                raise ReplicationError(
                    f"node {subscriber} did not receive node {node}'s writes up to {end} in "
                    f"{limit:g}s; nothing was stopped (is its subscription replicating?)"
                )
            await asyncio.sleep(POLL_INTERVAL)
    for subscriber in cut:
        await drop_subscription(conns[subscriber], subscription_name(node, subscriber))
    return end


async def _subscribes(conn: Connection, provider: str, subscriber: str) -> bool:
    name = subscription_name(provider, subscriber)
    return any(s.name == name for s in await list_subscriptions(conn))
