"""Client authentication rules an instance is started with, and its client fence.

While a node is taken out of the mesh for an in-place restore, nothing but the control plane
(and the other nodes' replication links, which log in as the superuser) may write to it: a row
committed then would not be streamed to the other nodes. Fencing rewrites every `host` rule
to admit the superuser only; the `local` rules stay (the socket is reachable only by the
instance's own OS user). Fencing is a file, not a catalog change, so it survives the restore
and leaves nothing behind in the data.
"""

from __future__ import annotations

SUPERUSER = "postgres"


def client_hba(normal: str, *, fenced: bool) -> str:
    """`normal` as it is, or fenced: every `host` rule admits only the superuser."""
    if not fenced:
        return normal
    lines = ["# Fenced by controlplane while the node is restored: only the superuser logs in."]
    for line in normal.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "host":
            fields[2] = SUPERUSER
            line = "    ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"
