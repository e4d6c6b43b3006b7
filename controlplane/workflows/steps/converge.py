"""Steps that bring a database's instances to its spec; shared by create and update."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from controlplane.errors import (
    ControlPlaneError,
    ExternalCommandError,
    InvalidInputError,
    PreconditionError,
)
from controlplane.nodes import backups, mesh, restore_new
from controlplane.nodes.common import (
    instance_refs,
    keep_previous_settings,
    load_spec,
    managed_settings,
    put_back_previous_settings,
    ref_of,
    setting_errors,
)
from controlplane.orchestrator.base import InstanceRef, reload_settings
from controlplane.orchestrator.hba import write_client_rules
from controlplane.spec.models import (
    DatabaseSpec,
    DatabaseUser,
    NodeSpec,
    node_hba_rules,
    node_ident_maps,
)
from controlplane.store import databases, instances
from controlplane.store.instances import InstanceRow
from controlplane.system.postgres import scram_verifier
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import restore_plans

# pgBackRest [050]: another command holds the stanza's lock; retried this often.


async def for_each(
    refs: list[InstanceRef], action: Callable[[InstanceRef], Awaitable[Any]]
) -> list[Any]:
    """Run `action` on every instance concurrently; the first failure is raised after all end."""
    results = await asyncio.gather(*(action(ref) for ref in refs), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def plan_instances(ctx: StepContext) -> dict[str, Any]:
    """Record an instance (host and port) for every node of the spec that has none yet."""
    _, spec = await load_spec(ctx)
    pool, orchestrator = ctx.services.pool, ctx.services.orchestrator
    known = {h.id for h in orchestrator.hosts()}
    for node in spec.nodes:
        if await instances.get_instance(pool, ctx.database_id, node.name) is not None:
            continue
        host_id = node.host_ids[0] if node.host_ids else orchestrator.default_host()
        if host_id not in known:
            raise InvalidInputError(
                [
                    {
                        "path": f"spec.nodes[{node.name}].host_ids",
                        "message": f"unknown host {host_id}",
                    }
                ]
            )
        row = await _place(ctx, node, spec, host_id)
        await ctx.log.info(
            f"node {node.name}: instance {row.id} on host {host_id} port {row.port}",
            node=node.name,
        )
    for node in spec.nodes:  # a streaming replica on each other host of a node
        placed = {
            r.host_id for r in await instances.list_replicas(pool, ctx.database_id, node.name)
        }
        for host_id in node.host_ids[1:]:
            if host_id in placed:
                continue
            row = await _place(ctx, node, spec, host_id, replica=True)
            await ctx.log.info(
                f"node {node.name}: replica {row.id} on host {host_id} port {row.port}",
                node=node.name,
            )
    return {}


async def _place(
    ctx: StepContext, node: NodeSpec, spec: DatabaseSpec, host_id: str, *, replica: bool = False
) -> Any:
    pool, orchestrator = ctx.services.pool, ctx.services.orchestrator
    wanted = node.port or spec.port
    for _ in range(20):
        port = wanted or orchestrator.pick_port(host_id, await instances.used_ports(pool, host_id))
        if wanted and not orchestrator.port_is_free(host_id, port):
            raise PreconditionError(f"port {port} on host {host_id} is already in use")
        row = await instances.insert_instance(
            pool,
            database_id=ctx.database_id,
            node_name=node.name,
            host_id=host_id,
            port=port,
            replica=replica,
        )
        if row is not None:
            return row
        if wanted:
            raise PreconditionError(f"port {port} on host {host_id} is taken by another instance")
    raise PreconditionError(f"no free port could be reserved on host {host_id}")


async def _spec_refs(ctx: StepContext) -> tuple[DatabaseSpec, list[InstanceRef]]:
    _, spec = await load_spec(ctx)
    return spec, await instance_refs(ctx, spec.nodes, spec)


async def init_instances(ctx: StepContext) -> dict[str, Any]:
    """initdb every instance that has no data directory yet, or make it from its backup."""
    spec, refs = await _spec_refs(ctx)
    plans = restore_plans(ctx.input)
    for row, config in await restore_new.rows_needing_restore(ctx, spec):
        await restore_new.restore_new_instance(ctx, spec, row, config, plans[row.node_name])
    refs = [ref for ref in refs if ref.node_name not in plans]

    async def init(ref: InstanceRef) -> None:
        sink = ctx.log.sink("initdb", node=ref.node_name)
        if await ctx.services.orchestrator.create_instance(ref, on_line=sink):
            await ctx.log.info(
                f"node {ref.node_name}: data directory initialised", node=ref.node_name
            )

    await for_each(refs, init)
    return {}


async def configure_instances(ctx: StepContext) -> dict[str, Any]:
    """Write each instance's pgBackRest config and environment, then its managed postgresql
    settings (archive_command points at the repository only when a backup_config applies)."""
    _, spec = await load_spec(ctx)
    rows = await _spec_rows(ctx, spec)
    changed, env_changed = [], []
    for row in rows:
        ref = ref_of(row, spec)
        setup = await backups.backup_setup(ctx.services, spec, row, ref)
        if await backups.write_backup_files(ctx.services, setup):
            env_changed.append(ref.node_name)
        settings = await managed_settings(ctx, spec, ref, archive_command=setup.archive_command)
        await keep_previous_settings(ctx, ref)
        if await ctx.services.orchestrator.write_postgresql_conf(ref, settings):
            changed.append(ref.node_name)
        node = next(n for n in spec.nodes if n.name == ref.node_name)
        rules, maps = node_hba_rules(spec, node), node_ident_maps(spec, node)
        if await write_client_rules(ctx.services.orchestrator, ref, rules, maps):
            changed.append(ref.node_name)
    if changed:
        await ctx.log.info(f"configuration written for {', '.join(changed)}")
    return {"environment_changed": env_changed}


async def _spec_rows(ctx: StepContext, spec: DatabaseSpec) -> list[InstanceRow]:
    wanted = {n.name for n in spec.nodes}
    rows = await instances.list_instances(ctx.services.pool, ctx.database_id)
    return [r for r in rows if r.node_name in wanted]


async def configure_backups(ctx: StepContext) -> dict[str, Any]:
    """Create the stanza and `check` archiving in every repository of every node with a
    backup_config, one repository at a time.

    `check` forces a WAL switch and waits for it to reach the repository, so a node is only
    called protected when its WAL really arrives. Each repository is set up on its own
    (pgBackRest 2.45's `stanza-create` and `check` act on every configured repository), so a
    failing one is named and does not keep the others from being set up.
    """
    _, spec = await load_spec(ctx)

    async def configure(row: InstanceRow) -> None:
        ref = ref_of(row)
        setup = await backups.backup_setup(ctx.services, spec, row, ref)
        if not setup.enabled:
            return
        await backups.set_up_repositories(ctx, setup)
        await ctx.log.info(f"node {ref.node_name}: backups configured", node=ref.node_name)

    await for_each_row(await _spec_rows(ctx, spec), configure)
    return {}


async def for_each_row(
    rows: list[InstanceRow], action: Callable[[InstanceRow], Awaitable[Any]]
) -> None:
    """Run `action` on every instance row concurrently; the first failure is raised."""
    results = await asyncio.gather(*(action(row) for row in rows), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def start_instances(ctx: StepContext) -> dict[str, Any]:
    """Start every instance and wait until it accepts writes."""
    _, refs = await _spec_refs(ctx)

    async def start(ref: InstanceRef) -> None:
        await ctx.services.orchestrator.start(
            ref, on_line=ctx.log.sink("pg_ctl", node=ref.node_name)
        )
        await ctx.log.info(f"node {ref.node_name}: running on port {ref.port}", node=ref.node_name)

    await for_each(refs, start)
    return {}


async def apply_configuration(ctx: StepContext) -> dict[str, Any]:
    """Reload every instance; restart those with a setting that only takes effect on restart.

    A setting the server refuses on reload (`pg_file_settings.error`), or a restart that fails,
    puts back the configuration the node ran on before this task, brings the node up on it and
    fails the task naming the setting: the node keeps running its old settings.
    """
    _, refs = await _spec_refs(ctx)
    orchestrator = ctx.services.orchestrator

    env_changed = set(ctx.state.get("environment_changed", []))

    async def apply(ref: InstanceRef) -> None:
        if ref.supervisor == "patroni":
            return  # its cluster's settings go through Patroni (`replicas.start_replicas`)
        sink = ctx.log.sink("pg_ctl", node=ref.node_name)
        await reload_settings(orchestrator, ref)
        conn = await orchestrator.connect(ref)
        try:
            refused = await setting_errors(conn)
            pending = [
                r["name"]
                for r in await conn.fetch(
                    "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name"
                )
            ]
        finally:
            await conn.close()
        if refused:
            await put_back_previous_settings(
                ctx, ref, f"refused {'; '.join(refused)}", restart=False
            )
        if ref.node_name in env_changed:
            # archive-push runs inside Postgres: new repository secrets need a restart.
            pending.append("repository credentials")
        if pending:
            await ctx.log.info(
                f"node {ref.node_name}: restarting for {', '.join(pending)}", node=ref.node_name
            )
            # stop + start, never `pg_ctl restart`: restart reuses earlier one-off options.
            await orchestrator.stop(ref, on_line=sink)
            try:
                await orchestrator.start(ref, on_line=sink)
            except ExternalCommandError as exc:
                what = f"did not start with the new {', '.join(pending)} ({exc.message})"
                await put_back_previous_settings(ctx, ref, what, restart=True)

    await for_each(refs, apply)
    return {}


async def create_users(ctx: StepContext) -> dict[str, Any]:
    """Create or alter the spec's roles and create the database, on every instance."""
    spec, refs = await _spec_refs(ctx)

    async def apply(ref: InstanceRef) -> None:
        conn = await ctx.services.orchestrator.connect(ref)
        try:
            for user in spec.database_users:
                await _ensure_role(conn, user)
            for user in spec.database_users:
                for role in user.roles:  # validated: a user of the spec or a predefined role
                    await conn.execute(
                        await conn.fetchval(
                            "SELECT format('GRANT %I TO %I', $1::text, $2::text)",
                            role,
                            user.username,
                        )
                    )
            owner = next((u.username for u in spec.database_users if u.db_owner), "postgres")
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", spec.database_name
            )
            if not exists:
                await conn.execute(
                    await conn.fetchval(
                        "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                        spec.database_name,
                        owner,
                    )
                )
            else:
                await conn.execute(
                    await conn.fetchval(
                        "SELECT format('ALTER DATABASE %I OWNER TO %I', $1::text, $2::text)",
                        spec.database_name,
                        owner,
                    )
                )
        finally:
            await conn.close()
        await ctx.log.info(
            f"node {ref.node_name}: {len(spec.database_users)} user(s) and database "
            f"{spec.database_name} in place",
            node=ref.node_name,
        )

    await for_each(refs, apply)
    return {}


async def _ensure_role(conn: Any, user: DatabaseUser) -> None:
    attributes = list(user.attributes)
    if "LOGIN" not in attributes and "NOLOGIN" not in attributes:
        attributes.append("LOGIN")
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user.username)
    verb = "ALTER" if exists else "CREATE"
    # Attributes come from a closed list checked by validation; names are quoted by format().
    sql = await conn.fetchval(
        f"SELECT format('{verb} ROLE %I WITH {' '.join(attributes)}', $1::text)", user.username
    )
    if user.password:
        sql += " PASSWORD " + await conn.fetchval(
            "SELECT quote_literal($1::text)", scram_verifier(user.password)
        )
    await conn.execute(sql)


async def mark_available(ctx: StepContext) -> dict[str, Any]:
    """Every instance is up: the database is available."""
    pool = ctx.services.pool
    for row in await instances.list_instances(pool, ctx.database_id):
        await instances.set_instance_state(
            pool, ctx.database_id, row.node_name, "available", desired="running"
        )
    await databases.set_state(pool, ctx.database_id, "available")
    await ctx.log.info(f"database {ctx.database_id} is available")
    return {}


async def remove_dropped_nodes(ctx: StepContext) -> dict[str, Any]:
    """Stop and delete instances whose node is no longer in the spec, after dropping its
    subscriptions on the others (and the slots it leaves there)."""
    _, spec = await load_spec(ctx)
    wanted = {n.name for n in spec.nodes}
    pool = ctx.services.pool
    rows = await instances.list_instances(pool, ctx.database_id)
    for row in rows:
        if row.node_name in wanted:
            continue
        await mesh.drop_links_of(ctx, spec, row.node_name, rows)
        await ctx.log.info(f"node {row.node_name}: removing instance {row.id}", node=row.node_name)
        await ctx.services.orchestrator.remove_instance(
            ref_of(row), on_line=ctx.log.sink("pg_ctl", node=row.node_name)
        )
        await instances.delete_instance(pool, ctx.database_id, row.node_name)
    return {}


async def settle_after_failure(ctx: StepContext, message: str) -> None:
    """A failed or canceled create/update: record the error; the state says if nodes still run."""
    pool, orchestrator = ctx.services.pool, ctx.services.orchestrator
    rows = await instances.list_instances(pool, ctx.database_id)
    running = 0
    for row in rows:
        status = await orchestrator.status(ref_of(row))
        if status == "running":
            running += 1
        else:
            await instances.set_instance_state(
                pool,
                ctx.database_id,
                row.node_name,
                "failed" if status == "missing" else "stopped",
                error=message,
            )
    state = "available" if rows and running == len(rows) else "failed"
    await databases.set_state(pool, ctx.database_id, state, error=message)


async def stop_all_instances(ctx: StepContext, message: str | None = None) -> None:
    """Stop every instance of a create that failed or was canceled, so that nothing it started
    keeps running unattended: each is shown `stopped` (or `failed` when it is missing or would
    not stop), desired stopped so the monitor leaves it down until an update or a delete."""
    pool, orchestrator = ctx.services.pool, ctx.services.orchestrator
    for row in await instances.list_instances(pool, ctx.database_id):
        ref = ref_of(row)
        state, error = "stopped", message
        try:
            if await orchestrator.status(ref) == "missing":
                state = "failed"
            else:
                await orchestrator.stop(ref, on_line=ctx.log.sink("pg_ctl", node=row.node_name))
        except (ControlPlaneError, OSError) as exc:
            state = "failed"
            error = exc.message if isinstance(exc, ControlPlaneError) else str(exc)
            await ctx.log.error(f"node {row.node_name}: {error}", node=row.node_name)
        await instances.set_instance_state(
            pool, ctx.database_id, row.node_name, state, error=error, desired="stopped"
        )
