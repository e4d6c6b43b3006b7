"""drill: prove a backup set restores: restore it into a scratch instance, recover it, check it
(pg_amcheck, row counts per table), remove it, and record the outcome next to the set."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from controlplane.errors import ExternalCommandError, NotFoundError, PreconditionError
from controlplane.nodes import backups, drills
from controlplane.nodes.common import load_spec
from controlplane.orchestrator.base import InstanceRef
from controlplane.pgbackrest import info as pgb_info
from controlplane.store import drills as drill_records
from controlplane.store import instances
from controlplane.store.instances import InstanceRow
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import DrillInput
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.steps.backup_steps import node_setup, write_config


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _row(ctx: StepContext) -> InstanceRow:
    node = ctx.task.node_name or ""
    row = await instances.get_instance(ctx.services.pool, ctx.database_id, node)
    if row is None:
        raise PreconditionError(f"node {node} of {ctx.database_id} has no instance")
    return row


def _scratch(ctx: StepContext) -> InstanceRef:
    """The scratch instance chosen by `choose_set` (kept in the task's state, so that it can
    be removed even once the node is gone)."""
    return InstanceRef(
        instance_id=ctx.state["scratch_instance_id"],
        database_id=ctx.database_id,
        node_name=ctx.task.node_name or "",
        host_id=ctx.state["scratch_host_id"],
        port=int(ctx.state["scratch_port"]),
    )


async def choose_set(ctx: StepContext) -> dict[str, Any]:
    """The set to drill (the requested one, else the newest) and a free port for the scratch;
    a scratch an interrupted drill left behind is removed first."""
    setup = await node_setup(ctx)
    row = await _row(ctx)
    await drills.remove_scratch(ctx.services, drills.scratch_ref(row, row.port), _quiet)
    label = ctx.input_as(DrillInput).set_label
    subject = backups.subject_of(setup.ref, "drill")
    entries = pgb_info.catalog(
        await backups.read_info(ctx.services, setup, subject=subject), setup.repository_ids
    )
    chosen = pick_set(entries, label)
    if chosen is None:
        where = f"node {row.node_name} of {ctx.database_id}"
        if label is not None:
            raise NotFoundError(f"backup set {label} of {where} not found", details={"set": label})
        raise PreconditionError(f"{where} has no backup set to drill: take a backup first")
    used = await instances.used_ports(ctx.services.pool, row.host_id)
    scratch = drills.scratch_ref(row, ctx.services.orchestrator.pick_port(row.host_id, used))
    port = scratch.port
    await ctx.log.info(
        f"drill of set {chosen.label} ({chosen.type}, repository {chosen.repository_id}) "
        f"in a scratch instance on port {port}"
    )
    return {
        "set_label": chosen.label,
        "repository_id": chosen.repository_id,
        "started_at": _now(),
        "scratch_instance_id": scratch.instance_id,
        "scratch_host_id": scratch.host_id,
        "scratch_port": port,
    }


def pick_set(
    entries: list[pgb_info.CatalogEntry], label: str | None
) -> pgb_info.CatalogEntry | None:
    """The set named `label`, or with none the newest (by stop time)."""
    if label is not None:
        return next((e for e in entries if e.label == label), None)
    return max(entries, key=lambda e: (e.stopped_at, e.label), default=None)


async def restore_scratch(ctx: StepContext) -> dict[str, Any]:
    """Restore the set into the scratch's data directory, to its consistency point."""
    _, spec = await load_spec(ctx)
    row = await _row(ctx)
    await drills.restore_scratch(
        ctx,
        spec,
        row,
        _scratch(ctx),
        label=ctx.state["set_label"],
        repository_id=ctx.state["repository_id"],
    )
    return {}


async def check_scratch(ctx: StepContext) -> dict[str, Any]:
    """Recover and check the scratch: row counts per table, then pg_amcheck."""
    _, spec = await load_spec(ctx)
    check = await drills.check_scratch(ctx, _scratch(ctx), spec.database_name)
    found = {"amcheck_ok": check.amcheck_ok, "row_counts": check.row_counts}
    # Kept for the failure record too: a failing step's own state is not saved.
    ctx.state["check"] = found
    total = sum(check.row_counts.values())
    await ctx.log.info(
        f"drill: {len(check.row_counts)} table(s), {total} row(s), "
        f"pg_amcheck {'found nothing' if check.amcheck_ok else 'found problems'}"
    )
    problem = drills.amcheck_problem(check)
    if problem is not None:
        raise ExternalCommandError(
            f"drill of set {ctx.state['set_label']} of node {ctx.task.node_name} of "
            f"{ctx.database_id} failed: {problem}"
        )
    return {"check": found}


async def remove_scratch(ctx: StepContext) -> dict[str, Any]:
    """Remove the scratch instance and record the drill as passed."""
    await drills.remove_scratch(ctx.services, _scratch(ctx), ctx.log.sink("pg_ctl"))
    record = await _record(ctx, "completed", None)
    result = drills.drill_result(ctx.state, ctx.state["check"], record.finished_at.isoformat())
    return {"result": result}


async def _record(ctx: StepContext, status: str, error: str | None) -> drill_records.DrillRow:
    check = ctx.state.get("check") or {}
    return await drill_records.record_drill(
        ctx.services.pool,
        drill_records.DrillRow(
            database_id=ctx.database_id,
            node_name=ctx.task.node_name or "",
            set_label=ctx.state["set_label"],
            task_id=uuid.UUID(str(ctx.task.task_id)),
            status=status,
            started_at=datetime.fromisoformat(ctx.state["started_at"]),
            finished_at=datetime.now(UTC),
            amcheck_ok=check.get("amcheck_ok"),
            row_counts=check.get("row_counts") or {},
            error=error,
        ),
    )


async def _clean_up(ctx: StepContext) -> None:
    if "scratch_instance_id" in ctx.state:
        await drills.remove_scratch(ctx.services, _scratch(ctx), ctx.log.sink("pg_ctl"))


async def on_failure(ctx: StepContext, message: str) -> None:
    """Remove the scratch; a drill that had chosen its set is recorded as failed, with why."""
    try:
        await _clean_up(ctx)
    finally:
        if "set_label" in ctx.state:
            await _record(ctx, "failed", message)


async def on_cancel(ctx: StepContext, message: str) -> None:
    """Remove the scratch; a canceled drill proves nothing either way and is not recorded."""
    await _clean_up(ctx)


async def _quiet(line: str) -> None:
    return None


DRILL = Workflow(
    type="drill",
    steps=(
        Step("write_config", write_config),
        Step("choose_set", choose_set),
        Step("restore_scratch", restore_scratch),
        Step("check_scratch", check_scratch),
        Step("remove_scratch", remove_scratch),
    ),
    on_failure=on_failure,
    on_cancel=on_cancel,
    input_type=DrillInput,
)
