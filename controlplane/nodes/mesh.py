"""Workflow steps around the pglogical mesh: connect to nodes, converge, drop a node's links."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from controlplane import replication
from controlplane.nodes.common import load_spec, ref_of
from controlplane.orchestrator.base import InstanceRef
from controlplane.replication import MeshNode, PgTools
from controlplane.spec.models import DatabaseSpec
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.store.pool import Connection
from controlplane.tasks.context import Services, StepContext
from controlplane.tasks.inputs import restore_plans, target_nodes


def mesh_node(
    services: Services, ref: InstanceRef, database: str, replicas: Sequence[InstanceRef] = ()
) -> MeshNode:
    """How the other nodes reach this one (a superuser DSN). A node with replicas is reached
    through all of its instances, at whichever is writable (libpq's multi-host form with
    `target_session_attrs=read-write`): after a failover, subscriptions find the new primary."""
    dsn = services.orchestrator.replication_dsn(ref, database)
    if replicas:
        dsn = multi_host_dsn(
            [dsn, *(services.orchestrator.replication_dsn(r, database) for r in replicas)]
        )
    return MeshNode(name=ref.node_name, dsn=dsn)


def multi_host_dsn(dsns: Sequence[str]) -> str:
    """One libpq DSN trying each of `dsns` (same database and user) until one is writable."""
    parts = [dict(item.split("=", 1) for item in dsn.split()) for dsn in dsns]
    merged = dict(parts[0])
    merged["host"] = ",".join(p["host"] for p in parts)
    merged["port"] = ",".join(p["port"] for p in parts)
    merged["target_session_attrs"] = "read-write"
    return " ".join(f"{key}={value}" for key, value in merged.items())


async def node_replicas(services: Services, database_id: str) -> dict[str, list[InstanceRef]]:
    """Each node's replicas (nodes without any are absent)."""
    found: dict[str, list[InstanceRef]] = {}
    for row in await instances.list_instances(services.pool, database_id, replicas=True):
        if row.role == "replica":
            found.setdefault(row.node_name, []).append(ref_of(row))
    return found


@contextlib.asynccontextmanager
async def connections(
    services: Services, rows: Sequence[InstanceRow], database: str
) -> AsyncIterator[dict[str, Connection]]:
    """Superuser connections to each instance's application database, closed afterwards."""
    conns: dict[str, Connection] = {}
    try:
        for row in rows:
            conns[row.node_name] = await services.orchestrator.connect(ref_of(row), database)
        yield conns
    finally:
        for conn in conns.values():
            with contextlib.suppress(Exception):
                await conn.close()


def tools(services: Services) -> PgTools:
    return PgTools(bin_dir=str(services.settings.pg_bin_dir), os_user=services.settings.os_user)


async def _rows(ctx: StepContext, spec: DatabaseSpec) -> list[InstanceRow]:
    wanted = {n.name for n in spec.nodes}
    return [
        r
        for r in await instances.list_instances(ctx.services.pool, ctx.database_id)
        if r.node_name in wanted
    ]


async def converge_replication(ctx: StepContext) -> dict[str, Any]:
    """Every node subscribes to every other (forward_origins '{}': no loops).

    A node is joining when others already form the mesh and it either has no pglogical
    identity or was created by this task (so a join cut short after the identity was made is
    resumed with its copy, never linked empty): it is populated from its `source_node`
    (default: the first member) with one data copy, then linked without data. A node restored
    from a member's backup to join was recovered to a prepared point (`restore_join`) and is
    attached there, without a copy; nodes restored together to make a new database hold the
    same rows and are linked as members. Nodes restored in place (a `restore` task) are
    attached at the points their node restores recorded.
    """
    _, spec = await load_spec(ctx)
    rows = await _rows(ctx, spec)
    replicas = await node_replicas(ctx.services, ctx.database_id)
    nodes = [
        mesh_node(ctx.services, ref_of(r), spec.database_name, replicas.get(r.node_name, []))
        for r in rows
    ]
    restored = restore_plans(ctx.input)
    fresh = {
        r.node_name
        for r in rows
        if r.created_at >= ctx.task.created_at and r.node_name not in restored
    }
    attaching = {name for name, plan in restored.items() if plan.get("join_source")}
    if ctx.task.type == "restore":
        # Nodes restored in place kept or made the slots they stream from and to while
        # fenced (node_restore.prepare_links): they are attached there.
        attaching = set(target_nodes(ctx.input))
    async with (
        mesh_lock(ctx.services, ctx.database_id),
        connections(ctx.services, rows, spec.database_name) as conns,
    ):
        identities = {n: await replication.local_node_name(c) for n, c in conns.items()}
        # A node restored to join keeps its identity until its join is undone; then it joins
        # again by copy, like any node without one.
        attached = {n for n in attaching if identities.get(n) is not None}
        members = sorted(
            n
            for n, name in identities.items()
            if name is not None and n not in fresh and n not in attached
        )
        joining = sorted(n for n in conns if n not in members and n not in attached)
        joining = joining if members else []
        for name in sorted(attached):
            await ctx.log.info(
                f"node {name} joins the mesh at the point it was restored to, without a copy",
                node=name,
            )
        sources = {}
        for name in joining:
            node = next(n for n in spec.nodes if n.name == name)
            sources[name] = node.source_node if node.source_node in members else members[0]
            await ctx.log.info(
                f"node {name} joins the mesh with a copy of {sources[name]}'s data", node=name
            )
        changes = await replication.converge_mesh(
            conns,
            nodes,
            new_nodes=joining,
            source_node=sources,
            attached=attached,
            tools=tools(ctx.services),
            failpoint=lambda point: ctx.failpoint(f"create_replication_mesh:{point}"),
        )
    if changes.subscriptions:
        await ctx.log.info(f"subscriptions created: {', '.join(changes.subscriptions)}")
    elif len(rows) > 1:
        await ctx.log.info("replication mesh already complete")
    return {}


async def drop_links_of(
    ctx: StepContext,
    spec: DatabaseSpec,
    node_name: str,
    rows: Sequence[InstanceRow],
    *,
    forget: bool = False,
) -> bool:
    """Drop every subscription to and from `node_name` on the reachable nodes, and any slot it
    left on the others (a slot nobody reads retains WAL forever); with `forget`, its pglogical
    identity too (a join that did not complete starts over). True when every other node was
    reached, so no slot for `node_name` is left anywhere."""
    # Node restores run in parallel; one dropping links while another drops the same ones or
    # stops its node would race, so changes to one database's mesh (and restore stops) are
    # serialised, and which nodes run is looked at under the lock.
    async with mesh_lock(ctx.services, ctx.database_id):
        reachable = [
            row for row in rows if await ctx.services.orchestrator.status(ref_of(row)) == "running"
        ]
        async with connections(ctx.services, reachable, spec.database_name) as conns:
            if forget:
                others = [n for n in conns if n != node_name]
                await replication.undo_join(conns, node_name, others)
            elif await replication.drop_node_links(conns, node_name):
                await ctx.log.info(f"replication links of node {node_name} dropped", node=node_name)
    return all(row in reachable for row in rows if row.node_name != node_name)


@contextlib.asynccontextmanager
async def mesh_lock(services: Services, database_id: str) -> AsyncIterator[None]:
    """A session advisory lock in the store, per database, held while its mesh changes."""
    async with services.pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext('mesh:' || $1))", database_id)
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext('mesh:' || $1))", database_id)
