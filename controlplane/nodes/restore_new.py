"""Create a node from a backup: restore into an empty data directory, then make it this node.

Used by create (`spec.restore_config`) and by update (a new node's `restore_config`). The new
node must never push WAL into the source's repository (`--archive-mode=off`), must not keep the
source's replication identity, and must carry the spec's database name.
"""

from __future__ import annotations

from typing import Any

from controlplane import replication
from controlplane.errors import InvalidInputError
from controlplane.nodes import backups, mesh, restore_join, restore_source
from controlplane.nodes.common import managed_settings, ref_of
from controlplane.orchestrator.base import InstanceRef
from controlplane.pgbackrest.config import NOOP_ARCHIVE_COMMAND
from controlplane.spec import normalise_restore_options
from controlplane.spec.models import DatabaseSpec, NodeSpec, RestoreConfig
from controlplane.spec.resources import container_options
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import Services, StepContext
from controlplane.tasks.inputs import restore_plans

# Written once the node is fully made from its backup; until then a resumed step redoes the
# part that is missing (pg_control is written last by pgBackRest, so it marks the data).
RESTORED_MARKER = "restored-from-backup"


def restore_config_of(spec: DatabaseSpec, node: NodeSpec) -> RestoreConfig | None:
    """A node-level restore_config replaces the database-level one whole."""
    return node.restore_config or spec.restore_config


async def plan_new_nodes(
    services: Services, database_id: str, spec: DatabaseSpec, nodes: list[NodeSpec]
) -> dict[str, dict[str, Any]]:
    """Check every new node's source before anything is created; pick its set and target.

    Nodes restored from one source share one target, so they come back identical: without an
    explicit target, a live source first archives a marker commit and every node stops there.
    """
    plans: dict[str, dict[str, Any]] = {}
    markers: dict[tuple[str, str], restore_source.ArchiveEnd | None] = {}
    members = [n.name for n in spec.nodes if n not in nodes]
    for index, node in enumerate(spec.nodes):
        config = restore_config_of(spec, node)
        if config is None or node not in nodes:
            continue
        path = (
            f"spec.nodes[{index}].restore_config" if node.restore_config else "spec.restore_config"
        )
        if members:
            problems = restore_join.join_problems(database_id, config, members, path)
            if problems or not await _running(services, database_id, config.source_node_name):
                raise InvalidInputError(
                    problems
                    or [
                        {
                            "path": f"{path}.source_node_name",
                            "message": f"node {config.source_node_name} is not running; a node "
                            f"is added from the backup of a running node, which streams it "
                            f"every write made after its restore point",
                        }
                    ]
                )
        probe = InstanceRef(
            instance_id=f"{database_id}-{node.name}",
            database_id=database_id,
            node_name=node.name,
            host_id=services.orchestrator.default_host(),
            port=5432,
            # The source may be a repository on one of the node's extra volumes.
            container=container_options(spec, node),
        )
        try:
            setup = await restore_source.source_setup(services, config, probe)
            entries = await restore_source.source_catalog(services, setup, config, in_request=True)
        except InvalidInputError as exc:
            raise InvalidInputError(
                [{**e, "path": e["path"].replace("restore_config", path, 1)} for e in exc.errors]
            ) from exc
        finally:
            await services.orchestrator.remove_instance(probe, on_line=_quiet)
        options = dict(config.restore_options)
        key = (config.source_database_id, config.source_node_name)
        kind = normalise_restore_options(options).get("type")
        # A node joining live members is restored to a point chosen when the task runs, after
        # the slots that stream it every later write exist (restore_join).
        if not members and kind in (None, "time", "lsn") and key not in markers:
            markers[key] = await restore_source.archive_marker(services, config)
        marker = markers.get(key)
        if kind is None and marker is not None:
            options = {**options, "type": "time", "target": marker.time.isoformat()}
        options_path = f"{path}.restore_options"
        facts = await restore_source.target_facts(services, config, options)
        plan = restore_source.decide(
            entries, options, latest=marker, path=options_path, facts=facts
        )
        plans[node.name] = plan.to_state()
        if members:
            plans[node.name]["join_source"] = config.source_node_name
    return plans


async def _running(services: Services, database_id: str, node: str) -> bool:
    row = await instances.get_instance(services.pool, database_id, node)
    return row is not None and await services.orchestrator.status(ref_of(row)) == "running"


async def _quiet(line: str) -> None:
    return None


async def restore_new_instance(
    ctx: StepContext,
    spec: DatabaseSpec,
    row: InstanceRow,
    config: RestoreConfig,
    plan_state: dict[str, Any],
) -> None:
    """Restore, recover fenced, rename, take this node's identity, re-enable archiving, stop."""
    orchestrator = ctx.services.orchestrator
    ref = ref_of(row, spec)
    if await orchestrator.read_file(ref, RESTORED_MARKER) is not None:
        return
    plan = restore_source.RestorePlan.from_state(plan_state)
    join = None
    if plan_state.get("join_source"):
        join = await restore_join.join_target(ctx, spec, row, config)
        ctx.failpoint("init_instances:join_prepared")
        plan.target_type, plan.target, plan.target_exclusive = "lsn", join.lsn, True
    source = await restore_source.source_setup(ctx.services, config, ref)
    await orchestrator.write_file(ref, restore_source.RESTORE_CONFIG_FILE, source.config_text)
    if not await orchestrator.has_cluster(ref):
        await orchestrator.empty_data_dir(ref)
        await restore_source.restore_data(
            ctx.services,
            source,
            plan,
            archive_mode="off",
            subject=backups.subject_of(ref, "restore from backup"),
            on_line=ctx.log.sink("pgbackrest", node=ref.node_name),
        )
        # The backup's client rules are its source's (another tool's, for a pgEdge backup):
        # this instance answers by ours, as one restored from our own backup does.
        await orchestrator.fence_clients(ref, fenced=False)
    await orchestrator.write_postgresql_conf(
        ref, await managed_settings(ctx, spec, ref, archive_command=NOOP_ARCHIVE_COMMAND)
    )
    await orchestrator.set_environment(ref, source.env)
    sink = ctx.log.sink("pg_ctl", node=ref.node_name)
    await orchestrator.start(ref, on_line=sink, options=replication.FENCED_START_SETTINGS)
    await restore_source.rename_database_if_needed(ctx, ref, config, spec)
    await _take_identity(ctx, ref, spec, join)
    ctx.failpoint("init_instances:identity_taken")
    await orchestrator.stop(ref, on_line=sink)
    await orchestrator.write_file(ref, RESTORED_MARKER, plan.set_label + "\n")
    await ctx.log.info(
        f"node {ref.node_name}: made from backup set {plan.set_label} of node "
        f"{config.source_node_name} of {config.source_database_id}",
        node=ref.node_name,
    )


async def _take_identity(
    ctx: StepContext, ref: InstanceRef, spec: DatabaseSpec, join: restore_join.JoinTarget | None
) -> None:
    conn = await ctx.services.orchestrator.connect(ref, spec.database_name)
    try:
        # How far the backed-up node had applied each member: read before the reset, which
        # drops the restored subscriptions and their origins.
        origins = await restore_join.restored_points(ctx, conn, ref) if join else {}
        await replication.reset_restored_node(
            conn, mesh.mesh_node(ctx.services, ref, spec.database_name)
        )
        if join is not None:
            await restore_join.record_join_points(ctx, conn, spec, ref, join, origins)
        # pgBackRest wrote archive_mode=off into postgresql.auto.conf so the restored node
        # could not push into the source's repository; from now on it archives to its own.
        await conn.execute("ALTER SYSTEM RESET archive_mode")
    finally:
        await conn.close()


async def rows_needing_restore(
    ctx: StepContext, spec: DatabaseSpec
) -> list[tuple[InstanceRow, RestoreConfig]]:
    """Instances of nodes with a restore_config that have no data directory of their own yet."""
    found = []
    for node in spec.nodes:
        config = restore_config_of(spec, node)
        row = await instances.get_instance(ctx.services.pool, ctx.database_id, node.name)
        if config is not None and row is not None and node.name in restore_plans(ctx.input):
            found.append((row, config))
    return found
