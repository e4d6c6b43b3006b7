"""node_backup: take one pgBackRest backup of a node, exactly once per task, then expire."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import msgspec

from controlplane.errors import ExternalCommandError, PreconditionError
from controlplane.nodes import backups
from controlplane.pgbackrest import command as pgb
from controlplane.pgbackrest import info as pgb_info
from controlplane.store import databases, instances
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import BackupInput
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.steps.backup_steps import node_setup, on_end, settle, write_config

_LOCK_WAIT_SECONDS = 6 * 3600
# How long a standby backup waits for a replica to stream.
_STANDBY_SECONDS = 120.0
# pgBackRest: [055] archive.info/backup.info missing, i.e. no stanza in this repository path.
_MISSING_STANZA = 55
_LABEL = re.compile(r"new backup label = (\S+)")


async def resolve_node(ctx: StepContext) -> dict[str, Any]:
    """The node must be running; mark it (and an idle database) as backing up."""
    setup = await node_setup(ctx)
    status = await ctx.services.orchestrator.status(setup.ref)
    if status != "running":
        raise PreconditionError(f"node {setup.ref.node_name} of {ctx.database_id} is {status}")
    pool = ctx.services.pool
    # The primary only: a replica keeps its own state (a stopped one stays stopped).
    await instances.set_state_of(pool, setup.ref.instance_id, "backing_up")
    await databases.mark_backing_up(pool, ctx.database_id)
    return {}


async def _standby_streaming(ctx: StepContext, setup: backups.BackupSetup) -> None:
    """Until a replica streams from the node's primary: pgBackRest copies a standby backup's
    files from it once it has replayed the backup's start, and fails on a replica that is
    restarting (Patroni restarts one to load a slot copy) or not connected."""
    deadline = time.monotonic() + _STANDBY_SECONDS
    while True:
        conn = await ctx.services.orchestrator.connect(setup.ref)
        try:
            streaming = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_replication"
                " WHERE state = 'streaming' AND replay_lsn IS NOT NULL"
            )
        finally:
            await conn.close()
        if streaming:
            return
        if time.monotonic() > deadline:
            raise PreconditionError(
                f"no replica of node {setup.ref.node_name} streams: a backup from a standby "
                "needs one (see the instances' state)"
            )
        await asyncio.sleep(1.0)


async def take_backup(ctx: StepContext) -> dict[str, Any]:
    """Run the backup, unless an earlier attempt of this task already took it.

    Only a resumed attempt can find its own set, so a first attempt goes straight to pgbackrest
    (the benchmark holds the task to within 10% of a hand-run backup). A stanza that does not
    exist yet (repository emptied, new generation) is created in that repository alone (the
    node's other repositories may be down) and the backup run again. pgbackrest expires sets
    beyond retention at the end of every backup (expire-auto).
    """
    setup = await node_setup(ctx)
    task_id = str(ctx.task.task_id)
    subject = backups.subject_of(setup.ref, "backup")
    request = ctx.input_as(BackupInput)
    repo = setup.backup_repo(request.repository_id)
    if ctx.task.attempts > 1:
        found = await _wait_for_lock(ctx, setup, task_id, subject, repo)
        if found is not None:
            await ctx.log.info(
                f"backup {found.label} of this task already exists; not taking another"
            )
            return {"label": found.label}
    if request.options.get("backup-standby") == "y":
        await _standby_streaming(ctx, setup)
    argv = pgb.backup_argv(
        setup.config_path,
        type=request.type,
        task_id=task_id,
        annotations=request.annotations,
        repo=setup.repo_index(request.repository_id),
        extra=request.options,
    )
    sink = ctx.log.sink("pgbackrest")
    try:
        result = await backups.run_pgbackrest(
            ctx.services, setup, argv, subject=subject, on_line=sink
        )
    except ExternalCommandError as exc:
        if exc.exit_code != _MISSING_STANZA:
            raise
        await ctx.log.info(
            f"repository {setup.repository_ids[repo]} has no stanza for this node yet; creating it"
        )
        config_path, env = setup.scoped(repo)
        await backups.run_pgbackrest(
            ctx.services,
            setup,
            pgb.stanza_create_argv(config_path),
            subject=backups.subject_of(setup.ref, "stanza creation"),
            on_line=sink,
            env=env,
        )
        result = await backups.run_pgbackrest(
            ctx.services, setup, argv, subject=subject, on_line=sink
        )
    label = next((m.group(1) for line in result.lines if (m := _LABEL.search(line))), None)
    if label is None:
        raise ExternalCommandError(f"{subject} finished but printed no backup label")
    await ctx.log.info(f"backup {label} taken")
    return {"label": label}


async def _wait_for_lock(
    ctx: StepContext, setup: backups.BackupSetup, task_id: str, subject: str, repo: int
) -> pgb_info.CatalogEntry | None:
    """Observe before acting: a backup still running (e.g. this task's attempt from before a
    crash, which outlives the server) holds the stanza lock; wait for it, then look again for
    this task's set rather than starting a second backup. Only the backup's own repository is
    read: another one being down must not hold this backup up."""
    waited = False
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        stanza = await backups.read_info(ctx.services, setup, subject=subject, repo=repo)
        found = _mine(stanza, setup, task_id)
        locks = stanza.status.lock
        held = bool(locks and locks.backup and locks.backup.held)
        if found is not None or not held:
            return found
        if time.monotonic() > deadline:
            raise ExternalCommandError(
                f"{subject} failed: the stanza lock stayed held for "
                f"{_LOCK_WAIT_SECONDS // 60} minutes"
            )
        if not waited:
            await ctx.log.info("another backup holds this node's stanza lock; waiting for it")
            waited = True
        await asyncio.sleep(2)


def _mine(
    stanza: pgb_info.StanzaInfo, setup: backups.BackupSetup, task_id: str
) -> pgb_info.CatalogEntry | None:
    return pgb_info.find_by_task(pgb_info.catalog(stanza, setup.repository_ids), task_id)


async def record_result(ctx: StepContext) -> dict[str, Any]:
    """Put the set's catalog entry in the task result and clear the busy states."""
    setup = await node_setup(ctx)
    stanza = await backups.read_info(
        ctx.services,
        setup,
        subject=backups.subject_of(setup.ref, "backup"),
        repo=setup.backup_repo(ctx.input_as(BackupInput).repository_id),
    )
    entry = _mine(stanza, setup, str(ctx.task.task_id))
    if entry is None:
        raise ExternalCommandError(
            f"backup {ctx.state.get('label')} of this task is not in the repository"
        )
    await settle(ctx)
    return {"result": msgspec.to_builtins(entry)}


NODE_BACKUP = Workflow(
    type="node_backup",
    steps=(
        Step("resolve_node", resolve_node),
        Step("write_config", write_config),
        Step("take_backup", take_backup),
        Step("record_result", record_result),
    ),
    on_failure=on_end,
    on_cancel=on_end,
    retryable_steps=frozenset({"take_backup"}),
    input_type=BackupInput,
)
