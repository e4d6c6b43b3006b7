"""verify and expire: check a node's repository, or remove one backup set from it."""

from __future__ import annotations

import re
from typing import Any

from controlplane.errors import ConflictError, ExternalCommandError, NotFoundError
from controlplane.pgbackrest import command as pgb
from controlplane.pgbackrest import info as pgb_info
from controlplane.tasks.context import StepContext
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows import backups
from controlplane.workflows.node_backup import _on_end, _setup, write_config

# `verify --output=text --verbose` prints one line per backup set it checked.
_SET_LINE = re.compile(r"backup:\s*(?P<label>[0-9A-Za-z_-]+),\s*status:\s*(?P<status>[a-z ]+)")
_STATUS_LINE = re.compile(r"^\s*status:\s*(?P<status>.+)$")


async def run_verify(ctx: StepContext) -> dict[str, Any]:
    """`pgbackrest verify` in each repository of the node on its own: checksums of every set
    and WAL segment; per-set results returned. A repository that cannot be read does not keep
    the others from being verified; the task then fails naming it."""
    setup = await _setup(ctx)
    sets: list[dict[str, str]] = []
    statuses: dict[str, str] = {}
    for index, rid in sorted(setup.repository_ids.items()):
        config_path, env = setup.scoped(index)
        argv = pgb.pgbackrest_argv(
            "verify",
            config_path=config_path,
            options={"output": "text", "verbose": True, "repo": index},
        )
        try:
            result = await backups.run_pgbackrest(
                ctx.services,
                setup,
                argv,
                subject=backups.subject_of(setup.ref, f"verify of repository {rid}"),
                on_line=ctx.log.sink("pgbackrest", repository=rid),
                env=env,
            )
        except ExternalCommandError as exc:
            await ctx.log.warning(exc.message, repository=rid)
            statuses[rid] = f"error: {exc.message}"
            continue
        # The report reaches us twice (pgBackRest's output and its console log echo it): one
        # entry per set, in the order the report names them.
        found = {m["label"]: m["status"] for line in result.lines if (m := _SET_LINE.search(line))}
        sets += [{"label": k, "status": v, "repository_id": rid} for k, v in found.items()]
        statuses[rid] = next(
            (m.group("status").strip() for line in result.lines if (m := _STATUS_LINE.match(line))),
            "unknown",
        )
    invalid = [s["label"] for s in sets if s["status"].strip() != "valid"]
    overall = "ok" if set(statuses.values()) == {"ok"} else "failed"
    await ctx.log.info(
        f"verify: {len(sets)} set(s) checked, status {overall}"
        + "".join(f", {rid}: {status}" for rid, status in statuses.items() if len(statuses) > 1)
        + (f", invalid: {', '.join(invalid)}" if invalid else "")
    )
    if overall != "ok" or invalid:
        bad = {rid: status for rid, status in statuses.items() if status != "ok"}
        raise ConflictError(
            f"verify of node {setup.ref.node_name} found problems: "
            f"repositories {bad or 'ok'}, invalid sets {invalid or 'none'}"
        )
    return {"result": {"status": overall, "sets": sets, "repositories": statuses}}


def dependents(entries: list[pgb_info.CatalogEntry], label: str) -> set[str]:
    """The set and every set that builds on it (expiring a full expires its diffs/incrs)."""
    gone = {label}
    changed = True
    while changed:
        changed = False
        for entry in entries:
            if entry.label not in gone and entry.prior in gone:
                gone.add(entry.label)
                changed = True
    return gone


def expire_refusal(
    entries: list[pgb_info.CatalogEntry], label: str, force: bool
) -> NotFoundError | ConflictError | None:
    """Why expiring `label` is refused (no such set, or a conflict), or None.

    pgBackRest never expires the last full backup of a repository, forced or not. Expiring the
    oldest chain moves the start of the recovery window later, so that needs `force`.
    """
    target = next((e for e in entries if e.label == label), None)
    if target is None:
        return NotFoundError(f"backup set {label} not found", details={"label": label})
    fulls = [e for e in entries if e.type == "full" and e.repository_id == target.repository_id]
    if target.type == "full" and len(fulls) == 1:
        return ConflictError(
            f"full backup {label} is the last full backup of repository "
            f"{target.repository_id}: pgBackRest cannot expire it until another full backup "
            "exists",
            details={"label": label},
        )
    gone = dependents(entries, label)
    remaining = [e for e in entries if e.label not in gone]
    if not force and entries[0].label in gone and remaining:
        return ConflictError(
            f"expiring {label} moves the start of the recovery window from "
            f"{entries[0].stopped_at.isoformat()} to {remaining[0].stopped_at.isoformat()}; "
            "repeat with force=true to do it",
            details={"label": label},
        )
    return None


async def expire_set(ctx: StepContext) -> dict[str, Any]:
    """Expire the requested set unless an earlier attempt already did."""
    setup = await _setup(ctx)
    label = str(ctx.task.input["label"])
    subject = backups.subject_of(setup.ref, f"expire of set {label}")
    entries = pgb_info.catalog(
        await backups.read_info(ctx.services, setup, subject=subject), setup.repository_ids
    )
    if label not in {e.label for e in entries}:
        await ctx.log.info(f"set {label} is no longer in the repository")
        return {"result": {"label": label, "expired": sorted(ctx.state.get("expired", []))}}
    refusal = expire_refusal(entries, label, bool(ctx.task.input.get("force")))
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


VERIFY = Workflow(
    type="verify",
    steps=(Step("write_config", write_config), Step("run_verify", run_verify)),
    on_failure=_on_end,
    on_cancel=_on_end,
)

EXPIRE = Workflow(
    type="expire",
    steps=(Step("write_config", write_config), Step("expire_set", expire_set)),
    on_failure=_on_end,
    on_cancel=_on_end,
)
