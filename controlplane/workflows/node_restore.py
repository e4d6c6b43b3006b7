"""node_restore: restore one node in place from a backup (a child of a `restore` task)."""

from __future__ import annotations

from typing import Any, cast

import msgspec

from controlplane import replication
from controlplane.errors import ExternalCommandError
from controlplane.pgbackrest import command as pgb
from controlplane.pgbackrest import info as pgb_info
from controlplane.spec.models import DatabaseSpec, RestoreConfig
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import StepContext
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows import backups, children, mesh, restore_source
from controlplane.workflows.common import load_spec, managed_settings, ref_of, unseal


async def _context(ctx: StepContext) -> tuple[DatabaseSpec, InstanceRow, RestoreConfig]:
    _, spec = await load_spec(ctx)
    node = ctx.task.node_name or ""
    row = await instances.get_instance(ctx.services.pool, ctx.database_id, node)
    if row is None:
        raise ExternalCommandError(f"node {node} of {ctx.database_id} has no instance")
    config = msgspec.convert(unseal(ctx.services, ctx.task)["restore_config"], RestoreConfig)
    return spec, row, config


async def validate_target(ctx: StepContext) -> dict[str, Any]:
    """The set chosen when the restore was requested must still be in the repository."""
    _, row, config = await _context(ctx)
    source = await restore_source.source_setup(ctx.services, config, ref_of(row))
    entries = await restore_source.source_catalog(ctx.services, source, config)
    plan = restore_source.RestorePlan.from_state(ctx.task.input["plan"])
    if plan.set_label not in {e.label for e in entries}:
        raise ExternalCommandError(f"backup set {plan.set_label} is no longer in the repository")
    await ctx.log.info(
        f"node {row.node_name}: restoring set {plan.set_label}"
        + (f" to {plan.target_type} {plan.target}" if plan.target else "")
    )
    return {}


async def pre_restore_backup(ctx: StepContext) -> dict[str, Any]:
    """Optional safety backup of the node as it is now (its own task, trigger pre_restore)."""
    if not ctx.task.input.get("pre_restore_backup"):
        return {}
    task = await children.run_child_backup(ctx, trigger="pre_restore")
    return {"pre_restore_backup_task": task}


async def drop_subscriptions(ctx: StepContext) -> dict[str, Any]:
    """Drop subscriptions to and from the node everywhere: replication slots are not in
    backups, and a restored subscriber that kept its subscription would silently lose rows."""
    spec, row, _ = await _context(ctx)
    rows = await instances.list_instances(ctx.services.pool, ctx.database_id)
    all_reached = await mesh.drop_links_of(ctx, spec, row.node_name, rows)
    return {"peers_unlinked": all_reached}


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
    plan = restore_source.RestorePlan.from_state(ctx.task.input["plan"])
    bumped = await _move_generation_if_needed(ctx, spec, row, plan)
    row = await instances.get_instance(ctx.services.pool, ctx.database_id, row.node_name) or row
    ref = ref_of(row)
    source = await restore_source.source_setup(ctx.services, config, ref)
    await ctx.services.orchestrator.write_file(
        ref, restore_source.RESTORE_CONFIG_FILE, source.config_text
    )
    argv = pgb.restore_argv(
        source.config_path,
        delta=True,
        set_label=plan.set_label,
        target_type=cast("pgb.RestoreType | None", plan.target_type),
        target=plan.target,
        target_exclusive=plan.target_exclusive,
        target_timeline=plan.target_timeline,
        target_action="promote",
    )
    await backups.run_pgbackrest(
        ctx.services,
        source,
        argv,
        one_off=True,
        subject=backups.subject_of(ref, "restore"),
        on_line=ctx.log.sink("pgbackrest"),
    )
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
    """Move the node's repositories to a new generation when the restored system differs from
    the one its current stanza belongs to. Idempotent: a fresh generation has no stanza yet."""
    own = await backups.backup_setup(ctx.services, spec, row, ref_of(row))
    if not own.enabled or plan.backup_system_id is None:
        return False
    config = msgspec.convert(unseal(ctx.services, ctx.task)["restore_config"], RestoreConfig)
    if (config.source_database_id, config.source_node_name) == (row.database_id, row.node_name):
        return False  # the node's own backups: the same system by construction
    try:
        stanza = await backups.read_info(
            ctx.services, own, subject=backups.subject_of(own.ref, "reading backups")
        )
    except ExternalCommandError:
        return False
    current = None if stanza.status.code == 1 else pgb_info.current_system_id(stanza)
    if current is None or current == plan.backup_system_id:
        return False
    generations = {
        repo: int(row.generations.get(repo, 1)) + 1 for repo in own.repository_ids.values()
    }
    await instances.set_generations(ctx.services.pool, ctx.database_id, row.node_name, generations)
    await ctx.log.warning(
        f"node {row.node_name}: the restored system ({plan.backup_system_id}) differs from the "
        f"one its backups belong to ({current}); its backups move to generation(s) "
        f"{generations}"
    )
    return True


def _needs_fence(ctx: StepContext, row: InstanceRow, config: RestoreConfig) -> bool:
    """Whether stale subscriptions in the restored catalog could stream from a live slot.

    From another node's backup they are that node's subscriptions, whose slots on the
    providers are live; from the node's own backup they can only find a slot a peer kept
    because it could not be reached when the links were dropped.
    """
    own = (config.source_database_id, config.source_node_name) == (
        row.database_id,
        row.node_name,
    )
    return not (own and ctx.state.get("peers_unlinked"))


async def start_recovery(ctx: StepContext) -> dict[str, Any]:
    """Start and wait until recovery has ended and the node is promoted; fenced (no background
    workers, so no stale subscription streams) when stale subscriptions could do harm."""
    _, row, config = await _context(ctx)
    fenced = _needs_fence(ctx, row, config)
    await ctx.services.orchestrator.start(
        ref_of(row),
        on_line=ctx.log.sink("pg_ctl"),
        options=replication.FENCED_START_SETTINGS if fenced else None,
    )
    await ctx.log.info(
        f"node {row.node_name}: recovery finished, node promoted"
        + (" (fenced start)" if fenced else "")
    )
    return {"fenced": fenced}


async def drop_stale_subscriptions(ctx: StepContext) -> dict[str, Any]:
    """Drop the subscriptions the backup brought back, give the node its own pglogical
    identity; restart normally when it was fenced or its environment changes (stop + start:
    `pg_ctl restart` would keep the fence)."""
    spec, row, config = await _context(ctx)
    ref = ref_of(row)
    await children.rename_database_if_needed(ctx, ref, config, spec)
    conn = await ctx.services.orchestrator.connect(ref, spec.database_name)
    try:
        await replication.reset_restored_node(
            conn, mesh.mesh_node(ctx.services, ref, spec.database_name)
        )
    finally:
        await conn.close()
    own = await backups.backup_setup(ctx.services, spec, row, ref)
    changed = await ctx.services.orchestrator.set_environment(ref, own.env)
    if changed or ctx.state.get("fenced"):
        sink = ctx.log.sink("pg_ctl")
        await ctx.services.orchestrator.stop(ref, on_line=sink)
        await ctx.services.orchestrator.start(ref, on_line=sink)
    return {}


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
    sink = ctx.log.sink("pgbackrest")
    for argv, what in (
        (pgb.stanza_create_argv(own.config_path), "stanza creation"),
        (pgb.check_argv(own.config_path), "archive check"),
    ):
        await backups.run_pgbackrest(
            ctx.services, own, argv, on_line=sink, subject=backups.subject_of(own.ref, what)
        )
    task = await children.run_child_backup(ctx, trigger="system")
    return {"protecting_backup_task": task}


async def mark_restored(ctx: StepContext) -> dict[str, Any]:
    _, row, _ = await _context(ctx)
    await instances.set_instance_state(
        ctx.services.pool, ctx.database_id, row.node_name, "available", desired="running"
    )
    return {
        "result": {
            "node": row.node_name,
            "set": ctx.task.input["plan"]["set"],
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
    status = await ctx.services.orchestrator.status(ref_of(row))
    if row.desired == "running" and status == "running":
        await instances.set_instance_state(pool, ctx.database_id, node, "available")
    else:
        await instances.set_instance_state(
            pool, ctx.database_id, node, "failed", error=message, desired="stopped"
        )


NODE_RESTORE = Workflow(
    type="node_restore",
    steps=(
        Step("validate_target", validate_target),
        Step("pre_restore_backup", pre_restore_backup),
        Step("drop_subscriptions", drop_subscriptions),
        Step("stop_instance", stop_instance),
        Step("restore_data", restore_data),
        Step("start_recovery", start_recovery),
        Step("drop_stale_subscriptions", drop_stale_subscriptions),
        Step("reenable_backups", reenable_backups),
        Step("mark_restored", mark_restored),
    ),
    on_failure=_on_end,
    on_cancel=_on_end,
)
