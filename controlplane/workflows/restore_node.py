"""node_restore: restore one node in place from a backup (a child of a `restore` task)."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from controlplane import replication
from controlplane.errors import ExternalCommandError, PreconditionError, UnsafeRestoreError
from controlplane.nodes import (
    backups,
    child_tasks,
    mesh,
    restore_join,
    restore_replicas,
    restore_source,
    restore_targets,
)
from controlplane.nodes.common import load_spec, managed_settings, ref_of, unseal
from controlplane.orchestrator.base import InstanceRef, reload_settings
from controlplane.pgbackrest import info as pgb_info
from controlplane.pgbackrest.info import lsn_value
from controlplane.spec.models import DatabaseSpec, RestoreConfig
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.store.pool import Connection
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import NodeRestoreInput
from controlplane.tasks.workflow import Step, Workflow


async def _context(ctx: StepContext) -> tuple[DatabaseSpec, InstanceRow, RestoreConfig]:
    _, spec = await load_spec(ctx)
    node = ctx.task.node_name or ""
    row = await instances.get_instance(ctx.services.pool, ctx.database_id, node)
    if row is None:
        raise PreconditionError(f"node {node} of {ctx.database_id} has no instance")
    config = msgspec.convert(unseal(ctx.services, ctx.task)["restore_config"], RestoreConfig)
    return spec, row, config


async def validate_target(ctx: StepContext) -> dict[str, Any]:
    """The set chosen when the restore was requested must still be in the repository, and a
    node with replicas must still have the primary it had then."""
    _, row, config = await _context(ctx)
    await restore_replicas.check_leader(ctx.services, row)
    source = await restore_source.source_setup(ctx.services, config, ref_of(row))
    entries = await restore_source.source_catalog(ctx.services, source, config)
    plan = restore_source.RestorePlan.from_state(ctx.input_as(NodeRestoreInput).plan)
    if plan.set_label not in {e.label for e in entries}:
        raise PreconditionError(f"backup set {plan.set_label} is no longer in the repository")
    await ctx.log.info(
        f"node {row.node_name}: restoring set {plan.set_label}"
        + (f" to {plan.target_type} {plan.target}" if plan.target else "")
    )
    return {}


async def pre_restore_backup(ctx: StepContext) -> dict[str, Any]:
    """Optional safety backup of the node as it is now (its own task, trigger pre_restore)."""
    if not ctx.input_as(NodeRestoreInput).pre_restore_backup:
        return {}
    task = await child_tasks.run_child_backup(ctx, trigger="pre_restore")
    return {"pre_restore_backup_task": task}


def _targets(ctx: StepContext) -> set[str]:
    return set(ctx.input_as(NodeRestoreInput).target_nodes or [ctx.task.node_name or ""])


def _own_latest(ctx: StepContext, row: InstanceRow, config: RestoreConfig) -> bool:
    """Restored from its own backups to the end of its archive: nothing of it is rewound."""
    plan = restore_source.RestorePlan.from_state(ctx.input_as(NodeRestoreInput).plan)
    own = (config.source_database_id, config.source_node_name) == (
        row.database_id,
        row.node_name,
    )
    return own and plan.target_type in (None, "default")


async def drain_node(ctx: StepContext) -> dict[str, Any]:
    """Take the node out of the mesh without losing a write of its own (`replication.drain`):
    fence its clients, pause what it applies, wait until every node that keeps running has
    all its writes, and cut their subscriptions to it; its own are cut after the restore.
    Restored to the end of its own archive, its last WAL is archived too. Restored from a
    running member's backup to the present, it rejoins like a node added from a backup: the
    point it is recovered to is prepared now (`restore_join`)."""
    spec, row, config = await _context(ctx)
    ref = ref_of(row)
    orchestrator = ctx.services.orchestrator
    targets = _targets(ctx)
    wanted = {n.name for n in spec.nodes} - {row.node_name}
    rows = await instances.list_instances(ctx.services.pool, ctx.database_id)
    others = [r for r in rows if r.node_name in wanted]
    state: dict[str, Any] = {}
    # Sibling node restores drain one at a time: each cuts subscriptions on the others.
    async with mesh.mesh_lock(ctx.services, ctx.database_id):
        running = [r for r in others if await orchestrator.status(ref_of(r)) == "running"]
        down = {r.node_name for r in others} - {r.node_name for r in running} - targets
        for name in sorted(down):
            await ctx.log.warning(
                f"node {name} is not running: it will miss node {row.node_name}'s writes it "
                f"had not received; restore it or remove it and add it again",
                node=row.node_name,
            )
        if await orchestrator.status(ref) == "running":
            await orchestrator.fence_clients(ref, fenced=True)
            await reload_settings(orchestrator, ref)
            drained = await _drain(ctx, spec, row, config, running, targets)
            if drained is not None:
                state["drained_at"] = drained.end
                state["applied_at_drain"] = drained.applied
    join_source = ctx.input_as(NodeRestoreInput).join_source
    if join_source:
        await mesh.drop_links_of(ctx, spec, row.node_name, rows)
        target = await restore_join.join_target(ctx, spec, row, config)
        state["join"] = {"source": target.source, "lsn": target.lsn}
    return state


async def _drain(
    ctx: StepContext,
    spec: DatabaseSpec,
    row: InstanceRow,
    config: RestoreConfig,
    running: list[InstanceRow],
    targets: set[str],
) -> replication.Drained | None:
    async with mesh.connections(ctx.services, [row, *running], spec.database_name) as conns:
        own = conns[row.node_name]
        ended = await replication.end_client_sessions(own)
        if ended:
            await ctx.log.info(
                f"node {row.node_name}: {ended} client session(s) ended; only the control "
                f"plane logs in until it is restored",
                node=row.node_name,
            )
        if not await replication.is_pglogical_node(own):
            return None
        peers = sorted(r.node_name for r in running)
        drained = await replication.drain(
            conns,
            row.node_name,
            providers=peers,
            confirm=[p for p in peers if p not in targets],
            cut=peers,
            strict=_own_latest(ctx, row, config),
        )
        await ctx.log.info(
            f"node {row.node_name}: drained at {drained.end}; its clients are fenced",
            node=row.node_name,
        )
        for peer in drained.behind:
            await ctx.log.warning(
                f"node {peer} had not applied all of node {row.node_name}'s writes (its "
                f"subscription was not replicating): it lacks those it had not received, "
                f"and receives the restored node's writes from now on",
                node=row.node_name,
            )
    return drained


async def tear_down_replicas(ctx: StepContext) -> dict[str, Any]:
    """A node with replicas: its replicas removed and its drained primary released from
    Patroni; they are rebuilt once the mesh is linked again (`restore_replicas`)."""
    _, row, _ = await _context(ctx)
    async with mesh.mesh_lock(ctx.services, ctx.database_id):
        torn_down = await restore_replicas.tear_down(ctx, row)
    return {"replicas_torn_down": True} if torn_down else {}


async def stop_instance(ctx: StepContext) -> dict[str, Any]:
    """Stop Postgres; `desired: stopped` keeps the monitor from starting it mid-restore."""
    _, row, _ = await _context(ctx)
    pool = ctx.services.pool
    await instances.set_instance_state(
        pool, ctx.database_id, row.node_name, "restoring", desired="stopped"
    )
    async with mesh.mesh_lock(ctx.services, ctx.database_id):
        await ctx.services.orchestrator.stop(ref_of(row), on_line=ctx.log.sink("pg_ctl"))
    return {}


async def restore_data(ctx: StepContext) -> dict[str, Any]:
    """pgbackrest restore --delta into the stopped node; then point archiving at the right
    repository generation before anything starts (a changed system-id would fail every
    archive-push with [044] and pile up WAL)."""
    spec, row, config = await _context(ctx)
    plan = restore_source.RestorePlan.from_state(ctx.input_as(NodeRestoreInput).plan)
    join = ctx.state.get("join")
    if join:  # exactly the point the members' streams were prepared for
        plan.target_type, plan.target, plan.target_exclusive = "lsn", join["lsn"], True
    bumped = await _move_generation_if_needed(ctx, spec, row, plan)
    row = await instances.get_instance(ctx.services.pool, ctx.database_id, row.node_name) or row
    ref = ref_of(row)
    source = await restore_source.source_setup(ctx.services, config, ref)
    await ctx.services.orchestrator.write_file(
        ref, restore_source.RESTORE_CONFIG_FILE, source.config_text
    )
    await restore_source.restore_data(
        ctx.services,
        source,
        plan,
        delta=True,
        subject=backups.subject_of(ref, "restore"),
        on_line=ctx.log.sink("pgbackrest"),
    )
    # A backup taken while Patroni ran the node brings Patroni's postgresql.conf back.
    await ctx.services.orchestrator.release_from_patroni(ref)
    own = await backups.backup_setup(ctx.services, spec, row, ref)
    await backups.write_backup_files(ctx.services, own)
    # The restore brought the source's managed settings (port, archive_command): rewrite ours.
    await ctx.services.orchestrator.write_postgresql_conf(
        ref, await managed_settings(ctx, spec, ref, archive_command=own.archive_command)
    )
    # archive-get (restore_command) reads the source repository during recovery.
    await ctx.services.orchestrator.set_environment(ref, {**own.env, **source.env})
    return {"generation_moved": bumped}


async def _move_generation_if_needed(
    ctx: StepContext, spec: DatabaseSpec, row: InstanceRow, plan: restore_source.RestorePlan
) -> bool:
    """Move the node's repositories to a new generation when it is restored from backups other
    than its own and its current stanza holds anything. A different system could not archive
    there at all ([044]); the same system (the node was restored from that source before, or
    the nodes were all made from one backup) would recover onto a timeline chosen from the
    source's archive, which the node's own archive may already hold: archive-push then fails
    on every segment ([045], "already exists … with a different checksum") and its WAL piles
    up. Idempotent: a fresh generation has no stanza yet."""
    own = await backups.backup_setup(ctx.services, spec, row, ref_of(row))
    if not own.enabled or plan.backup_system_id is None:
        return False
    config = msgspec.convert(unseal(ctx.services, ctx.task)["restore_config"], RestoreConfig)
    if (config.source_database_id, config.source_node_name) == (row.database_id, row.node_name):
        return False  # the node's own backups: its own timelines, the same system
    try:
        stanza = await backups.read_info(
            ctx.services, own, subject=backups.subject_of(own.ref, "reading backups")
        )
    except ExternalCommandError:
        return False
    current = None if stanza.status.code == 1 else pgb_info.current_system_id(stanza)
    if current is None:
        return False
    if current == plan.backup_system_id:
        reason = (
            f"its archive may already hold the timeline it recovers onto from "
            f"{config.source_node_name}'s backups"
        )
    else:
        reason = (
            f"the restored system ({plan.backup_system_id}) differs from the one its backups "
            f"belong to ({current})"
        )
    generations = {
        repo: int(row.generations.get(repo, 1)) + 1 for repo in own.repository_ids.values()
    }
    await instances.set_generations(ctx.services.pool, ctx.database_id, row.node_name, generations)
    await ctx.log.warning(
        f"node {row.node_name}: {reason}; its backups move to generation(s) {generations}"
    )
    return True


async def start_recovery(ctx: StepContext) -> dict[str, Any]:
    """Start and wait until recovery has ended and the node is promoted, admitting no client
    but the control plane (a row written before the node's slots exist would never reach the
    others). Background workers are fenced too (no stale subscription may stream) unless
    the node comes back from its own archive after a drain: its restored subscriptions are
    then the paused ones, and a restart to lift the fence is saved."""
    _, row, config = await _context(ctx)
    ref = ref_of(row)
    workers_fenced = not (ctx.state.get("drained_at") and _own_latest(ctx, row, config))
    await ctx.services.orchestrator.fence_clients(ref, fenced=True)
    await ctx.services.orchestrator.start(
        ref,
        on_line=ctx.log.sink("pg_ctl"),
        options=replication.FENCED_START_SETTINGS if workers_fenced else None,
    )
    await ctx.log.info(f"node {row.node_name}: recovery finished, node promoted (fenced)")
    return {"workers_fenced": workers_fenced}


async def prepare_links(ctx: StepContext) -> dict[str, Any]:
    """While still fenced: read from the restored catalog how far the node had applied each
    other node, drop the restored subscriptions and give it its own pglogical identity,
    record where its rows of every running node end (its replication origins), and make its
    own slots, so its first write is streamed. Then admit clients again (a reload; stop + start
    when its workers were fenced or its environment changed: `pg_ctl restart` would keep the
    fence's options); the parent attaches every link at those points."""
    spec, row, config = await _context(ctx)
    ref = ref_of(row)
    await restore_source.rename_database_if_needed(ctx, ref, config, spec)
    conn = await ctx.services.orchestrator.connect(ref, spec.database_name)
    try:
        if _own_latest(ctx, row, config) and ctx.state.get("drained_at"):
            await _check_replayed(conn, row.node_name, ctx.state["drained_at"])
        origins = await restore_join.restored_points(ctx, conn, ref)
        await replication.reset_restored_node(
            conn, mesh.mesh_node(ctx.services, ref, spec.database_name)
        )
        join = ctx.state.get("join")
        if join:
            target = restore_join.JoinTarget(source=join["source"], lsn=join["lsn"])
            await restore_join.record_join_points(ctx, conn, spec, ref, target, origins)
        else:
            await _record_points(ctx, conn, spec, row, config, origins)
    finally:
        await conn.close()
    own = await backups.backup_setup(ctx.services, spec, row, ref)
    orchestrator = ctx.services.orchestrator
    changed = await orchestrator.set_environment(ref, own.env)
    await orchestrator.fence_clients(ref, fenced=False)
    sink = ctx.log.sink("pg_ctl")
    if changed or ctx.state.get("workers_fenced", True):
        await orchestrator.stop(ref, on_line=sink)
        await orchestrator.start(ref, on_line=sink)
    else:
        await reload_settings(orchestrator, ref)
    return {}


async def _check_replayed(conn: Connection, node: str, drained_at: str) -> None:
    """Restored to the end of its own archive, the node must have replayed everything it had
    when drained (a clean stop archives its last WAL); if its new timeline branched off
    earlier, writes it had made are gone and the restore must not say `completed`."""
    timeline = int(await conn.fetchval("SELECT timeline_id FROM pg_control_checkpoint()"))
    history = await restore_targets.timeline_history(conn, timeline)
    if history and lsn_value(history[-1][1]) < lsn_value(drained_at):
        raise UnsafeRestoreError(
            f"node {node} was recovered only up to {history[-1][1]}, before its last writes "
            f"at {drained_at}: its archive lacks its last WAL (check archive-push). Restore it "
            f"again to an explicit target, or from a backup of another node"
        )


async def _record_points(
    ctx: StepContext,
    conn: Connection,
    spec: DatabaseSpec,
    row: InstanceRow,
    config: RestoreConfig,
    origins: dict[str, str],
) -> None:
    """Origins for every running node that is not restored too, at the latest of: the
    restored catalog's progress; the start of the slot that node kept for this one; how far
    this node had applied that node's writes when it was drained. A node restored to an
    earlier point then lacks what it had applied before it stopped (it diverges, as the parent
    says) and receives every write made since; how much it lacks does not depend on when the
    slot last heard from it. Then this node's own slots for every other node."""
    targets = _targets(ctx)
    same_database = config.source_database_id == ctx.database_id
    rows = await instances.list_instances(ctx.services.pool, ctx.database_id)
    wanted = {n.name for n in spec.nodes} - targets
    members = [
        r
        for r in rows
        if r.node_name in wanted and await ctx.services.orchestrator.status(ref_of(r)) == "running"
    ]
    held_by: dict[str, str] = {}
    async with mesh.connections(ctx.services, members, spec.database_name) as conns:
        for member, member_conn in sorted(conns.items()):
            start = await replication.slot_start(member_conn, member, row.node_name)
            if start is None:
                start = await replication.create_slot(member_conn, member, row.node_name)
                await ctx.log.warning(
                    f"node {member} kept no stream for node {row.node_name}: it receives "
                    f"{member}'s writes from {start} on",
                    node=row.node_name,
                )
            held = origins.get(member) if same_database else None
            drained = ctx.state.get("applied_at_drain", {}).get(member)
            point = max((p for p in (held, drained) if p), key=lsn_value, default=start)
            point = point if lsn_value(point) > lsn_value(start) else start
            await replication.set_origin(conn, member, row.node_name, point)
            held_by[member] = point
    for other in spec.nodes:
        if other.name != row.node_name:
            await replication.create_slot(conn, row.node_name, other.name)
    if held_by:
        await ctx.log.info(
            f"node {row.node_name}: streams resume from "
            + ", ".join(f"{m} at {lsn}" for m, lsn in sorted(held_by.items())),
            node=row.node_name,
        )


async def reenable_backups(ctx: StepContext) -> dict[str, Any]:
    """Protect the node again with no manual step. Same system: its new timeline archives to
    the same stanza as before. New generation: create the stanza, check archiving, and take a
    full backup so the node has a restorable set at once."""
    spec, row, _ = await _context(ctx)
    own = await backups.backup_setup(ctx.services, spec, row, ref_of(row))
    if not own.enabled:
        return {}
    if not ctx.state.get("generation_moved"):
        await ctx.log.info(f"node {row.node_name}: backups continue in the same repository")
        return {}
    await backups.set_up_repositories(ctx, own)
    task = await child_tasks.run_child_backup(ctx, trigger="system")
    return {"protecting_backup_task": task}


async def mark_restored(ctx: StepContext) -> dict[str, Any]:
    """The primary is back; the node's replicas, if any, wait for the parent to rebuild them."""
    _, row, _ = await _context(ctx)
    await instances.set_desired_of(ctx.services.pool, row.id, "running", "available")
    return {
        "result": {
            "node": row.node_name,
            "set": ctx.input_as(NodeRestoreInput).plan["set"],
            "generation_moved": bool(ctx.state.get("generation_moved")),
        }
    }


async def _on_end(ctx: StepContext, message: str) -> None:
    """Before the stop nothing changed; after it the node is left stopped and marked failed."""
    pool = ctx.services.pool
    node = ctx.task.node_name or ""
    row = await instances.get_instance(pool, ctx.database_id, node)
    if row is None:
        return
    ref = ref_of(row)
    orchestrator = ctx.services.orchestrator
    status = await orchestrator.status(ref)
    await orchestrator.fence_clients(ref, fenced=False)
    if status == "running":
        with contextlib.suppress(Exception):  # best effort: the failure itself matters more
            await reload_settings(orchestrator, ref)
            await _resume(ctx, ref)
    if row.desired == "running" and status == "running":
        await instances.set_instance_state(pool, ctx.database_id, node, "available")
    else:
        await instances.set_instance_state(
            pool, ctx.database_id, node, "failed", error=message, desired="stopped"
        )
    for replica in await instances.list_replicas(pool, ctx.database_id, node):
        if replica.supervisor != "patroni":  # torn down for the restore
            await instances.set_desired_of(pool, replica.id, "stopped", "failed")
            await instances.set_state_of(
                pool,
                replica.id,
                "failed",
                error="removed for the node's restore, which failed: restore the node again "
                "to rebuild it",
            )


async def _resume(ctx: StepContext, ref: InstanceRef) -> None:
    """A drain cut short before the stop: the node applies the others' writes again."""
    _, spec = await load_spec(ctx)
    conn = await ctx.services.orchestrator.connect(ref, spec.database_name)
    try:
        await replication.resume_subscriptions(conn)
    finally:
        await conn.close()


NODE_RESTORE = Workflow(
    type="node_restore",
    steps=(
        Step("validate_target", validate_target),
        Step("pre_restore_backup", pre_restore_backup),
        Step("drain_node", drain_node),
        Step("tear_down_replicas", tear_down_replicas),
        Step("stop_instance", stop_instance),
        Step("restore_data", restore_data),
        Step("start_recovery", start_recovery),
        Step("prepare_links", prepare_links),
        Step("reenable_backups", reenable_backups),
        Step("mark_restored", mark_restored),
    ),
    on_failure=_on_end,
    on_cancel=_on_end,
    input_type=NodeRestoreInput,
)
