"""Which backup sets expiring one takes with it, and when an expiry is refused."""

from __future__ import annotations

from controlplane.errors import ConflictError, NotFoundError
from controlplane.pgbackrest import info as pgb_info


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
