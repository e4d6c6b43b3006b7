"""Restore drills on one node: a backup set restored into a scratch instance next to the node,
recovered with archiving off and no client but the superuser, checked (pg_amcheck, row counts
per user table) and removed.

The scratch instance is the node's instance under another id (`<instance>.drill`) and a free
port: the orchestrator places, starts and removes it like any instance, and its pgBackRest
config names the node's own repositories, read only (`--archive-mode=off`: its promotion never
pushes WAL into them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from controlplane import replication
from controlplane.errors import ExternalCommandError
from controlplane.nodes import backups
from controlplane.nodes.common import managed_settings, ref_of
from controlplane.orchestrator.base import InstanceRef
from controlplane.pgbackrest import command as pgb
from controlplane.pgbackrest.config import NOOP_ARCHIVE_COMMAND
from controlplane.spec.models import DatabaseSpec
from controlplane.store.instances import InstanceRow
from controlplane.system.process import LineSink
from controlplane.tasks.context import Services, StepContext

SCRATCH_SUFFIX = ".drill"
# The scratch starts fenced like a restored node (no pglogical worker: its restored catalog
# names live providers and slots), with archiving off and no replication connections.
SCRATCH_START_SETTINGS = {
    **replication.FENCED_START_SETTINGS,
    "archive_mode": "off",
    "max_wal_senders": "0",
}
# More tables than this are not counted one by one (the drill says so in its log).
MAX_COUNTED_TABLES = 1000
# pg_amcheck lines kept in a failed drill's error.
_AMCHECK_LINES = 5

_USER_TABLES = """
SELECT n.nspname || '.' || c.relname AS name, format('%I.%I', n.nspname, c.relname) AS quoted
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                   AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1
 LIMIT $1
"""


def scratch_ref(row: InstanceRow, port: int) -> InstanceRef:
    """The scratch instance of a drill of `row`'s node: same database, node and host (so its
    config names the node's repositories), its own id and port, started by pg_ctl."""
    return InstanceRef(
        instance_id=row.id + SCRATCH_SUFFIX,
        database_id=row.database_id,
        node_name=row.node_name,
        host_id=row.host_id,
        port=port,
    )


@dataclass
class DrillCheck:
    """What the checks of a recovered scratch instance found."""

    amcheck_ok: bool
    row_counts: dict[str, int] = field(default_factory=dict)
    amcheck_output: list[str] = field(default_factory=list)


async def restore_scratch(
    ctx: StepContext,
    spec: DatabaseSpec,
    row: InstanceRow,
    ref: InstanceRef,
    *,
    label: str,
    repository_id: str,
) -> None:
    """Restore set `label` into the scratch instance's empty data directory (unless an earlier
    attempt finished it: pgBackRest writes pg_control last), to its consistency point, then
    give it its own configuration and fence it."""
    services = ctx.services
    orchestrator = services.orchestrator
    # The node's container options (its repository may be on an extra volume); the
    # orchestrator keeps them for the scratch's later refs.
    ref = msgspec.structs.replace(ref, container=ref_of(row, spec).container)
    setup = await backups.backup_setup(services, spec, row, ref)
    await backups.write_backup_files(services, setup)
    if not await orchestrator.has_cluster(ref):
        await orchestrator.empty_data_dir(ref)
        argv = pgb.restore_argv(
            setup.config_path,
            set_label=label,
            target_type="immediate",
            target_action="promote",
            archive_mode="off",
            repo=setup.repo_index(repository_id),
            command=setup.runner,
        )
        subject = backups.subject_of(ref_of(row), f"drill of set {label}")
        try:
            await backups.run_pgbackrest(
                services,
                setup,
                argv,
                one_off=True,
                subject=subject,
                on_line=ctx.log.sink("pgbackrest", node=row.node_name),
            )
        except ExternalCommandError as exc:
            pg_data = orchestrator.data_dir(ref)
            raise restore_error(exc, subject=subject, label=label, pg_data=pg_data) from None
    settings = await managed_settings(ctx, spec, ref, archive_command=NOOP_ARCHIVE_COMMAND)
    # It listens where the orchestrator reaches its host (loopback on one machine, the node's
    # address on another swarm node), and is fenced below: nobody but the control plane's
    # superuser logs in to the scratch.
    settings |= {"archive_mode": "off"}
    await orchestrator.write_postgresql_conf(ref, settings)
    await orchestrator.fence_clients(ref, fenced=True)


def restore_error(
    exc: ExternalCommandError, *, subject: str, label: str, pg_data: str
) -> ExternalCommandError:
    """A failed restore in words: a file of the set that pgBackRest could not restore intact
    (checksum, size, decompression) is named as the set's manifest names it."""
    damaged = pgb.damaged_file(exc.message, pg_data=pg_data)
    if damaged is None:
        return exc
    name, why = damaged
    return ExternalCommandError(
        f"{subject} failed: backup set {label} is damaged: file {name} does not restore "
        f"intact: {why} (pgbackrest exited {exc.exit_code})",
        exit_code=exc.exit_code,
    )


async def check_scratch(ctx: StepContext, ref: InstanceRef, database: str) -> DrillCheck:
    """Start the scratch, wait until recovery has ended, count the rows of every user table of
    `database` and run pg_amcheck on it (heap and every B-tree index); stop it again."""
    orchestrator = ctx.services.orchestrator
    sink = ctx.log.sink("pg_ctl", node=ref.node_name)
    await orchestrator.start(ref, on_line=sink, options=SCRATCH_START_SETTINGS)
    counts = await count_rows(ctx, ref, database)
    ctx.check_cancel()
    result = await orchestrator.exec(
        ref,
        amcheck_argv(ctx.services, ref, database),
        on_line=ctx.log.sink("pg_amcheck", node=ref.node_name),
    )
    await orchestrator.stop(ref, on_line=sink)
    return DrillCheck(
        amcheck_ok=result.exit_code == 0, row_counts=counts, amcheck_output=result.lines
    )


def amcheck_argv(services: Services, ref: InstanceRef, database: str) -> list[str]:
    """pg_amcheck of one database over the scratch's socket; amcheck is installed in the
    scratch when missing (the scratch is thrown away)."""
    return [
        str(services.settings.pg_bin_dir / "pg_amcheck"),
        f"--host={services.orchestrator.socket_dir(ref)}",
        f"--port={ref.port}",
        "--username=postgres",
        "--no-password",
        f"--database={database}",
        "--heapallindexed",
        "--install-missing",
        "--no-strict-names",
    ]


async def count_rows(ctx: StepContext, ref: InstanceRef, database: str) -> dict[str, int]:
    """Rows of each user table of `database` (not the extensions' own), by `schema.table`."""
    conn = await ctx.services.orchestrator.connect(ref, database)
    try:
        tables = await conn.fetch(_USER_TABLES, MAX_COUNTED_TABLES + 1)
        if len(tables) > MAX_COUNTED_TABLES:
            await ctx.log.warning(
                f"drill: more than {MAX_COUNTED_TABLES} tables; the first "
                f"{MAX_COUNTED_TABLES} (by name) are counted",
                node=ref.node_name,
            )
        counts = {}
        for table in tables[:MAX_COUNTED_TABLES]:
            ctx.check_cancel()
            sql = f"SELECT count(*) FROM {table['quoted']}"  # quoted by format('%I.%I')
            counts[table["name"]] = int(await conn.fetchval(sql))
        return counts
    finally:
        await conn.close()


def amcheck_problem(check: DrillCheck) -> str | None:
    """What pg_amcheck reported, in a few lines; None when it found nothing."""
    if check.amcheck_ok:
        return None
    lines = [line.strip() for line in check.amcheck_output if line.strip()]
    shown = "; ".join(lines[:_AMCHECK_LINES]) or "no output"
    more = f" (and {len(lines) - _AMCHECK_LINES} more lines)" if len(lines) > _AMCHECK_LINES else ""
    return f"pg_amcheck found problems: {shown}{more}"


async def remove_scratch(services: Services, ref: InstanceRef, sink: LineSink) -> None:
    """Stop the scratch instance and delete it (a no-op when it is gone)."""
    await services.orchestrator.remove_instance(ref, on_line=sink)


def drill_result(state: dict[str, Any], check: dict[str, Any], finished_at: str) -> dict[str, Any]:
    """The task result of a drill that passed (`check` as the check step saved it)."""
    return {
        "status": "completed",
        "set_label": state["set_label"],
        "repository_id": state["repository_id"],
        "started_at": state["started_at"],
        "finished_at": finished_at,
        "amcheck_ok": check["amcheck_ok"],
        "row_counts": check["row_counts"],
    }
