"""What a partial in-place restore leaves behind: whether the restored nodes now differ from the
nodes that were not restored, in the words the restore's log ends with.

Restored nodes diverge from the others when they come back anywhere but where the mesh is: at a
recovery target (time, lsn, xid, name, or `immediate`, which stops at the set's end), or with
another database's rows. A set named with no type is not an earlier point: pgBackRest replays the
archive past it to the end, so the node comes back with every row (people expect otherwise, so
the log says so).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controlplane.spec import normalise_restore_options


def partial_restore_note(
    *,
    database_id: str,
    targets: Iterable[str],
    others: Iterable[str],
    point_in_time: bool,
    source_database_id: str,
    restore_options: Mapping[str, str],
) -> tuple[str, str] | None:
    """(level, message) for the restore's log, or None when every node was restored (or the
    restore brought the targets back to the latest point without naming a set)."""
    restored, kept = ", ".join(sorted(targets)), ", ".join(sorted(others))
    if not kept:
        return None
    if point_in_time:
        return (
            "warning",
            f"only {restored} were restored to an earlier point: they now diverge from {kept},"
            " which kept their later rows",
        )
    if source_database_id != database_id:
        return (
            "warning",
            f"only {restored} were restored, from a backup of database {source_database_id}:"
            f" they now hold its rows and diverge from {kept}, which kept their own",
        )
    options = normalise_restore_options(restore_options)
    label = options.get("set")
    if label and label != "latest" and options.get("type") in (None, "default"):
        return (
            "info",
            f"{restored} came back from set {label} to the latest point (with no type,"
            " recovery replays the archive past the set to its end): they keep every row and"
            f" do not diverge from {kept}; type immediate stops at the set instead",
        )
    return None
