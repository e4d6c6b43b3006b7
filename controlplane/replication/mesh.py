"""Bring a database's nodes to a complete pglogical mesh: every node subscribes to every other.

Order, and why:

1. A joining node (in `new_nodes`) whose first subscription does not exist yet gets the table
   structure of its source (`schema.copy_schema`) when it has no user tables.
2. `ensure_node` everywhere: extension, node identity, event trigger, tables in their sets.
3. Existing nodes subscribe to each other, without data (they already hold the same rows).
4. Each joining node, one after the other:
   a. the source catches up: on every other member, wait until the source has confirmed all
      WAL written so far, so the source's copy holds every row those members had committed;
   b. the joining node's replicated tables are emptied if they hold rows (a node restored from
      an older backup) — nobody subscribes to it yet, so nothing propagates;
   c. `source -> new` with `synchronize_data := true`, and wait until the copy is complete;
   d. only then `other -> new`, without data;
   e. the join guard (`join_guard`): if another member wrote anything between 4a and 4d, the
      copy may lack it — the source does not forward other members' writes — so the join is
      undone and refused; otherwise `new -> every member`, without data.
   Each row reaches the new node once: through the copy, or through the direct subscription from
   the node where it was written — never through the source as well, because every
   subscription has `forward_origins := '{}'`: a node sends only its own writes, which also
   keeps writes from looping around the mesh. A row written on another member during the join
   and not yet applied on the source when its copy started would be missed; 4a narrows that
   window and 4e refuses a join during which it could have happened: join nodes while writes
   go to the source only.
5. Wait until every subscription of the mesh is replicating.

Every step observes before it acts, so a second call changes nothing and a call after a crash
resumes. After a restore, run `reset_restored_node` on the restored nodes first: an existing
subscription is kept as it is, and a restored catalog's subscriptions are stale.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TypeVar

import msgspec

from controlplane.replication.errors import ReplicationError
from controlplane.replication.join_guard import close_guard, has_guard, open_guard, written_tables
from controlplane.replication.names import MeshNode, pglogical_node_name, subscription_name
from controlplane.replication.nodes import ensure_node, local_node_name
from controlplane.replication.schema import PgTools, copy_schema
from controlplane.replication.subscriptions import (
    drop_node_links,
    ensure_subscription,
    list_subscriptions,
    wait_for_sync,
)
from controlplane.replication.tables import user_tables
from controlplane.store.pool import Connection

T = TypeVar("T")


class MeshChanges(msgspec.Struct, frozen=True, kw_only=True):
    """What one `converge_mesh` call changed (all empty when the mesh was already complete)."""

    nodes: tuple[str, ...] = ()  # nodes whose pglogical setup changed
    schemas_copied: tuple[str, ...] = ()  # joining nodes that received the source's schema
    subscriptions: tuple[str, ...] = ()  # subscriptions created

    @property
    def changed(self) -> bool:
        return bool(self.nodes or self.schemas_copied or self.subscriptions)


async def converge_mesh(
    conns: Mapping[str, Connection],
    nodes: Sequence[MeshNode],
    *,
    new_nodes: Collection[str] = (),
    source_node: Mapping[str, str] | None = None,
    tools: PgTools | None = None,
    sync_timeout: float = 60.0,
    on_nodes_ready: Callable[[], None] | None = None,
) -> MeshChanges:
    """Make `nodes` a complete mesh (see the module docstring for the order).

    `conns` holds a superuser connection to each node's application database. Nodes in
    `new_nodes` are populated from `source_node[name]` (default: the first existing node by
    name); their current rows are replaced — also when they already have a pglogical identity
    (a join interrupted after step 2 is resumed with its copy). `sync_timeout` bounds each wait
    for a subscription and for a source to catch up. `on_nodes_ready` is called after step 2.
    """
    by_name = {node.name: node for node in nodes}
    sources = _plan_sources(conns, by_name, new_nodes, source_node or {})
    tools = tools or PgTools()
    pending = [n for n in sources if not await _has_subscription(conns[n], sources[n], n)]
    copied = [n for n in pending if not await user_tables(conns[n])]
    for name in copied:
        await copy_schema(by_name[sources[name]], by_name[name], tools)
    node_changes = await _each(list(by_name), lambda name: ensure_node(conns[name], by_name[name]))
    if on_nodes_ready is not None:
        on_nodes_ready()
    members = [name for name in by_name if name not in sources]
    created = await _link(conns, by_name, members, members, sync_timeout)
    for name in sorted(sources):
        created += await _join(conns, by_name, name, sources[name], members, sync_timeout)
        members.append(name)
    return MeshChanges(
        nodes=tuple(name for name, changed in zip(by_name, node_changes, strict=True) if changed),
        schemas_copied=tuple(copied),
        subscriptions=tuple(sorted(created)),
    )


def _plan_sources(
    conns: Mapping[str, Connection],
    by_name: Mapping[str, MeshNode],
    new_nodes: Collection[str],
    source_node: Mapping[str, str],
) -> dict[str, str]:
    """Map each joining node to its source; reject unknown names before touching anything."""
    missing = sorted(set(by_name) - set(conns))
    if missing:
        raise ValueError(f"no connection for node(s) {', '.join(missing)}")
    unknown = sorted(set(new_nodes) - set(by_name))
    if unknown:
        raise ValueError(f"new node(s) {', '.join(unknown)} are not in the mesh")
    existing = sorted(set(by_name) - set(new_nodes))
    sources: dict[str, str] = {}
    for name in new_nodes:
        source = source_node.get(name) or (existing[0] if existing else None)
        if source is None:
            continue  # every node is new: there is no data to copy from anywhere
        if source not in existing:
            raise ValueError(f"source {source} of node {name} must be an existing mesh node")
        sources[name] = source
    return sources


async def _link(
    conns: Mapping[str, Connection],
    by_name: Mapping[str, MeshNode],
    providers: Sequence[str],
    subscribers: Sequence[str],
    sync_timeout: float,
) -> list[str]:
    """Subscribe each subscriber to each provider (no data), wait until all are replicating."""

    async def subscribe(subscriber: str) -> list[str]:
        created = []
        for provider in providers:
            if provider == subscriber:
                continue
            if await ensure_subscription(
                conns[subscriber],
                provider=by_name[provider],
                subscriber=by_name[subscriber],
                synchronize_data=False,
            ):
                created.append(subscription_name(provider, subscriber))
        for provider in providers:
            if provider != subscriber:
                await wait_for_sync(
                    conns[subscriber],
                    provider=provider,
                    subscriber=subscriber,
                    timeout=sync_timeout,
                )
        return created

    return [name for names in await _each(list(subscribers), subscribe) for name in names]


async def _join(
    conns: Mapping[str, Connection],
    by_name: Mapping[str, MeshNode],
    new: str,
    source: str,
    members: Sequence[str],
    sync_timeout: float,
) -> list[str]:
    """Populate `new` from `source`, then link it with every member (steps 4a to 4e). When the
    join fails, or the guard finds writes the copy may have missed, it is undone: `new` loses
    its subscriptions and its pglogical identity, so the next attempt copies again."""
    others = [m for m in members if m != source]
    populated = await _has_subscription(conns[new], source, new)
    if not populated:
        await _refuse_if_subscribed(conns, new, members)
    try:
        created = await _populate(conns, by_name, new, source, others, sync_timeout)
        created += await _link(conns, by_name, members, [new], sync_timeout)
        await _check_guards(conns, new, source, others)
        created += await _link(conns, by_name, [new], members, sync_timeout)
    except Exception:
        with contextlib.suppress(Exception):  # best effort: the join's own error matters more
            await _undo_join(conns, new, members)
        raise
    finally:
        with contextlib.suppress(Exception):  # a member out of reach: drop_node_links cleans up
            await _each(others, lambda m: close_guard(conns[m], new))
    return created


async def _populate(
    conns: Mapping[str, Connection],
    by_name: Mapping[str, MeshNode],
    new: str,
    source: str,
    others: Sequence[str],
    sync_timeout: float,
) -> list[str]:
    """Steps 4a to 4c: guards on the other members, the source catches up, `new` is emptied and
    receives the source's copy (skipped when its subscription exists: a resumed join)."""
    created = []
    if not await _has_subscription(conns[new], source, new):
        await _each(list(others), lambda m: open_guard(conns[m], new))
        await _catch_up(conns, source, others, sync_timeout)
        await _empty_tables(conns[new])
        await ensure_subscription(
            conns[new], provider=by_name[source], subscriber=by_name[new], synchronize_data=True
        )
        created.append(subscription_name(source, new))
    await wait_for_sync(conns[new], provider=source, subscriber=new, timeout=sync_timeout)
    return created


async def _check_guards(
    conns: Mapping[str, Connection], new: str, source: str, others: Sequence[str]
) -> None:
    """Step 4e: refuse the join when another member wrote while `new` was being populated and
    before its direct subscription to that member began (see join_guard)."""
    for member in others:
        conn = conns[member]
        if not await has_guard(conn, new):
            continue  # a join resumed after its guard was checked and closed
        upto = str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
        tables = await written_tables(conn, new, upto)
        if tables:
            raise ReplicationError(
                f"node {new} was not joined: node {member} wrote to {', '.join(tables)} while "
                f"{new} was being copied from {source}, and those rows might be missing on "
                f"{new}. It is left out of the mesh; submit the spec again to retry the join "
                f"while writes go to {source} only"
            )


async def _undo_join(conns: Mapping[str, Connection], new: str, members: Sequence[str]) -> None:
    """Cut `new` out again and drop its identity, so the next converge treats it as joining."""
    involved = {name: conns[name] for name in (*members, new)}
    await drop_node_links(involved, new)
    if await local_node_name(conns[new]) is not None:
        await conns[new].execute(
            "SELECT pglogical.drop_node($1, ifexists := true)", pglogical_node_name(new)
        )


async def _has_subscription(conn: Connection, provider: str, subscriber: str) -> bool:
    name = subscription_name(provider, subscriber)
    return any(sub.name == name for sub in await list_subscriptions(conn))


async def _refuse_if_subscribed(
    conns: Mapping[str, Connection], new: str, members: Sequence[str]
) -> None:
    """Replacing the rows of a node others already receive from would delete them everywhere."""
    for member in members:
        if await _has_subscription(conns[member], new, member):
            raise ReplicationError(
                f"node {new} already replicates to node {member}; refusing to replace its data "
                f"(drop its links first)"
            )


async def _catch_up(
    conns: Mapping[str, Connection], source: str, members: Sequence[str], sync_timeout: float
) -> None:
    """On each other member, wait until the source confirmed the WAL written so far."""
    slots = {sub.provider: sub.slot_name for sub in await list_subscriptions(conns[source])}

    async def confirm(member: str) -> None:
        if member == source or member not in slots:
            return
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

    await _each(list(members), confirm)


async def _empty_tables(conn: Connection) -> None:
    """Truncate the replicated tables when any holds rows (all at once: foreign keys)."""
    tables = await user_tables(conn)
    for table in tables:
        # `table` is a format('%I.%I') name from the catalog, quoted by the server.
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
            await conn.execute(f"TRUNCATE {', '.join(tables)}")
            return


async def _each(names: list[str], action: Callable[[str], Awaitable[T]]) -> list[T]:
    """Run `action` for every node concurrently (one connection each); raise the first failure
    only after all have ended, so no query is left running on a connection."""
    results = await asyncio.gather(*(action(name) for name in names), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if not isinstance(r, BaseException)]
