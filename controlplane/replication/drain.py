"""Take a node out of the mesh for an in-place restore without losing a write of its own.

A node about to be stopped and restored has written rows that the other nodes may not have
received yet, and once it is restored its replication slots (which are not in backups) are
gone: nothing could send those rows any more. So, while it still runs and admits no client
(the caller fenced it, and ends the clients' sessions with `end_client_sessions`):

1. its own subscriptions pause: nothing more of the others is applied on it, so everything it
   holds is in its WAL up to the point E read next;
2. every other node that keeps running has durably applied the node's commits up to E (its
   replication origin for the node says so; a replicated no-op commit right after E moves an
   idle stream past it);
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

import msgspec

from controlplane.replication.attach import origin_lsn, pause_subscriptions
from controlplane.replication.errors import ReplicationError
from controlplane.replication.names import subscription_name
from controlplane.replication.subscriptions import (
    POLL_INTERVAL,
    drop_subscription,
    list_subscriptions,
)
from controlplane.store.pool import Connection

# pglogical restarts a failed apply worker after 5 s: a subscription down longer than this is
# broken, not restarting.
DOWN_GRACE = 12.0


async def end_client_sessions(conn: Connection, *, settle: float = 0.05) -> int:
    """End every client session but those of `conn`'s role (the superuser the control plane
    and the nodes' links log in as, whom a fenced node still admits), until a round finds
    none; the first round waits `settle`, so a login that raced the fence's reload is seen.
    How many were ended."""
    ended = 0
    while True:
        await asyncio.sleep(settle)
        count = int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                "   AND usename IS DISTINCT FROM current_user"
            )
            or 0
        )
        if not count:
            return ended
        ended += count


class Drained(msgspec.Struct, frozen=True):
    """Where the node's WAL stood once drained, the nodes that did not apply it all, and how
    far the node had applied each provider's writes when its subscriptions paused (provider ->
    LSN in the provider's WAL)."""

    end: str
    behind: tuple[str, ...] = ()
    applied: dict[str, str] = msgspec.field(default_factory=dict)


async def drain(
    conns: Mapping[str, Connection],
    node: str,
    *,
    providers: Sequence[str],
    confirm: Sequence[str],
    cut: Sequence[str],
    strict: bool,
    limit: float = 120.0,
) -> Drained:
    """Steps 1-3 for `node` (`conns[node]`): pause its subscriptions from `providers`, wait
    until each node in `confirm` applied its commits up to E, then drop the subscription to
    it of every node in `cut` (those in `confirm`, and others being restored too, which must
    not stream from its next slots). Safe to repeat: a node whose subscription is gone
    confirmed earlier.

    A node whose subscription stays down (over `DOWN_GRACE`), or that does not catch up within
    `limit`, is `behind` (the caller says so) unless `strict` (the node keeps every row it has,
    so that node would lack some for good): then it is an error, raised before anything is
    cut.
    """
    own = conns[node]
    applied = await pause_subscriptions(own, node, providers)
    end = str(await own.fetchval("SELECT pg_current_wal_lsn()::text"))
    # A replicated no-op commit after E: an idle node's stream then moves past E too, and a
    # subscriber that applied it has applied everything before it.
    await own.execute("SELECT pglogical.replicate_ddl_command('SELECT 1')")
    deadline = time.monotonic() + limit
    behind = []
    for subscriber in confirm:
        if not await _subscribes(conns[subscriber], node, subscriber):
            continue
        down_since: float | None = None
        while not await _applied(conns[subscriber], node, subscriber, end):
            status = await conns[subscriber].fetchval(
                "SELECT status FROM pglogical.show_subscription_status($1)",
                subscription_name(node, subscriber),
            )
            now = time.monotonic()
            if status == "replicating":
                down_since = None
            elif down_since is None:
                down_since = now
            # Broken (its slot gone, its apply failing) and not restarting, or too slow.
            if (down_since is not None and now - down_since > DOWN_GRACE) or now > deadline:
                if strict:
                    held = await origin_lsn(conns[subscriber], node, subscriber)
                    raise ReplicationError(
                        f"node {subscriber} has not applied node {node}'s writes up to {end} "
                        f"(it holds them up to {held or 'nowhere'}; its subscription is "
                        f"{status}), and restoring {node} would lose them for good; nothing "
                        f"was stopped. Fix that subscription, or restore {subscriber} too "
                        f"(target_nodes)"
                    )
                behind.append(subscriber)
                break
            await asyncio.sleep(POLL_INTERVAL)
    for subscriber in cut:
        await drop_subscription(conns[subscriber], subscription_name(node, subscriber))
    return Drained(end=end, behind=tuple(behind), applied=applied)


async def _applied(conn: Connection, provider: str, subscriber: str, lsn: str) -> bool:
    """Whether `subscriber` durably applied `provider`'s commits up to `lsn`."""
    held = await origin_lsn(conn, provider, subscriber)
    return held is not None and bool(
        await conn.fetchval("SELECT $1::text::pg_lsn >= $2::text::pg_lsn", held, lsn)
    )


async def _subscribes(conn: Connection, provider: str, subscriber: str) -> bool:
    name = subscription_name(provider, subscriber)
    return any(s.name == name for s in await list_subscriptions(conn))
