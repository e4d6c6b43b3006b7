"""verify: check every set and WAL segment in each repository of a node."""

from __future__ import annotations

import re
from typing import Any

from controlplane.errors import ConflictError, ExternalCommandError
from controlplane.nodes import backups
from controlplane.pgbackrest import command as pgb
from controlplane.tasks.context import StepContext
from controlplane.tasks.workflow import Step, Workflow
from controlplane.workflows.steps.backup_steps import node_setup, on_end, write_config

# `verify --output=text --verbose` prints one line per backup set it checked.
_SET_LINE = re.compile(r"backup:\s*(?P<label>[0-9A-Za-z_-]+),\s*status:\s*(?P<status>[a-z ]+)")
_STATUS_LINE = re.compile(r"^\s*status:\s*(?P<status>.+)$")


async def run_verify(ctx: StepContext) -> dict[str, Any]:
    """`pgbackrest verify` in each repository of the node on its own: checksums of every set
    and WAL segment; per-set results returned. A repository that cannot be read does not keep
    the others from being verified; the task then fails naming it."""
    setup = await node_setup(ctx)
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


VERIFY = Workflow(
    type="verify",
    steps=(Step("write_config", write_config), Step("run_verify", run_verify)),
    on_failure=on_end,
    on_cancel=on_end,
)
