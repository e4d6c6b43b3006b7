"""Client authentication rules an instance is started with, and its client fence.

The spec's `pg_hba_conf` rules (pgEdge's field) sit between the control plane's superuser rules
and its catch-all, so no rule of a user can lock the control plane or the replication links out;
its `pg_ident_conf` maps are the whole ident file (the control plane needs none). Both reach the
orchestrator as files in the instance directory (`USER_HBA_FILE`, `USER_IDENT_FILE`), read
whenever it writes the rules.

While a node is taken out of the mesh for an in-place restore, nothing but the control plane
(and the other nodes' replication links, which log in as the superuser) may write to it: a row
committed then would not be streamed to the other nodes. Fencing rewrites every `host` rule
to admit the superuser only and leaves the user's rules out; the `local` rules stay (the socket
is reachable only by the instance's own OS user). Fencing is a file, not a catalog change, so
it survives the restore and leaves nothing behind in the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.orchestrator.base import InstanceRef, Orchestrator

SUPERUSER = "postgres"
USER_HBA_FILE = "pg_hba.spec.conf"
USER_IDENT_FILE = "pg_ident.spec.conf"


def client_hba(normal: str, *, fenced: bool, user_rules: Sequence[str] = ()) -> str:
    """`normal` as it is (with the user's rules placed in it), or fenced: every `host` rule
    admits only the superuser and the user's rules are left out."""
    if fenced:
        lines = ["# Fenced by controlplane while the node is restored: only the superuser logs in."]
        for line in normal.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "host":
                fields[2] = SUPERUSER
                line = "    ".join(fields)
            lines.append(line)
        return "\n".join(lines) + "\n"
    if not user_rules:
        return normal
    header = [line for line in normal.splitlines() if line.startswith("#")]
    rules = [line for line in normal.splitlines() if line.strip() and not line.startswith("#")]
    # First the control plane's own connections (the superuser: tasks and replication links),
    # then the user's rules in spec order, then the control plane's catch-all.
    system = []
    for rule in rules:
        fields = rule.split()
        fields[2] = SUPERUSER
        system.append("    ".join(fields))
    return (
        "\n".join(
            [
                *header,
                "# The control plane's own connections.",
                *system,
                "# pg_hba_conf of the spec (node rules first, then the database's).",
                *user_rules,
                "# Everyone else.",
                *rules,
            ]
        )
        + "\n"
    )


def client_ident(user_maps: Sequence[str]) -> str:
    """The instance's pg_ident.conf: the spec's `pg_ident_conf` maps."""
    if not user_maps:
        return "# Managed by controlplane: no user name maps.\n"
    return "\n".join(["# Managed by controlplane: pg_ident_conf of the spec.", *user_maps]) + "\n"


def spec_lines(text: str | None) -> list[str]:
    """The lines of a `USER_HBA_FILE` / `USER_IDENT_FILE` (None: not written yet)."""
    return [line for line in (text or "").splitlines() if line.strip()]


async def write_client_rules(
    orchestrator: Orchestrator,
    ref: InstanceRef,
    hba_rules: Sequence[str],
    ident_maps: Sequence[str],
) -> bool:
    """Hand the spec's rules of one instance to its orchestrator and have it rewrite the
    instance's hba and ident files (unfenced; they apply on the next reload); True when they
    changed."""
    changed = await orchestrator.write_file(
        ref, USER_HBA_FILE, "".join(f"{r}\n" for r in hba_rules)
    )
    changed |= await orchestrator.write_file(
        ref, USER_IDENT_FILE, "".join(f"{m}\n" for m in ident_maps)
    )
    if changed:
        await orchestrator.fence_clients(ref, fenced=False)
    return changed
