"""expire: remove one backup set (and the sets built on it) from its repository."""

from __future__ import annotations

from typing import Any

from controlplane.errors import ConflictError
from controlplane.nodes import backups
from controlplane.nodes.expiry import dependents, expire_refusal
from controlplane.pgbackrest import command as pgb
from controlplane.pgbackrest import info as pgb_info
from controlplane.tasks.context import StepContext
from controlplane.tasks.inputs import ExpireInput
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.steps.backup_steps import node_setup, on_end, write_config


async def expire_set(ctx: StepContext) -> dict[str, Any]:
    """Expire the requested set unless an earlier attempt already did."""
    setup = await node_setup(ctx)
    request = ctx.input_as(ExpireInput)
    label = request.label
    subject = backups.subject_of(setup.ref, f"expire of set {label}")
    entries = pgb_info.catalog(
        await backups.read_info(ctx.services, setup, subject=subject), setup.repository_ids
    )
    if label not in {e.label for e in entries}:
        await ctx.log.info(f"set {label} is no longer in the repository")
        return {"result": {"label": label, "expired": sorted(ctx.state.get("expired", []))}}
    refusal = expire_refusal(entries, label, request.force)
    if refusal is not None:
        raise ConflictError(refusal.message)
    gone = sorted(dependents(entries, label))
    repo = next(e.repository_id for e in entries if e.label == label)
    argv = pgb.expire_argv(setup.config_path, set_label=label, repo=setup.repo_index(repo))
    await backups.run_pgbackrest(
        ctx.services, setup, argv, subject=subject, on_line=ctx.log.sink("pgbackrest")
    )
    await ctx.log.info(f"expired {', '.join(gone)}")
    return {"result": {"label": label, "expired": gone}}


EXPIRE = Workflow(
    type="expire",
    steps=(Step("write_config", write_config), Step("expire_set", expire_set)),
    on_failure=on_end,
    on_cancel=on_end,
    input_type=ExpireInput,
)
