"""pglogical subscriptions of the mesh: create, wait for, report, drop, and unlink a node.

A subscription lives on the subscriber and pulls the provider's writes through a logical slot on
the provider. Every one is created with `forward_origins := '{}'`: a node sends only the writes
made on it, never the ones it received, so a write travels exactly one hop and never loops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping

import asyncpg
import msgspec

from controlplane.replication.errors import ReplicationError
from controlplane.replication.join_guard import close_guard
from controlplane.replication.names import (
    REPLICATION_SETS,
    MeshNode,
    pglogical_node_name,
    subscription_name,
)
from controlplane.store.pool import Connection

POLL_INTERVAL = 0.2
WORKER_POLL_INTERVAL = 0.05  # workers exit within milliseconds of being told
NUDGE_INTERVAL = 5.0  # pglogical restarts a crashed apply worker 5 s after the crash at best

# Where a detached subscription points: a unix socket directory that cannot exist, so that
# pglogical.drop_subscription fails fast to reach the provider and leaves its slots alone.
DETACHED_INTERFACE = "cp_detached"
DETACHED_DSN = "host=/nonexistent/cp-detached port=1 dbname=cp_detached connect_timeout=1"

SUBSCRIPTIONS_SQL = """
SELECT s.sub_name, n.node_name AS provider, s.sub_slot_name
  FROM pglogical.subscription s JOIN pglogical.node n ON n.node_id = s.sub_origin
 ORDER BY s.sub_name
"""


class SubscriptionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One subscription of a node as the API reports it (`status`: replicating, initializing,
    down, disabled or unknown, as pglogical.show_subscription_status says)."""

    provider_node: str
    name: str
    status: str
    slot_name: str = ""


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription in a node's catalog: its name, provider node and slot on the provider."""

    name: str
    provider: str
    slot_name: str


async def is_pglogical_node(conn: Connection) -> bool:
    """True when the database has the pglogical extension and a local pglogical node."""
    if await conn.fetchval("SELECT to_regclass('pglogical.local_node')") is None:
        return False
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pglogical.local_node)"))


async def list_subscriptions(conn: Connection) -> list[Subscription]:
    """Every subscription in the node's catalog (empty when pglogical is not set up)."""
    if await conn.fetchval("SELECT to_regclass('pglogical.subscription')") is None:
        return []
    return [
        Subscription(name=r["sub_name"], provider=r["provider"], slot_name=r["sub_slot_name"])
        for r in await conn.fetch(SUBSCRIPTIONS_SQL)
    ]


async def subscription_status(conn: Connection) -> list[SubscriptionStatus]:
    """The node's subscriptions with their live status, ordered by name; empty when the
    database is not a pglogical node."""
    if not await is_pglogical_node(conn):
        return []
    rows = await conn.fetch(
        "SELECT subscription_name, status, provider_node, slot_name "
        "FROM pglogical.show_subscription_status() ORDER BY subscription_name"
    )
    return [
        SubscriptionStatus(
            provider_node=r["provider_node"],
            name=r["subscription_name"],
            status=r["status"],
            slot_name=r["slot_name"] or "",
        )
        for r in rows
    ]


async def ensure_subscription(
    subscriber_conn: Connection,
    *,
    provider: MeshNode,
    subscriber: MeshNode,
    synchronize_data: bool,
) -> bool:
    """Create `subscription_name(provider, subscriber)` on the subscriber if it is missing.

    The structure is never synchronised by pglogical (see `schema.py`). True when created. An
    existing subscription with that name but another provider is an error, not silently kept.
    """
    name = subscription_name(provider.name, subscriber.name)
    local = await subscriber_conn.fetchval(
        "SELECT n.node_name FROM pglogical.local_node l JOIN pglogical.node n USING (node_id)"
    )
    if local != pglogical_node_name(subscriber.name):
        raise ReplicationError(
            f"cannot create subscription {name}: the database is pglogical node {local}, "
            f"not {subscriber.name}"
        )
    existing = {s.name: s for s in await list_subscriptions(subscriber_conn)}
    if name in existing:
        _check_provider(existing[name], provider.name)
        return False
    async with subscriber_conn.transaction():
        await create_subscription(
            subscriber_conn, provider=provider, name=name, synchronize_data=synchronize_data
        )
    return True


async def create_subscription(
    conn: Connection, *, provider: MeshNode, name: str, synchronize_data: bool
) -> Subscription:
    """Create subscription `name` from `provider` (the caller holds a transaction, so a DSN
    that reached the wrong node leaves nothing behind); the subscription as created."""
    await conn.execute(
        "SELECT pglogical.create_subscription(subscription_name := $1, provider_dsn := $2, "
        "replication_sets := $3::text[], synchronize_structure := false, "
        "synchronize_data := $4, forward_origins := '{}')",
        name,
        provider.dsn,
        list(REPLICATION_SETS),
        synchronize_data,
    )
    # pglogical names the provider after what the DSN reached: a DSN pointing at the wrong
    # node must not leave a subscription whose name lies about its source.
    created = {s.name: s for s in await list_subscriptions(conn)}[name]
    _check_provider(created, provider.name)
    return created


def _check_provider(subscription: Subscription, provider: str) -> None:
    if subscription.provider != pglogical_node_name(provider):
        raise ReplicationError(
            f"subscription {subscription.name} replicates from pglogical node "
            f"{subscription.provider}, not {provider}"
        )


# A timeout parameter rather than the caller's asyncio.timeout: on expiry the error must name the
# subscription and the status it was stuck in, which only this function knows.
async def wait_for_sync(
    subscriber_conn: Connection,
    *,
    provider: str,
    subscriber: str,
    timeout: float = 60.0,  # noqa: ASYNC109
) -> None:
    """Wait until the subscription from `provider` to `subscriber` is replicating and its
    initial data copy (if any) is complete; raise ReplicationError naming the subscription and
    its last status after `timeout` seconds (at once when the subscription is disabled)."""
    name = subscription_name(provider, subscriber)
    nudged = time.monotonic()  # a new subscription is `down` until its worker starts: wait first
    deadline = nudged + timeout
    while (status := await _status_of(subscriber_conn, name)) != "replicating":
        now = time.monotonic()
        if status == "disabled" or now >= deadline:
            raise ReplicationError(
                f"subscription {name} on node {subscriber} is {status}, not replicating, "
                f"after {timeout - max(deadline - now, 0):.0f}s "
                f"(see the server logs of {subscriber} and {provider})"
            )
        if status == "down" and now - nudged >= NUDGE_INTERVAL:
            # pglogical's manager restarts a crashed apply worker only when it next wakes, up
            # to 3 minutes after its provider came back; any change to the subscription wakes
            # it, and enabling an enabled subscription changes nothing else. A worker it lost
            # track of would make every restart fail: it is ended first.
            await release_stranded_workers(subscriber_conn, older_than=NUDGE_INTERVAL)
            await subscriber_conn.execute("SELECT pglogical.alter_subscription_enable($1)", name)
            nudged = now
        await asyncio.sleep(POLL_INTERVAL)
    try:
        # Also covers per-table syncs; bounded because the function itself never gives up.
        await subscriber_conn.execute(
            "SELECT pglogical.wait_for_subscription_sync_complete($1)",
            name,
            timeout=max(deadline - time.monotonic(), 1.0),
        )
    except TimeoutError:
        raise ReplicationError(
            f"subscription {name} on node {subscriber} did not finish its table sync "
            f"in {timeout:g}s"
        ) from None


async def _status_of(conn: Connection, name: str) -> str:
    status = await conn.fetchval(
        "SELECT status FROM pglogical.show_subscription_status() WHERE subscription_name = $1",
        name,
    )
    if status is None:
        raise ReplicationError(f"subscription {name} does not exist")
    return str(status)


async def drop_subscription(conn: Connection, name: str, *, drop_remote_slot: bool = True) -> bool:
    """Drop subscription `name` from this node's catalog; False when it did not exist.

    With `drop_remote_slot` (the normal case) pglogical also drops the slot on the provider; a
    provider that is unreachable or has no such slot only yields a WARNING, so this succeeds on
    a restored node too. Pass False for a catalog restored from a backup: its slot name may
    belong to a live subscription of the node the backup was taken from, and dropping it would
    silently cut that node off.
    """
    existing = {s.name: s for s in await list_subscriptions(conn)}
    if name not in existing:
        return False
    # pglogical.drop_subscription stops the subscription's workers itself, but from inside its
    # transaction, polling once a second, and a worker busy with an initial copy may wait on
    # a lock that transaction holds. Stopped first, outside it, neither happens.
    await stop_workers(conn, [name])
    async with conn.transaction():
        if not drop_remote_slot:
            await _detach(conn, existing[name])
        await conn.execute("SELECT pglogical.drop_subscription($1, ifexists := true)", name)
    return True


# pglogical names a subscription's workers (their application_name) "pglogical apply
# <database oid>:<subscription id>" and "pglogical sync <table> <database oid>:<subscription
# id>": the suffix of subscription `s`'s, as SQL.
_WORKER_SUFFIX = (
    "format(' %s:%s', (SELECT oid FROM pg_database WHERE datname = current_database()), s.sub_id)"
)
# The backends running the workers of the subscriptions named in $1.
_WORKERS_OF = (
    "SELECT a.pid FROM pg_stat_activity a, pglogical.subscription s"
    " WHERE s.sub_name = ANY($1::text[])"
    f"   AND a.application_name LIKE ('pglogical %' || {_WORKER_SUFFIX})"
)
STRAY_GRACE = 2.0  # seconds a disabled subscription's worker gets to exit by itself


async def stop_workers(conn: Connection, names: Collection[str], *, limit: float = 30.0) -> None:
    """Disable the subscriptions `names` (immediately) and wait until none of their workers
    (apply, or a table's sync) runs any more; they stay disabled. A worker still running
    after `STRAY_GRACE` is one pglogical lost track of (see `release_stranded_workers`):
    disabling does not reach it, so it is terminated, as disabling would have done."""
    # One statement over the catalog: a subscription dropped meanwhile (by a concurrent mesh
    # change) is skipped rather than failing with pglogical's "subscriber ... not found".
    await conn.execute(
        "SELECT pglogical.alter_subscription_disable(sub_name, true)"
        " FROM pglogical.subscription WHERE sub_name = ANY($1::text[])",
        list(names),
    )
    began = time.monotonic()
    while pids := [r["pid"] for r in await conn.fetch(_WORKERS_OF, list(names))]:
        waited = time.monotonic() - began
        if waited > limit:
            raise ReplicationError(
                f"{len(pids)} worker(s) of subscription(s) {', '.join(sorted(names))} did not "
                f"stop in {limit:g}s"
            )
        if waited > STRAY_GRACE:
            await _end_backends(conn, pids)
        else:
            await asyncio.sleep(WORKER_POLL_INTERVAL)


async def _end_backends(conn: Connection, pids: list[int]) -> None:
    """Terminate the backends `pids` and wait, up to `STRAY_GRACE`, until they have exited."""
    await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", pids)
    for _ in range(round(STRAY_GRACE / WORKER_POLL_INTERVAL)):
        if not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
        ):
            return
        await asyncio.sleep(WORKER_POLL_INTERVAL)


STRANDED_AFTER = 10.0  # seconds: a worker starting shows `down` until it attaches, at once


async def release_stranded_workers(
    conn: Connection, *, older_than: float = STRANDED_AFTER
) -> list[str]:
    """Terminate the apply workers pglogical has lost track of; their subscriptions' names.

    pglogical 2.4 can give a running apply worker's shared-memory slot to another worker
    when its database managers restart in quick succession (each new subscription restarts
    them). The first worker keeps streaming and holds its replication origin, but pglogical
    no longer sees it: its subscription shows `down`, the worker the manager starts fails at
    once ("replication origin ... is already active for PID"), and neither disabling the
    subscription nor dropping it reaches the stray. A worker of a subscription shown `down`
    that has run for `older_than` seconds is such a stray. Once it has exited, the manager
    is woken (an unchanged enable), or it would sleep up to 3 minutes before starting a
    worker it tracks, which resumes from the origin."""
    if not await is_pglogical_node(conn):
        return []
    rows = await conn.fetch(
        "SELECT st.subscription_name AS name, a.pid"
        "  FROM pglogical.show_subscription_status() st"
        "  JOIN pglogical.subscription s ON s.sub_name = st.subscription_name"
        f"  JOIN pg_stat_activity a ON a.application_name = ('pglogical apply' || {_WORKER_SUFFIX})"
        " WHERE st.status = 'down'"
        "   AND a.backend_start < now() - make_interval(secs => $1)",
        older_than,
    )
    if not rows:
        return []
    await _end_backends(conn, [r["pid"] for r in rows])
    names = sorted({str(r["name"]) for r in rows})
    for name in names:
        await conn.execute("SELECT pglogical.alter_subscription_enable($1)", name)
    return names


async def _detach(conn: Connection, subscription: Subscription) -> None:
    """Point the subscription at an interface nobody listens on (drop then cannot connect)."""
    has_interface = await conn.fetchval(
        "SELECT 1 FROM pglogical.node_interface i JOIN pglogical.node n ON n.node_id = i.if_nodeid "
        "WHERE n.node_name = $1 AND i.if_name = $2",
        subscription.provider,
        DETACHED_INTERFACE,
    )
    if not has_interface:
        await conn.execute(
            "SELECT pglogical.alter_node_add_interface($1, $2, $3)",
            subscription.provider,
            DETACHED_INTERFACE,
            DETACHED_DSN,
        )
    await conn.execute(
        "SELECT pglogical.alter_subscription_interface($1, $2)",
        subscription.name,
        DETACHED_INTERFACE,
    )


async def drop_node_links(conns_by_node: Mapping[str, Connection], node_name: str) -> bool:
    """Cut `node_name` out of the mesh: drop every subscription to and from it on the given
    nodes and any replication slot left for it; True when anything was dropped.

    Run before removing a node or restoring it (slots are not in backups, and a restored
    subscriber that kept its subscription would silently skip rows). `conns_by_node` may omit
    the node itself when it is gone: the slots its subscriptions held on the others are then
    dropped directly.
    """
    removed = pglogical_node_name(node_name)
    # A node just initialised (added by the same update) has no pglogical yet: nothing to drop.
    conns_by_node = {n: c for n, c in conns_by_node.items() if await is_pglogical_node(c)}
    others = {name: conn for name, conn in conns_by_node.items() if name != node_name}
    changed = False
    for conn in others.values():  # its writes no longer reach the others
        for sub in await list_subscriptions(conn):
            if sub.provider == removed:
                changed |= await drop_subscription(conn, sub.name)
    if node_name in conns_by_node:  # the others' writes no longer reach it
        own = conns_by_node[node_name]
        for sub in await list_subscriptions(own):
            changed |= await drop_subscription(own, sub.name)
        for name in others:
            changed |= await drop_leftover_slot(own, provider=node_name, subscriber=name)
    for name, conn in others.items():
        changed |= await drop_leftover_slot(conn, provider=name, subscriber=node_name)
        changed |= await close_guard(conn, node_name)  # left by a join cut short
    return changed


async def drop_leftover_slot(conn: Connection, *, provider: str, subscriber: str) -> bool:
    """On `provider`, drop the slot of subscription provider->subscriber if it is still there.

    The name is derived the way pglogical derives it (database, provider node, subscription).
    A walsender still streaming from it (the subscriber is alive but no longer wanted) is
    terminated first; its apply may reconnect in between, hence the few attempts.
    """
    slot = await conn.fetchval(
        "SELECT pglogical.pglogical_gen_slot_name(current_database(), $1, $2)",
        pglogical_node_name(provider),
        subscription_name(provider, subscriber),
    )
    for _ in range(10):
        active_pid = await conn.fetchval(
            "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1", slot
        )
        if active_pid is None:
            return False
        try:
            if active_pid:
                await conn.execute("SELECT pg_terminate_backend($1)", active_pid)
            await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
            return True
        except asyncpg.ObjectInUseError:
            await asyncio.sleep(POLL_INTERVAL)
    raise ReplicationError(
        f"replication slot {slot} for node {subscriber} on node {provider} stays in use"
    )


async def restart_subscriptions_from(conn: Connection, provider: str | None) -> list[str]:
    """Restart at once the apply workers of this node's subscriptions to `provider` (disable,
    then enable, both immediate), returning their names.

    After the provider's primary changed (a failover), pglogical's manager retries a worker
    that failed to connect only after 180 s; a restarted worker connects through the provider's
    multi-host DSN to its new primary now, at the slot Patroni kept there. With `provider`
    None, every subscription of the node: on a replica just promoted, whose workers failed
    while it was read-only and would otherwise wait out the same 180 s."""
    names = [
        s.name for s in await list_subscriptions(conn) if provider is None or s.provider == provider
    ]
    for name in names:
        await conn.execute("SELECT pglogical.alter_subscription_disable($1, true)", name)
        await conn.execute("SELECT pglogical.alter_subscription_enable($1, true)", name)
    return names


async def follow_new_primary(
    conn: Connection, provider: str, slot_positions: Mapping[str, str]
) -> list[str]:
    """On a subscriber of `provider`, whose primary was just replaced by a replica (a
    failover): restart each subscription to it from where the new primary's copy of its slot
    stands, when this subscriber had received more than that from the old primary.

    The old primary may have sent WAL the new one never received; the new one then writes its
    own WAL over those positions, on its new timeline. Left alone, the subscriber would ask to
    start past them and skip what the new primary wrote there. Rows it received twice this way
    (the slot copy lags a little) are applied again as conflicts pglogical resolves: the same
    rows, the same data. Returns the subscriptions restarted."""
    subs = [s for s in await list_subscriptions(conn) if s.provider == provider]
    await stop_workers(conn, [s.name for s in subs])
    for sub in subs:
        position = slot_positions.get(sub.slot_name)
        if position is not None:
            await conn.execute(
                "SELECT pg_replication_origin_advance($1, $2::text::pg_lsn)"
                " WHERE pg_replication_origin_progress($1, false) > $2::text::pg_lsn",
                sub.slot_name,
                position,
            )
        await conn.execute("SELECT pglogical.alter_subscription_enable($1, true)", sub.name)
    return [s.name for s in subs]
