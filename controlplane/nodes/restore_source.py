"""Where a restore reads from: the source repository as a config of its own, its catalog, and
the set and target it will use — checked before anything is touched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast

import asyncpg

from controlplane.errors import ExternalCommandError, InvalidInputError
from controlplane.nodes import backups, restore_layouts, restore_targets
from controlplane.nodes.common import ref_of
from controlplane.nodes.restore_targets import TargetFacts, XidFacts
from controlplane.orchestrator.base import InstanceRef
from controlplane.orchestrator.instance_secrets import RUNNER_FILE
from controlplane.pgbackrest import command as pgb
from controlplane.pgbackrest import info as pgb_info
from controlplane.pgbackrest.config import (
    RepositoryPlan,
    plan_repositories,
    render_config,
    secret_env,
)
from controlplane.spec import normalise_restore_options, parse_time_target
from controlplane.spec.models import BackupConfig, DatabaseSpec, RestoreConfig, repository_id
from controlplane.store import instances, repository_keys, restore_points
from controlplane.store.pool import Connection
from controlplane.system.process import LineSink
from controlplane.tasks.context import Services, StepContext

RESTORE_CONFIG_FILE = "pgbackrest-restore.conf"
# `info`'s stanza status codes.
_STANZA_OK = 0
_NO_STANZA = 1


@dataclass
class RestorePlan:
    """The decided restore: which set, which recovery target, from which repository."""

    set_label: str
    target_type: str | None = None
    target: str | None = None
    target_exclusive: bool = False
    target_timeline: str | None = None
    backup_system_id: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return {
            "set": self.set_label,
            "target_type": self.target_type,
            "target": self.target,
            "target_exclusive": self.target_exclusive,
            "target_timeline": self.target_timeline,
            "backup_system_id": self.backup_system_id,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RestorePlan:
        return cls(
            set_label=state["set"],
            target_type=state.get("target_type"),
            target=state.get("target"),
            target_exclusive=bool(state.get("target_exclusive")),
            target_timeline=state.get("target_timeline"),
            backup_system_id=state.get("backup_system_id"),
        )


async def source_setup(
    services: Services, config: RestoreConfig, target: InstanceRef
) -> backups.BackupSetup:
    """A pgbackrest config on the target instance whose only repository is the source's.

    A source node this control plane does not run (a database deleted here, or one pgEdge
    Control Plane backed up) is read in the first layout holding its stanza
    (`restore_layouts`)."""
    repo = config.repository
    generation = 1
    source = await instances.get_instance(
        services.pool, config.source_database_id, config.source_node_name
    )
    if source is not None:
        generation = int(source.generations.get(repository_id(repo), 1))
    passes = {}
    if repo.cipher:
        passes[repository_id(repo)] = await repository_keys.cipher_pass(
            services.pool, services.secret_box, config.source_database_id, repository_id(repo)
        )
    plans = plan_repositories(
        BackupConfig(repositories=[repo]),
        database_id=config.source_database_id,
        node_name=config.source_node_name,
        generations={repository_id(repo): generation},
        cipher_passes=passes,
    )
    ours = _setup_in(services, config, target, plans, "controlplane")
    # Found, or unreadable (the catalog then says why): ours.
    if source is not None or await _probe(services, ours, config) != _NO_STANZA:
        return ours
    theirs = _setup_in(services, config, target, plans, "pgedge")
    return theirs if await _probe(services, theirs, config) == _STANZA_OK else ours


def _setup_in(
    services: Services,
    config: RestoreConfig,
    target: InstanceRef,
    plans: list[RepositoryPlan],
    layout: restore_layouts.Layout,
) -> backups.BackupSetup:
    orchestrator = services.orchestrator
    setup = backups.BackupSetup(
        ref=target,
        config_path=orchestrator.file_path(target, RESTORE_CONFIG_FILE),
        runner=orchestrator.file_path(target, RUNNER_FILE),
    )
    setup.plans = restore_layouts.in_layout(
        plans,
        layout,
        database_id=config.source_database_id,
        node_name=config.source_node_name,
    )
    setup.config_text = render_config(backups.layout(services, target), setup.plans, process_max=4)
    setup.env = secret_env(setup.plans)
    return setup


async def _probe(
    services: Services, setup: backups.BackupSetup, config: RestoreConfig
) -> int | None:
    """The stanza status code `info` reports in `setup`'s repository (0: ok, 1: no stanza
    there), or None when the repository could not be read (the catalog then says why)."""
    await services.orchestrator.write_file(setup.ref, RESTORE_CONFIG_FILE, setup.config_text)
    subject = (
        f"looking for backups of node {config.source_node_name} of {config.source_database_id}"
    )
    try:
        async with asyncio.timeout(REQUEST_DEADLINE_SECONDS):
            stanza = await backups.read_info(
                services, setup, subject=subject, io_timeout=backups.CATALOG_IO_TIMEOUT_SECONDS
            )
    except (TimeoutError, ExternalCommandError):
        return None
    return stanza.status.code


# A request that names a repository is answered within this long, whatever that repository
# does (an unreachable endpoint fails pgBackRest's I/O in seconds, DNS may take longer).
REQUEST_DEADLINE_SECONDS = 20.0


async def restore_data(
    services: Services,
    source: backups.BackupSetup,
    plan: RestorePlan,
    *,
    subject: str,
    on_line: LineSink,
    delta: bool = False,
    archive_mode: Literal["off", "preserve"] | None = None,
) -> None:
    """`pgbackrest restore` of `plan` from `source` into its instance's data directory, in a
    one-off; the restore_command it writes runs the instance's runner (instance_secrets)."""
    argv = pgb.restore_argv(
        source.config_path,
        delta=delta,
        set_label=plan.set_label,
        target_type=cast("pgb.RestoreType | None", plan.target_type),
        target=plan.target,
        target_exclusive=plan.target_exclusive,
        target_timeline=plan.target_timeline,
        target_action="promote",
        archive_mode=archive_mode,
        command=source.runner,
    )
    await backups.run_pgbackrest(
        services, source, argv, one_off=True, subject=subject, on_line=on_line
    )


async def source_catalog(
    services: Services,
    setup: backups.BackupSetup,
    config: RestoreConfig,
    *,
    in_request: bool = False,
) -> list[pgb_info.CatalogEntry]:
    """The source's backup sets; an unreadable or empty repository is refused in words.
    `in_request`: read while a client waits, so bounded (short I/O timeout and a deadline)."""
    await services.orchestrator.write_file(setup.ref, RESTORE_CONFIG_FILE, setup.config_text)
    subject = f"reading backups of node {config.source_node_name} of {config.source_database_id}"
    io_timeout = backups.CATALOG_IO_TIMEOUT_SECONDS if in_request else None
    try:
        async with asyncio.timeout(REQUEST_DEADLINE_SECONDS if in_request else None):
            stanza = await backups.read_info(
                services, setup, subject=subject, io_timeout=io_timeout
            )
    except TimeoutError:
        raise InvalidInputError(
            [
                {
                    "path": "restore_config.repository",
                    "message": "repository is not readable: it did not answer within "
                    f"{REQUEST_DEADLINE_SECONDS:.0f}s",
                }
            ]
        ) from None
    except ExternalCommandError as exc:
        raise InvalidInputError(
            [
                {
                    "path": "restore_config.repository",
                    "message": f"repository is not readable: {exc.message}",
                }
            ]
        ) from exc
    problem = pgb_info.stanza_problem(stanza, setup.repository_ids)
    entries = [] if stanza.status.code == 1 else pgb_info.catalog(stanza, setup.repository_ids)
    if problem or not entries:
        raise InvalidInputError(
            [
                {
                    "path": "restore_config",
                    "message": f"no backups of node {config.source_node_name} of "
                    f"{config.source_database_id} in this repository"
                    + (f" ({problem})" if problem else ""),
                }
            ]
        )
    return entries


@dataclass(frozen=True)
class ArchiveEnd:
    """How far the source's archive reaches now: a moment and an LSN recovery can get to."""

    time: datetime
    lsn: str


async def archive_marker(services: Services, config: RestoreConfig) -> ArchiveEnd | None:
    """Commit an empty transaction on the live source, switch WAL and wait until it is archived.

    A time or LSN target is only reachable when WAL after it is in the archive (PostgreSQL ends
    recovery with FATAL otherwise); this makes every moment up to now restorable. None when the
    source is not one of ours or is not running.
    """
    async with _source_connection(services, config) as conn:
        if conn is None:
            return None
        # The time is taken before the commit: recovery to it stops just before the marker's
        # commit record, which lies after it.
        marker: datetime = await conn.fetchval("SELECT clock_timestamp()")
        async with conn.transaction():
            await conn.execute("SELECT pg_current_xact_id()")
        # Everything up to here is in the segment the switch closes, and so in the archive.
        lsn = str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        if await restore_targets.wait_archived(conn, segment, seconds=120):
            return ArchiveEnd(time=marker, lsn=lsn)
    return None


@contextlib.asynccontextmanager
async def _source_connection(
    services: Services, config: RestoreConfig
) -> AsyncIterator[Connection | None]:
    """A superuser connection to the live source node, closed afterwards; None when the source
    is not one of ours or cannot be reached."""
    source = await instances.get_instance(
        services.pool, config.source_database_id, config.source_node_name
    )
    conn = None
    if source is not None:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await services.orchestrator.connect(ref_of(source))
    try:
        yield conn
    finally:
        if conn is not None:
            await conn.close()


async def target_facts(
    services: Services, config: RestoreConfig, options: Mapping[str, str]
) -> TargetFacts | None:
    """What `decide` checks a name or xid target against (None for any other type): the
    restore points recorded for the source node, or what the live source says about the
    transaction — after which it archives a marker, so the commit is known to be in the
    repository."""
    normalised = normalise_restore_options(options)
    kind = normalised.get("type")
    database_id, node = config.source_database_id, config.source_node_name
    facts = TargetFacts(
        source=f"node {node} of {database_id}",
        restore_points_path=f"/v1/databases/{database_id}/nodes/{node}/restore-points",
    )
    if kind == "name":
        points = await restore_points.list_restore_points(services.pool, database_id, node)
        return replace(facts, restore_points=tuple(points))
    if kind != "xid":
        return None
    xid = await _probe_xid(services, config, int(normalised["target"]))
    if xid is not None and xid.committed_at is not None:
        xid = replace(xid, archive_end=await archive_marker(services, config))
    return replace(facts, xid=xid)


async def _probe_xid(services: Services, config: RestoreConfig, xid: int) -> XidFacts | None:
    """What the live source says about `xid`; None when it is not ours or not reachable."""
    async with _source_connection(services, config) as conn:
        if conn is None:
            return None
        try:
            return await restore_targets.probe_xid(conn, xid)
        except asyncpg.PostgresError:
            return None


def decide(
    entries: list[pgb_info.CatalogEntry],
    options: dict[str, str],
    *,
    latest: ArchiveEnd | None,
    path: str,
    facts: TargetFacts | None = None,
) -> RestorePlan:
    """Choose the set ourselves and check the target is reachable from it: a time or LSN
    target inside the recovery window (`latest`: how far the archive reaches, when the source
    could tell), a name or xid target against `facts` (from `target_facts`; without them a
    name or xid target is passed on unchecked)."""
    options = normalise_restore_options(options)
    kind = options.get("type")
    label = options.get("set")
    by_label = {e.label: e for e in entries}
    if label and label != "latest" and label not in by_label:
        raise InvalidInputError(
            [{"path": f"{path}.set", "message": f"backup set {label} not found"}]
        )
    plan = RestorePlan(
        set_label="",
        target_type=kind,
        target=options.get("target"),
        target_exclusive=options.get("target-exclusive") in ("y", "true"),
        target_timeline=options.get("target-timeline"),
    )
    if kind == "time":
        moment = parse_time_target(options["target"])
        ceiling = latest.time if latest else None
        chosen = _for_time(entries, moment, ceiling, path, label, by_label)
        plan.target = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    elif kind == "lsn":
        end = latest.lsn if latest else None
        chosen = _for_lsn(entries, options["target"], end, path, label, by_label)
    elif kind == "name" and facts is not None:
        point = restore_targets.recorded_point(facts, options["target"], path)
        chosen = restore_targets.set_for_name(entries, point, path, label)
        plan.target_timeline = restore_targets.name_timeline(point, plan.target_timeline, path)
    elif kind == "xid" and facts is not None:
        xid = options["target"]
        committed_at, end_of = restore_targets.xid_commit(facts, xid, path)
        chosen = restore_targets.set_for_xid(entries, committed_at, end_of, xid, path, label)
    elif label and label != "latest":
        chosen = by_label[label]
    else:
        chosen = entries[-1]
    plan.set_label = chosen.label
    plan.backup_system_id = chosen.system_id
    return plan


def _for_lsn(
    entries: list[pgb_info.CatalogEntry],
    target: str,
    latest: str | None,
    path: str,
    label: str | None,
    by_label: dict[str, pgb_info.CatalogEntry],
) -> pgb_info.CatalogEntry:
    """The set an LSN target restores from; the target must lie between the first set's
    consistent point and the end of the archive, else recovery fails after the data is gone."""
    value = pgb_info.lsn_value(target)
    stops = [e.lsn_stop for e in entries if e.lsn_stop is not None]
    earliest = min(stops, key=pgb_info.lsn_value) if stops else None
    too_late = latest is not None and value > pgb_info.lsn_value(latest)
    if earliest is None or value < pgb_info.lsn_value(earliest) or too_late:
        window = f"{earliest or '?'} .. {latest or 'the end of the archive'}"
        message = f"{target} is outside the recovery window {window}"
        raise InvalidInputError([{"path": f"{path}.target", "message": message}])
    if label and label != "latest":
        chosen = by_label[label]
        if chosen.lsn_stop is None or pgb_info.lsn_value(chosen.lsn_stop) > value:
            raise InvalidInputError(
                [{"path": f"{path}.set", "message": f"set {label} ends after the target LSN"}]
            )
        return chosen
    found = pgb_info.choose_set_for_lsn(entries, value)
    assert found is not None  # value >= earliest guarantees one
    return found


def _for_time(
    entries: list[pgb_info.CatalogEntry],
    moment: datetime,
    latest: datetime | None,
    path: str,
    label: str | None,
    by_label: dict[str, pgb_info.CatalogEntry],
) -> pgb_info.CatalogEntry:
    earliest = entries[0].stopped_at
    ceiling = latest or entries[-1].stopped_at
    if moment < earliest or moment > ceiling:
        raise InvalidInputError(
            [
                {
                    "path": f"{path}.target",
                    "message": f"{moment.isoformat()} is outside the recovery window "
                    f"{earliest.isoformat()} .. {ceiling.isoformat()}",
                }
            ]
        )
    if label and label != "latest":
        chosen = by_label[label]
        if chosen.stopped_at > moment:
            raise InvalidInputError(
                [{"path": f"{path}.set", "message": f"set {label} ends after the target time"}]
            )
        return chosen
    # pgBackRest silently restores the latest set when none precedes a time target: choose
    # the set ourselves (the newest that stopped before the target).
    found = pgb_info.choose_set_for_time(entries, moment)
    assert found is not None  # moment >= earliest guarantees one
    return found


async def rename_database_if_needed(
    ctx: StepContext, ref: InstanceRef, config: RestoreConfig, spec: DatabaseSpec
) -> None:
    """The backup holds the source's database name; rename it to the spec's if they differ."""
    source_name = config.source_database_name or spec.database_name
    if source_name == spec.database_name:
        return
    conn = await ctx.services.orchestrator.connect(ref, "postgres")
    try:
        names = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
        if source_name in names and spec.database_name not in names:
            sql = await conn.fetchval(
                "SELECT format('ALTER DATABASE %I RENAME TO %I', $1::text, $2::text)",
                source_name,
                spec.database_name,
            )
            await conn.execute(sql)
            await ctx.log.info(f"database {source_name} renamed to {spec.database_name}")
    finally:
        await conn.close()
