"""How a node joins a mesh whose members all keep writing, and loses nothing.

A joining node holds the rows of one moment and must receive every member's later commits
exactly once. Two ways in, both `pg_createsubscriber`'s pattern (see `attach`):

- **By copy** (`join_by_copy`, a node with a `source_node`):
  a. guards, then the slots member->new on every other member (their streams begin here);
  b. the source catches up: it has applied what each member wrote before that slot;
  c. the source's subscriptions from the other members pause, and where each stands (P) is
     recorded on the new node as its origin for that member;
  d. source->new with pglogical's copy; once its snapshot is taken the source resumes. The copy
     holds the source's own rows up to its snapshot (its stream goes on from there) and each
     other member's rows up to P, because nothing of theirs was applied during (c)-(d);
  e. member->new attached at P, then new->member from the new node's slot.
- **From a backup** (`prepare_join` before the restore, `join_by_attach` after): the slots
  member->new are made and the source catches up (as a, b) *before* a restore point R is
  committed on the source; the node is recovered to exactly R, and learns from its restored
  catalog how far its source had applied each other member (P), so source->new starts at R
  and member->new at P. The new node's own slots are made while it is still fenced.

Each member's commit reaches the new node once: through its rows (commits before P, or before
R for the source) or through its stream (commits from there on), never both and never neither
(`forward_origins '{}'`: a node sends only its own writes). The guard (`join_guard`) checks the
order of (a)-(c) held; any failure undoes the join (the new node loses its links and identity)
so that submitting the spec again starts over with a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TypeVar

from controlplane.replication.attach import (
    attach_subscription,
    create_slot,
    origin_lsn,
    pause_subscriptions,
    resume_subscriptions,
    set_origin,
    slot_name,
    slot_start,
)
from controlplane.replication.errors import ReplicationError
from controlplane.replication.join_guard import close_guard, has_guard, open_guard, written_tables
from controlplane.replication.names import MeshNode, pglogical_node_name, subscription_name
from controlplane.replication.nodes import local_node_name
from controlplane.replication.subscriptions import (
    POLL_INTERVAL,
    drop_leftover_slot,
    drop_node_links,
    ensure_subscription,
    list_subscriptions,
    wait_for_sync,
)
from controlplane.replication.tables import user_tables
from controlplane.store.pool import Connection

T = TypeVar("T")


async def prepare_join(
    conns: Mapping[str, Connection], new: str, source: str, *, sync_timeout: float = 60.0
) -> dict[str, str]:
    """Before `new` is restored from `source`'s backup: on every member in `conns` a guard and
    the slot member->new, then wait until `source` has applied what every other member wrote
    before its slot. A restore point committed on `source` after this lies after every slot's
    start. Returns where each slot begins. Safe to repeat: existing slots are kept."""
    members = sorted(conns)
    await for_each_node(members, lambda m: open_guard(conns[m], new))
    starts = await for_each_node(members, lambda m: create_slot(conns[m], m, new))
    await catch_up(conns, source, [m for m in members if m != source], sync_timeout)
    return dict(zip(members, starts, strict=True))


async def join_by_attach(
    conns: Mapping[str, Connection],
    by_name: Mapping[str, MeshNode],
    new: str,
    members: Sequence[str],
    *,
    fresh: Collection[str],
    sync_timeout: float,
) -> list[str]:
    """Link `new`, restored after `prepare_join`, both ways with every member and no copy."""
    return await _guarded(
        conns,
        new,
        members,
        lambda: _attach_links(conns, by_name, new, members, members, {*fresh, new}, sync_timeout),
    )


async def join_by_copy(
    conns: Mapping[str, Connection],
    by_name: Mapping[str, MeshNode],
    new: str,
    source: str,
    members: Sequence[str],
    *,
    sync_timeout: float,
    failpoint: Callable[[str], None] = lambda point: None,
) -> list[str]:
    """Populate `new` with a copy of `source`, then link it with every member (steps a-e)."""
    others = [m for m in members if m != source]
    if not await has_subscription(conns[new], source, new):
        await _refuse_if_subscribed(conns, new, members)

    async def join() -> list[str]:
        created = await _populate(conns, by_name, new, source, others, sync_timeout, failpoint)
        return created + await _attach_links(
            conns, by_name, new, others, members, {new}, sync_timeout
        )

    return await _guarded(conns, new, members, join)


async def _guarded(
    conns: Mapping[str, Connection],
    new: str,
    members: Sequence[str],
    join: Callable[[], Awaitable[list[str]]],
) -> list[str]:
    """Run `join`; on any failure cut `new` out again, and close the guards in every case."""
    try:
        return await join()
    except Exception:
        with contextlib.suppress(Exception):  # best effort: the join's own error matters more
            await undo_join(conns, new, members)
        raise
    finally:
        with contextlib.suppress(Exception):  # a member out of reach: drop_node_links cleans up
            await for_each_node(list(members), lambda m: close_guard(conns[m], new))


async def _populate(
    conns: Mapping[str, Connection],
    by_name: Mapping[str, MeshNode],
    new: str,
    source: str,
    others: Sequence[str],
    sync_timeout: float,
    failpoint: Callable[[str], None],
) -> list[str]:
    """Steps a-d (skipped when source->new exists: a resumed join), then wait for the copy."""
    created = []
    if not await has_subscription(conns[new], source, new):
        await for_each_node(list(others), lambda m: open_guard(conns[m], new))
        await for_each_node(list(others), lambda m: create_slot(conns[m], m, new))
        await catch_up(conns, source, others, sync_timeout)
        await _empty_tables(conns[new])
        # A slot left by an earlier attempt would look like the copy's snapshot being taken.
        await drop_leftover_slot(conns[source], provider=source, subscriber=new)
        progress = await pause_subscriptions(conns[source], source, others)
        failpoint("source_paused")
        try:
            for member in others:
                if member not in progress:
                    raise ReplicationError(
                        f"node {source} does not subscribe to node {member}: its copy cannot "
                        f"tell which of {member}'s rows it holds"
                    )
                await set_origin(conns[new], member, new, progress[member])
            await ensure_subscription(
                conns[new], provider=by_name[source], subscriber=by_name[new], synchronize_data=True
            )
            await _wait_for_snapshot(conns[source], source, new, sync_timeout)
        finally:
            await resume_subscriptions(conns[source])
        created.append(subscription_name(source, new))
    await wait_for_sync(conns[new], provider=source, subscriber=new, timeout=sync_timeout)
    return created


async def _wait_for_snapshot(conn: Connection, source: str, new: str, limit: float) -> None:
    """Wait until pglogical's copy has made its slot on the source, and so its snapshot."""
    slot = await slot_name(conn, source, new)
    deadline = time.monotonic() + limit
    while await slot_start(conn, source, new) is None:
        if time.monotonic() > deadline:
            raise ReplicationError(
                f"node {new} did not start its copy of node {source} in {limit:g}s "
                f"(no slot {slot} on {source})"
            )
        await asyncio.sleep(POLL_INTERVAL)


async def _attach_links(
    conns: Mapping[str, Connection],
    by_name: Mapping[str, MeshNode],
    new: str,
    providers: Sequence[str],
    subscribers: Sequence[str],
    fresh: Collection[str],
    sync_timeout: float,
) -> list[str]:
    """provider->new from the prepared slots and origins (after the guards agree), then
    new->subscriber from new's slot, and wait until every link replicates."""
    pending = [p for p in providers if not await has_subscription(conns[new], p, new)]
    for provider in pending:
        await _ready_origin(conns, provider, new, fresh)
    await _check_guards(conns, new, pending)
    created = []
    for provider in providers:
        if await attach_subscription(
            conns[new], provider=by_name[provider], subscriber=by_name[new]
        ):
            created.append(subscription_name(provider, new))
    for subscriber in subscribers:
        await _ready_origin(conns, new, subscriber, fresh)
        if await attach_subscription(
            conns[subscriber], provider=by_name[new], subscriber=by_name[subscriber]
        ):
            created.append(subscription_name(new, subscriber))
    for provider in providers:
        await wait_for_sync(conns[new], provider=provider, subscriber=new, timeout=sync_timeout)
    for subscriber in subscribers:
        await wait_for_sync(
            conns[subscriber], provider=new, subscriber=subscriber, timeout=sync_timeout
        )
    return created


async def _ready_origin(
    conns: Mapping[str, Connection], provider: str, subscriber: str, fresh: Collection[str]
) -> None:
    """Make sure `subscriber` records where its rows of `provider` end. Only a node that joins
    now (`fresh`) may be given its slot's start: it wrote nothing of its own before that slot."""
    if await has_subscription(conns[subscriber], provider, subscriber):
        return
    if await origin_lsn(conns[subscriber], provider, subscriber) is not None:
        return
    if provider not in fresh:
        raise ReplicationError(
            f"node {subscriber} has no record of which of node {provider}'s rows it holds; "
            f"remove node {subscriber} and add it again"
        )
    await set_origin(
        conns[subscriber],
        provider,
        subscriber,
        await create_slot(conns[provider], provider, subscriber),
    )


async def _check_guards(
    conns: Mapping[str, Connection], new: str, providers: Sequence[str]
) -> None:
    """Refuse when a member committed something of its own after the point `new` holds of it
    and before its slot for `new` begins (see join_guard)."""
    for member in providers:
        conn = conns[member]
        if not await has_guard(conn, new):
            continue
        held = await origin_lsn(conns[new], member, new)
        begins = await slot_start(conn, member, new)
        if held is None or begins is None:
            continue  # _ready_origin and attach_subscription refuse these
        tables = await written_tables(conn, new, held, begins)
        if tables:
            raise ReplicationError(
                f"node {new} was not joined: node {member} wrote to {', '.join(tables)} between "
                f"the point {new}'s rows hold ({held}) and the start of its stream to {new} "
                f"({begins}); those rows would be missing. It is left out of the mesh; submit "
                f"the spec again to retry the join"
            )


async def undo_join(conns: Mapping[str, Connection], new: str, members: Sequence[str]) -> None:
    """Cut `new` out again and drop its identity, so the next converge treats it as joining."""
    involved = {name: conns[name] for name in (*members, new) if name in conns}
    await drop_node_links(involved, new)
    if new in conns and await local_node_name(conns[new]) is not None:
        await conns[new].execute(
            "SELECT pglogical.drop_node($1, ifexists := true)", pglogical_node_name(new)
        )


async def has_subscription(conn: Connection, provider: str, subscriber: str) -> bool:
    name = subscription_name(provider, subscriber)
    return any(sub.name == name for sub in await list_subscriptions(conn))


async def _refuse_if_subscribed(
    conns: Mapping[str, Connection], new: str, members: Sequence[str]
) -> None:
    """Replacing the rows of a node others already receive from would delete them everywhere."""
    for member in members:
        if await has_subscription(conns[member], new, member):
            raise ReplicationError(
                f"node {new} already replicates to node {member}; refusing to replace its data "
                f"(drop its links first)"
            )


async def catch_up(
    conns: Mapping[str, Connection], source: str, members: Sequence[str], sync_timeout: float
) -> None:
    """On each other member, wait until the source confirmed the WAL written so far."""
    slots = {sub.provider: sub.slot_name for sub in await list_subscriptions(conns[source])}

    async def confirm(member: str) -> None:
        if member == source:
            return
        if member not in slots:
            raise ReplicationError(
                f"node {source} does not subscribe to node {member}; complete the mesh first"
            )
        try:
            await conns[member].execute(
                "SELECT pglogical.wait_slot_confirm_lsn($1, pg_current_wal_lsn())",
                slots[member],
                timeout=sync_timeout,
            )
        except TimeoutError:
            raise ReplicationError(
                f"node {source} did not catch up with node {member} in {sync_timeout:g}s"
            ) from None

    await for_each_node(list(members), confirm)


async def _empty_tables(conn: Connection) -> None:
    """Truncate the replicated tables when any holds rows (all at once: foreign keys)."""
    tables = await user_tables(conn)
    for table in tables:
        # `table` is a format('%I.%I') name from the catalog, quoted by the server.
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
            await conn.execute(f"TRUNCATE {', '.join(tables)}")
            return


async def for_each_node(names: list[str], action: Callable[[str], Awaitable[T]]) -> list[T]:
    """Run `action` for every node concurrently (one connection each); raise the first failure
    only after all have ended, so no query is left running on a connection."""
    results = await asyncio.gather(*(action(name) for name in names), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if not isinstance(r, BaseException)]
