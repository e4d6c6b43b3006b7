"""Bring a database's nodes to a complete pglogical mesh: every node subscribes to every other.

Order, and why:

1. A node joining by copy whose first subscription does not exist yet gets the table structure
   of its source (`schema.copy_schema`) when it has no user tables.
2. `ensure_node` everywhere: extension, node identity, event trigger, tables in their sets.
3. Subscriptions a join cut short left paused are resumed.
4. Existing nodes subscribe to each other, without data (they already hold the same rows).
5. Each node restored from a backup to join (`attached`, after `joins.prepare_join`) is linked
   both ways from its prepared slots, without a copy (`joins.join_by_attach`).
6. Each node joining by copy (`new_nodes`) is populated from its source and linked, one after
   the other (`joins.join_by_copy`).
7. Wait until every subscription of the mesh is replicating.

Every subscription has `forward_origins := '{}'`: a node sends only its own writes, so a write
travels one hop and never loops, and a joining node receives each member's writes from that
member — `joins` explains how none is lost or applied twice while every member writes.

Every step observes before it acts, so a second call changes nothing and a call after a crash
resumes. After an in-place restore, run `reset_restored_node` on the restored nodes first: an
existing subscription is kept as it is, and a restored catalog's subscriptions are stale.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import msgspec

from controlplane.replication.attach import resume_subscriptions
from controlplane.replication.joins import (
    for_each_node,
    has_subscription,
    join_by_attach,
    join_by_copy,
)
from controlplane.replication.names import MeshNode, subscription_name
from controlplane.replication.nodes import ensure_node
from controlplane.replication.schema import PgTools, copy_schema
from controlplane.replication.subscriptions import ensure_subscription, wait_for_sync
from controlplane.replication.tables import user_tables
from controlplane.store.pool import Connection


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
    attached: Collection[str] = (),
    tools: PgTools | None = None,
    sync_timeout: float = 60.0,
    failpoint: Callable[[str], None] = lambda point: None,
) -> MeshChanges:
    """Make `nodes` a complete mesh (see the module docstring for the order).

    `conns` holds a superuser connection to each node's application database. Nodes in
    `new_nodes` are populated from `source_node[name]` (default: the first existing node by
    name); their current rows are replaced — also when they already have a pglogical identity
    (a join interrupted after step 2 is resumed with its copy). Nodes in `attached` were
    restored for a join after `joins.prepare_join` and are linked without a copy.
    `sync_timeout` bounds each wait for a subscription and for a source to catch up.
    `failpoint` is called with the name of a point reached (`nodes_ready` after step 2,
    `source_paused` inside a copy join): crash tests stop there.
    """
    by_name = {node.name: node for node in nodes}
    sources = _plan_sources(conns, by_name, new_nodes, source_node or {}, attached)
    tools = tools or PgTools()
    pending = [n for n in sources if not await has_subscription(conns[n], sources[n], n)]
    copied = [n for n in pending if not await user_tables(conns[n])]
    for name in copied:
        await copy_schema(by_name[sources[name]], by_name[name], tools)
    node_changes = await for_each_node(
        list(by_name), lambda name: ensure_node(conns[name], by_name[name])
    )
    failpoint("nodes_ready")
    await for_each_node(list(by_name), lambda name: resume_subscriptions(conns[name]))
    members = [name for name in by_name if name not in sources and name not in attached]
    created = await _link(conns, by_name, members, members, sync_timeout)
    for name in sorted(attached):
        created += await join_by_attach(
            conns, by_name, name, list(members), fresh=attached, sync_timeout=sync_timeout
        )
        members.append(name)
    for name in sorted(sources):
        created += await join_by_copy(
            conns,
            by_name,
            name,
            sources[name],
            list(members),
            sync_timeout=sync_timeout,
            failpoint=failpoint,
        )
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
    attached: Collection[str],
) -> dict[str, str]:
    """Map each node joining by copy to its source; reject unknown names before touching
    anything."""
    missing = sorted(set(by_name) - set(conns))
    if missing:
        raise ValueError(f"no connection for node(s) {', '.join(missing)}")
    unknown = sorted((set(new_nodes) | set(attached)) - set(by_name))
    if unknown:
        raise ValueError(f"new node(s) {', '.join(unknown)} are not in the mesh")
    existing = sorted(set(by_name) - set(new_nodes) - set(attached))
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

    return [name for names in await for_each_node(list(subscribers), subscribe) for name in names]
