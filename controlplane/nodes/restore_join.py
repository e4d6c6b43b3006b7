"""A node added from a backup to a database whose nodes keep writing: where it is restored to,
and what it must know when it wakes up, so that it joins the mesh without losing a row.

The node is restored from the backup of one of the database's own running nodes (its source)
and recovered to exactly an LSN R of the source, chosen when the task runs: after the slots
every member keeps for the new node were made (`replication.prepare_join`) and after the
source applied what the other members wrote before those slots. Recovered, the node learns
from its restored catalog how far the source had applied each other member at R, records it
as its replication origins (R for the source), and makes its own slots for the others while it
is still fenced; the mesh step then attaches every subscription at exactly those points
(`replication.joins`). Nothing else can be made lossless: an explicit past target, or a backup
of another database, would leave rows the members committed since out of the new node for
good, so such requests are refused before anything is touched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controlplane import replication
from controlplane.nodes import mesh, restore_source
from controlplane.nodes.common import ref_of
from controlplane.orchestrator.base import InstanceRef
from controlplane.spec import normalise_restore_options
from controlplane.spec.models import DatabaseSpec, RestoreConfig
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.store.pool import Connection
from controlplane.tasks.context import Services, StepContext
from controlplane.tasks.inputs import restore_plans, target_nodes

# The LSN a joining node is recovered to, written before its restore so that a resumed step
# restores to the same point (its members' slots were made for that point).
JOIN_TARGET_FILE = "join-target.json"
# Options that only choose which set to start from; anything naming a target would move the
# join point away from the present.
_JOIN_OPTIONS = frozenset({"set", "process-max"})


def join_problems(
    database_id: str, config: RestoreConfig, members: Sequence[str], path: str
) -> list[dict[str, str]]:
    """Why a node restored with `config` could not join `members` without losing rows (empty
    when it can): it must be restored from the backup of one of them, to the present."""
    if config.source_database_id != database_id or config.source_node_name not in members:
        return [
            {
                "path": f"{path}.source_node_name",
                "message": f"a node added to a database that has nodes must be restored from a "
                f"backup of one of them ({', '.join(members)}) so it can join without missing "
                f"their writes; to start from another backup, create a new database from it",
            }
        ]
    options = normalise_restore_options(config.restore_options)
    extra = sorted(k for k in options if k not in _JOIN_OPTIONS)
    if options.get("type") in (None, "default"):
        extra = [k for k in extra if k != "type"]
    if extra:
        return [
            {
                "path": f"{path}.restore_options",
                "message": f"{', '.join(extra)} cannot be used when adding a node: it is "
                f"restored to the present of node {config.source_node_name} and then receives "
                f"every later write (only set and process-max may be given)",
            }
        ]
    return []


@dataclass(frozen=True)
class JoinTarget:
    """Where in its source's WAL a joining node is recovered to (exclusive)."""

    source: str
    lsn: str


async def join_target(
    ctx: StepContext, spec: DatabaseSpec, row: InstanceRow, config: RestoreConfig
) -> JoinTarget:
    """The point `row`'s node is restored to: the recorded one, or a new one made now (slots
    and guards on every member, the source catches up, then a marker is archived on it)."""
    ref = ref_of(row)
    saved = await _saved(ctx, ref)
    if "lsn" in saved:
        return JoinTarget(source=saved["source"], lsn=saved["lsn"])
    members = await _member_rows(ctx, spec, row.node_name)
    async with (
        mesh.mesh_lock(ctx.services, ctx.database_id),
        mesh.connections(ctx.services, members, spec.database_name) as conns,
    ):
        starts = await replication.prepare_join(
            conns, row.node_name, config.source_node_name, sync_timeout=120.0
        )
    await ctx.log.info(
        f"node {row.node_name}: streams prepared on "
        + ", ".join(f"{m} from {lsn}" for m, lsn in sorted(starts.items())),
        node=row.node_name,
    )
    end = await restore_source.archive_marker(ctx.services, config)
    if end is None:
        raise replication.ReplicationError(
            f"node {config.source_node_name} did not archive a restore point for node "
            f"{row.node_name} in time (is it running, and does it archive to this repository?)"
        )
    target = JoinTarget(source=config.source_node_name, lsn=end.lsn)
    await _save(ctx, ref, {"source": target.source, "lsn": target.lsn})
    await ctx.log.info(
        f"node {row.node_name}: joins at {target.lsn} of node {target.source}",
        node=row.node_name,
    )
    return target


async def _saved(ctx: StepContext, ref: InstanceRef) -> dict[str, Any]:
    """What this task recorded beside the node (a file another task left is not ours)."""
    recorded = await ctx.services.orchestrator.read_file(ref, JOIN_TARGET_FILE)
    saved: dict[str, Any] = json.loads(recorded) if recorded else {}
    return saved if saved.get("task") == str(ctx.task.task_id) else {}


async def _save(ctx: StepContext, ref: InstanceRef, values: dict[str, Any]) -> None:
    saved = {**await _saved(ctx, ref), **values, "task": str(ctx.task.task_id)}
    await ctx.services.orchestrator.write_file(ref, JOIN_TARGET_FILE, json.dumps(saved) + "\n")


async def _member_rows(ctx: StepContext, spec: DatabaseSpec, joining: str) -> list[InstanceRow]:
    """The database's nodes that are in the mesh already and stay there: the others are being
    made now, or restored in place by the same restore."""
    rows = await instances.list_instances(ctx.services.pool, ctx.database_id)
    wanted = {n.name for n in spec.nodes} - {joining}
    if ctx.task.type == "node_restore":
        wanted -= set(target_nodes(ctx.input))
        return [r for r in rows if r.node_name in wanted]
    wanted -= set(restore_plans(ctx.input))
    return [r for r in rows if r.node_name in wanted and r.created_at < ctx.task.created_at]


async def restored_points(ctx: StepContext, conn: Connection, ref: InstanceRef) -> dict[str, str]:
    """How far the backed-up node had applied each of its providers (from the restored
    catalog, before its reset drops those subscriptions and their origins), kept beside the
    join target so that a step resumed after the reset still knows."""
    saved = await _saved(ctx, ref)
    if "origins" not in saved:
        saved["origins"] = await replication.restored_origins(conn)
        await _save(ctx, ref, {"origins": saved["origins"]})
    return dict(saved["origins"])


async def record_join_points(
    ctx: StepContext,
    conn: Connection,
    spec: DatabaseSpec,
    ref: InstanceRef,
    target: JoinTarget,
    origins: dict[str, str],
) -> None:
    """On the fenced, recovered node: where its rows of each member end (the source at the
    target; the others where the source had applied them, `origins` from its restored
    catalog), and its own slots for every other node, so its first write is streamed."""
    members = [r.node_name for r in await _member_rows(ctx, spec, ref.node_name)]
    for member in members:
        lsn = target.lsn if member == target.source else origins.get(member)
        if lsn is None:
            raise replication.ReplicationError(
                f"node {ref.node_name}: the backup of node {target.source} does not say how far "
                f"it had applied node {member}'s writes; add node {ref.node_name} with "
                f"source_node instead"
            )
        await replication.set_origin(conn, member, ref.node_name, lsn)
    for other in spec.nodes:
        if other.name != ref.node_name:
            await replication.create_slot(conn, ref.node_name, other.name)
    await ctx.log.info(
        f"node {ref.node_name}: holds "
        + ", ".join(
            f"{m} up to {target.lsn if m == target.source else origins[m]}" for m in members
        ),
        node=ref.node_name,
    )


async def abandon_joins(ctx: StepContext, spec: DatabaseSpec) -> None:
    """After a failed update: cut out every node this task was restoring to join and that is
    not linked with every member yet, so no slot retains WAL for it and a resubmitted spec
    starts its join over (by copy) rather than linking it as if it held every row."""
    plans = restore_plans(ctx.input)
    joining = sorted(name for name, plan in plans.items() if plan.get("join_source"))
    if not joining:
        return
    rows = await instances.list_instances(ctx.services.pool, ctx.database_id)
    by_name = {r.node_name: r for r in rows}
    for name in joining:
        members = await _member_rows(ctx, spec, name)
        if name in by_name and await _linked(ctx.services, spec, by_name[name], members):
            continue
        await mesh.drop_links_of(ctx, spec, name, rows, forget=True)
        await ctx.log.warning(
            f"node {name} did not join the mesh: its links, slots and identity were removed; "
            f"submit the spec again to join it by copy",
            node=name,
        )


async def _linked(
    services: Services, spec: DatabaseSpec, row: InstanceRow, members: Sequence[InstanceRow]
) -> bool:
    """True when the node subscribes to every member (its join completed)."""
    try:
        conn = await services.orchestrator.connect(ref_of(row), spec.database_name)
    except Exception:
        return False
    try:
        providers = {s.provider_node for s in await replication.subscription_status(conn)}
    finally:
        await conn.close()
    return all(m.node_name in providers for m in members)
