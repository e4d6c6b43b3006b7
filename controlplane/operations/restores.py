"""The in-place restore the API offers: refuse before touching anything, then enqueue."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from controlplane.errors import (
    DatabaseNotModifiableError,
    InvalidInputError,
    RestoreNotAllowedError,
)
from controlplane.models import Database, Task
from controlplane.nodes import restore_replicas, restore_source
from controlplane.nodes.common import ref_of, seal, spec_of
from controlplane.operations.databases import check_storage, database_view_of
from controlplane.spec import normalise_restore_options, parse_restore_request
from controlplane.spec.backup_roots import restore_repository
from controlplane.spec.models import (
    SECRET_FIELDS,
    DatabaseSpec,
    Repository,
    RestoreConfig,
    repository_id,
    type_of,
)
from controlplane.spec.secrets import repository_identity
from controlplane.store import databases, instances, tasks
from controlplane.tasks.context import Services
from controlplane.tasks.inputs import NodeRestoreInput, RestoreInput
from controlplane.workflows import all_workflows

_OPTIONS_PATH = "restore_config.restore_options"


def with_known_secrets(config: RestoreConfig, spec: DatabaseSpec) -> RestoreConfig:
    """Keys omitted from the restore's repository are taken from the database's own repository
    of the same id and type (they are write-only, so a client cannot send them back)."""
    repo = config.repository
    fields = SECRET_FIELDS[type_of(repo)]
    if not fields or all(getattr(repo, f) for f in fields):
        return config
    candidates: list[Repository] = []
    for backup_config in [spec.backup_config, *(n.backup_config for n in spec.nodes)]:
        if backup_config is not None:
            candidates += backup_config.repositories
    match = next(
        (
            r
            for r in candidates
            if repository_id(r) == repository_id(repo) and type_of(r) == type_of(repo)
        ),
        None,
    )
    if match is None:
        return config
    if repository_identity(match) != repository_identity(repo):
        # A stored key is only ever sent to the storage it was given for.
        missing = [f for f in fields if not getattr(repo, f)]
        raise InvalidInputError(
            [
                {
                    "path": f"restore_config.repository.{name}",
                    "message": f"repository {repository_id(repo)} of the database names other "
                    f"storage ({repository_identity(match)}): give {name} for this one",
                }
                for name in missing
            ]
        )
    filled = {f: getattr(repo, f) or getattr(match, f) for f in fields}
    return msgspec.structs.replace(config, repository=msgspec.structs.replace(repo, **filled))


async def start_restore(
    services: Services, database_id: str, body: bytes, actor: str
) -> tuple[Task, list[Task], Database]:
    """Validate the restore against the repository, then enqueue the parent and its children."""
    if not services.settings.allow_restore:
        raise RestoreNotAllowedError(
            "restores are disabled on this control plane (CONTROLPLANE_ALLOW_RESTORE=false)"
        )
    request = await asyncio.to_thread(parse_restore_request, body)
    row = await databases.get_database(services.pool, database_id)
    if row.state in ("creating", "deleting"):
        raise DatabaseNotModifiableError(f"database {database_id} is {row.state}")
    spec = spec_of(services, row)
    rows = {r.node_name: r for r in await instances.list_instances(services.pool, database_id)}
    targets = request.target_nodes or sorted(rows)
    unknown = [
        {"path": f"target_nodes[{i}]", "message": f"no node {name} in {database_id}"}
        for i, name in enumerate(targets)
        if name not in rows
    ]
    if unknown:
        raise InvalidInputError(unknown)
    for name in targets:  # a node with replicas is restored only from a settled primary
        await restore_replicas.check_leader(services, rows[name])
    check_storage(services, restore_repository(request.restore_config, "restore_config"))
    config = with_known_secrets(request.restore_config, spec)
    join_source = await _join_source(services, database_id, config, targets)
    plan = await _plan(services, config, rows[targets[0]], pin=len(targets) > 1 and not join_source)
    return await _enqueue(
        services,
        database_id,
        targets,
        config,
        plan,
        pre_restore_backup=request.pre_restore_backup,
        join_source=join_source,
        actor=actor,
    )


async def _join_source(
    services: Services, database_id: str, config: RestoreConfig, targets: list[str]
) -> str | None:
    """The running node of this database whose backup the targets are restored from to the
    present, when it is not restored itself: each target then rejoins the mesh the way a node
    added from that backup joins (at a point prepared when its task runs), and loses nothing
    the source or any other member writes meanwhile."""
    source = config.source_node_name
    if config.source_database_id != database_id or source in targets:
        return None
    if normalise_restore_options(config.restore_options).get("type") not in (None, "default"):
        return None
    row = await instances.get_instance(services.pool, database_id, source)
    if row is None or await services.orchestrator.status(ref_of(row)) != "running":
        return None
    return source


async def _plan(services: Services, config: RestoreConfig, target: Any, *, pin: bool) -> Any:
    """Decide the set and target. Several nodes restored "to the latest point" of a source
    that may still be writing (`pin`) are all restored to one moment, read now by archiving a
    marker on it, so they come back identical."""
    setup = await restore_source.source_setup(services, config, ref_of(target))
    entries = await restore_source.source_catalog(services, setup, config, in_request=True)
    options = dict(config.restore_options)
    latest = None
    kind = normalise_restore_options(options).get("type")
    if kind in ("time", "lsn") or (pin and kind in (None, "default")):
        latest = await restore_source.archive_marker(services, config)
    if pin and kind in (None, "default") and latest is not None:
        options = {**options, "type": "time", "target": latest.time.isoformat()}
    facts = await restore_source.target_facts(services, config, options)
    return restore_source.decide(
        entries, dict(options), latest=latest, path=_OPTIONS_PATH, facts=facts
    )


async def _enqueue(
    services: Services,
    database_id: str,
    targets: list[str],
    config: RestoreConfig,
    plan: restore_source.RestorePlan,
    *,
    pre_restore_backup: bool,
    join_source: str | None,
    actor: str,
) -> tuple[Task, list[Task], Database]:
    steps = all_workflows()
    sealed = seal(services, {"restore_config": msgspec.to_builtins(config)})["sealed"]
    async with services.pool.acquire() as conn, conn.transaction():
        await databases.get_database(conn, database_id, for_update=True)
        parent = await tasks.insert_task(
            conn,
            database_id=database_id,
            type="restore",
            steps=steps["restore"].step_names,
            actor=actor,
            # Anything but "the latest" (a target, or a set recovered only to its end) leaves
            # the restored nodes behind the others.
            input=RestoreInput(
                target_nodes=targets,
                point_in_time=plan.target_type not in (None, "default"),
                sealed=sealed,
            ),
        )
        children = []
        for node in targets:
            child = await tasks.insert_task(
                conn,
                database_id=database_id,
                type="node_restore",
                node_name=node,
                parent_id=parent.task_id,
                actor=actor,
                steps=steps["node_restore"].step_names,
                input=NodeRestoreInput(
                    plan=plan.to_state(),
                    pre_restore_backup=pre_restore_backup,
                    target_nodes=targets,
                    join_source=join_source,
                    sealed=sealed,
                ),
            )
            children.append(child)
        await databases.set_state(conn, database_id, "restoring")
    pool = services.pool
    row = await databases.get_database(pool, database_id)
    return (
        await tasks.get_task(pool, str(parent.task_id)),
        [await tasks.get_task(pool, str(c.task_id)) for c in children],
        await database_view_of(services, row),
    )
